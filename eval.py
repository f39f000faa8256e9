"""python eval.py ckpt_path=<run dir or .ckpt>: metrics of a trained run on its validation and test splits."""

import hydra
from omegaconf import DictConfig

from litlab.entry import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        from litlab.inference import evaluate  # imports Lightning (seconds): after --help and composing

        evaluate(cfg)
    except Exception as e:
        exit_on_user_error(e)


if __name__ == "__main__":
    run(main)
