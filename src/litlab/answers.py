"""What predict.py reads and writes, without Lightning: inputs in original units (inputs= or a CSV), the
table of answers, and a model that export.py wrote (model.pt2 with torch alone, model.onnx with
onnxruntime alone)."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from litlab.data.files import is_float, not_utf8, number
from litlab.errors import ConfigError

log = logging.getLogger(__name__)
ABOUT = "litlab.json"  # the exported program's extra file: task, in_features, input_names, classes


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
            x = np.array(values, dtype=np.float64)  # shown back as typed; the model gets float32
        except (TypeError, ValueError) as e:  # a word, a ragged row
            raise ConfigError(f"inputs={values} is not rows of numbers such as [[81.9], [60.0]]: {e}") from e
        x = x.reshape(-1, in_features) if x.ndim == 1 and x.size % in_features == 0 else x
        if x.ndim != 2:
            raise ConfigError(f"inputs={values} is not a list of rows such as [[81.9], [60.0]]")
        table = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
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


def answer(cfg: DictConfig, inputs: pd.DataFrame, p: np.ndarray, about: dict) -> pd.DataFrame:
    """The inputs beside their answers, printed, and written beside an input_file (<stem>.predictions.csv).
    Regression: a column per output, in the target's units. Classification: class (its label where the
    data gave its classes' labels, else its index) and probability."""
    if about["task"] == "regression":
        names = ["prediction"] if p.shape[1] == 1 else [f"prediction_{i}" for i in range(p.shape[1])]
        table = pd.DataFrame(p, columns=names)
    else:
        p = np.concatenate([1 - p, p], axis=1) if about["task"] == "binary" else p
        prob, cls = p.max(axis=1), p.argmax(axis=1)
        labels = about.get("classes")
        named = labels is not None and len(labels) == p.shape[1]
        classes = [labels[i] for i in cls.tolist()] if named else cls
        table = pd.DataFrame({"class": classes, "probability": prob})
    result = pd.concat([inputs, table], axis=1)
    print(result.to_string(index=False))
    if cfg.input_file is not None:
        out = Path(cfg.input_file).with_suffix(".predictions.csv")
        result.to_csv(out, index=False)
        log.info(f"predictions written to {out}")
    return result


def predict_exported(cfg: DictConfig) -> pd.DataFrame:
    """predict.py ckpt_path=<run>/model.pt2 or model.onnx: a model export.py wrote answers, with torch alone
    (pt2) or onnxruntime alone (onnx, a fraction of a second), no Lightning."""
    path = Path(cfg.ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist: write it with python export.py ckpt_path=<run>")
    try:
        run, about = onnx_model(path) if path.suffix == ".onnx" else torch_program(path)
    except ImportError as e:
        raise ConfigError(f"ckpt_path={path} needs the onnx extra: pip install -e '.[onnx]'") from e
    except Exception as e:  # not a model export.py wrote: truncated, another file renamed
        why = type(e).__name__
        raise ConfigError(f"ckpt_path={path} is not a model export.py wrote ({why}): export it again") from e
    inputs = read_inputs(cfg, about["in_features"], about.get("input_names"))
    return answer(cfg, inputs, run(inputs.to_numpy(dtype="float32")), about)


def torch_program(path: Path) -> tuple:
    """(rows -> predictions, about) of a torch.export program."""
    import torch

    extra = {ABOUT: ""}
    program = torch.export.load(path, extra_files=extra).module()

    def run(x):
        with torch.no_grad():
            return program(torch.tensor(x)).numpy()  # a copy: pandas hands out a read-only array

    return run, json.loads(extra[ABOUT])


def onnx_model(path: Path) -> tuple:
    """(rows -> predictions, about) of an ONNX model, by onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    about = json.loads(session.get_modelmeta().custom_metadata_map[ABOUT])
    return (lambda x: session.run(None, {"x": x})[0]), about
