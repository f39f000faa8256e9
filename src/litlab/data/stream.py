"""Tables bigger than memory (`data=table data.stream=true`): Parquet row groups, streamed in batches.

- **Units** are the Parquet row groups of a file or of a directory of files, in name order; a CSV is first
  converted to Parquet beside it, once, in record batches (`<name>.csv.parquet`).
- **Splits** by a seeded hash of the row index (splitmix64): the rows whose hashes are the k smallest
  validate, with k = round(n * val_fraction) as in memory, the next ones test. Exact sizes, nothing per row
  held in memory; `contiguous=true`: the last rows validate, as in memory.
- **One pass before training**, in float64: every cell checked, each unit's rows per split, the training
  rows' mean and spread (the input normalisation), the target's values (task and classes) and the levels
  of categorical columns.
- **Each epoch**, for training: the units in an order seeded by (seed, epoch), dealt to the ranks and, in
  each, to the loader's workers; a worker reads whole units into a shuffle buffer of at least
  `shuffle_buffer` rows (a "fill"), permutes it by (seed, epoch, rank, worker, fill) and serves it in
  batches, the fill's last one shorter. Under DDP every rank serves as many batches as the smallest
  share (a larger share's last batches wait for another epoch's deal). The loaders are new every epoch
  (the Trainer reloads them: contract.EpochLoaders), so their length is the epoch's own.
- **stepping=fast**: the training loader's batches are served `stepping.batches` at a time (stepping.Grouped:
  the same batches, in the same order), one Lightning step taking them all; each epoch has a count of
  batches of its own (each fill's last one is shorter), which plan() sums for max_steps and OneCycleLR.
- **Resume**: a worker's position (its fill and the batches served from it) is its dataset's state, which
  torchdata's StatefulDataLoader keeps and Lightning checkpoints; a resumed fill is read again.
"""

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from pyarrow import csv, parquet
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from litlab.checks import TASKS
from litlab.data.base import SHUFFLES, asked_of, check_classes, check_sizes, shift_and_scale, split_sizes
from litlab.data.files import FLOAT32_MAX, require
from litlab.data.table import (
    MAX_CLASSES,
    delimiter_of,
    feature_columns,
    numeric,
    target_hint,
    target_tasks,
)
from litlab.errors import ConfigError, flat
from litlab.stepping import Grouped

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
STREAM_BATCH = 8192  # rows of a batch where data.batch_size=null (the whole split) cannot stream
GROUP_ROWS = 1 << 17  # rows of a row group where the template writes Parquet (a converted CSV)


