"""python eval.py ckpt_path=<run dir or .ckpt>: metrics of a trained run on its validation and test splits."""

import hydra
from omegaconf import DictConfig

from litlab.entry import run, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_task("litlab.inference:evaluate", cfg)


if __name__ == "__main__":
    run(main)
