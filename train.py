"""python train.py [group=option ...] [key=value ...]: see README.md and `python train.py --help`."""

import logging
import math
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from litlab.checks import check_config
from litlab.entry import exit_on_user_error, import_quickly, run
from litlab.errors import Diverged, user_error
from litlab.sweep import write_result


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    started = time.time()
    try:
        if cfg.resume is None:  # answered before Lightning is imported (seconds); train() checks too
            check_config(cfg)
        return import_quickly("litlab.train").train(cfg)
    except Exception as e:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            exit_on_user_error(e)
        # One bad job must not sink the sweep: record it in one line, and let the sweeper see a failed value.
        cause = user_error(e)
        log_dir = Path(HydraConfig.get().runtime.output_dir)
        if cause is None:  # a bug: its traceback in the job's own log, not over the sweep's console
            with open(log_dir / f"{cfg.task_name}.log", "a") as log_file:
                traceback.print_exc(file=log_file)
        where = "" if cause is not None else f" (traceback in {log_dir / cfg.task_name}.log)"
        logging.getLogger(__name__).error(f"job failed: {cause or repr(e)}{where}")
        if not isinstance(cause, Diverged):  # train() recorded that itself, with its last finite metrics
            write_result(Path(cfg.paths.output_dir), "failed", {}, started, str(cause or e) or repr(e))
        return math.nan


if __name__ == "__main__":
    run(main)