def mix(index: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of each row index, offset by the seed: a bijection on uint64 that scatters neighbours."""
    z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def thresholds(n: int, seed: int, ks: tuple[int, int], chunk: int = 1 << 18) -> tuple[int, int]:
    """(t1, t2): exactly ks[0] of the row indices 0 .. n - 1 hash below t1, and ks[0] + ks[1] below t2
    (0 <= ks[0] + ks[1] < n). Two passes over the indices (a histogram of the hashes' top 16 bits, then
    the bucket each threshold falls in); no hash per row is held."""
    wanted = (ks[0], ks[0] + ks[1])
    counts = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, n, chunk):
        top = mix(np.arange(start, min(n, start + chunk)), seed) >> np.uint64(48)
        counts += np.bincount(top.astype(np.int64), minlength=1 << 16)
    below = np.concatenate([[0], np.cumsum(counts)])  # below[b]: hashes in the buckets before b
    buckets = {k: int(np.searchsorted(below, k)) - 1 for k in wanted if k}
    inside: dict[int, list[np.ndarray]] = {b: [] for b in buckets.values()}
    for start in range(0, n, chunk):
        h = mix(np.arange(start, min(n, start + chunk)), seed)
        for b, found in inside.items():
            found.append(h[(h >> np.uint64(48)) == np.uint64(b)])
    cut = {k: int(np.sort(np.concatenate(inside[b]))[k - below[b] - 1]) + 1 for k, b in buckets.items()}
    return cut.get(wanted[0], 0), cut.get(wanted[1], 0)


@dataclass(frozen=True)
class Unit:
    """One Parquet row group: its file, its index in the file, its first row's index in the table."""

    path: str
    group: int
    start: int
    rows: int


def parquet_of(path: Path) -> Path:
    """The Parquet file or directory to stream: a CSV or TSV is converted once, beside it (name.csv.parquet,
    again where the CSV is newer), in record batches of bounded memory."""
    if path.is_dir() or path.suffix in (".parquet", ".pq"):
        return path
    target = path.with_name(path.name + ".parquet")
    if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    log.info(f"data=table: converting {path} to {target} once, to stream it")
    parse = csv.ParseOptions(delimiter=delimiter_of(path))
    try:  # numbers as float64 in every block (the first block's guess of int64 would refuse 1.5 later)
        first = csv.open_csv(path, parse_options=parse).read_next_batch()
        types = {f.name: pa.float64() if numeric(f.type) else pa.string() for f in first.schema}
        options = csv.ConvertOptions(column_types=types)
        reader = csv.open_csv(path, parse_options=parse, convert_options=options)
        partial = target.with_name(target.name + ".part")
        with parquet.ParquetWriter(partial, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch, row_group_size=GROUP_ROWS)
        partial.replace(target)
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(
            f"{path} could not be streamed ({flat(str(e))[:200]}): fix it, or read it whole with "
            "data.stream=false"
        ) from e
    return target


def units_of(path: Path) -> list[Unit]:
    """The row groups of a Parquet file, or of every Parquet file below a directory (in name order)."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".pq")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"data.path={path} holds no .parquet files")
    units, start = [], 0
    for file in files:
        try:
            meta = parquet.ParquetFile(file).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise ConfigError(f"{file} is not a readable Parquet file ({flat(str(e))[:160]})") from e
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            if rows:
                units.append(Unit(str(file), group, start, rows))
                start += rows
    return units


def split_labels(split: tuple, start: int, rows: int) -> np.ndarray:
    """0 train, 1 val, 2 test, for the rows start .. start + rows - 1."""
    index = np.arange(start, start + rows, dtype=np.int64)
    if split[0] == "order":  # the first rows train, then val, then test
        _, n_train, n_val = split
        return (index >= n_train).astype(np.int8) + (index >= n_train + n_val)
    _, seed, t1, t2 = split
    if not t2:  # nothing held out: no hashing
        return np.zeros(rows, dtype=np.int8)
    h = mix(index, seed)
    return (h < np.uint64(t1)).astype(np.int8) * 1 + ((h >= np.uint64(t1)) & (h < np.uint64(t2))) * 2


@dataclass(frozen=True)
class Layout:
    """How a row becomes model inputs and a target: the feature columns in order, each categorical column's
    levels (one-hot, in place), the target's classes (its sorted distinct values) and the task."""

    columns: tuple[str, ...]
    levels: dict[str, np.ndarray]
    target: str
    classes: np.ndarray
    task: str = "regression"

    @property
    def inputs(self) -> list[str]:
        """The model's input names: a column's, or column=level for each one-hot level."""
        return [
            n
            for c in self.columns
            for n in ([f"{c}={v}" for v in self.levels[c]] if c in self.levels else [c])
        ]

    def fill(self, out: np.ndarray, rows: pa.Table) -> None:
        """Write the inputs of these rows into out, float32 [features, rows]: a feature a row of it, so that
        each column is one contiguous copy (the values as float32 holds them, as read in memory)."""
        j = 0
        for name in self.columns:
            values = rows.column(name).to_numpy(zero_copy_only=False)
            if name in self.levels:  # one row per level: 1 where the value is that level
                width = len(self.levels[name])
                np.equal(
                    self.levels[name][:, None], values[None, :], out=out[j : j + width], casting="unsafe"
                )
                j += width
            else:
                out[j] = values
                j += 1

    def y(self, rows: pa.Table) -> Tensor:
        """Numbers float32 [rows, 1], 0/1 labels float32 [rows, 1] (the second class is 1), or class indices
        int64 [rows]."""
        values = rows.column(self.target).to_numpy(zero_copy_only=False)
        if self.task == "regression":
            return torch.from_numpy(values.astype(np.float32)).unsqueeze(1)
        index = torch.from_numpy(np.searchsorted(self.classes, values).astype(np.int64))
        return index.float().unsqueeze(1) if self.task == "binary" else index


class Moments:
    """Count, mean and sum of squared deviations per column, in float64, merged batch by batch (Chan et
    al.'s pairwise update: stable over any number of rows)."""

    def __init__(self, width: int):
        self.n, self.mean, self.m2 = 0, np.zeros(width), np.zeros(width)

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        x = x.astype(np.float64)
        n, mean = len(x), x.mean(0)
        delta, total = mean - self.mean, self.n + n
        self.m2 += ((x - mean) ** 2).sum(0) + delta**2 * self.n * n / total
        self.mean += delta * n / total
        self.n = total

    def std(self) -> np.ndarray:
        """The unbiased standard deviation, as torch's std of the split in memory."""
        return np.sqrt(self.m2 / max(self.n - 1, 1))


def check_cells(rows: pa.Table, names: list[str], unit: Unit, path: Path) -> None:
    """Every cell of these columns present, and those of numeric ones finite numbers float32 holds."""
    for name in names:
        column = rows.column(name)
        bad = column.is_null().to_numpy(zero_copy_only=False)
        if numeric(column.type):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            bad = bad | ~np.isfinite(values) | (np.abs(values) >= FLOAT32_MAX)
        if bad.any():
            row = int(np.argmax(bad))
            raise ConfigError(
                f"{path}, row {unit.start + row + 1}, column {name!r}: {column[row].as_py()!r} is not a "
                "finite number that float32 holds; fill or drop that row"
            )


@dataclass
class Scan:
    """The pass before training: each unit's rows per split, the training rows' moments, the levels."""

    layout: Layout
    counts: np.ndarray  # [units, 3]: rows in train, val, test
    mean: np.ndarray
    std: np.ndarray
    numeric_target: bool
    rows_per_class: np.ndarray  # rows of each of layout.classes


def scan(
    units: list[Unit], path: Path, columns: list[str], categorical: list[str], target: str, split: tuple
) -> Scan:
    """One pass over every row, in float64: checks every cell, counts each unit's rows per split, finds the
    levels of categorical columns and the target's values, and the moments of the training rows (numeric
    columns directly; one-hot columns from their levels' counts)."""
    numbers = [c for c in columns if c not in categorical]
    moments, counts = Moments(len(numbers)), np.zeros((len(units), 3), dtype=np.int64)
    level_counts: dict[str, dict] = {c: {} for c in categorical}  # training rows of each level
    seen: dict[str, set] = {c: set() for c in categorical}
    classes: dict | None = {}  # target value -> rows, while there are few enough to be classes
    files: dict[str, parquet.ParquetFile] = {}
    for i, unit in enumerate(units):
        reader = files.setdefault(unit.path, parquet.ParquetFile(unit.path))
        rows = reader.read_row_group(unit.group, columns=[*columns, target])
        check_cells(rows, [*columns, target], unit, path)
        labels = split_labels(split, unit.start, unit.rows)
        counts[i] = np.bincount(labels, minlength=3)
        train = labels == 0
        if numbers:
            x = np.stack([rows.column(c).to_numpy(zero_copy_only=False) for c in numbers])
            # the values as float32 holds them, as in memory
            moments.add(x.astype(np.float32, copy=False)[:, train].T)
        for name in categorical:
            values = rows.column(name).to_numpy(zero_copy_only=False)
            seen[name].update(np.unique(values).tolist())
            for level, n in zip(*np.unique(values[train], return_counts=True), strict=True):
                level_counts[name][level] = level_counts[name].get(level, 0) + int(n)
        if classes is not None:
            values, n = np.unique(rows.column(target).to_numpy(zero_copy_only=False), return_counts=True)
            for value, k in zip(values.tolist(), n.tolist(), strict=True):
                classes[value] = classes.get(value, 0) + k
            classes = classes if len(classes) <= MAX_CLASSES else None
    levels = {c: np.array(sorted(seen[c])) for c in categorical}
    mean, std, k = [], [], 0
    n_train, number_std = int(counts[:, 0].sum()), moments.std()
    for name in columns:  # in the model's order: one-hot levels from their counts, numbers from moments
        if name in levels:
            p = np.array([level_counts[name].get(v, 0) for v in levels[name].tolist()]) / max(n_train, 1)
            mean += list(p)
            std += list(np.sqrt(p * (1 - p) * n_train / max(n_train - 1, 1)))
        else:
            mean.append(moments.mean[k])
            std.append(number_std[k])
            k += 1
    values = np.array(sorted(classes)) if classes is not None else np.array([])
    rows_per_class = np.array([classes[v] for v in values.tolist()]) if classes is not None else np.array([])
    layout = Layout(tuple(columns), levels, target, values)
    numeric_target = numeric(parquet.ParquetFile(units[0].path).schema_arrow.field(target).type)
    if classes is None and not numeric_target:
        raise ConfigError(f"data.target={target} holds more than {MAX_CLASSES} words: too many classes")
    return Scan(layout, counts, np.array(mean), np.array(std), numeric_target, rows_per_class)


class TableStream(IterableDataset):
    """One split's batches for one epoch, on one rank: the units dealt to it and, in it, to each worker;
    read in fills of at least `buffer` rows, permuted (shuffle=rows), served in batches."""

    def __init__(self, table: "StreamedTable", split: int, epoch: int, rank: int, world: int, workers: int):
        self.units, self.layout, self.counts = table.units, table.layout, table.counts[:, split]
        self.split, self.split_rule = split, table.split
        self.shift, self.inverse = table.x_shift.numpy(), table.x_scale.reciprocal().numpy()
        self.batch_size, self.buffer, self.seed = table.batch_size, table.shuffle_buffer, table.split_seed
        self.shuffle = table.shuffle if split == 0 else None
        self.epoch, self.rank, self.world, self.workers = epoch, rank, world, max(workers, 1)
        self.position, self.resume = (0, 0), None  # (fill, batches served of it); a checkpoint's

    def deal(self, rank: int) -> list[list[list[int]]]:
        """Each worker's fills (lists of unit indices) on this rank: units in a seeded order, dealt in turn to
        the ranks, then to the workers; each fill whole units of at least `buffer` rows."""
        order = np.arange(len(self.units))
        if self.shuffle:
            order = torch.randperm(
                len(order), generator=torch.Generator().manual_seed(hash((self.seed, self.epoch)))
            ).numpy()
        mine = [int(u) for u in order[rank :: self.world] if self.counts[u]]
        fills = []
        for w in range(self.workers):
            fills.append([])
            rows = 0
            for u in mine[w :: self.workers]:
                if not fills[w] or rows >= self.buffer:
                    fills[w].append([])
                    rows = 0
                fills[w][-1].append(u)
                rows += int(self.counts[u])
        return fills

    def batches(self, fill: list[int]) -> int:
        return math.ceil(int(self.counts[fill].sum()) / self.batch_size)

    def caps(self) -> list[int]:
        """The batches each worker of this rank serves: all of its own, or under DDP as many as make every
        rank serve the same number (the workers' batches arrive in turn; the last ones wait)."""
        served = [[sum(map(self.batches, fills)) for fills in self.deal(r)] for r in range(self.world)]
        mine = served[self.rank]
        total = min(sum(s) for s in served)
        caps, turn = [0] * self.workers, 0
        while sum(caps) < total:
            if caps[turn] < mine[turn]:
                caps[turn] += 1
            turn = (turn + 1) % self.workers
        return caps

    def __len__(self) -> int:
        return sum(self.caps())

    def state_dict(self) -> dict:
        """Where this worker is: the epoch, its fill, and the batches served of that fill."""
        return {"epoch": self.epoch, "fill": self.position[0], "served": self.position[1]}

    def load_state_dict(self, state: dict) -> None:
        self.resume = state

    def read(self, fill: list[int]) -> tuple[np.ndarray, Tensor]:
        """The fill's rows of this split: normalised float32 inputs [rows, features] and their targets. Each
        row group is read a feature a row (each column one contiguous copy), then transposed into the fill
        (torch's blocked copy), so that a minibatch of the fill's rows is 256-byte runs at 64 features."""
        units = [self.units[u] for u in fill]
        x = np.empty((int(self.counts[fill].sum()), len(self.layout.inputs)), dtype=np.float32)
        part = np.empty((x.shape[1], max(unit.rows for unit in units)), dtype=np.float32)
        ys, at = [], 0
        for unit in units:
            if unit.path not in self.files:
                self.files[unit.path] = parquet.ParquetFile(unit.path)
            rows = self.files[unit.path].read_row_group(
                unit.group, columns=[*self.layout.columns, self.layout.target]
            )
            keep = split_labels(self.split_rule, unit.start, unit.rows) == self.split
            rows = rows.filter(pa.array(keep)) if not keep.all() else rows
            n = rows.num_rows
            self.layout.fill(part[:, :n], rows)
            torch.from_numpy(x[at : at + n]).copy_(torch.from_numpy(part[:, :n]).T)
            ys.append(self.layout.y(rows))
            at += n
        # (x - shift) * (1 / scale), as in memory, to the bit; nothing to do where data.scaling=none
        if self.shift.any():
            x -= self.shift
        if (self.inverse != 1).any():
            x *= self.inverse
        return x, torch.cat(ys)

    def __iter__(self):
        info = get_worker_info()
        w = info.id if info is not None else 0
        fills, cap = self.deal(self.rank)[w], self.caps()[w]
        start, skip = (0, 0)
        if self.resume is not None and self.resume["epoch"] == self.epoch:
            start, skip = self.resume["fill"], self.resume["served"]
        self.resume, self.files = None, {}
        served = sum(self.batches(f) for f in fills[:start]) + skip
        for f in range(start, len(fills)):
            x, y = self.read(fills[f])
            order = None
            if self.shuffle == "rows":  # each batch gathered from the fill's rows in a seeded permutation
                generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.rank, w, f)))
                order = torch.randperm(len(y), generator=generator)
            for j in range(skip, self.batches(fills[f])):
                if served >= cap:
                    return
                served += 1
                self.position = (f, j + 1)
                rows = slice(j * self.batch_size, (j + 1) * self.batch_size)
                if order is not None:
                    yield torch.from_numpy(np.take(x, order[rows].numpy(), axis=0)), y[order[rows]]
                elif info is not None:  # to another process a batch of its own, not a view of the fill
                    yield torch.from_numpy(x[rows].copy()), y[rows].clone()
                else:
                    yield torch.from_numpy(x[rows]), y[rows]
            skip = 0


