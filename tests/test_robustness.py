"""As a user: bad input gets one line, divergence is caught, runs are reproducible, a stop loses nothing."""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from litlab.entry import cpu_ticks, parents, tree_ticks
from litlab.train import train
from tests.conftest import ROOT, compose_train, run_dirs, run_train
from tests.test_train import events, hparams_session


def start(root, *args: str, new_session: bool = False, **env: str) -> subprocess.Popen:
    """`python train.py args` started in the background, logs under root (in a process group of its own
    with new_session, as a terminal's Ctrl-C reaches a command and its children)."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *sorted(args, key=lambda a: not a.startswith("-")),
            f"paths.root_dir={root}",
        ],
        cwd=root,
        env=environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """(exit code, stderr) once it ends."""
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_bad_command_lines_fail_in_one_line_and_full_error_shows_the_traceback(tmp_path):
    cases = {
        "model=foo": "error: there is no model=foo: the model options are linear, logistic",
        "optimizer.lrr=0.1": "error: optimizer.lrr is not a key of optimizer (its keys: lr, momentum",
        "optimizer.lr=fast": "error: optimizer.lr='fast' is not a number",
        "trainer=mps": "error: trainer.accelerator=mps is not available here",
    }
    elsewhere = tmp_path / "not_a_run"  # say, the home directory: resume= must write nothing into it
    elsewhere.mkdir()
    cases[f"resume={elsewhere}"] = (
        f"error: {elsewhere}/checkpoints/last.ckpt does not exist: give a run directory"
    )
    procs = {arg: start(tmp_path, arg) for arg in cases}
    full = start(tmp_path, "optimizer.lr=fast", HYDRA_FULL_ERROR="1")
    for arg, proc in procs.items():
        code, err = finish(proc)
        assert code == 1 and err.strip().splitlines() == [err.strip()], err  # exactly one line on stderr
        assert err.startswith(cases[arg]) and "Traceback" not in err
    assert not list(elsewhere.iterdir())
    code, err = finish(full)
    assert code == 1 and "Traceback" in err and "ConfigError: optimizer.lr='fast' is not a number" in err
    assert not list((tmp_path / "logs").rglob("*.ckpt"))  # nothing trained


@pytest.mark.slow
def test_divergence_fails_the_run_but_not_the_sweep(tmp_path):
    (tmp_path / "sweep").mkdir()
    single = start(tmp_path, "experiment=book_divergence", "trainer=cpu")
    sweep = start(
        tmp_path / "sweep", "-m", "experiment=book_divergence", "trainer=cpu", "optimizer.lr=1e-2,1e-4"
    )
    code, err = finish(single)
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == [
        "error: diverged at epoch 11 (loss=inf): try a smaller learning rate or scaled inputs"
    ]
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    assert "job failed: diverged at epoch 11 (loss=inf)" in out and "Traceback" not in out + err  # one line
    jobs = sorted((tmp_path / "sweep" / "logs" / "book_divergence" / "multiruns").glob("*/*/metrics.json"))
    statuses = {p.parent.name[0]: json.loads(p.read_text())["status"] for p in jobs}
    assert statuses == {"0": "diverged", "1": "ok"}  # lr 1e-2, then lr 1e-4


@pytest.mark.slow
def test_a_stopped_run_saves_where_it_stopped_and_closes_its_logs(tmp_path):
    signals = {"SIGTERM": signal.SIGTERM, "Ctrl-C": signal.SIGINT}  # each to a run of its own, both at once
    endless = ("trainer=cpu", "trainer.max_epochs=100000000", "trainer.check_val_every_n_epoch=1000")
    for name in signals:
        (tmp_path / name).mkdir()
    procs = {name: start(tmp_path / name, *endless) for name in signals}
    for name, sig in signals.items():
        deadline = time.time() + 120
        while not list((tmp_path / name / "logs").rglob("last.ckpt")) and time.time() < deadline:
            time.sleep(0.2)  # last.ckpt is saved at train start
        time.sleep(1.5)
        procs[name].send_signal(sig)
    for name, proc in procs.items():
        code, err = finish(proc)
        assert code == 1 and "Traceback" not in err, err
        [line] = error_lines(err)
        assert line.startswith(f"error: stopped by {name} after ") and line.endswith(
            "last.ckpt holds where it stopped"
        )
        epochs = int(line.split(" after ")[1].split()[0])
        [run] = run_dirs(tmp_path / name)
        assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == epochs > 0
        acc = events(run)  # readable to the end: the writers were closed, the hparams logged
        assert (
            acc.Scalars("train/loss")[-1].step < epochs and hparams_session(acc)[0]["status"] == "interrupted"
        )


def training_parallel_sweep(root) -> subprocess.Popen:
    """An endless two-job sweep (joblib workers, in a process group of its own), once both jobs train."""
    proc = start(root, "-m", "trainer.max_epochs=100000000", "optimizer=sgd,adam", new_session=True)
    deadline = time.time() + 120
    while len(list((root / "logs").rglob("last.ckpt"))) < 2 and time.time() < deadline:  # both jobs
        time.sleep(0.2)
    time.sleep(1.5)
    return proc


@pytest.mark.slow
def test_ctrl_c_stops_a_parallel_sweep_in_one_line(tmp_path):
    proc = training_parallel_sweep(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # the main process and the joblib workers, as Ctrl-C does
    code, err = finish(proc)
    assert code == 1 and "Traceback" not in err, err
    assert error_lines(err) == [
        "error: stopped by Ctrl-C; each run that had started training keeps its last.ckpt"
    ]
    results = [json.loads(p.read_text()) for p in (tmp_path / "logs").rglob("metrics.json")]
    assert [r["status"] for r in results] == ["interrupted", "interrupted"]  # each job saved and recorded


def test_a_worker_waiting_on_a_busy_child_of_its_own_is_not_idle():
    """stop_workers waits for workers and their own processes (a run's drawing process, drawing the frames
    the worker waits for): judged by the worker's ticks alone, the sweep ended before its runs recorded."""
    busy = "import time; end = time.time() + 3\nwhile time.time() < end: pass"
    worker = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"]
    )
    try:
        time.sleep(1)  # the worker has started its child and waits
        own, tree = cpu_ticks(worker.pid), tree_ticks(worker.pid, parents())
        time.sleep(0.5)
        assert cpu_ticks(worker.pid) == own and tree_ticks(worker.pid, parents()) != tree
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.slow
def test_sigterm_to_a_parallel_sweeps_main_process_stops_its_workers_in_one_line(tmp_path):
    proc = training_parallel_sweep(tmp_path)
    # as a scheduler or `kill <pid>` sends it: to the main process only, not to its workers
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 1 and error_lines(err) == [
        "error: stopped by SIGTERM; each run that had started training keeps its last.ckpt"
    ], err
    results = [json.loads(p.read_text()) for p in (tmp_path / "logs").rglob("metrics.json")]
    assert [r["status"] for r in results] == ["interrupted", "interrupted"]  # each job saved and recorded
    deadline = time.time() + 15  # the idle workers follow their main process out
    while left := subprocess.run(
        ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True
    ).stdout.split():
        assert time.time() < deadline, f"workers left running: {left}"  # before: they trained on for minutes
        time.sleep(0.5)


