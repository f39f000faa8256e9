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
from omegaconf import DictConfig, OmegaConf

from litlab.errors import Diverged, one_line, user_error
from litlab.train import train, write_result

# Raised inside Lightning 2.6 by torch >= 2.10's pytree; says nothing about the user's run.
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
# Lightning advertises a cloud logger at every start.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda r: "litlogger" not in r.getMessage()
)
# Run directories end in _<microseconds>-<pid>: two runs started at the same moment never share one.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)
FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user's wish, before __main__ sets it for Hydra


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
            if not isinstance(cause, Diverged):  # train() recorded that itself, with its last finite metrics
                write_result(Path(cfg.paths.output_dir), "failed", {}, started, str(cause or e) or repr(e))
            return math.nan
        if cause is None or FULL_ERROR:
            raise
        sys.exit(f"error: {cause}")  # here, not below: Hydra would first print the job's overrides


if __name__ == "__main__":
    # Hydra's documented switch to raise instead of printing its own multi-line report: composition errors
    # (unknown option or key, bad override) then reach us, and get the same one line as ours.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as e:
        if FULL_ERROR or (message := one_line(e)) is None:
            raise
        sys.exit(f"error: {message}")
