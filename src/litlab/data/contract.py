"""The data contract: the little every data module must give, and the optional capabilities that unlock more.

Any LightningDataModule trains, written as Lightning's docs teach (`setup`, `train_dataloader`,
`val_dataloader`, batches of `(x, y)`). What the template needs of it is `Data`: the task it poses and the
input and output sizes. Those come from its attributes or its YAML (`task: regression`, `num_classes: 3`,
where its constructor takes no such argument), else from one training batch (`problem`).

Everything beyond that is a capability, asked for here and nowhere else:

| capability | what it unlocks | without it |
|---|---|---|
| `PosesTasks` | the model's tasks choose among several (wine: a number or classes) | its one task |
| `WholeSplits` | pictures and the optimum from every point, at once | streamed over its loaders |
| `FastBatches` | `stepping=fast` | `stepping=fast` refused in one line |
| `Normalised` | predict.py on raw inputs; the fitted line in original units | predict.py refused |
| `EpochLoaders` | loaders of each epoch's own (a stream's deal of row groups) | loaders made once |
| `SplitLoaders` | the cockpit's passes over every row, also under DDP | the rank's loader |
| `Settled` | settings it decided recorded in the run's config (a table's stream=auto) | - |
| `Described` | its own first console line | task, sizes and where they came from |
| `ModelArguments` | model arguments of its own (text: `language_metrics`) | task and sizes only |
| `Named` | predict.py names inputs by their columns and classes by their labels | x0, x1; class 0, 1 |

TensorDataModule (data/base.py) has them all; a data module of one's own may add any of them."""

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from litlab.checks import DECLARED, check_declared
from litlab.errors import ConfigError

log = logging.getLogger(__name__)

RECORD = "data"  # the key of a checkpoint's record of its data (record)
CLASSIFICATION_DATA = "data=wine, data=text, data=classification or data=regression data.preset=toy6"


class Data(Protocol):
    """What every data module gives the template, after setup: the task it poses (regression | binary |
    multiclass), the width of its inputs, and the model's outputs (targets, 1 for binary, or classes)."""

    task: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Problem:
    """A data module's task and sizes, and where the template learned them (for the console)."""

    task: str
    in_features: int
    out_features: int
    source: str = "its attributes"  # where the template learned them


class PosesTasks(Protocol):
    """Data that can pose several tasks: the first of `offered()` that the model fits is `pose`d."""

    def offered(self) -> list[str]: ...

    def pose(self, task: str) -> None: ...


class WholeSplits(Protocol):
    """Every split in memory as (inputs, targets) model-ready tensors, keyed train / val / test."""

    splits: dict[str, tuple[Tensor, Tensor]]


class FastBatches(Protocol):
    """Batches stepping=fast can serve: several minibatches, or data epochs, per Lightning step. With
    EpochLoaders, batches_per_epoch(epoch) is asked of each epoch (a stream's differ)."""

    full_batch: bool

    def batches_per_epoch(self) -> int: ...

    def serve_steps(self, group: int, epochs_per_item: int) -> None: ...


class Normalised(Protocol):
    """Model inputs are (raw - x_shift) / x_scale, per input column: predict.py takes raw inputs."""

    x_shift: Tensor
    x_scale: Tensor


class EpochLoaders(Protocol):
    """Loaders made anew every epoch (a streamed table's: the deal of its row groups, and so its length, is
    the epoch's): the Trainer reloads them every epoch."""

    loaders_per_epoch: bool


class SplitLoaders(Protocol):
    """A loader of every row of a split, whatever the rank (under DDP the epoch's loaders serve a shard)."""

    def split_loader(self, split: str) -> Iterable: ...


class Settled(Protocol):
    """Settings the module decided as it was built (data=table's stream=auto: true or false), which the run's
    config records, so that a resume, eval.py and predict.py build the data as the run had it."""

    def settled(self) -> dict: ...


class Described(Protocol):
    def describe(self) -> str: ...


class Named(Protocol):
    """Either attribute alone does: `input_names`, the model inputs' names in order (a table's columns,
    `season=2` for a one-hot level); `classes`, the label of each class index (binary: of 0, then of 1)."""

    input_names: list[str]


class ModelArguments(Protocol):
    def model_kwargs(self) -> dict: ...


def provides(obj: object, protocol: type) -> bool:
    """Whether obj has every member a Protocol declares (isinstance, by hasattr: from Python 3.12 a
    runtime-checkable Protocol looks members up statically, and misses what an object holds through
    __getattr__, as an nn.Module holds its submodules)."""
    methods = [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]
    return all(hasattr(obj, name) for name in [*getattr(protocol, "__annotations__", {}), *methods])


