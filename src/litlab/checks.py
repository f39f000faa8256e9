"""Up-front checks of a composed config: each failure is one ConfigError line naming the fix.

The constructor signature is the schema: every key under data, model, optimizer, trainer, logger and
callbacks must be an argument of its `_target_`, with a value of the annotated type.

train.py checks before it imports Lightning (seconds): what needs only torch's classes, and every range,
comes first, so that most mistakes are answered in a second or two. Lightning is imported only where a
check reads a class built on it: the data and task modules', the Trainer's and callbacks' arguments, the
accelerators."""

import difflib
import inspect
import os
import types
import typing
from collections import abc
from collections.abc import Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from litlab.errors import ConfigError

PRIMITIVES = (str, int, float, bool)


def check_config(cfg: DictConfig) -> None:
    """Refuse settings that would only fail, or silently mislead, deep inside a run."""
    check_top_level(cfg)
    for where, node in targets(cfg, TORCH_ONLY):
        check_arguments(where, node)
    check_ranges(cfg)  # before the optimizer is built: torch's first optimizer imports torch._dynamo (~1.4 s)
    check_optimizer(cfg.optimizer)
    for where, node in targets(cfg, ("data", "model", "stepping", "trainer", "logger", "callbacks")):
        check_arguments(where, node)
    if isinstance(cfg.trainer.accelerator, str):
        check_devices(cfg.trainer.accelerator, cfg.trainer.devices)
    if HydraConfig.initialized():
        check_multirun_strategy(cfg.trainer, HydraConfig.get())


# Config nodes whose _target_ imports torch but not Lightning: checked first.
TORCH_ONLY = ("optimizer", "scheduler", "model.net")


def check_ranges(cfg: DictConfig) -> None:
    """Values in range; one of the wrong type is left to check_arguments, which names the type."""
    for key, value in (cfg.get("stepping") or {}).items():
        if key in ("epochs", "batches", "log_every_n_epochs") and not (fits(value, int) and value >= 1):
            raise ConfigError(f"stepping.{key}={value} must be a whole number >= 1")
    for key in ("max_epochs", "check_val_every_n_epoch"):
        value = cfg.trainer.get(key)
        if value is None or fits(value, int) and value < 1:
            raise ConfigError(f"trainer.{key}={value} must be >= 1")
    for name, node in (cfg.get("callbacks") or {}).items():  # Lightning's EarlyStopping takes a negative one
        patience = node.get("patience") if isinstance(node, DictConfig) else None
        if fits(patience, int) and patience < 0:
            raise ConfigError(f"callbacks.{name}.patience={patience} must be >= 0 validation checks: try 10")
    fraction = cfg.data.get("val_fraction", 0.2)
    if fits(fraction, float) and not 0 <= fraction < 1:
        raise ConfigError(
            f"data.val_fraction={fraction} must be in [0, 1) (0 holds nothing out, as "
            "experiment=book_temperature does): try data.val_fraction=0.2"
        )
    if fraction == 0 and cfg.optimized_metric.startswith("val/"):
        raise ConfigError(
            f"data.val_fraction=0 leaves no validation split to compute {cfg.optimized_metric}: "
            "add optimized_metric=train/loss"
        )


def targets(cfg: DictConfig, groups: tuple[str, ...]) -> Iterator[tuple[str, DictConfig]]:
    """(key path, node) of each config node in these groups that Hydra instantiates; for logger and
    callbacks, each one under them."""
    for group in groups:
        node = OmegaConf.select(cfg, group)
        if group in ("logger", "callbacks"):
            for name, child in (node or {}).items():
                if isinstance(child, DictConfig) and "_target_" in child:
                    yield f"{group}.{name}", child
        elif isinstance(node, DictConfig) and "_target_" in node:
            yield group, node


def check_arguments(where: str, node: DictConfig) -> None:
    """Each key is a parameter of the node's _target_ and its value fits the parameter's annotation."""
    try:
        target = get_object(node._target_)
    except Exception as e:
        raise ConfigError(f"{where}._target_={node._target_} cannot be imported: {e}") from e
    accepted = parameters(target)
    declared = {}
    if where == "data":  # a data module's task and sizes, where it takes no such argument (data/contract.py)
        from litlab.data.contract import DECLARED, check_declared

        declared = {k: node[k] for k in DECLARED if k in node and accepted is not None and k not in accepted}
        check_declared(declared)
    for key, value in node.items():
        key = str(key)
        if key.startswith("_") or key in declared:
            continue
        if accepted is not None and key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean {where}.{close[0]}? " if close else ""
            taken = ", ".join(accepted)
            raise ConfigError(f"{where}.{key} is not an argument of {node._target_}: {hint}it takes {taken}")
        hint = (accepted or {}).get(key, typing.Any)
        if not fits(value, hint):
            raise ConfigError(
                f"{where}.{key}={value!r} is not {describe(hint)}{example(f'{where}.{key}', hint)}"
            )


