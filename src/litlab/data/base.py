"""The shared DataModule: read once, split with a seeded generator, normalise, serve tensor slices."""

import ctypes
import math
import sys
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from litlab.checks import TASKS
from litlab.data.contract import CLASSIFICATION_DATA
from litlab.errors import ConfigError

SHUFFLES = ("rows", "batches")
HUGE_PAGE, MADV_COLLAPSE = 2 << 20, 25  # Linux's transparent huge page and madvise(2) advice (6.1+)
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Rows of each split: round(n * fraction) held out, the rest trains."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def check_sizes(name: str, n: int, sizes: dict[str, int], val_fraction: float, test_fraction: float) -> None:
    """Every split in use holds at least 2 rows (a fit, a standardisation, r2: one row is not enough)."""
    if n < 2:
        raise ConfigError(
            f"data={name} yields {max(n, 0)} rows from its file and settings: a fit needs at least 2; check "
            "the file (data.path) and the settings that make rows of it"
        )
    if sizes["train"] < 2:
        raise ConfigError(
            f"data={name}: of its {n} rows, {sizes['train']} are left for training "
            f"(data.val_fraction={val_fraction}, data.test_fraction={test_fraction}): a fit "
            "needs at least 2; use more rows or a smaller data.val_fraction"
        )
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction > 0 and sizes[split] < 2:
            raise ConfigError(
                f"data.{split}_fraction={fraction} of {n} rows holds out {sizes[split]}: its metrics "
                f"need at least 2 rows; use more rows, a larger data.{split}_fraction, or "
                f"data.{split}_fraction=0 for none"
            )


def check_classes(name: str, task: str, classes: int, rows: int) -> None:
    """A classification target holds at least two classes (torchmetrics would fail on one, in a traceback)."""
    if classes < 2:
        raise ConfigError(
            f"data={name}: its {task} target has one class in all {rows} rows: a classifier needs at least "
            "two; check the file (data.path) or choose another target (data.target=)"
        )


def asked_of(poses: list[str], asked: str | None, name: str) -> list[str]:
    """The tasks data poses, or the one that data.task asks for (one line where it poses no such task)."""
    if asked is None:
        return poses
    if asked not in poses:
        raise ConfigError(
            f"data.task={asked}: data={name} poses a {' or '.join(poses)} task with these settings"
        )
    return [asked]