class TaskMismatch(ConfigError):
    """The data poses no task that the model fits; train() names the model option in the message."""

    def __init__(self, data: str, offered: list[str], hint: str):
        super().__init__(f"data={data} poses a {' or '.join(offered)} task: {hint}")
        self.data, self.offered, self.hint = data, offered, hint


def name_of(data: L.LightningDataModule) -> str:
    """The data's name for messages: its `name`, else its class's."""
    return str(getattr(data, "name", None) or type(data).__name__)


def split_declared(node: DictConfig, accepted: dict | None) -> tuple[DictConfig, dict]:
    """(the config to build the module from, the problem keys it declares): keys of DECLARED that the
    module's constructor does not take are the template's, never passed on."""
    declared = {k: node[k] for k in DECLARED if k in node and (accepted is not None and k not in accepted)}
    if not declared:
        return node, {}
    check_declared(declared)
    values = OmegaConf.to_container(node, resolve=True)  # resolved here: a copy loses the config's root
    return OmegaConf.create({k: v for k, v in values.items() if k not in declared}), declared


def choose_task(data: L.LightningDataModule, fits: list[str]) -> None:
    """For data that poses several tasks: pose the first one the model fits; TaskMismatch where none does."""
    if not provides(data, PosesTasks):
        return
    offered = data.offered()
    fitting = [t for t in offered if t in fits]
    if not fitting:
        hint = getattr(data, "mismatch_hint", lambda: f"for classes use {CLASSIFICATION_DATA}")()
        raise TaskMismatch(name_of(data), offered, hint)
    data.pose(fitting[0])


def problem(data: L.LightningDataModule, declared: dict, fits: list[str]) -> Problem:
    """The task and sizes of set-up data: declared (YAML keys), else its attributes, else inferred from one
    training batch. One line where nothing can tell (0/1 targets and a model that fits both regression and
    binary, integer labels without their count)."""
    origins = {}  # key -> where it came from, for the console
    known = {}
    for key in DECLARED:
        value = declared.get(key, getattr(data, key, None))
        if value is not None:
            known[key], origins[key] = value, "its YAML" if key in declared else "its attributes"
    task = known.get("task") or ("multiclass" if "num_classes" in known else None)
    size_in = known.get("in_features")
    size_out = known.get("out_features") or (known.get("num_classes") if task == "multiclass" else None)
    if task is None or size_in is None or size_out is None:
        x, y = first_batch(data)
        for key, value in (("task", task), ("in_features", size_in), ("out_features", size_out)):
            if value is None:
                origins[key] = "one training batch"
        task = task or infer_task(data, y, fits)
        size_in = size_in or x.shape[1]
        if size_out is None and task == "multiclass":
            raise ConfigError(
                f"data={name_of(data)} gives integer class labels, and one batch cannot tell how many "
                "classes there are: add num_classes: <count> to its YAML (or give the module a num_classes "
                "attribute)"
            )
        size_out = size_out or (1 if task == "binary" or y.dim() == 1 else y.shape[1])
    check_declared({"task": task, "in_features": size_in, "out_features": size_out})
    if task not in fits:
        raise TaskMismatch(name_of(data), [task], "set data.task= where its targets could pose another")
    return Problem(task, int(size_in), int(size_out), provenance(origins))


def provenance(origins: dict[str, str]) -> str:
    """'num_classes from its attributes; task and in_features from one training batch'."""
    by_origin: dict[str, list[str]] = {}
    for key, origin in origins.items():
        by_origin.setdefault(origin, []).append(key)
    return "; ".join(
        f"{', '.join(keys[:-1])} and {keys[-1]} from {origin}"
        if len(keys) > 1
        else f"{keys[0]} from {origin}"
        for origin, keys in by_origin.items()
    )


def first_batch(data: L.LightningDataModule) -> tuple[Tensor, Tensor]:
    """One training batch as (x, y), drawn without touching torch's random state; one line for a batch the
    template's models cannot take."""
    with torch.random.fork_rng(devices=[]):
        batch = next(iter(data.train_dataloader()), None)
    pair = isinstance(batch, tuple | list) and len(batch) == 2
    if not pair or not all(isinstance(t, Tensor) for t in batch):
        raise ConfigError(
            f"data={name_of(data)}'s training batches are not (inputs, targets) tensor pairs: return "
            "(x, y) from its Dataset's __getitem__, or declare task, in_features and out_features in its YAML"
        )
    x, y = batch
    if x.dim() != 2 or not x.is_floating_point() or x.dtype == torch.float64:
        raise ConfigError(
            f"data={name_of(data)}'s training inputs are {x.dtype} [{', '.join(map(str, x.shape))}]: the "
            "template's networks take float32 [batch, features]; return x.float(), flattened per row"
        )
    return x, y


