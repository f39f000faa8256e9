"""A table of one's own, without code: `data=table data.path=sales.csv data.target=price`.

CSV (`,` or `;`, found from the header), TSV and Parquet, read by pyarrow into NumPy columns (no pandas,
no per-row Python on the way). The target's values say the task: numbers are regression (whole numbers
may also be classes, 0/1 may also be binary labels), words are classes; `data.task=` chooses where it
could be either. Features are every numeric column but the target, or `data.features=[...]`;
`data.categorical=[...]` one-hot encodes columns of levels (numbers or words) in place. A bad cell is
one line naming its line and column, as for the built-in wine and bike files (files.read_table)."""

import logging
import os
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
MAX_CLASSES = 10_000  # distinct whole numbers beyond which a target is not offered as classes
SUFFIXES = (".csv", ".tsv", ".txt", *PARQUET)


def memory_free() -> int:
    """Bytes of memory available now (Linux: MemAvailable; elsewhere the physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def streams(path: str | Path, stream: bool | str) -> str | None:
    """Why data=table streams this file (for the console), or None where it reads it whole: data.stream=true,
    or auto and its values would take more than a quarter of the memory free now."""
    if stream is False:
        return None
    if stream is True:
        return "data.stream=true"
    if stream != "auto":
        raise ConfigError(f"data.stream={stream!r} is not one of auto, true, false")
    path = Path(path)
    if path.is_dir():
        size = sum(parquet_values(p) for p in sorted(path.rglob("*")) if p.suffix in PARQUET)
    elif path.suffix in PARQUET and path.is_file():
        size = parquet_values(path)
    else:  # text: more bytes than its float32 values
        size = path.stat().st_size if path.is_file() else 0
    free = memory_free()
    if size <= free // 4:
        return None
    return f"data.stream=auto: {size / 1e9:.1f} GB of values > a quarter of the {free / 1e9:.1f} GB free"


def parquet_values(path: Path) -> int:
    """Bytes of a Parquet file's values as float32 (its rows x columns x 4)."""
    try:
        meta = parquet.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError):
        return 0  # reading it says what is wrong
    return meta.num_rows * meta.num_columns * 4


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


def numeric(kind: pa.DataType) -> bool:
    """Whether a column of this Arrow type holds numbers (integers or floats)."""
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def numbers(table: pa.Table, path: Path, name: str, delimiter: str) -> np.ndarray:
    """A numeric column as float64, every cell a finite number float32 holds; else one line naming the
    first bad cell (its line, for a text file)."""
    column = table.column(name)
    values = column.to_numpy(zero_copy_only=False).astype(np.float64) if numeric(column.type) else None
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


def target_tasks(distinct: np.ndarray, of_numbers: bool) -> list[str]:
    """The tasks a target's distinct values pose, the preferred first: numbers regression (whole numbers
    also classes; 0 and 1 binary first); words classes (two words binary first)."""
    if not of_numbers:
        return ["binary", "multiclass"] if len(distinct) == 2 else ["multiclass"]
    if set(distinct.tolist()) == {0.0, 1.0}:
        return ["binary", "regression"]
    whole = len(distinct) <= MAX_CLASSES and bool((distinct == distinct.round()).all())
    return ["regression", "multiclass"] if whole else ["regression"]


def target_hint(target: str) -> str:
    """What to change where a table's target poses no task the model fits."""
    return f"its target column {target} poses no other task: choose another data.target"


def feature_columns(
    schema: pa.Schema, target: str, features: list[str] | None, categorical: list[str], path: Path
) -> list[str]:
    """The feature columns in order: data.features, else every numeric column and data.categorical (in the
    file's order); categorical ones are one-hot encoded in place."""
    names = schema.names
    if features is None:
        numeric_names = {f.name for f in schema if numeric(f.type)}
        kept = [c for c in names if c != target and (c in categorical or c in numeric_names)]
        left = [c for c in names if c not in kept and c != target]
        if left:
            log.info(f"data=table: {', '.join(left)} not numbers, left out (data.categorical encodes them)")
        return [*kept, *(c for c in categorical if c not in kept)]
    missing = [c for c in [*features, *categorical] if c not in names]
    if missing:
        raise ConfigError(
            f"data.features: {missing[0]} is not a column of {path}: its columns are {', '.join(names)}"
        )
    return [*features, *(c for c in categorical if c not in features)]


class TableData(TensorDataModule):
    """One target column and numeric (or one-hot) feature columns of a CSV, TSV or Parquet file, in memory.
    Where the file streams (data.stream=true, or auto and too large for memory), building one builds a
    StreamedTable instead (src/litlab/data/stream.py), with the same keys."""

    def __new__(cls, *args, **kwargs):
        why = streams(kwargs["path"], kwargs.get("stream", "auto")) if "path" in kwargs else None
        if why is None:  # also when unpickled: no arguments
            return super().__new__(cls)
        from litlab.data.stream import StreamedTable  # torchdata, and the stream's machinery

        return StreamedTable(*args, **kwargs, why=why)

    def __init__(
        self,
        path: str,
        target: str,
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        contiguous: bool = False,
        stream: bool | str = "auto",
        shuffle_buffer: int = 1_000_000,
        num_workers: int = 0,
        **kwargs,
    ):
        # stream, shuffle_buffer and num_workers: for a streamed table (StreamedTable); in memory, batches are
        # slices of tensors already on the device, and need neither workers nor a buffer
        if shuffle_buffer < 1 or num_workers < 0:
            raise ConfigError(
                f"data.shuffle_buffer={shuffle_buffer}, data.num_workers={num_workers}: need shuffle_buffer "
                ">= 1 and num_workers >= 0"
            )
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
        column = self.read_all().column(self.target)
        if not numeric(column.type):
            return target_tasks(np.array(levels(self.table, self.path, self.target)[0]), of_numbers=False)
        values = numbers(self.table, self.path, self.target, self.delimiter)
        return target_tasks(np.unique(values), of_numbers=True)

    def mismatch_hint(self) -> str:
        return target_hint(self.target)

    def settled(self) -> dict:
        """contract.Settled: read whole (data.stream=auto decided so, or false)."""
        return {"stream": False}

    def columns(self) -> list[str]:
        table = self.read_all()
        return feature_columns(table.schema, self.target, self.features, self.categorical, self.path)

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
