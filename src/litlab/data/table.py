"""A table of one's own, without code: `data=table data.path=sales.csv data.target=price`.

CSV (`,` or `;`, found from the header), TSV and Parquet, read by pyarrow into NumPy columns (no pandas,
no per-row Python on the way). The target's values say the task: numbers are regression (whole numbers
may also be classes, 0/1 may also be binary labels), words are classes; `data.task=` chooses where it
could be either. Features are every numeric column but the target, or `data.features=[...]`;
`data.categorical=[...]` one-hot encodes columns of levels (numbers or words) in place. A bad cell is
one line naming its line and column, as for the built-in wine and bike files (files.read_table)."""

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pyarrow import csv, parquet
from torch import Tensor

from litlab.data.base import TensorDataModule
from litlab.data.files import FLOAT32_MAX, number, read_table, require
from litlab.errors import ConfigError, flat

log = logging.getLogger(__name__)

PARQUET = (".parquet", ".pq")
SUFFIXES = (".csv", ".tsv", ".txt", *PARQUET)


def delimiter_of(path: Path) -> str:
    """A tab for .tsv; else `;` where the header holds more of them than commas (the wine file), else `,`."""
    if path.suffix == ".tsv":
        return "\t"
    with open(path, "rb") as f:
        header = f.readline()
    return ";" if header.count(b";") > header.count(b",") else ","


def read_file(path: Path, delimiter: str) -> pa.Table:
    """Every column of a CSV, TSV or Parquet file; one line for a file pyarrow cannot read."""
    try:
        if path.suffix in PARQUET:
            return parquet.read_table(path)
        table = csv.read_csv(path, parse_options=csv.ParseOptions(delimiter=delimiter))
        if any(pa.types.is_binary(c.type) for c in table.columns):  # cells that are not UTF-8 text
            read_table(path, [], delimiter)  # says where
        return table
    except (pa.ArrowInvalid, OSError) as e:
        if path.suffix not in PARQUET:
            read_table(path, [], delimiter)  # finds the line (a row of other width, not UTF-8) and says it
        raise ConfigError(
            f"{path} is not a readable table ({flat(str(e))[:200]}): fix or export it again"
        ) from e


def is_numeric(column: pa.ChunkedArray) -> bool:
    return pa.types.is_integer(column.type) or pa.types.is_floating(column.type)


def numbers(table: pa.Table, path: Path, name: str, delimiter: str) -> np.ndarray:
    """A numeric column as float64, every cell a finite number float32 holds; else one line naming the
    first bad cell (its line, for a text file)."""
    column = table.column(name)
    values = column.to_numpy(zero_copy_only=False).astype(np.float64) if is_numeric(column) else None
    good = None if values is None else np.isfinite(values) & (np.abs(values) < FLOAT32_MAX)
    if good is not None and good.all():
        return values
    if path.suffix not in PARQUET:
        read_table(path, [name], delimiter)  # raises with the line and the cell
    cells = column.to_pylist()
    bad = (
        int(np.argmin(good))
        if good is not None
        else next(i for i, v in enumerate(cells) if v is None or number(str(v)) is None)
    )
    raise ConfigError(
        f"{path}, row {bad + 1}, column {name!r}: {cells[bad]!r} is not a finite number that float32 holds; "
        "fill or drop that row, or list the column in data.categorical"
    )


def levels(table: pa.Table, path: Path, name: str) -> tuple[list, np.ndarray]:
    """(the sorted distinct values of a column, each row's index among them); one line for an empty cell."""
    column = table.column(name)
    if column.null_count:
        row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
        raise ConfigError(f"{path}, row {row + 1}, column {name!r} is empty: fill or drop that row")
    values = column.to_numpy(zero_copy_only=False)
    found, index = np.unique(values, return_inverse=True)
    return found.tolist(), index


