"""Resuming: a run killed mid-way and resumed ends as an unbroken run does; the saved config wins."""

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from omegaconf import OmegaConf

from litlab.checkpoints import load, saved_config
from litlab.entry import hold, locate, run_dir_of
from litlab.errors import ConfigError
from litlab.train import train
from tests.conftest import ROOT, compose_train, run_dirs, run_train
from tests.test_train import events

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


@pytest.mark.slow
@pytest.mark.parametrize("stepping", ["stepping=lightning", "stepping=fast"])
def test_a_finished_run_resumed_with_more_epochs_equals_a_longer_run(tmp_path, stepping):
    """Without a validation split a fast step holds 250 epochs: 200 end inside one, and 400 go on from it."""
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
