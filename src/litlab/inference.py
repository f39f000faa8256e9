"""Use a trained run: evaluate a checkpoint on its held-out splits, or predict from new inputs."""

import inspect
import json
import logging
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from litlab.answers import ABOUT, answer, read_inputs
from litlab.checkpoints import (
    SHAPE_KEYS,
    check_compatible,
    check_unchanged,
    command_overrides,
    load,
    locate,
    saved_config,
)
from litlab.checks import check_config
from litlab.data.contract import describe, has_split, saved_index_inputs, saved_names, saved_normalisation
from litlab.entry import RunLog
from litlab.errors import ConfigError
from litlab.models.task import predictions_of
from litlab.sweep import write_result
from litlab.train import build, use_threads

log = logging.getLogger(__name__)


def rebuild(
    cfg: DictConfig, honoured: tuple[str, ...]
) -> tuple[DictConfig, L.LightningDataModule, L.LightningModule]:
    """The data and model of the run that cfg.ckpt_path names, built from its config.yaml, weights loaded."""
    ckpt, saved = saved_run(cfg, honoured)
    values = load(ckpt)
    check_unchanged(values, ckpt, ckpt.parent.parent)  # before anything is built from an edited config.yaml
    threads = use_threads(saved)  # the run's own number: the same arithmetic as in training
    data, model, found = build(saved)
    check_compatible(values, ckpt, model, data)
    model.load_state_dict(values["state_dict"])
    RunLog.start()  # every check passed: from here on this command's directory is written
    log.info(f"{describe(data, found)}; weights from {ckpt} ({threads})")
    return saved, data, model


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Metrics of a checkpoint on the validation and test splits of its run's data; logged and saved."""
    started = time.time()
    saved, data, model = rebuild(cfg, honoured=("trainer.",))  # where to run it, not what to run
    out_dir = Path(cfg.paths.output_dir)
    trainer = instantiate(
        saved.trainer, logger=False, callbacks=[], enable_progress_bar=False, default_root_dir=out_dir
    )
    metrics = {}
    for split, run in (("val", trainer.validate), ("test", trainer.test)):
        if has_split(data, split):
            metrics.update(run(model, datamodule=data, verbose=False)[0])
    if not metrics:
        raise ConfigError(
            f"the run in {cfg.ckpt_path} holds out no rows (data.val_fraction=0): nothing to evaluate"
        )
    width = max(map(len, metrics))
    log.info(
        "\n".join(
            [f"{'metric':<{width}}  value", *(f"{k:<{width}}  {v:.6g}" for k, v in sorted(metrics.items()))]
        )
    )
    write_result(out_dir, "ok", metrics, started)
    return metrics


