"""python train.py [group=option ...] [key=value ...]: see README.md and `python train.py --help`."""

import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

from litlab.errors import user_error
from litlab.train import train

# Raised inside Lightning 2.6 by torch >= 2.10's pytree; says nothing about the user's run.
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
# Lightning advertises a cloud logger at every start.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda r: "litlogger" not in r.getMessage()
)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except Exception as e:
        cause = user_error(e)
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {cause}")


if __name__ == "__main__":
    main()
