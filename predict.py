"""python predict.py ckpt_path=<run dir or .ckpt> inputs='[[81.9]]' (or input_file=<csv>): predictions."""

import hydra
from omegaconf import DictConfig

from litlab.entry import exit_on_user_error, run


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        if not str(cfg.get("ckpt_path", "")).endswith((".pt2", ".onnx")):
            from litlab.inference import predict  # imports Lightning (seconds): after --help and composing

            predict(cfg)
        else:  # a model export.py wrote: torch or onnxruntime alone
            from litlab.answers import predict_exported

            predict_exported(cfg)
    except Exception as e:
        exit_on_user_error(e)


if __name__ == "__main__":
    run(main)