class StreamedTable(L.LightningDataModule):
    """data=table with data.stream (auto where too large for memory, or true): the same keys as TableData,
    the splits and batches streamed (see the module's docstring). It gives the contract's Data, PosesTasks,
    Normalised, Described, EpochLoaders, SplitLoaders and FastBatches, not WholeSplits."""

    loaders_per_epoch = True  # contract.EpochLoaders: the Trainer makes the loaders anew every epoch
    full_batch = False  # contract.FastBatches: batches of a fill, never the whole split

    def __init__(
        self,
        path: str,
        target: str,
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        contiguous: bool = False,
        task: str | None = None,
        scaling: str | float = "standardize",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        batch_size: int | None = 8192,
        shuffle: str = "rows",
        split_seed: int = 0,
        stream: bool | str = True,
        shuffle_buffer: int = 1_000_000,
        num_workers: int = 0,
        why: str = "data.stream=true",
    ):
        super().__init__()
        if batch_size is None:  # the whole split as one batch would be the whole table in memory
            batch_size = STREAM_BATCH
            why += (
                f"; batches of {STREAM_BATCH} rows (data.batch_size=null, the whole split, does not stream)"
            )
        if shuffle not in SHUFFLES or task not in (None, *TASKS) or shuffle_buffer < 1 or num_workers < 0:
            raise ConfigError(
                f"data.shuffle={shuffle}, data.task={task}, data.shuffle_buffer={shuffle_buffer}, "
                f"data.num_workers={num_workers}: need shuffle rows or batches, a task of "
                f"{', '.join(TASKS)} or null, shuffle_buffer >= 1, num_workers >= 0"
            )
        self.source = Path(path)
        self.target, self.features, self.categorical = target, features, list(categorical or [])
        self.contiguous, self.asked, self.scaling = contiguous, task, scaling
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.shuffle, self.split_seed = batch_size, shuffle, split_seed
        self.shuffle_buffer, self.num_workers, self.why = shuffle_buffer, num_workers, why
        self.name = f"table {self.source.name}"
        self.task: str | None = None
        self.found: Scan | None = None
        self.group = 0  # stepping=fast (serve_steps): batches per training item

    def survey(self) -> Scan:
        """The pass before training, once: units, splits, levels, moments."""
        if self.found is None:
            path = parquet_of(require(self.source, "table") if not self.source.is_dir() else self.source)
            self.units = units_of(path)
            n = sum(u.rows for u in self.units)
            sizes = split_sizes(n, self.val_fraction, self.test_fraction)
            check_sizes(self.name, n, sizes, self.val_fraction, self.test_fraction)
            if self.contiguous:
                self.split = ("order", sizes["train"], sizes["val"])
            else:
                self.split = (
                    "hash",
                    self.split_seed,
                    *thresholds(n, self.split_seed, (sizes["val"], sizes["test"])),
                )
            schema = parquet.ParquetFile(self.units[0].path).schema_arrow
            if self.target not in schema.names:
                raise ConfigError(
                    f"data.target={self.target} is not a column of {path}: its columns are "
                    f"{', '.join(schema.names)}"
                )
            columns = feature_columns(schema, self.target, self.features, self.categorical, path)
            self.found = scan(self.units, path, columns, self.categorical, self.target, self.split)
        return self.found

    def offered(self) -> list[str]:
        """The tasks its target's values pose (as TableData's), or the one data.task asks for."""
        found = self.survey()
        classes = found.layout.classes
        poses = target_tasks(classes, found.numeric_target) if len(classes) else ["regression"]
        return asked_of(poses, self.asked, self.name)

    def pose(self, task: str) -> None:
        self.task = task

    def mismatch_hint(self) -> str:
        return target_hint(self.target)

    def settled(self) -> dict:
        """contract.Settled: streamed (data.stream=auto decided so, or true)."""
        return {"stream": True}

    def setup(self, stage: str | None = None) -> None:
        found = self.survey()
        if self.task is None:
            self.pose(self.offered()[0])
        if self.task != "regression":
            check_classes(self.name, self.task, len(found.layout.classes), int(found.rows_per_class.sum()))
        if self.task != "regression" and found.rows_per_class.min() < 2:
            label = found.layout.classes[int(np.argmin(found.rows_per_class))]
            raise ConfigError(
                f"data.target={self.target}: class {label!r} has only 1 row, too few to learn and to hold "
                "out: drop it, or merge it into another class"
            )
        self.layout = replace(found.layout, task=self.task)
        self.counts = found.counts
        self.in_features = len(self.layout.inputs)
        self.out_features = len(self.layout.classes) if self.task == "multiclass" else 1
        mean, std = (torch.from_numpy(m).float() for m in (found.mean, found.std))
        self.x_shift, self.x_scale = shift_and_scale(self.scaling, self.in_features, lambda: (mean, std))

    @property
    def input_names(self) -> list[str]:
        return self.layout.inputs

    @property
    def classes(self) -> np.ndarray:
        return self.layout.classes

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {int(n)}" for s, n in zip(SPLITS, self.counts.sum(0), strict=True) if n)
        return (
            f"{self.name}, streamed ({self.why}; {len(self.units)} row groups): {self.task}, "
            f"{self.in_features} inputs -> {self.out_features} outputs ({sizes})"
        )

    def serve_steps(self, group: int, epochs_per_item: int) -> None:
        """contract.FastBatches: `group` batches per training item (stepping=fast). A Lightning epoch is one
        data epoch here (the loaders are each epoch's own): epochs_per_item is always 0."""
        self.group = group

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """contract.FastBatches: the batches of training epoch `epoch` on one device (its deal's fills)."""
        return len(TableStream(self, 0, epoch, 0, 1, self.num_workers))

    def loader(self, split: str, epoch: int = 0, rank: int = 0, world: int = 1) -> StatefulDataLoader:
        stream = TableStream(self, SPLITS.index(split), epoch, rank, world, self.num_workers)
        return StatefulDataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def split_loader(self, split: str) -> StatefulDataLoader | list:
        """contract.SplitLoaders: every row of a split, whatever the rank (the cockpit's passes)."""
        return self.loader(split) if self.counts[:, SPLITS.index(split)].sum() else []

    def epoch_loader(self, split: str) -> StatefulDataLoader | Grouped | list:
        if not self.counts[:, SPLITS.index(split)].sum():
            return []
        trainer = self.trainer
        if trainer is None:
            return self.loader(split)
        loader = self.loader(split, trainer.current_epoch, trainer.global_rank, trainer.world_size)
        if split == "train" and self.group:  # stepping=fast
            return Grouped(loader, self.group, trainer.current_epoch, trainer.strategy.batch_to_device)
        return loader

    def train_dataloader(self) -> StatefulDataLoader | Grouped | list:
        return self.epoch_loader("train")

    def val_dataloader(self) -> StatefulDataLoader | list:
        return self.epoch_loader("val")

    def test_dataloader(self) -> StatefulDataLoader | list:
        return self.epoch_loader("test")
