"""Up-front checks of a composed config: each failure is one ConfigError line naming the fix.

The constructor signature is the schema: every key under data, model, optimizer, trainer, logger and
callbacks must be an argument of its `_target_`, with a value of the annotated type.

train.py checks before it imports torch or Lightning: the signatures of the configs' targets are written
down (signatures.py), so that every argument's name, type and range is answered in about half a second.
torch is imported for its optimizers' own checks, Lightning for the accelerators, and either where a config
names a class of one's own (its signature is read from the class)."""

import difflib
import importlib.util
import math
import os
from collections.abc import Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from litlab.entry import NAME, named
from litlab.errors import ConfigError, flat
from litlab.signatures import arguments

TASKS = ("regression", "binary", "multiclass")
# YAML keys that declare the problem for a data module whose constructor takes no such argument.
DECLARED = ("task", "in_features", "out_features", "num_classes")


def check_config(cfg: DictConfig) -> None:
    """Refuse settings that would only fail, or silently mislead, deep inside a run."""
    check_top_level(cfg)
    check_extras(cfg.get("logger"))
    for where, node in targets(cfg, GROUPS):
        check_arguments(where, node)
    check_finite(cfg)
    check_ranges(cfg)
    check_scheduler(cfg.get("scheduler"))
    check_optimizer(cfg.optimizer)  # the first to import torch (its optimizer's own checks)
    if isinstance(cfg.trainer.accelerator, str):
        check_devices(cfg.trainer.accelerator, cfg.trainer.devices)
    if HydraConfig.initialized():
        check_multirun_strategy(cfg.trainer, HydraConfig.get())


# The config nodes that Hydra instantiates, checked against their signatures (signatures.py).
GROUPS = (
    "optimizer",
    "scheduler",
    "model.net",
    "data",
    "model",
    "stepping",
    "trainer",
    "logger",
    "callbacks",
)


def check_ranges(cfg: DictConfig) -> None:
    """Values in range; one of the wrong type is left to check_arguments, which names the type."""
    for key, value in (cfg.get("stepping") or {}).items():
        if key in ("epochs", "batches", "log_every_n_epochs") and not (fits(value, "int") and value >= 1):
            raise ConfigError(f"stepping.{key}={value} must be a whole number >= 1")
    for key in ("max_epochs", "check_val_every_n_epoch"):
        value = cfg.trainer.get(key)
        if value is None or fits(value, "int") and value < 1:
            raise ConfigError(f"trainer.{key}={value} must be >= 1")
    for name, node in (cfg.get("callbacks") or {}).items():  # Lightning's EarlyStopping takes a negative one
        patience = node.get("patience") if isinstance(node, DictConfig) else None
        if fits(patience, "int") and patience < 0:
            raise ConfigError(f"callbacks.{name}.patience={patience} must be >= 0 validation checks: try 10")
    fraction = cfg.data.get("val_fraction", 0.2)
    if fits(fraction, "float") and not 0 <= fraction < 1:
        raise ConfigError(
            f"data.val_fraction={fraction} must be in [0, 1) (0 holds nothing out, as "
            "experiment=book_temperature does): try data.val_fraction=0.2"
        )
    if fraction == 0 and cfg.optimized_metric.startswith("val/"):
        raise ConfigError(
            f"data.val_fraction=0 leaves no validation split to compute {cfg.optimized_metric}: "
            "add optimized_metric=train/loss"
        )


# Groups whose every number must be finite: a nan or inf there is a typo, never a setting (callbacks and the
# Trainer take inf on purpose, e.g. gradient_clip_val or a threshold).
FINITE = ("data", "model", "optimizer", "scheduler", "stepping")


def check_finite(cfg: DictConfig) -> None:
    for group in FINITE:
        node = cfg.get(group)
        for key, value in leaves(node, group) if isinstance(node, DictConfig) else ():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}={value} is not a finite number")