def infer_task(data: L.LightningDataModule, y: Tensor, fits: list[str]) -> str:
    """Integer labels: classes; 0/1 floats: binary or regression, as the model decides, else one line; other
    floats: regression."""
    if not y.is_floating_point():
        return "multiclass"
    if y.dtype == torch.float64:
        raise ConfigError(f"data={name_of(data)}'s training targets are float64: return y.float()")
    if not bool(((y == 0) | (y == 1)).all()):
        return "regression"
    either = [t for t in ("binary", "regression") if t in fits]
    if len(either) == 1:
        return either[0]
    raise ConfigError(
        f"data={name_of(data)}'s targets are all 0 or 1: binary labels or numbers? add task: binary (or "
        "task: regression) to its YAML, or data.task=binary on the command line"
    )


def describe(data: L.LightningDataModule, found: Problem) -> str:
    """The first console line's account of the data."""
    if provides(data, Described):
        return data.describe()
    rows = ", ".join(f"{split} {n}" for split in ("train", "val", "test") if (n := rows_of(data, split)))
    sizes = f"; {rows} rows" if rows else ""
    return (
        f"{name_of(data)}: {found.task}, {found.in_features} inputs -> {found.out_features} outputs "
        f"({found.source}{sizes})"
    )


def rows_of(data: L.LightningDataModule, split: str) -> int | None:
    """The rows of a split where its tensors or its loader's dataset can tell."""
    if (splits := whole_splits(data)) is not None:
        return len(splits[split][0]) if split in splits else None
    loader = loader_of(data, split)
    try:
        return len(loader.dataset) if loader is not None else None
    except (AttributeError, TypeError):
        return None


def model_arguments(data: L.LightningDataModule, found: Problem) -> dict:
    """What the model's constructor may take of the data: task and sizes, and the data's own extras."""
    extra = data.model_kwargs() if provides(data, ModelArguments) else {}
    return {"task": found.task, "in_features": found.in_features, "out_features": found.out_features, **extra}


def whole_splits(data: L.LightningDataModule) -> dict[str, tuple[Tensor, Tensor]] | None:
    return data.splits if provides(data, WholeSplits) else None


def has_split(data: L.LightningDataModule, split: str) -> bool:
    """Whether the data holds out this split (val or test) with at least one batch."""
    if (splits := whole_splits(data)) is not None:
        return split in splits
    loader = loader_of(data, split)
    try:
        return loader is not None and len(loader) > 0
    except TypeError:  # an iterable without a length
        return loader is not None


def loader_of(data: L.LightningDataModule, split: str):
    """A new loader of this split (None where the module has none), for the template's own passes: never
    the one Lightning iterates, whose position a checkpoint holds."""
    if not is_overridden(f"{split}_dataloader", data, L.LightningDataModule):
        return None
    loader = (
        data.split_loader(split) if provides(data, SplitLoaders) else getattr(data, f"{split}_dataloader")()
    )
    return loader if not isinstance(loader, list | tuple) else (loader[0] if loader else None)


def fast_batches(data: L.LightningDataModule) -> FastBatches:
    """The data's fast batches, for stepping=fast; one line where it serves none."""
    if not provides(data, FastBatches):
        raise ConfigError(
            f"stepping=fast needs whole-tensor batches (a litlab.data.base.TensorDataModule), and "
            f"data={name_of(data)} serves its own loaders: add stepping=lightning"
        )
    return data


def loaders_per_epoch(data: L.LightningDataModule) -> bool:
    return provides(data, EpochLoaders) and data.loaders_per_epoch


def settled(data: L.LightningDataModule) -> dict:
    return data.settled() if provides(data, Settled) else {}


def full_batch(data: L.LightningDataModule | None) -> bool:
    """Whether every training epoch is one batch (one optimizer step per data epoch)."""
    return provides(data, FastBatches) and data.full_batch


def normalisation(data: L.LightningDataModule) -> tuple[Tensor, Tensor] | None:
    """(x_shift, x_scale) where model inputs are (raw - x_shift) / x_scale, else None."""
    return (data.x_shift, data.x_scale) if provides(data, Normalised) else None


