"""python eval.py ckpt_path=<run dir or .ckpt>: metrics of a trained run on its validation and test splits."""

import logging
import warnings

import hydra
from omegaconf import DictConfig

from litlab.errors import exit_on_user_error
from litlab.inference import evaluate

# Raised inside Lightning 2.6 by torch >= 2.10's pytree; says nothing about the user's run.
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
# Lightning advertises cloud services at every start.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except Exception as e:
        exit_on_user_error(e)


if __name__ == "__main__":
    main()
