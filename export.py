"""python export.py ckpt_path=<run dir or .ckpt> [format=onnx]: the run's model as a file of its own."""

import hydra
from omegaconf import DictConfig

from litlab.entry import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        from litlab.inference import export  # imports Lightning (seconds): after --help and composing

        export(cfg)
    except Exception as e:
        exit_on_user_error(e)


if __name__ == "__main__":
    run(main)