def index_inputs(data: L.LightningDataModule) -> bool:
    """Whether inputs are symbol indices (data=text), not numbers: no normalisation, no raw predictions."""
    return bool(getattr(data, "index_inputs", False))


def record(data: L.LightningDataModule) -> dict:
    """What a checkpoint keeps of the data as plain values (checkpoints.ResumeState, under RECORD): its input
    normalisation, and whether inputs are symbol indices, for predict.py and for the checks of a resume; and
    where the data is held whole, a hash of the training targets (a data file whose target changed)."""
    kept: dict = {"index_inputs": index_inputs(data)}
    if (found := normalisation(data)) is not None:
        kept["x_shift"], kept["x_scale"] = (t.tolist() for t in found)
    kept |= names(data)
    if (splits := whole_splits(data)) is not None and "train" in splits:  # which targets it learned
        kept["targets"] = hashlib.sha256(splits["train"][1].cpu().contiguous().numpy().tobytes()).hexdigest()
    return kept


def names(data: L.LightningDataModule) -> dict:
    """Named: the inputs' names and the classes' labels where the data gives them, as plain values (a whole
    number as one: quality 5, not 5.0)."""
    kept = {}
    if (inputs := getattr(data, "input_names", None)) is not None:
        kept["input_names"] = [str(n) for n in inputs]
    classes = getattr(data, "classes", None)
    if classes is not None and getattr(data, "task", None) != "regression":
        labels = classes.tolist() if hasattr(classes, "tolist") else list(classes)
        kept["classes"] = [int(c) if isinstance(c, float) and c.is_integer() else c for c in labels]
    return kept


def saved_names(values: dict) -> dict:
    """The input names and class labels a loaded checkpoint's data gave (names), where it gave them."""
    kept = values.get(RECORD, {})
    return {k: kept[k] for k in ("input_names", "classes") if k in kept}


def saved_index_inputs(values: dict) -> bool:
    """Whether a loaded checkpoint's data had symbol-index inputs."""
    return bool(values.get(RECORD, {}).get("index_inputs"))


def saved_normalisation(values: dict) -> tuple[Tensor, Tensor] | None:
    """(x_shift, x_scale) that a loaded checkpoint's data normalised its inputs with, else None."""
    kept = values.get(RECORD, {})
    return (torch.tensor(kept["x_shift"]), torch.tensor(kept["x_scale"])) if "x_shift" in kept else None


def normalisation_change(values: dict, data: L.LightningDataModule) -> str | None:
    """'x_shift [..] vs [..]' where the data normalises otherwise than the loaded checkpoint's did."""
    then = values.get(RECORD, {}).get("targets")
    if then is not None and then != record(data).get("targets", then):
        return "the training targets differ"
    saved, now = saved_normalisation(values), normalisation(data)
    if saved is None or now is None:
        return None
    for name, before, after in zip(("x_shift", "x_scale"), saved, now, strict=True):
        if not torch.allclose(before, after.cpu()):
            return f"{name} {before.tolist()} vs {after.tolist()}"
    return None


def batches(data: L.LightningDataModule, split: str, chunk: int = 1 << 16) -> Iterator[tuple[Tensor, Tensor]]:
    """Every (x, y) of a split, on the CPU: chunks of the whole split where the data holds it, else a new
    loader's batches (torch's random state untouched: it decides the training order)."""
    if (splits := whole_splits(data)) is not None:
        x, y = splits[split]
        for start in range(0, len(x), chunk):
            yield x[start : start + chunk].cpu(), y[start : start + chunk].cpu()
        return
    loader = loader_of(data, split)
    if loader is None:
        return
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            x, y = batch
            yield x, y


def sample(data: L.LightningDataModule, split: str, rows: int) -> tuple[Tensor, Tensor] | None:
    """At most `rows` rows of a split (its first, for a loader: validation loaders keep their order)."""
    xs, ys, held = [], [], 0
    for x, y in batches(data, split):
        xs.append(x[: rows - held])
        ys.append(y[: rows - held])
        held += len(xs[-1])
        if held >= rows:
            break
    return (torch.cat(xs), torch.cat(ys)) if xs else None


def resumable(loader) -> bool:
    """Whether a training loader can say where it stopped (state_dict and load_state_dict, as
    torchdata's StatefulDataLoader), so that Lightning resumes inside an epoch."""
    return all(callable(getattr(loader, m, None)) for m in ("state_dict", "load_state_dict"))