def shift_and_scale(
    scaling: str | float, width: int, moments: Callable[[], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """(shift, scale) of the input normalisation: none, standardize (the training rows' mean and standard
    deviation, from `moments`, computed only for it) or a positive factor (the book's 0.1)."""
    zero, one = torch.zeros(width), torch.ones(width)
    if scaling == "none":
        return zero, one
    if scaling == "standardize":
        mean, std = moments()
        return mean, torch.where(std > 0, std, one)
    if isinstance(scaling, int | float) and scaling > 0:
        return zero, one / scaling
    raise ConfigError(f"data.scaling={scaling!r} is not one of none, standardize or a positive factor")


# The take of a full batch: the split's tensors themselves, no view made each of thousands of epochs.
WHOLE = slice(None)


def on_huge_pages(tensors: list[Tensor]) -> int:
    """Move the CPU memory of these tensors onto 2 MiB pages, every whole 2 MiB of it (Linux's
    MADV_COLLAPSE: the kernel copies it into huge pages, one at a time), and return the bytes on them. The
    CPU then translates an address per huge page instead of per 4 KiB page, so a minibatch of random rows
    (or a 2 MB slice) of a big split misses the TLB far less: an epoch of 2M x 64 rows was ~15% faster
    here with shuffle=rows and with batches, and steadier; the move costs ~0.3 ms a MB, once. Where the
    kernel cannot (not Linux, before 6.1, huge pages set to never by the machine's owner, none free),
    the memory stays as it was. Small data (under 2 MiB) has no whole huge page: nothing to do."""
    if sys.platform != "linux" or not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text():
        return 0
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    storages = [t.untyped_storage() for t in tensors if t.device.type == "cpu"]
    moved = 0
    for start, end in {(s.data_ptr(), s.data_ptr() + s.nbytes()) for s in storages}:  # views: once
        first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE  # whole pages inside
        if last > first and madvise(first, last - first, MADV_COLLAPSE) == 0:
            moved += last - first
    return moved


class EpochTakes:
    """The takes of consecutive data epochs' minibatches (`draw(epoch)` each epoch's, `per_epoch` of
    them), the first `count`: drawn as the step starts, once max_steps has cut it, so that a Lightning step
    of k epochs cut short draws no permutation it does not use (the run's last: 128 epochs' of 10,000 rows
    for 16 used made its Lightning epoch 1.7x slower per data epoch). All of the step's are drawn before
    its first optimizer step: on a GPU each permutation's copy to the device waits for the queued steps."""

    def __init__(self, draw: Callable[[int], list], epochs: range, per_epoch: int, count: int):
        self.draw, self.epochs, self.per_epoch, self.count = draw, epochs, per_epoch, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, cut: slice) -> "EpochTakes":  # takes[:n]: max_steps cuts the step short
        return EpochTakes(self.draw, self.epochs, self.per_epoch, len(range(self.count)[cut]))

    def __iter__(self) -> Iterator[Tensor | slice]:
        used = self.epochs[: -(-self.count // self.per_epoch)]
        return islice([t for e in used for t in self.draw(e)], self.count)


class Steps:
    """The minibatches of one fast Lightning step (src/litlab/stepping.py): rows or slices of the split,
    gathered one at a time as they are stepped through, never all at once. Not a collections Sequence, so
    that Lightning passes it on untouched."""

    def __init__(self, x: Tensor, y: Tensor, takes: list[Tensor | slice] | EpochTakes):
        self.x, self.y, self.takes = x, y, takes

    def __len__(self) -> int:
        return len(self.takes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Steps(self.x, self.y, self.takes[i])
        return self.minibatch(self.takes[i])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return map(self.minibatch, self.takes)

    def minibatch(self, take: Tensor | slice) -> tuple[Tensor, Tensor]:
        return (self.x, self.y) if take is WHOLE else (self.x[take], self.y[take])


class TensorBatches:
    """Whole-tensor batches for one rank, no per-sample collate. Minibatches are drawn as
    DataLoader(shuffle=True) draws them: every epoch a new permutation of the rows, from (seed, epoch)
    (shuffle="rows"); or, faster (contiguous slices, no gather), fixed slices of the split (shuffled once,
    at the split) visited in a new order every epoch (shuffle="batches"): each minibatch then holds the
    same rows in every epoch.

    For fast stepping an item is `Steps`: group > 0 consecutive minibatches of one epoch, or, with
    epochs_per_item = k > 0, every minibatch of k consecutive epochs (one Lightning epoch). Otherwise
    (group 0) an item is one minibatch."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: str | None,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        group: int = 0,
        epochs_per_item: int = 0,
    ):
        per_rank = x.shape[0] // world_size  # equal shards keep DDP ranks in step
        self.x = x[rank * per_rank : (rank + 1) * per_rank]
        self.y = y[rank * per_rank : (rank + 1) * per_rank]
        self.batch_size = min(batch_size, per_rank)
        self.shuffle = shuffle
        self.group, self.epochs_per_item = group, epochs_per_item
        self.seed, self.epoch = seed, 0
        # Lightning calls dataloader.sampler.set_epoch(epoch) before each epoch, as for a DistributedSampler
        # (and reads .batch_sampler beside .sampler): the order then depends on the epoch alone, so a
        # resumed run visits the batches as an unbroken one does.
        self.sampler, self.batch_sampler = self, None
        self.taken = (0, 0)  # (epoch, items of it served so far)
        self.resume_at: tuple[int, int] | None = None  # from a checkpoint: serve that epoch from there on

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self) -> int:
        return math.ceil(self.x.shape[0] / self.batch_size)

    def __len__(self) -> int:
        if self.epochs_per_item:
            return 1
        return math.ceil(self.num_batches() / self.group) if self.group else self.num_batches()

    def takes(self, epoch: int) -> list[Tensor | slice]:
        """Which rows each minibatch of this data epoch holds, in the order they are visited."""
        n, size = self.num_batches(), self.batch_size
        if n == 1:
            return [WHOLE]
        if not self.shuffle:
            return [slice(i * size, (i + 1) * size) for i in range(n)]
        generator = torch.Generator().manual_seed(hash((self.seed, epoch)))
        if self.shuffle == "rows":
            rows = torch.randperm(len(self.x), generator=generator).to(self.x.device)
            return list(rows.split(size))
        order = torch.randperm(n, generator=generator).tolist()
        return [slice(i * size, (i + 1) * size) for i in order]

    def state_dict(self) -> dict:
        """Where the pass over the training split is, in every checkpoint (Lightning's fit loop asks a
        loader that has state_dict and load_state_dict): a run stopped mid-epoch by SIGTERM or Ctrl-C
        resumes with the items of that epoch it had not served, not from the epoch's start."""
        return {"epoch": self.taken[0], "served": self.taken[1]}

    def load_state_dict(self, state: dict) -> None:
        self.resume_at = state["epoch"], state["served"]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor] | Steps]:
        epoch, k = self.epoch, self.epochs_per_item
        self.epoch += 1  # a new order on the next pass also where nobody calls set_epoch
        skip = self.resume_at[1] if self.resume_at and self.resume_at[0] == epoch else 0
        self.resume_at = None
        for served, item in enumerate(self.items(epoch, k)[skip:], skip + 1):
            self.taken = epoch, served
            yield item

    def items(self, epoch: int, k: int) -> Steps | list[Steps]:
        """The items of one pass, gathered only as they are served."""
        if k:  # Lightning epoch `epoch` holds data epochs epoch * k ... epoch * k + k - 1
            epochs = range(epoch * k, epoch * k + k)
            nb = self.num_batches()
            return [Steps(self.x, self.y, EpochTakes(self.takes, epochs, nb, k * nb))]
        takes = self.takes(epoch)
        if not self.group:
            return Steps(self.x, self.y, takes)
        return [Steps(self.x, self.y, takes[i : i + self.group]) for i in range(0, len(takes), self.group)]


class TensorDataModule(L.LightningDataModule):
    """Base for the datasets: subclasses implement `read()` and say which tasks they pose (`poses`).

    It has every capability of the data contract (data/contract.py): several tasks, whole splits, fast
    batches, input normalisation, its own description, model arguments."""

    name = "data"
    contiguous = False  # True: train, val, test are consecutive blocks in row order (time series, text)

    def __init__(
        self,
        task: str | None = None,
        scaling: str | float = "standardize",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        batch_size: int | None = None,
        shuffle: str = "rows",
        split_seed: int = 0,
    ):
        super().__init__()
        if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 - val_fraction:
            raise ConfigError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in [0, 1) "
                "and leave rows for training: try data.val_fraction=0.2"
            )
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1, or null for the whole split")
        if shuffle not in SHUFFLES:
            raise ConfigError(f"data.shuffle={shuffle!r} is not one of {', '.join(SHUFFLES)}")
        if task is not None and task not in TASKS:
            raise ConfigError(f"data.task={task} is not a task: choose one of {', '.join(TASKS)}, or null")
        self.shuffle = shuffle
        self.asked = task  # data.task: the one task to pose of those it can
        self.task: str | None = None  # the model's tasks choose (contract.choose_task), else setup()
        self.scaling = scaling
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.batch_size = batch_size
        self.split_seed = split_seed
        # stepping=fast (serve_steps): minibatches, or data epochs, per Lightning step
        self.group, self.epochs_per_item = 0, 0
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    def poses(self) -> list[str]:
        """The tasks this data can pose with its settings, the preferred first."""
        return ["regression"]

    def offered(self) -> list[str]:
        """The tasks it poses, or the one that data.task asks for (one line where it poses no such task)."""
        return asked_of(self.poses(), self.asked, self.name)

    def pose(self, task: str) -> None:
        self.task = task

    def mismatch_hint(self) -> str:
        """What to change on the data's side when no offered task fits the model."""
        return f"for classes use {CLASSIFICATION_DATA}"

    def read(self) -> tuple[Tensor, Tensor]:
        """All rows as float32 inputs [n, d] and targets: float32 [n, k] or int64 class labels [n]."""
        raise NotImplementedError

    @property
    def in_features(self) -> int:
        return self.splits["train"][0].shape[1]

    @property
    def out_features(self) -> int:
        """Regression outputs, 1 for a binary logit, or the number of classes."""
        y = self.splits["train"][1]
        if self.task == "regression":
            return y.shape[1]
        return 1 if self.task == "binary" else self.num_classes

    def model_kwargs(self) -> dict:
        """What the model may take from the data beyond task and sizes."""
        return {}

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None or self.batch_size >= len(self.splits["train"][0])

    def setup(self, stage: str | None = None) -> None:
        if self.splits:  # train() sets up before the model exists; Lightning calls again
            return
        if self.task is None:
            self.pose(self.offered()[0])
        x, y = self.read()
        if self.task != "regression":
            check_classes(self.name, self.task, len(y.unique()), len(y))
        if self.task == "multiclass":
            self.num_classes = int(y.max()) + 1
        parts = self.split_indices(x.shape[0]).items()
        if self.contiguous:  # blocks of rows: views, no copy of the data
            self.splits = {
                k: (x[idx[0] : idx[-1] + 1], y[idx[0] : idx[-1] + 1]) for k, idx in parts if len(idx)
            }
        else:  # copies: the original rows are dropped below, before normalising in place
            self.splits = {k: (x[idx], y[idx]) for k, idx in parts if len(idx)}
        del x, y
        self.x_shift, self.x_scale = self.input_normalisation(self.splits["train"][0])
        # Multiply by 1/scale: for the book's factor this is exactly its t_u * 0.1 in float32.
        if self.scaling != "none":  # also keeps integer index inputs (text) as they are
            for xs, _ in self.splits.values():
                xs.sub_(self.x_shift).mul_(self.x_scale.reciprocal())

    def split_indices(self, n: int) -> dict[str, Tensor]:
        """Row indices of each split: a seeded shuffle, or consecutive blocks train | val | test."""
        sizes = split_sizes(n, self.val_fraction, self.test_fraction)
        check_sizes(self.name, n, sizes, self.val_fraction, self.test_fraction)
        n_val, n_test = sizes["val"], sizes["test"]
        if self.contiguous:
            n_train = n - n_val - n_test
            order = torch.arange(n)
            return {"train": order[:n_train], "val": order[n_train : n - n_test], "test": order[n - n_test :]}
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        return {"train": order[n_val + n_test :], "val": order[:n_val], "test": order[n_val : n_val + n_test]}

    def input_normalisation(self, x_train: Tensor) -> tuple[Tensor, Tensor]:
        """(shift, scale) so that (x - shift) / scale is the model input; train-split statistics only."""
        one = torch.ones(x_train.shape[1])
        return shift_and_scale(
            self.scaling,
            x_train.shape[1],
            lambda: (x_train.mean(0), x_train.std(0) if len(x_train) > 1 else one),
        )

    def serve_steps(self, group: int, epochs_per_item: int) -> None:
        """stepping=fast: `group` minibatches, or `epochs_per_item` data epochs, per training item."""
        self.group, self.epochs_per_item = group, epochs_per_item

    def batches_per_epoch(self) -> int:
        """Minibatches (optimizer steps) in one training epoch on one device."""
        rows = len(self.splits["train"][0])
        return math.ceil(rows / min(self.batch_size or rows, rows))

    def batches(self, split: str, shuffle: str | None) -> TensorBatches | list:
        if split not in self.splits:
            return []
        x, y = self.splits[split]
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        x, y = x.to(device), y.to(device)
        self.splits[split] = (x, y)  # moved once, then reused every epoch
        on_huge_pages([x, y])
        if split != "train":
            return TensorBatches(x, y, self.batch_size or len(x), shuffle, self.split_seed)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        batch_size, seed, k = self.batch_size or len(x), self.split_seed, self.epochs_per_item
        return TensorBatches(x, y, batch_size, shuffle, seed, rank, world, self.group, k)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """Nothing to move: batches() put the tensors on the trainer's device once (Lightning would walk
        every minibatch of a grouped batch, each step, to find that out)."""
        return batch

    def train_dataloader(self) -> TensorBatches:
        # overfit_batches: the same first batches every epoch (Lightning turns a DataLoader's shuffling off)
        fixed = self.full_batch or (self.trainer is not None and self.trainer.overfit_batches > 0)
        return self.batches("train", shuffle=None if fixed else self.shuffle)

    def val_dataloader(self) -> TensorBatches | list:
        return self.batches("val", shuffle=None)

    def test_dataloader(self) -> TensorBatches | list:
        return self.batches("test", shuffle=None)

    def describe(self) -> str:
        """One line for the console: what is being trained on."""
        sizes = ", ".join(f"{k} {len(v[0])}" for k, v in self.splits.items())
        return f"{self.name}: {self.task}, {self.in_features} inputs -> {self.out_features} outputs ({sizes})"
