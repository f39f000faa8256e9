"""What a user sees first: a mistake answered before Lightning is imported, and a plain console."""

import os
import pty
import re
import subprocess
import sys
import time

import pytest

from litlab import entry
from litlab.cockpit import gap
from litlab.entry import paths_as_typed
from tests.conftest import ROOT, run_train
from tests.test_robustness import start

ESCAPE = "\x1b["


def answer(proc: subprocess.Popen) -> tuple[str, set[str]]:
    """(what it printed, every module it imported) once it ends."""
    out, err = proc.communicate(timeout=120)
    return out + err, set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", err, re.MULTILINE))


ANSWERS = {  # what a user types: the start of the answer
    "--help": "python train.py [group=option ...] [key=value ...]",
    "model=foo": "error: there is no model=foo",
    "optimizer.lrr=0.1": "error: optimizer.lrr is not a key of optimizer",
    "lr=0.1": "did you mean optimizer.lr?",
    "optimizer.lr=fast": "error: optimizer.lr='fast' is not a number",
    "optimizer.lr=-1": "error: optimizer.lr=-1 must be > 0",
    "trainer.max_epochs=0": "error: trainer.max_epochs=0 must be >= 1",
    "trainer.max_epochs=abc": "error: trainer.max_epochs='abc' is not an integer",
    "data.batch_size=abc": "error: data.batch_size='abc' is not an integer",
    "seed=-1": "error: seed=-1 must be in [0, 2**32)",
    "data.val_fraction=2": "error: data.val_fraction=2 must be in [0, 1)",
}


@pytest.mark.slow
def test_mistakes_and_help_are_answered_before_torch_is_imported(tmp_path):
    """Lightning's and torch's signatures are written down (litlab/signatures.py): no import to read them."""
    imports = {"PYTHONPROFILEIMPORTTIME": "1"}  # Python's import log, on stderr
    procs = {arg: start(tmp_path, arg, **imports) for arg in ANSWERS}
    for arg, expected in ANSWERS.items():
        printed, modules = answer(procs[arg])
        assert expected in printed, arg
        assert "hydra" in modules and not {m for m in modules if m.split(".")[0] in ("lightning", "torch")}, (
            arg
        )
    help_text, _ = answer(start(tmp_path, "--help"))
    for part in ("model: linear, logistic, mlp", "resume=<run dir>", "python eval.py", "python predict.py"):
        assert part in help_text


def on_terminal(root, **env: str) -> tuple[subprocess.Popen, int]:
    """A sweep of one failing job (Hydra's and the job's log lines) started on a terminal: (the process,
    the terminal's reading end)."""
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=basic", "optimizer.lr=-1"]
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")} | env
    reading, writing = pty.openpty()
    proc = subprocess.Popen([*command, f"paths.root_dir={root}"], env=environ, stdout=writing, stderr=writing)
    os.close(writing)
    return proc, reading


def shown(proc: subprocess.Popen, terminal: int) -> str:
    """All that the process wrote to its terminal, once it ends."""
    out = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the writing end is closed: all read
            break
        if not chunk:
            break
        out += chunk
    os.close(terminal)
    proc.wait(timeout=120)
    return out.decode()


@pytest.mark.slow
def test_colours_only_on_a_terminal_and_never_with_no_color(tmp_path):
    # (a pipe: tests/test_train.py's default run, whose console has no escape codes either)
    roots = [tmp_path / name for name in ("terminal", "no_color")]
    started = [on_terminal(roots[0]), on_terminal(roots[1], NO_COLOR="1")]  # both at once
    coloured, plain = (shown(*s) for s in started)
    assert "Launching 1 jobs" in coloured and ESCAPE in coloured
    assert "Launching 1 jobs" in plain and "job failed" in plain and ESCAPE not in plain
    for root in roots:
        [log] = root.rglob("train.log")
        assert "job failed" in log.read_text() and ESCAPE not in log.read_text()


def test_a_gap_is_never_below_zero():
    assert gap(2.2515800, 2.2515801) == 0.0  # float32 loss a rounding error below the float64 optimum
    assert gap(2.25158 * (1 + 2**-23), 2.25158) == 0.0  # and above it: at the optimum all the same
    assert gap(2.5, 2.25) == pytest.approx(0.25)
    assert gap(1.0, 1.5) == 0.0  # below an approximate reference (L-BFGS): at it