@pytest.mark.slow
def test_same_command_twice_at_once_gives_two_directories_and_identical_metrics(tmp_path):
    args = ("data=regression", "data.preset=noisy100", "optimizer=adam", "seed=3", "trainer.max_epochs=200")
    first, second = start(tmp_path, *args), start(tmp_path, *args)
    assert finish(first)[0] == 0 and finish(second)[0] == 0
    runs = run_dirs(tmp_path)
    assert len(runs) == 2 and runs[0].name != runs[1].name
    results = [json.loads((run / "metrics.json").read_text())["metrics"] for run in runs]
    assert results[0] == results[1] and results[0]["val/loss"] > 0  # bit-identical (JSON keeps every digit)


@pytest.mark.slow
def test_same_seed_is_bit_identical_and_another_seed_differs(cfg_factory, tmp_path):
    def run(seed: int, name: str) -> tuple[dict, torch.Tensor]:
        cfg = cfg_factory("data=regression", "data.preset=noisy100", "optimizer=adam", f"seed={seed}")
        cfg.paths.output_dir = str(tmp_path / name)
        (tmp_path / name).mkdir()
        train(cfg)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
        last = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        return metrics, last["state_dict"]["net.weight"]

    a, b, c = run(1, "a"), run(1, "b"), run(2, "c")
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert a[0]["val/loss"] != c[0]["val/loss"] and not torch.equal(a[1], c[1])
    # deterministic kernels, without filling each new tensor with NaN first (6% of a minibatch epoch)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.utils.deterministic.fill_uninitialized_memory


