"""Summarise any past sweep: python scripts/compare.py <sweep dir> [--by key ...] [--metric m --mode min]

Prints what a multirun prints when it ends (jobs; settings over seeds ranked, each tested against the
best), grouping by the given override keys instead of every override but seed. --write also rewrites the
sweep's summary.md, jobs.csv and settings.csv (e.g. after a sweep that was killed before its end)."""

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from litlab.errors import ConfigError
from litlab.sweep import MIN_EFFECT, jobs_metric, summarise, write_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path, help="logs/<task_name>/multiruns/<time>")
    parser.add_argument("--by", nargs="+", help="override keys to group by, e.g. optimizer optimizer.lr")
    parser.add_argument("--metric", help="default: the sweep's optimized_metric")
    parser.add_argument("--mode", choices=["min", "max"], help="default: the sweep's optimized_mode")
    parser.add_argument(
        "--min-effect",
        type=float,
        help="relative difference below which settings do not differ in practice "
        "(default: the sweep's sweep.min_effect)",
    )
    parser.add_argument("--write", action="store_true", help="rewrite the summary files in the sweep dir")
    args = parser.parse_args(argv)
    multirun = args.sweep_dir / "multirun.yaml"  # the sweep's config, saved by every Hydra launcher
    sweep_cfg = OmegaConf.load(multirun) if multirun.exists() else OmegaConf.create()
    metric, mode = jobs_metric(
        args.sweep_dir, sweep_cfg.get("optimized_metric", "val/loss"), sweep_cfg.get("optimized_mode", "min")
    )
    metric, mode = args.metric or metric, args.mode or mode
    min_effect = args.min_effect
    if min_effect is None:
        min_effect = OmegaConf.select(sweep_cfg, "sweep.min_effect", default=MIN_EFFECT)
    try:
        write = write_summary if args.write else lambda *a: summarise(*a)[2]
        print(write(args.sweep_dir, metric, mode, args.by, min_effect))
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