def test_make_train_installs_what_training_needs_and_make_test_adds_the_test_tools(tmp_path):
    def installs(target: str) -> list[str]:
        plan = subprocess.run(
            ["make", "-n", target, f"VENV={tmp_path}/venv"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [
            line.split("pip install", 1)[1].strip() for line in plan.splitlines() if "pip install -e" in line
        ]

    assert installs("train") == ["-e ."]
    assert installs("test") == ["-e .", '-e ".[dev]"']


@pytest.mark.slow
def test_a_sweep_job_resumes_and_evaluates_by_the_path_ls_shows_and_lightning_stays_quiet(tmp_path):
    run_train(
        tmp_path, "-m", "hydra/launcher=basic", "model=mlp", "model.net.hidden=[4,4]", "trainer.max_epochs=3"
    )
    [job] = (tmp_path / "logs" / "train" / "multiruns").glob("*/0_*")
    typed = str(job.relative_to(tmp_path))  # 0_model.net.hidden=[4,4],model=mlp,trainer.max_epochs=3
    assert "=" in job.name and "[" in job.name
    resumed = run_train(tmp_path, f"resume={typed}", "trainer.max_epochs=6")
    console = resumed.stdout + resumed.stderr
    # 6 epochs trained; the path quoted for the shell
    assert f"go on: python train.py resume='{typed}' trainer.max_epochs=12" in console
    evaluated = run_train(tmp_path, f"ckpt_path={typed}", script="eval.py")
    for said in (console, evaluated.stdout + evaluated.stderr):
        assert not [w for w in ("Checkpoint directory", "Restoring states", "litmodels", "Tip:") if w in said]


def test_a_refused_command_removes_only_its_own_directories(tmp_path, monkeypatch):
    """Two commands started at once share logs/train/runs/: the refused one leaves the other's new, still
    empty run directory (the CI failure of aa62979: the other then failed on FileNotFoundError)."""
    runs = tmp_path / "logs" / "train" / "runs"
    own, other = runs / "a", runs / "b"
    (own / ".hydra").mkdir(parents=True)
    (own / ".hydra" / "config.yaml").write_text("seed: 0\n")
    other.mkdir()
    monkeypatch.setattr(entry, "MADE", [tmp_path / "logs"])
    monkeypatch.setattr(entry.RunLog, "run_dir", own)
    monkeypatch.setattr(entry.RunLog, "started", False)
    entry.discard_refused_run()
    assert not own.exists() and other.is_dir()
    other.rmdir()
    (own / ".hydra").mkdir(parents=True)
    entry.discard_refused_run()
    assert not (tmp_path / "logs").exists()


def test_lightning_imports_without_the_collector_and_stays_out_of_its_sight():
    """It went over every object six times while Lightning imported: 0.6 s of 3.3 s (docs/benchmarks.md)."""
    code = """import gc
from litlab.entry import import_quickly
passes = []
gc.callbacks.append(lambda phase, info: passes.append(info["generation"]) if phase == "start" else None)
module = import_quickly("lightning")
frozen = gc.get_freeze_count()
again = import_quickly("lightning") is module and gc.get_freeze_count() == frozen
print(len(passes), frozen, again, gc.isenabled())"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    passes, frozen, again, enabled = out.split()
    assert passes == "0" and int(frozen) > 100_000 and again == enabled == "True"


def test_paths_are_taken_as_typed():
    typed = ["resume=logs/1_a=b,c=[1,2]", "ckpt_path=runs/x", "optimizer.lr=0.1", "input_file=it's.csv"]
    assert paths_as_typed(typed) == [
        "resume='logs/1_a=b,c=[1,2]'",
        "ckpt_path=runs/x",
        "optimizer.lr=0.1",
        "input_file='it\\'s.csv'",
    ]


def test_threads_auto_leaves_the_cores_that_other_processes_keep_busy(monkeypatch):
    """On 2 busy cores torch's default threads ran 10-17x slower than one thread (docs/benchmarks.md)."""
    import torch
    from omegaconf import OmegaConf

    from litlab import entry
    from litlab.train import TORCH_THREADS, use_threads

    monkeypatch.setattr(entry, "STARTED", entry.busy_ticks())
    cores = len(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(cores)]
    try:
        time.sleep(1.5)
        cfg = OmegaConf.create({"threads": "auto"})
        said = use_threads(cfg)
    finally:
        for hog in hogs:
            hog.kill()
    assert cfg.threads == 1 and torch.get_num_threads() == 1  # recorded: a resume computes alike
    assert said.startswith("1 thread, threads=auto: ") and f"of {cores} cores busy elsewhere" in said
    cfg = OmegaConf.create({"threads": 2})
    assert use_threads(cfg) == "2 threads" and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert TORCH_THREADS >= 1