@pytest.mark.slow
def test_another_seed_gives_another_split_and_initialisation(cfg_factory):
    def split_and_init(seed: int):
        cfg = cfg_factory(f"seed={seed}")
        L.seed_everything(cfg.seed, verbose=False)  # as train() does, before building data and model
        data = instantiate(cfg.data)
        data.setup("fit")
        model = instantiate(cfg.model, task="regression", in_features=1, out_features=1)
        return data.splits["val"][1].flatten().tolist(), model.net.weight.item()

    assert split_and_init(5) == split_and_init(5)
    (val_a, w_a), (val_b, w_b) = split_and_init(5), split_and_init(6)
    assert val_a != val_b and w_a != w_b


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["64-true", "16-true", "bf16-true"])
def test_true_precisions_train_with_every_callback_and_fast_stepping(tmp_path, precision):
    # The inputs reach the network in its dtype: Lightning's batches, the fast steps' minibatches and the
    # pictures' and the gap's own forward passes all go through the precision plugin's convert_input.
    cfg = compose_train(tmp_path, "experiment=book_temperature", f"trainer.precision={precision}")
    with open_dict(cfg):
        cfg.trainer.max_epochs = 5000 if precision == "64-true" else 500
    loss = train(cfg)
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["status"] == "ok" and math.isfinite(loss)
    if precision == "64-true":  # the book's fit in float64 ends at the book's loss
        assert loss == pytest.approx(2.927647, abs=1e-6)


@pytest.fixture
def small_disk(tmp_path):
    """A 120 KB filesystem (tmpfs) at tmp_path/disk; skipped where this user cannot mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(small_disk, tmp_path):
    args = ("trainer=cpu", "trainer.max_epochs=100000", "callbacks.last_checkpoint.every_s=0")
    proc = run_train(small_disk, *args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = error_lines(proc.stderr)
    [run] = run_dirs(small_disk)
    assert line.startswith(f"error: no space left on the disk of {run} after ")
    assert line.endswith(
        f"metrics.json says so; free space (or move the run directory elsewhere), then resume={run}"
    )
    result = json.loads((run / "metrics.json").read_text())
    assert result["status"] == "failed" and result["error"].startswith("no space left on the disk of")
    kept = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # the last good one, whole
    epochs = kept["global_step"]
    assert f"last.ckpt holds {epochs} epochs" in line and 0 < epochs < 100000, line
    moved = tmp_path / "moved"  # where there is space: a run directory goes on wherever it is
    shutil.copytree(run, moved)
    run_train(tmp_path, f"resume={moved}", f"trainer.max_epochs={epochs + 50}")
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == epochs + 50
    assert json.loads((moved / "metrics.json").read_text())["status"] == "ok"


def tree(root) -> dict[str, str]:
    """Every file and directory below root -> its content's SHA-256 ('dir' for a directory)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.slow
