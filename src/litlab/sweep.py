"""Sweep summaries: one row per job, settings grouped over seeds and ranked, Welch t-tests against the best.

The Hydra callback `SweepSummary` writes them when a multirun ends; scripts/compare.py prints them for any
past sweep. pandas and scipy are imported inside the functions that use them: Hydra instantiates the
callback in every single run too, and those imports cost about a second."""

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from litlab.checks import check_multirun_strategy
from litlab.errors import ConfigError

log = logging.getLogger(__name__)

ALPHA = 0.05  # significance level of the verdicts
STAGES = ("train", "val", "test")
LOWER_IS_BETTER = (
    "loss",
    "mse",
    "mae",
    "gap",
    "bits",
    "perplexity",
)  # metric names ending so; every other metric is better higher


def write_result(out_dir: Path, status: str, metrics: dict, started: float, error: str = "") -> None:
    """metrics.json in the run directory: how the run ended (ok, diverged, failed) and its final metrics.

    Sweep summaries read these; a failed job writes one too, with the first line of its error."""
    result = {"status": status, "metrics": metrics, "duration_s": round(time.time() - started, 3)}
    if error:
        result["error"] = error.splitlines()[0] if error.strip() else error
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))


def swept_keys() -> list[str]:
    """The keys this run's command varies: in a multirun, those its command line sweeps (a,b  range()
    choice() interval()) and the sweeper's params (an Optuna search space); in a single run, those typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return [parse_override(o)[0] for o in hydra.overrides.task]
    saved = Path(hydra.sweep.dir, "multirun.yaml")  # the sweep's own config: its command line, unsplit
    typed = list(OmegaConf.load(saved).hydra.overrides.task) if saved.is_file() else []
    params = [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*typed, *params])
    return list(
        dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override() and not o.is_hydra_override())
    )


def mode_of(metric: str, optimized_metric: str, optimized_mode: str) -> str:
    """min or max: which end of a metric is best."""
    if metric == optimized_metric:
        return optimized_mode
    return "min" if metric.endswith(LOWER_IS_BETTER) else "max"


def parse_override(override: str) -> tuple[str, str]:
    """("optimizer.lr", "0.1") from "optimizer.lr=0.1" (also "+key=value", "++key=value")."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def best_from_events(run_dir: Path, optimized_metric: str, optimized_mode: str) -> dict[str, float]:
    """Best logged value of every scalar in the run's TensorBoard events; non-finite values never win."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every event file it opens
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    best = {}
    for tag in events.Tags()["scalars"]:
        values = [e.value for e in events.Scalars(tag) if math.isfinite(e.value)]
        if values and tag.split("/")[0] in STAGES:  # not epoch, lr-*, or the final/* HParams copies
            pick = min if mode_of(tag, optimized_metric, optimized_mode) == "min" else max
            best[tag] = pick(values)
    return best


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories (those Hydra wrote overrides into), in job-number order."""
    dirs = [p.parents[1] for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(dirs, key=lambda d: (job_number(d), d.name))


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The job's command-line overrides as {key: value}."""
    return dict(parse_override(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))


def read_job(run_dir: Path, optimized_metric: str, optimized_mode: str) -> dict[str, Any]:
    """One job as a flat row: status, duration, error, final and best metrics (overrides apart)."""
    result_file = run_dir / "metrics.json"
    # A job killed before it ended (or still running) has no metrics.json.
    result = json.loads(result_file.read_text()) if result_file.exists() else {"status": "no result"}
    row = {"status": result["status"], "duration_s": result.get("duration_s", math.nan)}
    row["error"] = result.get("error", "")
    for name, value in result.get("metrics", {}).items():
        if not name.startswith("lr-"):
            row[f"final {name}"] = value
    has_events = any(run_dir.glob("events.out.tfevents.*"))
    best = best_from_events(run_dir, optimized_metric, optimized_mode) if has_events else {}
    row.update({f"best {name}": value for name, value in best.items()})
    return row


def read_sweep(sweep_dir: Path, optimized_metric: str, optimized_mode: str):
    """All jobs of a sweep as a DataFrame (job number, directory, one column per override key, then
    the results), and the override keys that vary between jobs."""
    import pandas as pd

    dirs = job_dirs(sweep_dir)
    overrides = pd.DataFrame([read_overrides(d) for d in dirs])
    results = pd.DataFrame([read_job(d, optimized_metric, optimized_mode) for d in dirs])
    jobs = pd.concat(
        [
            pd.DataFrame({"job": [job_number(d) for d in dirs], "dir": [d.name for d in dirs]}),
            overrides,
            results,
        ],
        axis=1,
    )
    varying = [k for k in overrides.columns if overrides[k].nunique(dropna=False) > 1]
    return jobs, varying


def job_number(run_dir: Path) -> int:
    """Hydra's job number, the prefix of the directory name (-1 where there is none)."""
    prefix = run_dir.name.split("_")[0]
    return int(prefix) if prefix.isdigit() else -1


def welch(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test; nan where it cannot be computed."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def verdict(best: str, other: str, p: float, n: tuple[int, int]) -> str:
    """A plain sentence for the best setting against another one."""
    if min(n) < 2:
        return f"too few runs to test {best} against {other} (n={n[0]} vs {n[1]}): add seeds"
    if math.isnan(p):
        return f"{best} and {other} gave identical values in every run: nothing to test"
    if p < ALPHA:
        return f"{best} beats {other}, p={p:.3g}"
    return f"{best} vs {other}: no significant difference, p={p:.3g}"


def setting_labels(jobs, keys: list[str]):
    """Each job's setting as "key=value ..." over the given override keys."""
    if not keys:
        return jobs["job"].map(lambda _: "all jobs")
    # A key set in some jobs only (momentum, where the optimizer has one) is left out of the others.
    return jobs[keys].apply(
        lambda r: " ".join(f"{k}={v}" for k, v in r.items() if isinstance(v, str)), axis=1
    )


def compare_settings(jobs, by: list[str], optimized_metric: str, optimized_mode: str):
    """Settings (jobs grouped by the `by` keys, pooling seeds) ranked by the mean final metric, each
    with a Welch t-test against the best. Only finite final values count; `no value` counts the
    others (failed, diverged, killed)."""
    import pandas as pd

    column = f"final {optimized_metric}"
    values = (
        pd.to_numeric(jobs[column], errors="coerce")
        if column in jobs
        else jobs["job"].map(lambda _: math.nan)
    )
    labels = setting_labels(jobs, by)
    samples = {s: [v for v in values[labels == s] if math.isfinite(v)] for s in dict.fromkeys(labels)}
    table = pd.DataFrame(
        {
            "setting": list(samples),
            "n": [len(v) for v in samples.values()],
            "mean": [_mean(v) for v in samples.values()],
            "std": [_std(v) for v in samples.values()],
            "no value": [int((labels == s).sum()) - len(v) for s, v in samples.items()],
        }
    )
    # Settings without a single finite result rank last.
    table = table.sort_values(
        ["n", "mean"], key=lambda c: c > 0 if c.name == "n" else c, ascending=[False, optimized_mode == "min"]
    )
    table.insert(0, "rank", range(1, len(table) + 1))
    best = table["setting"].iloc[0]
    table["p vs best"] = [
        welch(samples[best], samples[s]) if s != best else math.nan for s in table["setting"]
    ]
    table["verdict"] = [
        verdict(best, s, p, (len(samples[best]), len(samples[s]))) if s != best else "best"
        for s, p in zip(table["setting"], table["p vs best"], strict=True)
    ]
    return table.reset_index(drop=True)


def _mean(s: list[float]) -> float:
    return sum(s) / len(s) if s else math.nan


def _std(s: list[float]) -> float:
    """Sample standard deviation (n - 1), nan for fewer than two values."""
    if len(s) < 2:
        return math.nan
    m = _mean(s)
    return math.sqrt(sum((v - m) ** 2 for v in s) / (len(s) - 1))


def summarise(sweep_dir: Path, optimized_metric: str, optimized_mode: str, by: list[str] | None = None):
    """(jobs table, settings table, Markdown text) of a sweep; `by` defaults to every varying override
    except seed."""
    jobs, varying = read_sweep(sweep_dir, optimized_metric, optimized_mode)
    if jobs.empty:
        return jobs, None, f"# Sweep {sweep_dir}\n\nNo jobs found.\n"
    by = [k for k in varying if k != "seed"] if by is None else by
    unknown = [k for k in by if k not in jobs]
    if unknown:
        raise ConfigError(
            f"--by {' '.join(unknown)}: not an override of this sweep; its keys: {' '.join(varying)}"
        )
    settings = compare_settings(jobs, by, optimized_metric, optimized_mode)
    return jobs, settings, markdown(sweep_dir, jobs, varying, settings, optimized_metric, optimized_mode)


def markdown_table(table) -> str:
    """A DataFrame as a GitHub Markdown table (numbers to 6 significant digits)."""

    def cell(v: Any) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def markdown(sweep_dir: Path, jobs, varying: list[str], settings, metric: str, mode: str) -> str:
    """The summary for reading: jobs, then ranked settings with their verdicts."""
    shown = ["job", "overrides", "status", f"final {metric}", f"best {metric}", "duration_s", "error"]
    view = jobs.assign(overrides=setting_labels(jobs, varying))
    counts = ", ".join(f"{n} {s}" for s, n in jobs["status"].value_counts().items())
    return (
        f"# Sweep {sweep_dir}\n\n{len(jobs)} jobs ({counts}); metric {metric} ({mode}).\n\n## Jobs\n\n"
        f"{markdown_table(view[[c for c in shown if c in view]])}\n\n"
        f"## Settings over seeds, best first (Welch t-test vs the best, alpha {ALPHA}, uncorrected)\n\n"
        f"{markdown_table(settings)}\n"
    )


def write_summary(
    sweep_dir: Path, optimized_metric: str, optimized_mode: str, by: list[str] | None = None
) -> str:
    """jobs.csv, settings.csv and summary.md in the sweep directory; returns the Markdown."""
    jobs, settings, text = summarise(sweep_dir, optimized_metric, optimized_mode, by)
    if settings is not None:
        jobs.to_csv(sweep_dir / "jobs.csv", index=False)
        settings.to_csv(sweep_dir / "settings.csv", index=False)
    (sweep_dir / "summary.md").write_text(text)
    return text


class SweepSummary(Callback):
    """Hydra callback: refuses a DDP strategy that breaks a multirun, and summarises the sweep at its end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_multirun_strategy(config.trainer, config.hydra)
        except ConfigError as e:
            sys.exit(f"error: {e}")
        # Optuna's sqlite storage lives here and is opened before the launcher creates the folder.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        text = write_summary(sweep_dir, config.optimized_metric, config.optimized_mode)
        print(text, flush=True)
        log.info(f"summary: {sweep_dir / 'summary.md'} (jobs.csv, settings.csv)")


def resume_study(sweeper: Any) -> None:
    """Make an OptunaSweeperImpl continue its stored study: n_trials counts the trials already finished,
    jobs are numbered after them, and trials left running by a killed run are marked failed."""
    import optuna

    if sweeper.storage is None or sweeper.study_name is None:
        return
    try:
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    except KeyError:  # no such study yet: a fresh search
        return
    trials = study.get_trials(deepcopy=False)
    stale = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for number in stale:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    finished = len(trials) - len(stale)
    log.info(f"study {sweeper.study_name}: {finished} trials done, {len(stale)} interrupted; going on")
    sweeper.n_trials = max(0, sweeper.n_trials - finished)
    sweeper.job_idx = len(trials)


def optimizer_knobs(config: DictConfig, trial: Any) -> None:
    """Optuna custom search space: the knobs of the optimizer this trial chose (momentum exists for
    sgd and rmsprop, not adam, so it cannot be a plain sweeper param)."""
    if trial.params.get("optimizer") in ("sgd", "rmsprop"):
        trial.suggest_float("optimizer.momentum", 0.0, 0.95)
    if trial.params.get("optimizer") == "rmsprop":
        trial.suggest_float("optimizer.alpha", 0.9, 0.999)
