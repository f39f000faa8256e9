"""Use a trained run: evaluate a checkpoint on its held-out splits, or predict from new inputs."""

import inspect
import logging
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from litlab.checkpoints import (
    check_compatible,
    check_unchanged,
    command_overrides,
    load,
    locate,
    saved_config,
)
from litlab.checks import check_config
from litlab.data.contract import describe, has_split, saved_index_inputs, saved_names, saved_normalisation
from litlab.data.files import is_float, not_utf8, number
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


def read_inputs(cfg: DictConfig, in_features: int, names: list[str] | None = None) -> pd.DataFrame:
    """inputs=[[...], ...] (or a flat list) or input_file=<csv> rows, checked against the model's width, in
    columns named as the data named its inputs (names): a file whose header holds every name is read by
    name, in any order and with other columns beside them."""
    if (cfg.inputs is None) == (cfg.input_file is None):
        raise ConfigError("give inputs='[[81.9], [60.0]]' or input_file=<csv>, one of the two")
    if cfg.input_file is not None:
        table = read_csv(Path(cfg.input_file), names)
    else:
        values = OmegaConf.to_container(cfg.inputs) if OmegaConf.is_config(cfg.inputs) else [cfg.inputs]
        cells = values if not values or not isinstance(values[0], list) else [c for r in values for c in r]
        for cell in cells:  # as input_file= refuses them: a flag, text, nan, inf, or beyond float32
            if isinstance(cell, bool) or not isinstance(cell, int | float) or number(str(cell)) is None:
                raise ConfigError(f"inputs={values}: {cell!r} is not a finite number that float32 holds")
        try:
            x = torch.tensor(values, dtype=torch.float64)  # shown back as typed; the model gets float32
        except (TypeError, ValueError) as e:  # a word, a ragged row
            raise ConfigError(f"inputs={values} is not rows of numbers such as [[81.9], [60.0]]: {e}") from e
        x = x.reshape(-1, in_features) if x.dim() == 1 and x.numel() % in_features == 0 else x
        if x.dim() != 2:
            raise ConfigError(f"inputs={values} is not a list of rows such as [[81.9], [60.0]]")
        table = pd.DataFrame(x.numpy(), columns=[f"x{i}" for i in range(x.shape[1])])
    if names is not None and len(names) == in_features and list(table.columns) == names:
        return table
    if table.shape[1] != in_features:
        named = f" ({', '.join(names)})" if names is not None and len(names) <= 24 else ""
        raise ConfigError(
            f"inputs have {table.shape[1]} column(s) but the model takes {in_features}{named}, "
            f"e.g. inputs='[[{', '.join(['1.0'] * in_features)}]]'"
        )
    if (
        names is not None
        and len(names) == in_features
        and all(c == f"x{i}" for i, c in enumerate(table.columns))
    ):
        table.columns = names  # given without names: the data's
    return table


def read_csv(path: Path, names: list[str] | None = None) -> pd.DataFrame:
    """A CSV of finite numbers, with or without a header row: a first row is a header where a cell of it is
    not a number at all (`nan` and `inf` are numbers, and refused as inputs below, never taken for names).
    Where the header holds every one of names, only those columns are read (others may hold words)."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"input_file={path} is not a file (a directory, a pipe, a device): give a CSV file")
    if not path.is_file():
        raise ConfigError(f"input_file={path} does not exist")
    try:
        cells = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ConfigError(f"input_file={path} is empty: one row of numbers per input") from None
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    header = not all(is_float(str(c)) for c in cells.iloc[0])
    columns = [str(c).strip() for c in cells.iloc[0]] if header else [f"x{i}" for i in range(cells.shape[1])]
    rows = cells.iloc[1:] if header else cells
    if header and names and set(names) <= set(columns):  # the data's inputs, by name
        rows, columns = rows.iloc[:, [columns.index(n) for n in names]], list(names)
    if rows.empty:
        raise ConfigError(f"input_file={path} has a header but no rows")
    table = rows.map(number).astype(float)  # None (not a number float32 holds) becomes nan
    bad_rows, bad_columns = table.isna().to_numpy().nonzero()
    if len(bad_rows):
        line, column = bad_rows[0], bad_columns[0]
        where = repr(columns[column]) if header else column + 1
        raise ConfigError(
            f"input_file={path}, line {line + 1 + header}, column {where}: {rows.iat[line, column]!r} "
            "is not a finite number"
        )
    table.columns = columns
    return table.reset_index(drop=True)


def predictions_table(model: L.LightningModule, x_scaled: Tensor, labels: list | None = None) -> pd.DataFrame:
    """Regression: a column per output, in the target's units. Classification: class (its label where the
    data gave its classes' labels, else its index) and probability."""
    with torch.no_grad():
        p = predictions_of(model, model(x_scaled))
    task = model.hparams.task
    if task == "regression":
        names = ["prediction"] if p.shape[1] == 1 else [f"prediction_{i}" for i in range(p.shape[1])]
        return pd.DataFrame(p.numpy(), columns=names)
    if task == "binary":
        p = torch.cat([1 - p, p], dim=1)
    prob, cls = p.max(dim=1)
    named = labels is not None and len(labels) == p.shape[1]
    return pd.DataFrame(
        {"class": [labels[i] for i in cls.tolist()] if named else cls.numpy(), "probability": prob.numpy()}
    )


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Predictions for inputs in original units: the checkpoint's input normalisation is applied first."""
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
    for key in ("task", "in_features", "out_features"):  # what train.build recorded for a module of one's own
        model.hparams.setdefault(key, hparams.get(key))
    model.load_state_dict(values["state_dict"])
    model.eval()
    named = saved_names(values)
    inputs = read_inputs(cfg, model.hparams.in_features, named.get("input_names"))
    x = torch.tensor(inputs.to_numpy(), dtype=torch.float32)
    # As in TensorDataModule.setup: multiply by 1/scale, so the inputs match training's to the bit.
    shift, scale = normalised
    x_scaled = (x - shift) * scale.reciprocal()
    table = predictions_table(model, x_scaled, named.get("classes"))
    result = pd.concat([inputs, table], axis=1)
    print(result.to_string(index=False))
    if cfg.input_file is not None:
        out = Path(cfg.input_file).with_suffix(".predictions.csv")
        result.to_csv(out, index=False)
        log.info(f"predictions written to {out}")
    return result