def test_a_refused_command_changes_no_byte_under_logs(tmp_path):
    """Refused before training, a new run leaves no directory; a refused resume or eval writes nothing into
    the run it names (its .hydra/ and its log stay the run's own)."""
    run_train(tmp_path, "trainer.max_epochs=3")
    [run] = run_dirs(tmp_path)
    typed = str(run.relative_to(tmp_path))
    before = tree(tmp_path / "logs")
    refused = [
        ("train.py", "optimizer.lr=-1"),
        ("train.py", "trainer.max_epochs=abc"),
        ("train.py", "data=wine", "model=logistic", "data.val_fraction=0.5", "optimized_metric=val/mse"),
        ("train.py", f"resume={typed}", "optimizer.lr=0.5"),  # a changed learning rate
        ("train.py", f"resume={typed}", "trainer.max_epochs=2"),  # fewer epochs than it has
        ("train.py", f"resume={typed}", "model=mlp"),
        ("eval.py", f"ckpt_path={typed}", "data=wine"),
    ]
    with ThreadPoolExecutor(2) as pool:  # 2 cores; each one is refused on its own
        procs = list(pool.map(lambda c: run_train(tmp_path, *c[1:], script=c[0], check=False), refused))
    for (_, *args), proc in zip(refused, procs, strict=True):
        assert proc.returncode == 1 and proc.stderr.startswith("error: "), (args, proc.stderr[-500:])
    assert tree(tmp_path / "logs") == before
    resumed = run_train(tmp_path, f"resume={typed}", "trainer.max_epochs=4")  # accepted: the run goes on
    assert "Traceback" not in resumed.stderr
    after = tree(tmp_path / "logs")
    assert {k: v for k, v in after.items() if k.startswith(f"{typed.removeprefix('logs/')}/.hydra")} == {
        k: v for k, v in before.items() if k.startswith(f"{typed.removeprefix('logs/')}/.hydra")
    }  # the run's own .hydra/, forever
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    run_train(tmp_path, f"resume={typed}", "trainer.max_epochs=4")  # a finished run: no epoch to train
    again = json.loads((run / "metrics.json").read_text())["metrics"]
    assert again == metrics and {"train/loss", "train/gap", "train/r2", "val/loss"} <= set(again)


@pytest.mark.slow
def test_sigterm_before_training_is_one_line_and_leaves_nothing(tmp_path):
    proc = start(tmp_path, "trainer.max_epochs=3")
    time.sleep(1.0)  # composing done, torch still importing: before any training
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 1 and err.strip().splitlines() == [
        "error: stopped by SIGTERM; each run that had started training keeps its last.ckpt"
    ], err
    assert not (tmp_path / "logs").exists()  # the run directory Hydra had made is gone again


@pytest.mark.slow
def test_a_log_dir_under_a_file_and_a_bad_launcher_variable_are_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    cases = {
        (f"paths.log_dir={tmp_path / 'afile' / 'logs'}",): "Not a directory: choose a place of your own",
        ("paths.log_dir=/proc/litlab/logs",): "cannot use /proc/litlab",
    }
    for args, expected in cases.items():
        code, err = finish(start(tmp_path, *args))
        assert code == 1 and len(err.strip().splitlines()) == 1 and expected in err, err
    code, err = finish(start(tmp_path, WORLD_SIZE="abc", TORCHELASTIC_RUN_ID="x"))
    assert code == 1 and err.strip() == (
        "error: the environment variable WORLD_SIZE=abc is not a whole number: correct or unset it"
    )
    code, err = finish(start(tmp_path, "trainer.max_epochs=1", SLURM_NTASKS="2"))  # no SLURM job around it
    assert code == 1 and err.strip().startswith(
        "error: Lightning refuses this SLURM environment: You set `--ntasks=2`"
    )


@pytest.mark.slow
def test_a_network_too_large_for_memory_and_slurm_without_slurm_are_one_line(tmp_path):
    code, err = finish(start(tmp_path, "model=mlp", "model.net.hidden=[100000000000]"))
    assert code == 1 and err.strip().startswith("error: out of memory: the model or the data does not fit")
    bare = f"{os.path.dirname(sys.executable)}:/nonexistent"  # no sbatch on this PATH
    code, err = finish(start(tmp_path, "-m", "hydra/launcher=slurm", PATH=bare))
    assert code == 1 and "hydra/launcher=slurm submits each job with SLURM's sbatch, which is not" in err
