"""python predict.py ckpt_path=<run dir or .ckpt> inputs='[[81.9]]' (or input_file=<csv>): predictions."""

import hydra
from omegaconf import DictConfig

from litlab.entry import run, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    exported = str(cfg.get("ckpt_path", "")).endswith((".pt2", ".onnx"))  # torch or onnxruntime alone
    run_task("litlab.answers:predict_exported" if exported else "litlab.inference:predict", cfg)


if __name__ == "__main__":
    run(main)
