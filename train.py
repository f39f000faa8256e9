"""python train.py [group=option ...] [key=value ...]: see README.md and `python train.py --help`."""

import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from litlab.errors import user_error
from litlab.train import train, write_result

# Raised inside Lightning 2.6 by torch >= 2.10's pytree; says nothing about the user's run.
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
# Lightning advertises a cloud logger at every start.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda r: "litlogger" not in r.getMessage()
)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    started = time.time()
    try:
        return train(cfg)
    except Exception as e:
        cause = user_error(e)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One bad job must not sink the sweep: record it, and let the sweeper see a failed value.
            logging.getLogger(__name__).exception("job failed")
            write_result(Path(cfg.paths.output_dir), "failed", {}, started, str(cause or e) or repr(e))
            return math.nan
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {cause}")


if __name__ == "__main__":
    main()
