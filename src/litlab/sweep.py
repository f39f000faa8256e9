"""Sweep summaries: one row per job, settings grouped over seeds and ranked, each tested against the best
(paired over seeds where it can, Holm-adjusted, with a practical threshold).

The Hydra callback `SweepSummary` writes them when a multirun ends; scripts/compare.py prints them for any
past sweep. pandas and scipy are imported inside the functions that use them: Hydra instantiates the
callback in every single run too, and those imports cost about a second."""

import json
import logging
import math
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from litlab.checks import check_multirun_strategy
from litlab.entry import as_typed, stop_workers, viewers
from litlab.errors import ConfigError

log = logging.getLogger(__name__)

ALPHA = 0.05  # significance level of the verdicts (on Holm-adjusted p-values)
# sweep.min_effect's default: a relative difference of the means below which a verdict says "no practical
# difference", whatever p says (1e-7 on the book's loss of 2.93 is not a difference between optimizers)
MIN_EFFECT = 0.01
STAGES = ("train", "val", "test")
LOWER_IS_BETTER = (
    "loss",
    "mse",
    "mae",
    "gap",
    "bits",
    "perplexity",
)  # metric names ending so; every other metric is better higher


def write_result(
    out_dir: Path, status: str, metrics: dict, started: float, error: str = "", labels: dict | None = None
) -> None:
    """metrics.json in the run directory: how the run ended (ok, diverged, failed), its final metrics, and
    labels (the run's name and tags) where it has them.

    Sweep summaries read these; a failed job writes one too, with the first line of its error."""
    result = {"status": status, "metrics": metrics, "duration_s": round(time.time() - started, 3)}
    result |= {k: v for k, v in (labels or {}).items() if v}
    if error:
        result["error"] = error.splitlines()[0] if error.strip() else error
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))


