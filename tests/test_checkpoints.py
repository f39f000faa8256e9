"""Resuming: a run killed mid-way and resumed ends as an unbroken run does; the saved config wins."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchmetrics as tm
from omegaconf import OmegaConf

from litlab.checkpoints import load, metric_states, restore_metric_states, saved_config
from litlab.entry import hold, locate, run_dir_of
from litlab.errors import ConfigError
from litlab.models.task import EpochMean
from litlab.train import train
from tests.conftest import ROOT, compose_train, run_dirs, run_train, train_command
from tests.signal_at import signal_at
from tests.test_train import events, hparams_session

# Minibatch Adam: 64 shuffled batches per epoch, so the epoch order, optimizer moments and step counts
# all have to come back from the checkpoint for the weights to match bit for bit. Fast stepping: 2 epochs
# a Lightning step.
MINIBATCH = (
    "stepping=fast",
    "data=regression",
    "data.preset=generated",
    "data.n=8000",
    "data.batch_size=100",
    "optimizer=adam",
    "trainer=cpu",
    "trainer.max_epochs=60",  # long enough that the kill lands mid-run on a loaded machine
    "trainer.check_val_every_n_epoch=4",
    "callbacks.last_checkpoint.every_s=0",  # a checkpoint every epoch, so the kill lands between two
)
# Full-batch Adam: 100 epochs a Lightning step (max_steps counts epochs), validation every 100.
FULL_BATCH = (
    "stepping=fast",
    "data=regression",
    "data.preset=generated",
    "optimizer=adam",
    "trainer=cpu",
    "trainer.max_epochs=5000",
    "callbacks.last_checkpoint.every_s=0",
)
# One optimizer step per Lightning step: 32 minibatches an epoch.
LIGHTNING = (
    "data=regression",
    "data.preset=generated",
    "data.n=4000",
    "data.batch_size=100",
    "optimizer=adam",
    "trainer=cpu",
    "trainer.max_epochs=25",
    "trainer.check_val_every_n_epoch=4",
    "callbacks.last_checkpoint.every_s=0",
)


def start_train(root, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={root}", *args],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for_epoch(run_root, epoch: int, proc: subprocess.Popen) -> None:
    """Until the run's last.ckpt holds at least this many finished epochs."""
    while proc.poll() is None:
        for ckpt in run_root.rglob("last.ckpt"):
            if load(ckpt)["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] >= epoch:
                return
        time.sleep(0.05)
    raise AssertionError("the run ended before it could be killed")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,steps",
    [(MINIBATCH, 60 * 64), (FULL_BATCH, 5000), (LIGHTNING, 25 * 32)],
    ids=["minibatch", "full", "lightning"],
)
def test_run_killed_and_resumed_ends_with_the_weights_of_an_unbroken_run(tmp_path, args, steps):
    killed = start_train(tmp_path, *args)
    wait_for_epoch(tmp_path, 3, killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    [run] = run_dirs(tmp_path)
    stopped_at = load(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < stopped_at < steps
    with ThreadPoolExecutor() as pool:  # the resumed run in its process, the unbroken one here, at once
        resumed = pool.submit(run_train, tmp_path, f"resume={run}")
        train(compose_train(tmp_path / "unbroken", *args))
        resumed.result()
    resumed, reference = (load(d / "checkpoints" / "last.ckpt") for d in (run, tmp_path / "unbroken" / "run"))
    assert resumed["global_step"] == reference["global_step"] == steps
    for key, value in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    adam_resumed, adam_reference = (c["optimizer_states"][0]["state"][0] for c in (resumed, reference))
    assert all(torch.equal(adam_resumed[k], adam_reference[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    # TensorBoard: the killed run's later events are purged, every epoch is logged once
    logged, expected = (events(d).Scalars("train/loss") for d in (run, tmp_path / "unbroken" / "run"))
    assert [e.step for e in logged] == [e.step for e in expected]
    assert [e.value for e in logged] == [e.value for e in expected]


def assert_same_run(run, reference) -> None:
    """Two runs ended with the same weights, optimizer state, step count, logs and final metrics."""
    resumed, unbroken = (load(d / "checkpoints" / "last.ckpt") for d in (run, reference))
    assert resumed["global_step"] == unbroken["global_step"]
    for key, value in unbroken["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    adam_resumed, adam_unbroken = (c["optimizer_states"][0]["state"][0] for c in (resumed, unbroken))
    assert all(torch.equal(adam_resumed[k], adam_unbroken[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    logs = [events(d) for d in (run, reference)]
    for tag in logs[1].Tags()["scalars"]:  # every epoch logged once, with the same values
        assert [(e.step, e.value) for e in logs[0].Scalars(tag)] == [
            (e.step, e.value) for e in logs[1].Scalars(tag)
        ], tag
    metrics = [json.loads((d / "metrics.json").read_text())["metrics"] for d in (run, reference)]
    assert metrics[0] == metrics[1]


# 32 minibatches an epoch (8 Lightning steps of 4 under stepping=fast), validation every second epoch.
STOPPABLE = (
    "data=regression",
    "data.preset=generated",
    "data.n=2000",
    "data.batch_size=50",
    "optimizer=adam",
    "trainer=cpu",
    "trainer.max_epochs=5",
    "trainer.check_val_every_n_epoch=2",
    "callbacks.last_checkpoint.every_s=0",
)
FAST_GROUPS = ("stepping=fast", "stepping.batches=4", *STOPPABLE)
FAST_EPOCHS = ("stepping=fast", "stepping.batches=64", *STOPPABLE)  # 2 epochs a Lightning step


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,name,hook,epoch,batch",
    [
        (STOPPABLE, "SIGTERM", "on_train_batch_end", 2, 10),  # inside an epoch
        (STOPPABLE, "SIGINT", "on_train_batch_start", 2, 0),  # as an epoch's first step starts
        (STOPPABLE, "SIGTERM", "on_train_batch_end", 1, 31),  # after an epoch's last step, before validation
        (STOPPABLE, "SIGINT", "on_validation_batch_end", 1, 3),  # inside a validation
        (STOPPABLE, "SIGTERM", "on_train_epoch_end", 2, 0),  # at an epoch's end
        (FAST_GROUPS, "SIGINT", "on_train_batch_end", 2, 3),  # inside an epoch, between two fast steps
        (FAST_GROUPS, "SIGTERM", "on_validation_batch_end", 1, 2),
        (FAST_EPOCHS, "SIGTERM", "on_train_batch_end", 1, 0),  # after a fast step of two whole epochs
    ],
    ids=[
        "mid-epoch",
        "epoch-start",
        "last-step",
        "validation",
        "epoch-end",
        "fast",
        "fast-val",
        "fast-epochs",
    ],
)
def test_a_run_stopped_by_sigterm_or_ctrl_c_resumes_as_an_unbroken_run(
    tmp_path, args, name, hook, epoch, batch
):
    """The signal lands where the test says (tests/signal_at.py), in this process (the handlers are the
    run's own while it trains; test_robustness.py signals a train.py process from outside); the stopped
    run says so and the resumed one ends as one never stopped: weights, Adam's moments, every logged
    value."""
    why = {"SIGTERM": "SIGTERM", "SIGINT": "Ctrl-C"}[name]
    with pytest.raises(SystemExit, match=f"^error: stopped by {why} after "):
        train(compose_train(tmp_path, *args, *signal_at(name, hook, epoch, batch)))
    run = tmp_path / "run"
    assert 0 < load(run / "checkpoints" / "last.ckpt")["global_step"] < 160
    # TensorBoard reads a run's event files in name order: <seconds>.<host>.<pid>.<counter>. A resume in
    # another process, seconds later, sorts after; in this one, within the same second, the counter
    # would decide, as text (10 before 9).
    time.sleep(1.0)
    train(compose_train(tmp_path / "elsewhere", f"resume={run}"))
    train(compose_train(tmp_path / "unbroken", *args))
    assert_same_run(run, tmp_path / "unbroken" / "run")


@pytest.mark.slow
@pytest.mark.parametrize("stepping", ["stepping=lightning", "stepping=fast"])
def test_a_finished_run_resumed_with_more_epochs_equals_a_longer_run(tmp_path, stepping):
    """Without a validation split a fast step holds 500 epochs: 200 end inside one, and 400 go on in it."""
    common = ("trainer=cpu", "optimizer=adam", "data.val_fraction=0", "optimized_metric=train/loss", stepping)
    train(compose_train(tmp_path, *common, "trainer.max_epochs=200"))
    run = tmp_path / "run"
    with ThreadPoolExecutor() as pool:  # the resumed run in its process, the unbroken one here, at once
        resumed = pool.submit(
            run_train, tmp_path, f"resume={run}", "trainer.max_epochs=400"
        )  # trainer.*: honoured
        train(compose_train(tmp_path / "unbroken", *common, "trainer.max_epochs=400"))
        resumed.result()
    resumed, reference = (load(d / "checkpoints" / "last.ckpt") for d in (run, tmp_path / "unbroken" / "run"))
    assert resumed["global_step"] == reference["global_step"] == 400
    for key, value in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


@pytest.mark.slow
def test_a_copied_and_a_moved_run_resume_into_themselves(tmp_path):
    common = ("trainer=cpu", "data.val_fraction=0", "optimized_metric=train/loss", "stepping=fast")
    train(compose_train(tmp_path, *common, "trainer.max_epochs=100"))
    original, copy, moved = tmp_path / "run", tmp_path / "copy", tmp_path / "moved"
    shutil.copytree(original, copy)
    original.rename(moved)
    with ThreadPoolExecutor() as pool:  # both at once
        done = [
            pool.submit(run_train, tmp_path, f"resume={d}", "trainer.max_epochs=200") for d in (copy, moved)
        ]
        [r.result() for r in done]
    assert not original.exists()  # nothing wrote into where the run used to be
    for run in (copy, moved):
        assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 200
        assert events(run).Scalars("train/loss")[-1].step == 199
        assert str(run) in OmegaConf.load(run / "config.yaml").callbacks.last_checkpoint.dirpath


def test_metric_states_come_back_with_their_update_count():
    """restore_metric_states sets torchmetrics' private _update_count: this fails first if an upgrade
    moves it (compute() would warn of a metric never updated, update_called would say False)."""

    def metrics() -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict(
            {"mean": EpochMean(), "r2": tm.R2Score(), "auroc": tm.classification.BinaryAUROC()}
        )

    module, fresh = metrics(), metrics()
    module["mean"].update(torch.tensor(2.0), 3)
    module["r2"].update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
    module["auroc"].update(torch.tensor([0.2, 0.9, 0.6]), torch.tensor([0, 1, 0]))  # list states
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore_metric_states(fresh, metric_states(module))
        for name, metric in module.items():
            assert fresh[name].update_count == 1 and fresh[name].update_called, name
            assert torch.equal(fresh[name].compute(), metric.compute()), name


def test_a_run_directory_is_written_by_one_process_at_a_time(tmp_path):
    # a lock per open file (flock): a second holder is refused, even in this process
    with hold(tmp_path), pytest.raises(ConfigError, match="is being written by another process"):
        hold(tmp_path)
    hold(tmp_path).close()  # free again once the first is done


@pytest.mark.slow
def test_a_resume_of_a_run_being_written_writes_nothing_into_it(tmp_path):
    train(compose_train(tmp_path, "trainer=cpu", "trainer.max_epochs=20"))
    run = tmp_path / "run"
    before = sorted(p.name for p in run.iterdir())
    with hold(run):  # another process writes the run (its train or resume)
        proc = run_train(tmp_path, f"resume={run}", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: {run} is being written by another process (a run or a resume of it): wait for that to end, "
        "or resume a copy of the run"
    ]
    assert sorted(p.name for p in run.iterdir()) == before  # no .hydra/, no train.log: refused before Hydra


@pytest.mark.slow
def test_a_signal_before_the_first_batch_or_as_the_run_finishes_is_one_line_and_a_recorded_status(tmp_path):
    """Where neither Lightning's nor SafeStop's handler listens (set-up, final validation, pictures,
    recording the end): before the first batch the run stops where it resumes; as it finishes it stays ok."""
    cases = {
        (name, hook): tmp_path / f"{name}-{hook}"
        for name in ("SIGTERM", "SIGINT")
        for hook in ("on_fit_start", "on_fit_end")
    }
    procs = {
        case: subprocess.Popen(
            train_command(
                root, "trainer.max_epochs=3", *signal_at(*case, epoch=3 if case[1] == "on_fit_end" else 0)
            ),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, root in cases.items()
    }
    for (name, hook), proc in procs.items():
        err = proc.communicate(timeout=120)[1].strip().splitlines()
        why = "SIGTERM" if name == "SIGTERM" else "Ctrl-C"
        run = run_dirs(cases[name, hook])[0]
        status = json.loads((run / "metrics.json").read_text())["status"]
        assert proc.returncode == 1 and err[-1].startswith(f"error: stopped by {why}"), (name, hook, err)
        assert not [line for line in err[:-1] if "INFO" not in line], err  # no traceback, no Lightning line
        if hook == "on_fit_end":
            assert status == "ok" and err[-1] == (
                f"error: stopped by {why} as the run finished; it trained its 3 epochs and is recorded ok in "
                f"{run / 'metrics.json'}"
            )
        else:
            assert status == "interrupted" and err[-1].endswith("last.ckpt holds where it stopped")


@pytest.mark.slow
def test_a_resumed_run_keeps_its_own_choices_in_its_first_line_and_hparams(tmp_path):
    """The resume command composes the defaults (data=temperature, model=linear) around the saved config:
    the run's names come from what Hydra recorded when it started."""
    run_train(tmp_path, "model=mlp", "data=regression", "optimizer=adam", "trainer.max_epochs=2")
    (run,) = run_dirs(tmp_path)
    proc = run_train(tmp_path, f"resume={run}", "trainer.max_epochs=4")
    first = next(line for line in proc.stdout.splitlines() if " inputs -> " in line)
    assert "model=mlp, optimizer=Adam" in first and "4 epochs" in first, first
    resumed = sorted(run.glob("events.out.tfevents.*"))[-1]  # the session the resume wrote (each process
    hparams, _ = hparams_session(events(resumed))  # writes one): before, data=temperature, model=linear
    assert (hparams["data"], hparams["model"], hparams["optimizer"], hparams["epochs"]) == (
        "regression",
        "mlp",
        "Adam",
        4,
    )


# root writes past permissions: as root, a command runs as nobody to meet them
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


@pytest.mark.slow
@pytest.mark.skipif(AS_NOBODY != [] and not shutil.which("setpriv"), reason="root, and no setpriv to drop it")
def test_a_resume_of_a_read_only_run_is_one_line_and_writes_nothing():
    """As a user who may not write the run."""
    with tempfile.TemporaryDirectory() as root:  # pytest's folders are root's alone
        root = Path(root)
        root.chmod(0o755)
        train(compose_train(root, "trainer=cpu", "trainer.max_epochs=5"))
        run = root / "run"
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        for p in (run, *run.rglob("*")):
            p.chmod(p.stat().st_mode & ~0o222)
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        proc = subprocess.run(
            [*AS_NOBODY, *train_command(root, f"resume={run}", "trainer.max_epochs=10")],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
            f"error: cannot write into {run} (Permission denied): a resume writes into its run; make it "
            "writable (chmod -R u+w), or copy it (cp -r) and resume the copy"
        ]
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
        for p in (run, *run.rglob("*")):
            p.chmod(p.stat().st_mode | 0o200)


@pytest.mark.slow
def test_resume_of_a_finished_run_reloads_its_config_and_changes_nothing(tmp_path):
    first = compose_train(tmp_path, "trainer=cpu", "trainer.max_epochs=150", "optimizer.lr=0.05")
    loss = train(first)
    run = tmp_path / "run"
    before = load(run / "checkpoints" / "last.ckpt")
    again = compose_train(tmp_path / "other", f"resume={run}")  # composed defaults: lr 0.01, 1000 epochs
    assert train(again) == pytest.approx(loss, rel=1e-6)
    after = load(run / "checkpoints" / "last.ckpt")
    assert after["global_step"] == before["global_step"] == 150
    assert torch.equal(after["state_dict"]["net.weight"], before["state_dict"]["net.weight"])
    assert OmegaConf.load(run / "config.yaml").optimizer.lr == 0.05


def test_saved_config_honours_trainer_overrides_and_refuses_the_rest(tmp_path):
    cfg = compose_train(tmp_path, "trainer=cpu", "trainer.max_epochs=77")
    OmegaConf.save(cfg, tmp_path / "config.yaml", resolve=False)
    saved = saved_config(
        tmp_path, cfg, ["trainer.max_epochs=77", "paths.root_dir=/x", "resume=r"], ("trainer.",)
    )
    assert saved.trainer.max_epochs == 77
    for override in ("data.val_fraction=0.5", "model=logistic", "+optimizer.foo=1", "trainer=gpu"):
        with pytest.raises(ConfigError, match="would change the run saved in"):
            saved_config(tmp_path, cfg, [override], ("trainer.",))


def test_locate_finds_the_checkpoint_and_config_of_a_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").touch()
    with pytest.raises(ConfigError, match="holds no config.yaml"):
        locate(tmp_path)
    (tmp_path / "config.yaml").touch()
    assert locate(tmp_path) == (tmp_path, tmp_path / "checkpoints" / "last.ckpt")
    assert locate(tmp_path / "checkpoints" / "last.ckpt")[0] == tmp_path
    with pytest.raises(ConfigError, match="best.ckpt does not exist"):
        locate(tmp_path / "checkpoints" / "best.ckpt")
    assert run_dir_of(str(tmp_path / "checkpoints" / "last.ckpt"), "new") == str(tmp_path)
    assert run_dir_of(None, "new") == "new"
    with pytest.raises(ConfigError, match="typo does not exist"):
        run_dir_of(str(tmp_path / "typo"), "new")