def saved_run(cfg: DictConfig, honoured: tuple[str, ...]) -> tuple[Path, DictConfig]:
    """(checkpoint, saved config) of the run that ckpt_path= names, its config checked as a new run's
    before anything in it is built; or one line saying to give ckpt_path."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError(
            "give ckpt_path=<run dir or a .ckpt inside one>, e.g. ckpt_path=logs/train/runs/<time>"
        )
    run_dir, ckpt = locate(cfg.ckpt_path)
    saved = saved_config(run_dir, cfg, command_overrides(), honoured)
    check_config(saved)
    return ckpt, saved


class Raw(nn.Module):
    """A trained model that takes raw inputs in original units and gives predictions: the data's input
    normalisation folded in before it (as TensorDataModule.setup computes it, to the bit), the task's
    meaning of its outputs after (values, sigmoid, softmax). What predict.py runs and export.py exports."""

    def __init__(self, model: L.LightningModule, shift: Tensor, scale: Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("shift", shift)
        self.register_buffer("inverse_scale", scale.reciprocal())

    def forward(self, x: Tensor) -> Tensor:
        return predictions_of(self.model, self.model((x - self.shift) * self.inverse_scale))


def predictor(cfg: DictConfig) -> tuple[Path, Raw, dict]:
    """(checkpoint, its model on raw inputs, what answers.py needs to read inputs and name answers) of the run
    that cfg.ckpt_path names."""
    ckpt, saved = saved_run(cfg, honoured=())
    values = load(ckpt)  # once: the model's hyperparameters and weights, and the data's statistics
    check_unchanged(values, ckpt, ckpt.parent.parent)  # before the model is built from an edited config.yaml
    if saved_index_inputs(values):
        raise ConfigError(
            f"{ckpt} is a {saved.data._target_} model over symbol indices: predict.py takes numbers"
        )
    if (normalised := saved_normalisation(values)) is None:
        raise ConfigError(
            f"{ckpt} holds no input normalisation of its data ({saved.data._target_}), so predict.py cannot "
            "turn raw inputs into model inputs: give the data module x_shift and x_scale tensors (model "
            "input = (raw - x_shift) / x_scale; zeros and ones where it does not normalise), then train again"
        )
    hparams = values["hyper_parameters"]
    accepted = inspect.signature(get_class(saved.model._target_)).parameters  # constructor arguments only
    sizes = {k: v for k, v in hparams.items() if k in accepted and k not in saved.model}  # the data's
    model = instantiate(saved.model, **sizes)
    for key in SHAPE_KEYS:  # what train.build recorded for a module of one's own
        model.hparams.setdefault(key, hparams.get(key))
    model.load_state_dict(values["state_dict"])
    about = {"task": model.hparams.task, "in_features": model.hparams.in_features, **saved_names(values)}
    return ckpt, Raw(model, *normalised).eval(), about


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Predictions for inputs in original units: the checkpoint's input normalisation is applied first."""
    _, raw, about = predictor(cfg)
    inputs = read_inputs(cfg, about["in_features"], about.get("input_names"))
    with torch.no_grad():
        p = raw(torch.tensor(inputs.to_numpy(), dtype=torch.float32))
    return answer(cfg, inputs, p.numpy(), about)


FORMATS = {"pt2": "model.pt2", "onnx": "model.onnx"}


def export(cfg: DictConfig) -> Path:
    """The run's model on raw inputs (Raw) as a file that answers without this repository or Lightning:
    torch.export's program (model.pt2, read by torch.export.load) or ONNX (model.onnx, an extra), in the
    run's directory. Rows are dynamic: one program for any number of rows."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format} is not one of {', '.join(FORMATS)}")
    ckpt, raw, about = predictor(cfg)
    out = ckpt.parent.parent / FORMATS[cfg.format]
    example = (torch.zeros(2, about["in_features"]),)
    rows = {"x": {0: torch.export.Dim("rows", min=1)}}
    RunLog.start()  # every check passed: from here on this command's directory is written
    try:
        if cfg.format == "pt2":
            program = torch.export.export(raw, example, dynamic_shapes=rows)
            torch.export.save(program, out, extra_files={ABOUT: json.dumps(about)})
        else:
            onnx_export(raw, example, rows, out, about)
    except ConfigError:
        raise
    except Exception as e:  # a module whose forward torch.export cannot trace (data-dependent control flow)
        out.unlink(missing_ok=True)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{type(raw.model).__name__} cannot be exported ({type(e).__name__}: {why})") from e
    log.info(f"wrote {out}: raw inputs in original units -> predictions ({about['task']})")
    return out


def onnx_export(raw: Raw, example: tuple, rows: dict, out: Path, about: dict) -> None:
    """model.onnx by torch's dynamo exporter (its packages: the extra .[onnx]), with what answers.py needs
    in its metadata."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - the dynamo exporter's dependency
    except ImportError as e:
        raise ConfigError("format=onnx needs the onnx extra: pip install -e '.[onnx]'") from e
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its passes' lines, on every export
    program = torch.onnx.export(
        raw, example, dynamo=True, dynamic_shapes=rows, input_names=["x"], verbose=False
    )
    model = program.model_proto
    onnx.helper.set_model_props(model, {ABOUT: json.dumps(about)})
    onnx.save(model, out)
