"""python train.py [group=option ...] [key=value ...]: see README.md and `python train.py --help`."""

import logging
import math
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from litlab.checks import check_config
from litlab.entry import exit_on_user_error, run
from litlab.errors import Diverged, user_error
from litlab.sweep import write_result


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    started = time.time()
    try:
        if cfg.resume is None:  # answered before Lightning is imported (seconds); train() checks too
            check_config(cfg)
        from litlab.train import train

        return train(cfg)
    except Exception as e:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            exit_on_user_error(e)
        # One bad job must not sink the sweep: record it, and let the sweeper see a failed value.
        logging.getLogger(__name__).exception("job failed")
        cause = user_error(e)
        if not isinstance(cause, Diverged):  # train() recorded that itself, with its last finite metrics
            write_result(Path(cfg.paths.output_dir), "failed", {}, started, str(cause or e) or repr(e))
        return math.nan


if __name__ == "__main__":
    run(main)