def parameters(target) -> dict[str, object] | None:
    """Named arguments -> annotation of a callable, or None when it takes any keyword (**kwargs).

    Our own classes (litlab.*) pass their **kwargs on to their base class, so its arguments count too."""
    found: dict[str, object] = {}
    ours = isinstance(target, type) and target.__module__.startswith("litlab.")
    chain = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if ours else [target]
    if isinstance(target, type) and not ours:
        chain = [target.__init__]
    for fn in chain:
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # an annotation that does not resolve here: skip the type check, keep the names
            hints = {}
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                found.setdefault(p.name, hints.get(p.name, typing.Any))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return found
    return None


def fits(value: object, hint: object) -> bool:
    """Whether a config value can be passed where `hint` is annotated (unknown hints accept anything)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint in (int, float):  # bool is an int to Python, never to a user
        return isinstance(value, int if hint is int else int | float) and not isinstance(value, bool)
    if origin in (list, tuple, abc.Sequence, abc.MutableSequence) or hint in (list, tuple):
        return isinstance(value, ListConfig | list | tuple) and items_fit(value, origin, args)
    if isinstance(hint, type) and not isinstance(value, DictConfig):  # a DictConfig may be a nested _target_
        return isinstance(value, hint) or (issubclass(hint, os.PathLike) and isinstance(value, str))
    return True


def items_fit(value, origin, args) -> bool:
    if not args:
        return True
    if origin is tuple and args[-1] is not Ellipsis:
        return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args, strict=True))
    return all(fits(v, args[0]) for v in value)


def describe(hint: object) -> str:
    """'a number', 'one of 32-true, 16-mixed', ... for an error message; plain values before classes."""
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Literal or args and all(typing.get_origin(a) is typing.Literal for a in args):
        values = [v for a in args for v in (typing.get_args(a) or [a])]
        return "one of " + ", ".join(dict.fromkeys(map(str, values)))
    if origin is tuple:
        return "[" + ", ".join(describe(a) for a in args) + "]"
    if origin is list:
        return f"a list of {describe(args[0])}"
    if args:
        plain = [a for a in args if a in PRIMITIVES or typing.get_origin(a) is typing.Literal] or args
        return " or ".join(describe(a) for a in plain)
    name = getattr(hint, "__name__", str(hint))
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
        name, f"a {name}"
    )


def example(key: str, hint: object) -> str:
    """': try optimizer.lr=0.01' where a number or a flag fits, else nothing."""
    for value, shown in ((0.01, "0.01"), (1, "1"), (True, "true")):
        if fits(value, hint):
            return f": try {key}={shown}"
    return ""


def check_top_level(cfg: DictConfig) -> None:
    for key, hint in (("seed", int), ("optimized_metric", str)):
        if not fits(cfg[key], hint):
            raise ConfigError(f"{key}={cfg[key]!r} is not {describe(hint)}")
    if not 0 <= cfg.seed < 2**32:  # numpy's seed range, which Lightning's seed_everything seeds too
        raise ConfigError(f"seed={cfg.seed} must be in [0, 2**32): try seed=42")
    if cfg.optimized_mode not in ("min", "max"):
        raise ConfigError(f"optimized_mode={cfg.optimized_mode!r} must be min or max")


def check_optimizer(opt: DictConfig) -> None:
    for key in ("lr", "weight_decay", "momentum"):  # a list or mapping: check_arguments may let it through
        value = opt.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"optimizer.{key}={value} is not a number: try optimizer.{key}=0.01")
    if not opt.lr > 0:
        raise ConfigError(f"optimizer.lr={opt.lr} must be > 0: try optimizer.lr=0.01")
    if opt.get("weight_decay", 0) < 0:
        raise ConfigError(
            f"optimizer.weight_decay={opt.weight_decay} must be >= 0: try optimizer.weight_decay=0"
        )
    if "momentum" in opt and not 0 <= opt.momentum < 1:
        raise ConfigError(f"optimizer.momentum={opt.momentum} must be in [0, 1): try optimizer.momentum=0.9")
    import torch  # here: composing alone (--help, an unknown key) never imports it

    try:  # torch's own checks (betas, eps, alpha, nesterov without momentum, ...) now rather than at fit
        instantiate(opt)([torch.zeros(1, requires_grad=True)])
    except ValueError as e:
        raise ConfigError(f"{opt._target_} refuses these optimizer settings: {e}") from e


def resolved_accelerator(name: str) -> str:
    """The registered accelerator that `auto` or `gpu` picks here (as Lightning picks it)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    available = {n for n in ("cuda", "mps") if AcceleratorRegistry[n]["accelerator"].is_available()}
    if name in ("auto", "gpu"):
        return next((n for n in ("mps", "cuda") if n in available), "cpu" if name == "auto" else "gpu")
    return name