def leaves(node: DictConfig, prefix: str) -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf below a config node, lists' items included."""
    items = node.items() if isinstance(node, DictConfig) else enumerate(node)
    for key, value in items:
        if isinstance(value, DictConfig | ListConfig):
            yield from leaves(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value


# What torch's schedulers take: (test, what it must be). Outside, they train wrongly (gamma=-0.5 turns
# descent into ascent) or fail deep inside torch.
RULES = {
    ">0": (lambda v: v > 0, "> 0"),
    ">=0": (lambda v: v >= 0, ">= 0"),
    "(0,1)": (lambda v: 0 < v < 1, "in (0, 1)"),
    "int>=0": (lambda v: fits(v, "int") and v >= 0, "a whole number >= 0"),
    "int>=1": (lambda v: fits(v, "int") and v >= 1, "a whole number >= 1"),
}
SCHEDULERS = {
    "StepLR": {"step_size": "int>=1", "gamma": ">0"},
    "MultiStepLR": {"gamma": ">0"},
    "ExponentialLR": {"gamma": ">0"},
    "CosineAnnealingLR": {"T_max": "int>=1", "eta_min": ">=0"},
    "OneCycleLR": {
        "max_lr": ">0",
        "pct_start": "(0,1)",
        "total_steps": "int>=1",
        "div_factor": ">0",
        "final_div_factor": ">0",
    },
    "ReduceLROnPlateau": {
        "factor": "(0,1)",
        "patience": "int>=0",
        "min_lr": ">=0",
        "threshold": ">=0",
        "cooldown": "int>=0",
        "eps": ">=0",
    },
}


def check_scheduler(node: DictConfig | None) -> None:
    """Every setting of torch's schedulers in its range (a wrong type is check_arguments' to name)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    name = str(node._target_).rsplit(".", 1)[-1]
    for key, rule in SCHEDULERS.get(name, {}).items():
        value = node.get(key)
        if value is None or not fits(value, "float"):
            continue
        test, wanted = RULES[rule]
        if not test(value):
            raise ConfigError(f"scheduler.{key}={value} must be {wanted} for {name}")


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
    """Each key is a parameter of the node's _target_ and its value fits the parameter's annotation
    (signatures.py: written down for the targets of conf/, so that no torch or Lightning import is needed)."""
    try:
        accepted = arguments(node._target_)
    except Exception as e:
        raise ConfigError(f"{where}._target_={node._target_} cannot be imported: {e}") from e
    declared = {}
    if where == "data":  # a data module's task and sizes, where it takes no such argument (data/contract.py)
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
        hint = (accepted or {}).get(key, "any")
        if not fits(value, hint):
            right = example(f"{where}.{key}", hint, value)
            raise ConfigError(f"{where}.{key}={value!r} is not {describe(hint)}{right}")


def kind(value: object) -> str:
    """The kind of a config value, as signatures.SAMPLES names them."""
    if isinstance(value, ListConfig | list | tuple):
        return "list"
    kinds = {bool: "bool", int: "int", float: "float", str: "str", type(None): "none"}
    return kinds.get(type(value), "other")


def fits(value: object, hint: object) -> bool:
    """Whether a config value can be passed where the encoded annotation `hint` is (signatures.encode)."""
    if isinstance(hint, str):
        if hint in ("bool", "str"):
            return isinstance(value, bool if hint == "bool" else str)
        if hint in ("int", "float"):  # bool is an int to Python, never to a user
            return isinstance(value, int if hint == "int" else int | float) and not isinstance(value, bool)
        return value is None if hint == "none" else True
    if "union" in hint:
        return any(fits(value, a) for a in hint["union"])
    if "literal" in hint:
        return value in hint["literal"]
    if "list" in hint or "tuple" in hint:
        if not isinstance(value, ListConfig | list | tuple):
            return False
        if "tuple" in hint:
            items = hint["tuple"]
            return len(value) == len(items) and all(fits(v, a) for v, a in zip(value, items, strict=True))
        return all(fits(v, hint["list"]) for v in value)
    return isinstance(value, DictConfig) or kind(value) in hint["accepts"]  # a DictConfig: a nested _target_


NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "none": "null"}
PLURALS = {"int": "integers", "float": "numbers", "bool": "trues or falses", "str": "strings"}


def describe(hint: object) -> str:
    """'a number', 'one of 32-true, 16-mixed', 'a list of integers' for an error message; plain values
    before classes."""
    if isinstance(hint, str):
        return NAMES.get(hint, "anything")
    if "literal" in hint:
        return "one of " + ", ".join(dict.fromkeys(map(str, hint["literal"])))
    if "tuple" in hint:
        return "[" + ", ".join(describe(a) for a in hint["tuple"]) + "]"
    if "list" in hint:
        item = hint["list"]
        return f"a list of {PLURALS[item]}" if item in PLURALS else f"a list of {describe(item)}"
    if "class" in hint:
        return f"a {hint['class']}"
    options = [a for a in hint["union"] if a != "none"]
    if options and all(isinstance(a, dict) and "literal" in a for a in options):
        return describe({"literal": [v for a in options for v in a["literal"]]})
    plain = [a for a in options if isinstance(a, str) or "literal" in a] or options
    return " or ".join(describe(a) for a in plain)


def example(key: str, hint: object, value: object) -> str:
    """The right form of what was typed, where there is one: ': try model.net.hidden=[8]' for a number where
    a list is wanted, ': try trainer.max_epochs=3' for 3.0. Never a value merely because it is valid."""
    forms = []
    if kind(value) in ("int", "float", "bool", "str"):
        forms.append([value])
    if isinstance(value, float) and value.is_integer():
        forms.append(int(value))
    if isinstance(value, ListConfig) and len(value) == 1:
        forms.append(value[0])
    for form in forms:
        if fits(form, hint):
            return f": try {key}={typed(form)}"
    return ""


def typed(value: object) -> str:
    """A value as one types it on the command line: [8], {a:1}, true, null, '', 0.01."""
    if isinstance(value, list | ListConfig):
        return "[" + ",".join(map(typed, value)) + "]"
    if isinstance(value, dict | DictConfig):
        return "{" + ",".join(f"{k}:{typed(v)}" for k, v in value.items()) + "}"
    if value is None or value == "":
        return "null" if value is None else "''"
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_declared(declared: dict) -> None:
    """Declared values in range: a task of TASKS, sizes of at least 1 (2 classes)."""
    task = declared.get("task")
    if task is not None and task not in TASKS:
        raise ConfigError(f"data.task={task} is not a task: choose one of {', '.join(TASKS)}")
    for key in ("in_features", "out_features", "num_classes"):
        value, least = declared.get(key), 2 if key == "num_classes" else 1
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ConfigError(f"data.{key}={value} must be a whole number >= {least}")


def check_top_level(cfg: DictConfig) -> None:
    for key, hint in (("seed", "int"), ("optimized_metric", "str")):
        if not fits(cfg[key], hint):
            raise ConfigError(f"{key}={cfg[key]!r} is not {describe(hint)}")
    if not 0 <= cfg.seed < 2**32:  # numpy's seed range, which Lightning's seed_everything seeds too
        raise ConfigError(f"seed={cfg.seed} must be in [0, 2**32): try seed=42")
    threads = cfg.get("threads", "auto")
    if threads != "auto" and not (fits(threads, "int") and threads >= 1):
        raise ConfigError(f"threads={threads!r} must be auto or a whole number >= 1: try threads=auto")
    if cfg.optimized_mode not in ("min", "max"):
        raise ConfigError(f"optimized_mode={cfg.optimized_mode!r} must be min or max")
    named(cfg.get("name"))
    tags = cfg.get("tags") or []
    if not isinstance(tags, ListConfig | list) or not all(
        isinstance(t, str) and NAME.fullmatch(t) for t in tags
    ):
        raise ConfigError(
            f"tags={typed(tags)} must be a list of words of letters, digits, '.', '_' and '-': "
            "try tags=[baseline]"
        )


# What a logger needs beyond the default install (pyproject's extras)
EXTRAS = {"litlab.loggers.MLflow": "mlflow", "litlab.loggers.Wandb": "wandb"}


def check_extras(loggers: DictConfig | None) -> None:
    """logger=mlflow without MLflow installed: one line that says how to install it."""
    for name, node in (loggers or {}).items():
        package = EXTRAS.get(node.get("_target_")) if isinstance(node, DictConfig) else None
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger={name} needs {package}, which is not installed: pip install -e '.[{package}]'"
            )


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
    except (ValueError, TypeError, InstantiationException) as e:  # a setting, or _partial_ lost
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
        raise ConfigError(f"{opt._target_} refuses these optimizer settings: {flat(str(cause))}") from e


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
