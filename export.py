"""python export.py ckpt_path=<run dir or .ckpt> [format=onnx]: the run's model as a file of its own."""

import hydra
from omegaconf import DictConfig

from litlab.entry import run, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_task("litlab.inference:export", cfg)


if __name__ == "__main__":
    run(main)
