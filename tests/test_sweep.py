"""Sweep summaries, their statistics, the Optuna search, the launchers and DDP inside a multirun."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from litlab.checks import check_multirun_strategy, several_ranks
from litlab.errors import ConfigError
from litlab.sweep import compare_settings, resume_study
from litlab.train import train
from scripts.compare import main as compare_main
from tests.conftest import compose_train, run_train

# Welch's t-test, Wikipedia's worked examples (t, Welch-Satterthwaite df, two-sided p as published).
# Example 2 is the one where Student's pooled test would call a difference (p=0.045) and Welch does not.
EXAMPLE_1 = (
    [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4],
    [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4],
    0.021,
)
EXAMPLE_2 = (
    [17.2, 20.9, 22.6, 18.1, 21.7, 21.4, 23.5, 24.2, 14.7, 21.8],
    [21.5, 22.8, 21.0, 23.0, 21.6, 23.6, 22.5, 20.7, 23.4, 21.8]
    + [20.7, 21.7, 21.5, 22.5, 23.6, 21.5, 22.5, 23.5, 21.5, 21.8],
    0.149,
)


def jobs_of(samples: dict[str, list[float]]) -> pd.DataFrame:
    """A jobs table as read_sweep builds it: one row per run, override column `optimizer`."""
    rows = [
        {"job": i, "optimizer": k, "final val/loss": v} for k, vs in samples.items() for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("example", [EXAMPLE_1, EXAMPLE_2])
def test_welch_test_gives_the_published_p_value(example):
    a, b, published_p = example
    table = compare_settings(jobs_of({"a": a, "b": b}), ["optimizer"], "val/loss", "min")
    assert table["setting"].tolist() == ["optimizer=a", "optimizer=b"]  # a has the lower mean
    p = table["p vs best"][1]
    assert round(p, 3) == published_p
    verdict = table["verdict"][1]
    expected = "optimizer=a beats optimizer=b" if published_p < 0.05 else "no significant difference"
    assert expected in verdict and f"p={p:.3g}" in verdict


def test_settings_rank_by_mode_and_count_failures():
    jobs = jobs_of({"sgd": [1.0, 2.0, 3.0], "adam": [4.0, 6.0, math.nan]})
    low = compare_settings(jobs, ["optimizer"], "val/loss", "min")
    assert low[["setting", "n", "mean", "std", "no value"]].values.tolist() == [
        ["optimizer=sgd", 3, 2.0, 1.0, 0],
        ["optimizer=adam", 2, 5.0, math.sqrt(2.0), 1],  # the nan run counts as not ok, not as a value
    ]
    high = compare_settings(jobs, ["optimizer"], "val/loss", "max")
    assert high["setting"][0] == "optimizer=adam"
    pooled = compare_settings(jobs, [], "val/loss", "min")
    assert pooled["setting"].tolist() == ["all jobs"] and pooled["n"][0] == 5


def test_resume_continues_a_killed_study_to_n_trials_in_all(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage)
    trials = [study.ask() for _ in range(3)]
    study.tell(trials[0], 1.0)
    study.tell(trials[1], state=optuna.trial.TrialState.FAIL)  # trial 2 stays running: the kill
    sweeper = SimpleNamespace(storage=storage, study_name="s", n_trials=5, job_idx=0)
    resume_study(sweeper)
    assert (sweeper.n_trials, sweeper.job_idx) == (3, 3)  # 2 finished of 5; jobs go on from number 3
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == ["COMPLETE", "FAIL", "FAIL"]


def test_devices_auto_counts_every_gpu(monkeypatch):
    from lightning.pytorch.accelerators import CUDAAccelerator

    def trainer(accelerator: str, devices: object = "auto"):
        return OmegaConf.create({"accelerator": accelerator, "devices": devices})

    assert not several_ranks(trainer("auto")) and not several_ranks(trainer("cpu", 1))
    assert several_ranks(trainer("cpu", 2)) and several_ranks(trainer("gpu", "0,1"))
    assert not several_ranks(trainer("gpu", [1])) and not several_ranks(trainer("gpu", "1,"))
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr(CUDAAccelerator, "auto_device_count", staticmethod(lambda: 4))
    assert several_ranks(trainer("auto")) and several_ranks(trainer("gpu", -1))  # Lightning takes all 4
    assert not several_ranks(trainer("cpu"))


def test_only_a_relaunching_strategy_is_refused_under_multirun():
    def hydra(mode: RunMode, launcher: str = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"):
        return OmegaConf.create({"mode": mode, "launcher": {"_target_": launcher}})

    def trainer(**kw):
        return OmegaConf.create({"devices": 2, **kw})

    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    for ok in [
        (trainer(devices=1), hydra(RunMode.MULTIRUN, joblib)),
        (trainer(strategy="ddp_spawn"), hydra(RunMode.MULTIRUN)),
        (trainer(strategy="ddp"), hydra(RunMode.RUN)),
        (trainer(strategy="ddp"), hydra(RunMode.MULTIRUN, slurm)),
        (trainer(devices=1), hydra(RunMode.MULTIRUN)),
    ]:
        check_multirun_strategy(*ok)
    for bad in [trainer(strategy="ddp"), trainer(), trainer(strategy="fsdp")]:
        with pytest.raises(ConfigError, match="re-run the sweep: use trainer=ddp"):
            check_multirun_strategy(bad, hydra(RunMode.MULTIRUN))
    with pytest.raises(ConfigError, match="add hydra/launcher=basic"):  # loky workers cannot spawn ranks
        check_multirun_strategy(trainer(strategy="ddp_spawn"), hydra(RunMode.MULTIRUN, joblib))


def sweep(root: Path, *args: str) -> Path:
    """Run `python train.py -m args` with the sweep in root/sweep; return that directory."""
    run_train(root, "hydra.mode=MULTIRUN", f"hydra.sweep.dir={root}/sweep", *args)
    return root / "sweep"


def events_best(run_dir: Path, tag: str) -> float:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return min(e.value for e in events.Scalars(tag))


@pytest.mark.slow
def test_grid_sweep_in_parallel_summary_matches_the_jobs(tmp_path, capsys):
    sweep_dir = sweep(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optimizer=sgd,adam",
        "optimizer.lr=0.05",
        "seed=0,1",
        "trainer.max_epochs=100",
        "trainer.check_val_every_n_epoch=10",
    )
    jobs = pd.read_csv(sweep_dir / "jobs.csv")
    assert len(jobs) == 4 and set(jobs["status"]) == {"ok"}
    for _, row in jobs.iterrows():
        run_dir = sweep_dir / row["dir"]
        result = json.loads((run_dir / "metrics.json").read_text())
        assert row["final val/loss"] == pytest.approx(result["metrics"]["val/loss"], rel=1e-12)
        assert row["best val/loss"] == pytest.approx(events_best(run_dir, "val/loss"), rel=1e-6)
        assert row["best val/loss"] <= row["final val/loss"]

    settings = pd.read_csv(sweep_dir / "settings.csv")
    assert sorted(settings["setting"]) == ["optimizer=adam", "optimizer=sgd"]  # seed pooled, lr constant
    values = {
        s: jobs.loc[jobs["optimizer"] == s.split("=")[1], "final val/loss"].tolist()
        for s in settings["setting"]
    }
    for row in settings.itertuples():
        assert row.n == 2 and row.mean == pytest.approx(sum(values[row.setting]) / 2)
    best, other = settings["setting"]
    assert settings["mean"][0] <= settings["mean"][1]
    welch = stats.ttest_ind(values[best], values[other], equal_var=False).pvalue
    assert settings["p vs best"][1] == pytest.approx(welch)
    assert (sweep_dir / "summary.md").read_text().count("\n| ") >= 4 + 2

    compare_main([str(sweep_dir), "--by", "seed"])  # any past sweep, grouped by another key
    by_seed = capsys.readouterr().out.split("## Settings")[1]
    assert "| seed=0 |" in by_seed and "| seed=1 |" in by_seed and "optimizer=" not in by_seed


@pytest.mark.slow
def test_failed_and_diverged_jobs_under_submitit_still_get_a_summary(tmp_path):
    # book_divergence: SGD lr 1e-2 on the raw input blows up; lr=-1 fails validation; 1e-4 trains.
    sweep_dir = sweep(
        tmp_path,
        "hydra/launcher=submitit_local",
        "experiment=book_divergence",
        "optimizer.lr=1e-4,1e-2,-1",
    )
    # Hydra writes the swept values normalised: 1e-4 becomes 0.0001.
    jobs = pd.read_csv(sweep_dir / "jobs.csv", dtype={"optimizer.lr": str}).set_index("optimizer.lr")
    assert jobs.loc["-1", "status"] == "failed" and "optimizer.lr=-1 must be > 0" in jobs.loc["-1", "error"]
    assert not math.isfinite(jobs.loc["0.01", "final train/loss"])
    assert math.isfinite(jobs.loc["0.0001", "final train/loss"]) and jobs.loc["0.0001", "status"] == "ok"
    settings = pd.read_csv(sweep_dir / "settings.csv")
    assert settings["setting"].tolist()[0] == "optimizer.lr=0.0001"
    assert settings.set_index("setting")["no value"].to_dict() == {
        "optimizer.lr=0.0001": 0,
        "optimizer.lr=0.01": 1,
        "optimizer.lr=-1": 1,
    }
    assert "optimizer.lr=-1" in (sweep_dir / "summary.md").read_text()


@pytest.mark.slow
def test_optuna_search_survives_failures_and_resumes_to_n_trials(tmp_path):
    common = ("hparams_search=optimizers", "trainer.max_epochs=50")
    # First run: every trial fails (lr=-1 is fixed over the searched lr); the stock sweeper aborted here.
    sweep_dir = sweep(tmp_path, *common, "hydra.sweeper.n_trials=2", "optimizer.lr=-1")
    assert pd.read_csv(sweep_dir / "jobs.csv")["status"].tolist() == ["failed", "failed"]
    sweep(tmp_path, *common, "hydra.sweeper.n_trials=3")  # the same directory: continue to 3 in all
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "COMPLETE"]
    jobs = pd.read_csv(sweep_dir / "jobs.csv")
    assert jobs["job"].tolist() == [0, 1, 2] and jobs["status"].tolist() == ["failed", "failed", "ok"]
    assert jobs["final val/loss"][2] == pytest.approx(study.trials[2].value)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_per_job(tmp_path):
    # 1000 generated rows: 800 train rows split 400 + 400, so both ranks' shards are equal.
    data = ("data=regression", "data.preset=generated", "trainer.max_epochs=40")
    two_ranks = ("trainer=ddp", "trainer.accelerator=cpu")
    sweep_dir = sweep(tmp_path, *two_ranks, "hydra/launcher=basic", *data, "optimizer.lr=0.01,0.1")
    single = {}
    for lr in ("0.01", "0.1"):
        train(compose_train(tmp_path / lr, "trainer=cpu", *data, f"optimizer.lr={lr}"))
        single[lr] = json.loads((tmp_path / lr / "run" / "metrics.json").read_text())["metrics"]
    jobs = pd.read_csv(sweep_dir / "jobs.csv", dtype={"optimizer.lr": str})
    assert jobs["status"].tolist() == ["ok", "ok"]
    for _, job in jobs.iterrows():
        ddp = json.loads((sweep_dir / job["dir"] / "metrics.json").read_text())["metrics"]
        one = single[job["optimizer.lr"]]
        for name in ("train/loss", "val/loss", "val/r2"):
            assert ddp[name] == pytest.approx(one[name], rel=1e-5), name  # each rank ran its job's lr


@pytest.mark.slow
def test_ddp_sweeps_that_cannot_start_their_ranks_are_refused(tmp_path):
    two_ranks = ("trainer=ddp", "trainer.accelerator=cpu")
    refused = run_train(tmp_path, "hydra.mode=MULTIRUN", *two_ranks, check=False)  # the parallel launcher
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: trainer.devices=2 needs a process per device, which the parallel sweep's workers cannot "
        "start: add hydra/launcher=basic (one job at a time), or hydra/launcher=slurm"
    )
    refused = run_train(tmp_path, "hydra.mode=MULTIRUN", "trainer=ddp", "trainer.strategy=ddp", check=False)
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith("error: trainer.strategy=ddp with trainer.devices=2")
    )