def check_devices(accelerator: str, devices: object) -> None:
    """The accelerator exists and works here, and there are as many devices as asked for."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    known = sorted(AcceleratorRegistry.available_accelerators())
    if accelerator not in (*known, "auto", "gpu"):
        raise ConfigError(
            f"trainer.accelerator={accelerator} does not exist: choose one of auto, gpu, {', '.join(known)}"
        )
    name = resolved_accelerator(accelerator)
    here = [n for n in known if AcceleratorRegistry[n]["accelerator"].is_available()]
    if name not in here:
        raise ConfigError(
            f"trainer.accelerator={accelerator} is not available here (available: {', '.join(here)}): "
            "use trainer=auto or trainer=cpu"
        )
    present = (
        (os.cpu_count() or 1)
        if name == "cpu"
        else AcceleratorRegistry[name]["accelerator"].auto_device_count()
    )
    asked = device_count(devices)
    if asked is None:
        raise ConfigError(f"trainer.devices={devices!r} is not a count, a list of ids, -1 or auto")
    if name == "cpu" and devices != "auto" and not str(devices).isdigit():  # CPU devices are processes
        raise ConfigError(
            f"trainer.devices={devices} on cpu must be a number of processes: try trainer.devices=1"
        )
    if asked > present:
        raise ConfigError(
            f"trainer.devices={devices} asks for more {name} devices than the {present} present: "
            f"use trainer.devices={present} or trainer.devices=auto"
        )


def device_count(devices: object) -> int | None:
    """How many devices a Trainer `devices` value asks for (0 for all/auto); None if it is no such value."""
    if devices in ("auto", -1, "-1"):
        return 0
    if isinstance(devices, str):
        ids = [d for d in devices.split(",") if d.strip()]
        if not ids or not all(d.strip().isdigit() for d in ids):
            return None
        return int(ids[0]) if len(ids) == 1 else max(int(d) for d in ids) + 1
    if isinstance(devices, ListConfig | list):
        return max(devices) + 1 if devices else None
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    return None


def several_ranks(trainer: DictConfig) -> bool:
    """Whether the Trainer runs more than one process: several devices (auto and -1 take all of the
    accelerator's, as Lightning does: every GPU, one CPU or MPS device), or several nodes."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    devices = trainer.get("devices", "auto")
    if devices in ("auto", -1, "-1"):
        name = resolved_accelerator(str(trainer.get("accelerator", "auto")))
        name = "cuda" if name == "gpu" else name
        count = AcceleratorRegistry[name]["accelerator"].auto_device_count() if name in ("cuda", "mps") else 1
    elif isinstance(devices, ListConfig | list):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        count = int(devices) if str(devices).isdigit() else 1
    return max(count, 1) > 1 or trainer.get("num_nodes", 1) > 1


def launches_command_line(trainer: DictConfig) -> bool:
    """Whether Lightning would start the other ranks by re-running `python train.py ...` (ddp, fsdp, and
    auto on several devices) rather than spawning them from this process (ddp_spawn, ddp_fork)."""
    strategy = str(trainer.get("strategy", "auto"))
    if strategy == "auto":
        return several_ranks(trainer)
    return strategy.startswith(("ddp", "fsdp", "deepspeed")) and not any(
        way in strategy for way in ("spawn", "fork", "notebook")
    )


def check_multirun_strategy(trainer: DictConfig, hydra: DictConfig) -> None:
    """Refuse a strategy that re-runs the command line inside a multirun: each rank would re-run the sweep;
    and several ranks in the parallel launcher's workers (joblib's loky), which cannot spawn them.

    Under SLURM (hydra/launcher=slurm) the cluster starts one task per rank, so plain ddp is right there."""
    launcher = hydra.launcher.get("_target_", "")
    if hydra.mode != RunMode.MULTIRUN or "Slurm" in launcher:
        return
    if launches_command_line(trainer):
        raise ConfigError(
            f"trainer.strategy={trainer.get('strategy', 'auto')} with trainer.devices={trainer.devices} "
            "re-runs the whole command in every rank, so under -m each rank would re-run the sweep: "
            "use trainer=ddp (strategy ddp_spawn) with hydra/launcher=basic, or hydra/launcher=slurm"
        )
    if "Joblib" in launcher and several_ranks(trainer):
        raise ConfigError(
            f"trainer.devices={trainer.devices} needs a process per device, which the parallel sweep's "
            "workers cannot start: add hydra/launcher=basic (one job at a time), or hydra/launcher=slurm"
        )