class TableData(TensorDataModule):
    """One target column and numeric (or one-hot) feature columns of a CSV, TSV or Parquet file."""

    def __init__(
        self,
        path: str,
        target: str,
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        contiguous: bool = False,
        **kwargs,
    ):
        self.path, self.target = Path(path), target
        self.features, self.categorical = features, list(categorical or [])
        if target in self.categorical or (features is not None and target in features):
            raise ConfigError(
                f"data.target={target} is also a feature: drop it from data.features/categorical"
            )
        self.contiguous = contiguous  # True: the first rows train, the last validate (time order)
        self.name = f"table {self.path.name}"
        self.table: pa.Table | None = None
        super().__init__(**kwargs)

    def read_all(self) -> pa.Table:
        """The whole file, read once (the target's values decide the tasks before setup reads the rest)."""
        if self.table is None:
            path = require(self.path, "table")
            if path.suffix not in SUFFIXES:
                raise ConfigError(f"data.path={path} is not a {', '.join(SUFFIXES)} file")
            self.delimiter = delimiter_of(path)
            self.table = read_file(path, self.delimiter)
            if self.target not in self.table.column_names:
                raise ConfigError(
                    f"data.target={self.target} is not a column of {path}: its columns are "
                    f"{', '.join(self.table.column_names)}"
                )
            if self.table.num_rows == 0:
                raise ConfigError(f"{path} has a header but no rows")
        return self.table

    def poses(self) -> list[str]:
        """Numbers: regression (whole numbers also classes; 0 and 1 binary first); words: classes."""
        column = self.read_all().column(self.target)
        if not is_numeric(column):
            labels, _ = levels(self.table, self.path, self.target)
            return ["binary", "multiclass"] if len(labels) == 2 else ["multiclass"]
        values = numbers(self.table, self.path, self.target, self.delimiter)
        distinct = np.unique(values)
        if set(distinct.tolist()) == {0.0, 1.0}:
            return ["binary", "regression"]
        return ["regression", "multiclass"] if (distinct == distinct.round()).all() else ["regression"]

    def mismatch_hint(self) -> str:
        return f"its target column {self.target} poses no other task: choose another data.target"

    def columns(self) -> list[str]:
        """The feature columns in order: data.features, else every numeric column and data.categorical."""
        table = self.read_all()
        if self.features is None:
            kept = [
                c
                for c in table.column_names
                if c != self.target and (c in self.categorical or is_numeric(table.column(c)))
            ]
            left = [c for c in table.column_names if c not in kept and c != self.target]
            if left:
                log.info(
                    f"data=table: {', '.join(left)} not numbers, left out (data.categorical one-hot encodes)"
                )
            return [*kept, *(c for c in self.categorical if c not in kept)]
        missing = [c for c in [*self.features, *self.categorical] if c not in table.column_names]
        if missing:
            raise ConfigError(
                f"data.features: {missing[0]} is not a column of {self.path}: its columns are "
                f"{', '.join(table.column_names)}"
            )
        return [*self.features, *(c for c in self.categorical if c not in self.features)]

    def read(self) -> tuple[Tensor, Tensor]:
        table = self.read_all()
        blocks, self.input_names = [], []
        for name in self.columns():
            if name in self.categorical:
                found, index = levels(table, self.path, name)
                blocks.append(np.eye(len(found), dtype=np.float64)[index])
                self.input_names += [f"{name}={v}" for v in found]
            else:
                blocks.append(numbers(table, self.path, name, self.delimiter)[:, None])
                self.input_names.append(name)
        if not blocks:
            raise ConfigError(f"{self.path} has no feature columns besides {self.target}: list data.features")
        x = torch.from_numpy(np.concatenate(blocks, axis=1)).float()
        self.table = None  # what training needs is in x and y now
        return x, self.targets(table)

    def targets(self, table: pa.Table) -> Tensor:
        """float32 [n, 1] numbers or 0/1 labels, or int64 [n] class indices (self.classes: their values)."""
        if self.task == "regression":
            return (
                torch.from_numpy(numbers(table, self.path, self.target, self.delimiter)).float().unsqueeze(1)
            )
        self.classes, index = levels(table, self.path, self.target)
        counts = np.bincount(index, minlength=len(self.classes))
        if (counts < 2).any():
            label = self.classes[int(np.argmin(counts))]
            raise ConfigError(
                f"data.target={self.target}: class {label!r} has only {counts.min()} row, too few to learn "
                "and to hold out: drop it, or merge it into another class"
            )
        if self.task == "binary":
            return torch.from_numpy(index).float().unsqueeze(1)  # the second of the two sorted labels is 1
        return torch.from_numpy(index).long()