def recorded_metrics(out_dir: Path) -> dict[str, float]:
    """The final metrics a run's metrics.json holds; none where there is no readable one."""
    try:
        metrics = json.loads((out_dir / "metrics.json").read_text()).get("metrics", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


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


def jobs_metric(sweep_dir: Path, metric: str, mode: str) -> tuple[str, str]:
    """(optimized_metric, optimized_mode) that the sweep's jobs optimised, where they all agree (a swept
    experiment= sets its own, which the sweep's config does not know); else the given ones."""
    chosen = set()
    for job in job_dirs(sweep_dir):
        saved = job / ".hydra" / "config.yaml"
        if saved.is_file():
            cfg = OmegaConf.load(saved)
            chosen.add((cfg.get("optimized_metric", metric), cfg.get("optimized_mode", mode)))
    return chosen.pop() if len(chosen) == 1 else (metric, mode)


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
    if "name" in result or "tags" in result:
        row |= {"name": result.get("name", ""), "tags": ",".join(result.get("tags", []))}
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
    results = results.drop(columns=[c for c in ("name", "tags") if c in overrides and c in results])
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


def paired(a: dict, b: dict) -> tuple[list[float], list[float]]:
    """The values of two settings at the seeds both ran ({seed: value} each), in seed order."""
    common = sorted(set(a) & set(b), key=str)
    return [a[k] for k in common], [b[k] for k in common]


def test_pair(best: dict, other: dict, by_seed: bool) -> dict:
    """Best against another setting ({seed or run: value} each): a paired t-test on the per-seed differences
    where both ran the same seeds (at least two), else Welch's unequal-variance t-test; the mean difference
    (other - best), relative to the best's mean, and the effect size (Cohen's d_z of the differences,
    paired; Cohen's d on the mean variance, Welch)."""
    import numpy as np
    from scipy import stats

    a, b = paired(best, other) if by_seed else ([], [])
    if len(a) >= 2:
        diffs = np.subtract(b, a)
        test, n = f"paired t, {len(a)} seeds", (len(a), len(b))
        p = stats.ttest_rel(b, a).pvalue if diffs.std() > 0 else math.nan
        diff, spread = float(diffs.mean()), float(diffs.std(ddof=1))
    else:
        a, b = list(best.values()), list(other.values())
        test, n = "Welch t", (len(a), len(b))
        enough = len(a) >= 2 and len(b) >= 2
        p = stats.ttest_ind(b, a, equal_var=False).pvalue if enough and (np.std(a) or np.std(b)) else math.nan
        diff = _mean(b) - _mean(a) if a and b else math.nan
        spread = math.sqrt((_std(a) ** 2 + _std(b) ** 2) / 2) if enough else math.nan
    scale = abs(_mean(a)) if a else math.nan
    return {
        "test": test,
        "n": n,
        "diff": diff,
        "rel diff": diff / scale if scale else (0.0 if diff == 0 else math.inf),
        "effect size": diff / spread if spread else math.nan,
        "p": float(p),
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for comparing one setting with several (nan stays nan):
    the i-th smallest of m is multiplied by m - i + 1, and kept at least as large as the one before."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(best: str, other: str, row: dict, min_effect: float) -> str:
    """A plain sentence for the best setting against another one."""
    n, rel, p = row["n"], row["rel diff"], row["p (Holm)"]
    if min(n) < 2:
        return f"too few runs to test {best} against {other} (n={n[0]} vs {n[1]}): add seeds"
    if abs(rel) < min_effect:
        return f"no practical difference ({rel:+.3g} relative, below sweep.min_effect={min_effect:g})"
    if math.isnan(p):
        return f"{best} and {other} differ by the same amount in every run: nothing to test"
    if p < ALPHA:
        return f"{best} beats {other} ({rel:+.3g} relative), p={p:.3g}"
    return f"{best} vs {other}: no significant difference ({rel:+.3g} relative), p={p:.3g}"


def setting_labels(jobs, keys: list[str]):
    """Each job's setting as "key=value ..." over the given override keys."""
    if not keys:
        return jobs["job"].map(lambda _: "all jobs")
    # A key set in some jobs only (momentum, where the optimizer has one) is left out of the others.
    return jobs[keys].apply(
        lambda r: " ".join(f"{k}={v}" for k, v in r.items() if isinstance(v, str)), axis=1
    )


def compare_settings(
    jobs, by: list[str], optimized_metric: str, optimized_mode: str, min_effect: float = MIN_EFFECT
):
    """Settings (jobs grouped by the `by` keys, pooling seeds) ranked by the mean final metric of the runs
    that ended ok with a finite value, each tested against the best (test_pair, Holm-adjusted over the
    settings compared). A setting with no such run is not ranked; `left out` counts the runs that did not
    count (failed, diverged, pruned, killed)."""
    import pandas as pd

    column = f"final {optimized_metric}"
    values = (
        pd.to_numeric(jobs[column], errors="coerce")
        if column in jobs
        else jobs["job"].map(lambda _: math.nan)
    )
    ok = jobs["status"].eq("ok") if "status" in jobs else values.notna()
    labels = setting_labels(jobs, by)
    by_seed = "seed" in jobs and "seed" not in by
    keys = jobs["seed"] if by_seed else pd.Series(range(len(jobs)), index=jobs.index)  # unpaired: any run
    samples = {
        s: {
            k: v
            for k, v, good in zip(keys[labels == s], values[labels == s], ok[labels == s], strict=True)
            if good and math.isfinite(v)
        }
        for s in dict.fromkeys(labels)
    }
    table = pd.DataFrame(
        {
            "setting": list(samples),
            "n": [len(v) for v in samples.values()],
            "mean": [_mean(list(v.values())) for v in samples.values()],
            "std": [_std(list(v.values())) for v in samples.values()],
            "left out": [int((labels == s).sum()) - len(v) for s, v in samples.items()],
        }
    )
    table = table.sort_values(
        ["n", "mean"], key=lambda c: c > 0 if c.name == "n" else c, ascending=[False, optimized_mode == "min"]
    ).reset_index(drop=True)
    ranked = table["n"] > 0
    table.insert(0, "rank", pd.array([i + 1 if r else pd.NA for i, r in enumerate(ranked)], dtype="Int64"))
    best = table["setting"][0] if ranked.any() else None
    rows = {s: test_pair(samples[best], samples[s], by_seed) for s in table["setting"][ranked] if s != best}
    for row, adjusted in zip(rows.values(), holm([r["p"] for r in rows.values()]), strict=True):
        row["p (Holm)"] = adjusted
    for key in ("test", "diff", "rel diff", "effect size", "p", "p (Holm)"):
        table[key] = [
            rows[s][key] if s in rows else ("" if key == "test" else math.nan) for s in table["setting"]
        ]
    table["verdict"] = [
        "best"
        if s == best
        else verdict(best, s, rows[s], min_effect)
        if s in rows
        else f"not ranked: no run ended ok with a finite {optimized_metric}"
        for s in table["setting"]
    ]
    return table


def _mean(s: list[float]) -> float:
    return sum(s) / len(s) if s else math.nan


def _std(s: list[float]) -> float:
    """Sample standard deviation (n - 1), nan for fewer than two values."""
    if len(s) < 2:
        return math.nan
    m = _mean(s)
    return math.sqrt(sum((v - m) ** 2 for v in s) / (len(s) - 1))


def summarise(
    sweep_dir: Path,
    optimized_metric: str,
    optimized_mode: str,
    by: list[str] | None = None,
    min_effect: float = MIN_EFFECT,
):
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
    pooled = [k for k in varying if k not in (*by, "seed")]
    if pooled:  # runs that differ in them would count as repeats of one setting, as seeds do
        raise ConfigError(
            f"--by {' '.join(by) or '(none)'} would pool runs that differ in {', '.join(pooled)} as if they "
            f"were seeds: add them (--by {' '.join([*by, *pooled])})"
        )
    settings = compare_settings(jobs, by, optimized_metric, optimized_mode, min_effect)
    text = markdown(sweep_dir, jobs, varying, settings, optimized_metric, optimized_mode, min_effect)
    return jobs, settings, text


def markdown_table(table) -> str:
    """A DataFrame as a GitHub Markdown table (numbers to 6 significant digits)."""
    import pandas as pd

    def cell(v: Any) -> str:
        if v is None or v is pd.NA:
            return ""
        return f"{v:.6g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def markdown(
    sweep_dir: Path, jobs, varying: list[str], settings, metric: str, mode: str, min_effect: float
) -> str:
    """The summary for reading: jobs, then ranked settings with their verdicts."""
    shown = ["job", "overrides", "status", f"final {metric}", f"best {metric}", "duration_s", "error"]
    view = jobs.assign(overrides=setting_labels(jobs, varying))
    counts = ", ".join(f"{n} {s}" for s, n in jobs["status"].value_counts().items())
    return (
        f"# Sweep {sweep_dir}\n\n{len(jobs)} jobs ({counts}); metric {metric} ({mode}).\n\n## Jobs\n\n"
        f"{markdown_table(view[[c for c in shown if c in view]])}\n\n"
        "## Settings over seeds, best first\n\nEach against the best: a paired t-test on the per-seed "
        "differences where both ran the same seeds, else Welch's; p Holm-adjusted over the settings "
        f"compared, alpha {ALPHA}; below sweep.min_effect={min_effect:g} (relative): no practical "
        "difference.\n\n"
        f"{markdown_table(settings)}\n"
    )


def write_summary(
    sweep_dir: Path,
    optimized_metric: str,
    optimized_mode: str,
    by: list[str] | None = None,
    min_effect: float = MIN_EFFECT,
) -> str:
    """jobs.csv, settings.csv and summary.md in the sweep directory; returns the Markdown."""
    jobs, settings, text = summarise(sweep_dir, optimized_metric, optimized_mode, by, min_effect)
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
            launcher = str(config.hydra.launcher.get("_target_", ""))
            if "Slurm" in launcher and shutil.which("sbatch") is None:
                raise ConfigError(
                    "hydra/launcher=slurm submits each job with SLURM's sbatch, which is not on this "
                    "machine's PATH: run it on the cluster's login node, or drop hydra/launcher=slurm"
                )
        except ConfigError as e:
            sys.exit(f"error: {e}")
        if "Joblib" in str(config.hydra.launcher.get("_target_")):  # jobs in worker processes
            signal.signal(signal.SIGTERM, stop_workers)
            signal.signal(signal.SIGINT, stop_workers)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        min_effect = OmegaConf.select(config, "sweep.min_effect", default=MIN_EFFECT)
        metric, mode = jobs_metric(sweep_dir, config.optimized_metric, config.optimized_mode)
        text = write_summary(sweep_dir, metric, mode, None, min_effect)
        print(text, flush=True)
        log.info(f"summary: {as_typed(sweep_dir / 'summary.md')} (jobs.csv, settings.csv)")
        for line in viewers(Path(config.paths.log_dir), config.get("logger")):
            log.info(line.replace("<run directory>", str(as_typed(sweep_dir)) + "/*"))
