"""Sweep summaries, their statistics, the Optuna search, the launchers and DDP inside a multirun."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from litlab.checks import check_multirun_strategy, several_ranks
from litlab.errors import ConfigError
from litlab.sweep import compare_settings, holm
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
    assert table["test"][1] == "Welch t"  # no seeds to pair by
    p = table["p"][1]
    assert round(p, 3) == published_p and table["p (Holm)"][1] == p  # one comparison: nothing to adjust
    verdict = table["verdict"][1]
    expected = "optimizer=a beats optimizer=b" if published_p < 0.05 else "no significant difference"
    assert expected in verdict and f"p={p:.3g}" in verdict


# Student's sleep data (Cushny and Peebles 1905): extra hours of sleep of the same 10 patients under two
# drugs. R's t.test(extra ~ group, data = sleep, paired = TRUE): t = -4.0621, df = 9, p-value = 0.002833;
# unpaired (Welch): p-value = 0.07939. The patients are the seeds: pairing finds what Welch drowns.
SLEEP = (
    [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0],
    [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4],
)


def seeded_jobs(samples: dict[str, list[float]], status: str = "ok") -> pd.DataFrame:
    """A jobs table of settings run with the same seeds 0, 1, ... (column `seed`, as Hydra writes it)."""
    rows = [
        {"job": i, "optimizer": k, "seed": str(j), "status": status, "final val/loss": v}
        for i, (k, j, v) in enumerate((k, j, v) for k, vs in samples.items() for j, v in enumerate(vs))
    ]
    return pd.DataFrame(rows)


def test_settings_run_with_the_same_seeds_get_a_paired_test():
    drug_1, drug_2 = SLEEP
    table = compare_settings(seeded_jobs({"d2": drug_2, "d1": drug_1}), ["optimizer"], "val/loss", "max")
    assert table["setting"].tolist() == ["optimizer=d2", "optimizer=d1"]
    assert table["test"][1] == "paired t, 10 seeds"
    assert table["p"][1] == pytest.approx(stats.ttest_rel(drug_1, drug_2).pvalue, rel=1e-12)
    assert round(table["p"][1], 6) == 0.002833  # R's published value
    assert table["diff"][1] == pytest.approx(-1.58)
    differences = [b - a for a, b in zip(drug_2, drug_1, strict=True)]
    assert table["effect size"][1] == pytest.approx(-1.58 / stats.tstd(differences))  # Cohen's d_z
    assert "optimizer=d2 beats optimizer=d1" in table["verdict"][1]
    shuffled = seeded_jobs({"d2": drug_2, "d1": drug_1[1:] + drug_1[:1]})  # the seeds no longer match up
    shuffled.loc[shuffled["optimizer"] == "d1", "seed"] = [str(i) for i in range(10, 20)]
    unpaired = compare_settings(shuffled, ["optimizer"], "val/loss", "max")
    assert unpaired["test"][1] == "Welch t" and round(unpaired["p"][1], 5) == 0.07939


def test_holm_adjusts_as_the_worked_example():
    # Wikipedia, Holm-Bonferroni method: p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05 rejects H1 and H4 only.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p < 0.05 for p in adjusted] == [True, False, False, True]
    assert math.isnan(holm([0.2, math.nan])[1]) and holm([0.2, math.nan])[0] == 0.2
    # in a table: the best against three others, each p adjusted over the three
    base = [1.0, 1.1, 0.9, 1.05, 0.95]
    jobs = seeded_jobs(
        {
            "a": base,
            "b": [v + 0.5 + 0.05 * i for i, v in enumerate(base)],
            "c": [v + 0.02 * (i % 2) + 0.4 for i, v in enumerate(base)],
            "d": [v + 0.3 + 0.1 * (-1) ** i for i, v in enumerate(base)],
        }
    )
    table = compare_settings(jobs, ["optimizer"], "val/loss", "min")
    assert table["p (Holm)"][1:].tolist() == pytest.approx(holm(table["p"][1:].tolist()))
    assert (table["p (Holm)"][1:] >= table["p"][1:]).all()


def test_a_difference_below_min_effect_is_no_practical_difference_whatever_p_says():
    # sgd vs adam on the book fit: the same loss up to 1e-7 in every seed, a tiny p all the same
    sgd = [2.927647 + 1e-9 * i for i in range(5)]
    adam = [v + 1e-7 + 1e-9 * (i % 2) for i, v in enumerate(sgd)]
    table = compare_settings(seeded_jobs({"sgd": sgd, "adam": adam}), ["optimizer"], "val/loss", "min")
    assert table["p"][1] < 1e-3
    assert table["verdict"][1].startswith("no practical difference")
    strict = compare_settings(seeded_jobs({"sgd": sgd, "adam": adam}), ["optimizer"], "val/loss", "min", 0.0)
    assert "beats" in strict["verdict"][1]


def test_a_setting_without_a_finite_ok_value_is_never_ranked():
    jobs = pd.concat(
        [
            seeded_jobs({"diverged": [math.nan, math.inf]}, "diverged"),
            seeded_jobs({"pruned": [0.1, 0.2]}, "pruned"),
            seeded_jobs({"ok": [3.0, 4.0]}),
        ]
    )
    table = compare_settings(jobs.reset_index(drop=True), ["optimizer"], "val/loss", "min")
    assert table["setting"][0] == "optimizer=ok" and table["rank"][0] == 1  # pruned values are not final
    assert table["rank"][1:].isna().all() and table["left out"].tolist() == [0, 2, 2]
    assert all(v.startswith("not ranked") for v in table["verdict"][1:])
    nothing = compare_settings(seeded_jobs({"x": [math.nan]}, "diverged"), ["optimizer"], "val/loss", "min")
    assert nothing["rank"].isna().all() and nothing["verdict"][0].startswith("not ranked")


def test_settings_rank_by_mode_and_count_failures():
    jobs = jobs_of({"sgd": [1.0, 2.0, 3.0], "adam": [4.0, 6.0, math.nan]})
    low = compare_settings(jobs, ["optimizer"], "val/loss", "min")
    assert low[["setting", "n", "mean", "std", "left out"]].values.tolist() == [
        ["optimizer=sgd", 3, 2.0, 1.0, 0],
        ["optimizer=adam", 2, 5.0, math.sqrt(2.0), 1],  # the nan run counts as not ok, not as a value
    ]
    high = compare_settings(jobs, ["optimizer"], "val/loss", "max")
    assert high["setting"][0] == "optimizer=adam"
    pooled = compare_settings(jobs, [], "val/loss", "min")
    assert pooled["setting"].tolist() == ["all jobs"] and pooled["n"][0] == 5


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
    paired = stats.ttest_rel(values[other], values[best]).pvalue  # seeds 0 and 1 on both sides
    assert settings["test"][1] == "paired t, 2 seeds" and settings["p"][1] == pytest.approx(paired)
    assert (sweep_dir / "summary.md").read_text().count("\n| ") >= 4 + 2

    with pytest.raises(SystemExit) as refused:  # pooling the optimizers as if they were seeds
        compare_main([str(sweep_dir), "--by", "seed"])
    assert "would pool runs that differ in optimizer as if they were seeds" in str(refused.value)
    compare_main([str(sweep_dir), "--by", "seed", "optimizer"])  # any past sweep, grouped by other keys
    by_seed = capsys.readouterr().out.split("## Settings")[1]
    assert "| seed=0 optimizer=adam |" in by_seed and "| seed=1 optimizer=sgd |" in by_seed


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
    assert settings.set_index("setting")["left out"].to_dict() == {
        "optimizer.lr=0.0001": 0,
        "optimizer.lr=0.01": 1,
        "optimizer.lr=-1": 1,
    }
    assert "optimizer.lr=-1" in (sweep_dir / "summary.md").read_text()


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


@pytest.mark.slow
def test_a_diverged_experiment_is_not_ranked_best(tmp_path):
    # Each experiment optimises train/loss, which the sweep's own config (val/loss) does not know.
    sweep_dir = sweep(
        tmp_path,
        "hydra/launcher=basic",
        "experiment=book_divergence,book_temperature",
        "trainer.max_epochs=300",
    )
    settings = pd.read_csv(sweep_dir / "settings.csv").set_index("setting")
    assert settings.loc["experiment=book_temperature", "rank"] == 1
    assert math.isnan(settings.loc["experiment=book_divergence", "rank"])
    assert settings.loc["experiment=book_divergence", "verdict"].startswith("not ranked")
    assert "metric train/loss (min)" in (sweep_dir / "summary.md").read_text()


@pytest.mark.slow
def test_a_swept_path_makes_one_directory_per_job(tmp_path):
    """data.path=/abs/table.csv in a job's overrides: one directory named with %2F, not one per part."""
    table = tmp_path / "lin.csv"
    table.write_text("x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(30)))
    args = ("-m", "hydra/launcher=basic", "data=table", f"data.path={table}", "data.target=y")
    run_train(tmp_path, *args, "optimizer.lr=0.001,0.002", "trainer.max_epochs=2")
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [j.split(",")[0] for j in jobs] == [
        f"{n}_data.path={str(table).replace('/', '%2F')}" for n in (0, 1)
    ]
    assert all((sweep / j / "metrics.json").is_file() for j in jobs)
    resumed = run_train(tmp_path, f"resume={sweep / jobs[0]}", "trainer.max_epochs=3")  # the path ls shows
    assert f"resuming {sweep / jobs[0]}" in resumed.stdout and ", 3 epochs, " in resumed.stdout
