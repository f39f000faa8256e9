"""Use a run again: find its checkpoint and saved config.yaml, check they fit together, resume it."""

import logging
import math
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
import torchmetrics as tm
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, get_object
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from litlab.data.contract import RECORD, normalisation_change, record, resumable
from litlab.entry import locate
from litlab.errors import ConfigError
from litlab.stepping import FastSteps

log = logging.getLogger(__name__)

# Keys of the entry points themselves, never part of a run's saved setup.
ENTRY_KEYS = ("resume", "ckpt_path", "inputs", "input_file", "format", "task_name", "paths", "hydra")
SHAPE_KEYS = ("task", "in_features", "out_features")


def load(ckpt: Path) -> dict:
    """A checkpoint's plain values: weights, optimizer and loop state, hparams, normalisation statistics; an
    empty, truncated or corrupted file is one line."""
    if ckpt.stat().st_size == 0:
        raise ConfigError(f"{ckpt} is empty: {OTHER_CHECKPOINT}")
    try:
        values = torch.load(ckpt, map_location="cpu", weights_only=True)
    except (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:120]
        raise ConfigError(f"{ckpt} is not a readable checkpoint ({why}): {OTHER_CHECKPOINT}") from e
    if not isinstance(values, dict) or "state_dict" not in values:
        raise ConfigError(f"{ckpt} is not a Lightning checkpoint (no state_dict): {OTHER_CHECKPOINT}")
    return values


OTHER_CHECKPOINT = (
    "truncated or damaged? use another checkpoint of the run (checkpoints/best.ckpt) or train again"
)


def epochs_done(values: dict) -> int:
    """The data epochs a checkpoint has trained: Lightning's completed epochs (one saved at an epoch's end
    counts it, ResumeState), but under fast stepping on small data one Lightning epoch holds
    epochs_per_step data epochs of group / epochs_per_step optimizer steps each."""
    fast = values.get("callbacks", {}).get(FastSteps.__qualname__) or {}
    if not fast.get("epochs_per_step"):
        progress = values.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
        return int(progress["total"]["completed"] if progress else values.get("epoch", 0))
    return int(values["global_step"]) // max(1, fast["group"] // fast["epochs_per_step"])


def check_epochs(values: dict, ckpt: Path, max_epochs: int) -> None:
    """A resume continues to trainer.max_epochs in all: refuse one that would end before where it starts."""
    done = epochs_done(values)
    if max_epochs < done:
        raise ConfigError(
            f"{ckpt} has trained {done} epochs, and trainer.max_epochs={max_epochs} ends before that: "
            f"max_epochs counts the run's epochs in all, so give {done} or more"
        )


def command_overrides() -> list[str]:
    """The key=value overrides typed on this command line (none when called outside Hydra, as in tests)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def load_config(path: Path) -> DictConfig:
    """A run's config.yaml; one that is not YAML of a mapping is one line."""
    try:
        saved = OmegaConf.load(path)
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): restore it (its "
            "unresolved original is .hydra/config.yaml beside it) or train the run again"
        ) from None
    except yaml.YAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise ConfigError(
            f"{path} is not valid YAML{where} ({getattr(e, 'problem', None) or type(e).__name__}): restore "
            "it (its unresolved original is .hydra/config.yaml beside it) or train the run again"
        ) from None
    if not isinstance(saved, DictConfig):
        raise ConfigError(f"{path} is not a run's config (a mapping of settings): restore it or train again")
    return saved


def saved_config(
    run_dir: Path, cfg: DictConfig, overrides: list[str], honoured: tuple[str, ...]
) -> DictConfig:
    """The run's config.yaml with this command's paths and its overrides of `honoured` keys; others refused.

    A run is rebuilt from what it was trained with: changing its data, model or optimizer on the way
    would quietly evaluate or continue something else, so such an override is an error, not a merge."""
    saved = relocated(load_config(run_dir / "config.yaml"), run_dir)
    check_targets(saved, run_dir / "config.yaml")
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] in ENTRY_KEYS:
            continue
        if not key.startswith(honoured):
            allowed = ", ".join(f"{h}<key>=..." for h in honoured) or "nothing of the run"
            raise ConfigError(
                f"{override} would change the run saved in {run_dir / 'config.yaml'}; here you may set "
                f"{allowed}: train a new run to change anything else"
            )
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
        log.info(f"overriding the saved config: {override}")
    saved.paths = cfg.paths  # where data and logs live on this machine
    return saved


# The kinds of class this project's config groups build. A saved config.yaml is data, but instantiating it
# runs whatever its _target_s name: a crafted one must not copy, open or truncate files (eval.py, resume=).
BUILDABLE = (
    torch.nn.Module,  # networks and task modules
    L.LightningDataModule,
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
    torch.optim.lr_scheduler.ReduceLROnPlateau,
    Callback,
    Logger,
    L.Trainer,
)


def check_targets(saved: DictConfig, where: Path) -> None:
    """Refuse a saved config any of whose _target_s is not a class of the kinds in BUILDABLE, before
    anything in it is instantiated."""
    for key, target in named_targets(OmegaConf.to_container(saved)):
        try:
            built = get_object(target)
        except Exception:
            built = None
        if not (isinstance(built, type) and issubclass(built, BUILDABLE)):
            raise ConfigError(
                f"{where} names {key}._target_={target}, which is not a network, data or task module, "
                "optimizer, scheduler, callback, logger or Trainer: refusing to build it (train a new run)"
            )


def named_targets(node, key: str = "") -> Iterator[tuple[str, str]]:
    """(key path, _target_) of every node with a _target_, at any depth."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                yield key, str(v)
            else:
                yield from named_targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from named_targets(v, f"{key}[{i}]")


def relocated(saved: DictConfig, run_dir: Path) -> DictConfig:
    """A run's saved config (resolved: absolute paths) with every path inside the directory it was trained
    in (checkpoints, event files) moved to run_dir, where the run is now: a copied or moved run, resumed,
    writes only into itself."""
    old = str(saved.paths.output_dir).rstrip(os.sep)

    def move(node):
        if isinstance(node, dict):
            return {k: move(v) for k, v in node.items()}
        if isinstance(node, list):
            return [move(v) for v in node]
        if isinstance(node, str) and (node == old or node.startswith(old + os.sep)):
            return str(run_dir) + node[len(old) :]
        return node

    return OmegaConf.create(move(OmegaConf.to_container(saved)))


def describe(hparams: dict) -> str:
    """'model (regression, 1 input(s) -> 1 output(s))' from a model's hparams."""
    return (
        f"model ({hparams.get('task')}, {hparams.get('in_features')} input(s) -> "
        f"{hparams.get('out_features')} output(s))"
    )


def check_compatible(values: dict, ckpt: Path, model: L.LightningModule, data: L.LightningDataModule) -> None:
    """Refuse a checkpoint whose model shape or input normalisation differs from what the config builds."""
    broken = [k for k, v in values["state_dict"].items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise ConfigError(
            f"{ckpt} holds weights that are not finite ({broken[0]}: nan or inf): the run had diverged when "
            "it was saved; use its checkpoints/best.ckpt, or train again with a smaller learning rate"
        )
    saved_hp = {k: values.get("hyper_parameters", {}).get(k) for k in SHAPE_KEYS}
    built_hp = {k: model.hparams.get(k) for k in SHAPE_KEYS}
    shapes = {k: tuple(v.shape) for k, v in values["state_dict"].items()}
    if saved_hp != built_hp or shapes != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        raise ConfigError(
            f"{ckpt} holds a {describe(saved_hp)}, but the run's config builds a {describe(built_hp)}: "
            "use a checkpoint of this run"
        )
    if (changed := normalisation_change(values, data)) is not None:
        raise ConfigError(
            f"the data differs from what {ckpt} was trained on ({changed}): has the data file changed? "
            "Restore it, or train a new run"
        )


# The keys of a run's config that may differ from what its checkpoint was made with (ResumeState keeps that
# config): where the run is, how it is watched, how far it trains. Every other key shapes the result: a
# resume, eval or predict refuses a config.yaml edited there (check_unchanged).
MAY_DIFFER = (
    "resume",
    "task_name",
    "threads",
    "paths",
    "logger",
    "hparams_search",
    "sweep",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.max_epochs",
    "trainer.default_root_dir",
    "trainer.log_every_n_steps",
    "trainer.enable_model_summary",
    "trainer.enable_progress_bar",
    "callbacks.progress_bar",
    "callbacks.fit_pictures",
    "callbacks.config_text",
    "callbacks.optimum_gap",
    "callbacks.model_checkpoint.dirpath",
    "callbacks.last_checkpoint",
    "callbacks.safe_stop",
    "callbacks.resume_state",
)
CONFIG = "config"  # the checkpoint's copy of the run's config (ResumeState)


def leaves_of(node: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of a plain config's leaves; a list is one value."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves_of(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def check_unchanged(values: dict, ckpt: Path, run_dir: Path) -> None:
    """Refuse a run whose config.yaml differs from the config its checkpoint was made with, in a key that
    shapes the result (every key but MAY_DIFFER's): one line naming the key and both values."""
    if CONFIG not in values:  # a checkpoint of an older version of the template: nothing to compare with
        return
    then = dict(leaves_of(values[CONFIG]))
    now = dict(leaves_of(OmegaConf.to_container(relocated(load_config(run_dir / "config.yaml"), run_dir))))
    for key in sorted(then.keys() | now.keys()):
        if any(key == k or key.startswith(f"{k}.") for k in MAY_DIFFER) or then.get(key) == now.get(key):
            continue
        before, after = (d.get(key, "(absent)") for d in (then, now))
        raise ConfigError(
            f"{run_dir / 'config.yaml'} sets {key}={after}, but {ckpt.name} was made with {key}={before}: "
            f"put {key}={before} back (config.yaml), or train a new run with the new value"
        )


SCHEDULED = ("lr", "momentum", "betas")  # optimizer settings that a scheduler changes as it runs


def check_optimizer(values: dict, ckpt: Path, optimizer: DictConfig | None, scheduled: bool) -> None:
    """A resume continues the checkpoint's optimizer with its own settings (Lightning restores its state):
    refuse a run config whose optimizer settings differ from them (config.yaml edited after training)
    rather than train on with values that the config, and TensorBoard's HParams, would misstate. With a
    scheduler, the settings schedulers move (lr, momentum, betas: OneCycleLR cycles all three) are not
    compared."""
    groups = [s.get("param_groups", []) for s in values.get("optimizer_states", [])]
    if optimizer is None or len(groups) != 1 or not groups[0]:
        return
    group = groups[0][0]
    for key, value in OmegaConf.to_container(optimizer, resolve=True).items():
        if key.startswith("_") or key not in group or (scheduled and key in SCHEDULED):
            continue
        saved = group[key]
        same = list(saved) == list(value) if isinstance(saved, list | tuple) else saved == value
        if not same and not (
            isinstance(saved, float) and isinstance(value, int | float) and math.isclose(saved, value)
        ):
            raise ConfigError(
                f"{ckpt} trained with optimizer.{key}={saved}, but the run's config.yaml says {value}: a "
                "resume continues the optimizer as it was; restore config.yaml, or train a new run with the "
                "new value"
            )


def check_resumable(values: dict, ckpt: Path, fast: FastSteps | None) -> None:
    """Refuse a resume whose settings change how many epochs or minibatches one Lightning step holds: the
    checkpoint's loop counters are in its own units (stepping=, trainer.max_epochs and
    trainer.check_val_every_n_epoch set the length of a fast step)."""
    off = {"epochs_per_step": None, "group": None}
    saved = {k: values.get("callbacks", {}).get(FastSteps.__qualname__, off)[k] for k in off}
    built = {k: fast.state_dict()[k] for k in off} if fast is not None else off
    if saved != built:
        raise ConfigError(
            f"{ckpt} ran Lightning steps of {saved['group']} optimizer steps "
            f"({saved['epochs_per_step']} epochs) and these settings give {built['group']} "
            f"({built['epochs_per_step']}): stepping, "
            "trainer.max_epochs or trainer.check_val_every_n_epoch changed; resume with the run's own"
        )


def resumed_run(cfg: DictConfig) -> tuple[DictConfig, Path | None]:
    """For `resume=<run dir or checkpoint>`: the run's saved config writing into its own directory, and the
    checkpoint to continue from (last.ckpt for a directory). Otherwise (cfg, None)."""
    if not cfg.get("resume"):
        return cfg, None
    run_dir, ckpt = locate(cfg.resume)
    saved = saved_config(run_dir, cfg, command_overrides(), honoured=("trainer.",))
    saved.paths.output_dir = str(run_dir)  # Hydra's run dir is the same (run_dir_of); tests have no Hydra
    log.info(f"resuming {run_dir} from {ckpt.name}")
    return saved, ckpt


def logger_kwargs(logger_cfg: DictConfig, values: dict | None) -> dict:
    """TensorBoard drops the events a killed run logged after its checkpoint (SummaryWriter's purge_step),
    so the resumed run logs every step once. `values`: the loaded checkpoint being resumed, or None."""
    if values is None or not issubclass(get_class(logger_cfg._target_), TensorBoardLogger):
        return {}
    # the step the logs continue from: they count optimizer steps
    return {"purge_step": values["global_step"]}


def metric_states(module: torch.nn.Module) -> dict[str, dict]:
    """Every torchmetrics Metric of the module (its epoch's sums so far): name -> its states, copied, and
    how many updates they hold."""
    return {
        name: {
            "states": {
                k: [t.clone() for t in v] if isinstance(v, list) else v.clone()
                for k, v in metric.metric_state.items()
            },
            "updates": metric.update_count,
        }
        for name, metric in module.named_modules()
        if isinstance(metric, tm.Metric)
    }


def restore_metric_states(module: torch.nn.Module, saved: dict[str, dict]) -> None:
    """Put saved metric states back (on each metric's device). torchmetrics has no public setter for the
    update count (compute() warns without it, and update_called reads it): `_update_count` is set here
    alone, and tests/test_checkpoints.py fails when an upgrade moves it."""
    for name, values in saved.items():
        metric = module.get_submodule(name)
        for key, value in values["states"].items():
            device = metric.device
            setattr(
                metric, key, [t.to(device) for t in value] if isinstance(value, list) else value.to(device)
            )
        metric._update_count = values["updates"]


class ResumeState(Callback):
    """Makes every checkpoint a clean place to resume from: torch's random generator states go in; one
    written inside an epoch holds the epoch's metric sums so far; and one written at the end of an epoch
    (last.ckpt) says that epoch is done. Every checkpoint also keeps what predict.py and a resume's checks
    need of the data (data/contract.py: record): its input normalisation.

    Lightning marks an epoch completed only after its on_train_epoch_end hooks, where last.ckpt is saved;
    resumed from such a checkpoint it replays the epoch's end and counts that epoch twice (one epoch
    short, logging steps shifted by one). The epoch's remaining work is logging and flushing, which
    LastCheckpoint waits for before the file becomes last.ckpt.

    Inside an epoch (SIGTERM or Ctrl-C stop a run after a training batch, callbacks.SafeStop) the
    training split's position is the loader's own state (data.base.TensorBatches, torchdata's
    StatefulDataLoader; SafeStop waits for the epoch's end where the loader has none), and the epoch's
    means and metrics are the module's torchmetrics, whose states Lightning does not save: they go in
    here, so the resumed epoch's logged means cover all its batches. (A module's own `self.log(tensor,
    on_epoch=True)` sums are Lightning's, not saved: after a mid-epoch resume they cover the batches
    after it.)"""

    config: dict | None = None  # the run's resolved config, kept in every checkpoint (train.py sets it)
    data_record: dict | None = None  # record(datamodule), made once a fit (it hashes the training targets)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.data_record = None

    def state_dict(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["cpu"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        loops = checkpoint["loops"]["fit_loop"]
        progress = loops["epoch_progress"]
        if progress["total"]["processed"] == progress["total"]["completed"] + 1:  # in on_train_epoch_end
            for counts in progress.values():  # total and current
                counts["completed"] = counts["processed"]
        total, batches = progress["total"], loops["epoch_loop.batch_progress"]
        if total["ready"] == total["completed"] and batches["is_last_batch"]:  # at an epoch's end
            # No batch of the next epoch has run: with max_steps (full-batch data) Lightning restores as
            # mid-epoch, and from this epoch's finished batch count it would run the next epoch empty
            # (also when a finished run is resumed with more trainer.max_epochs).
            batches["current"] = dict.fromkeys(batches["current"], 0)
            batches["is_last_batch"] = False
        elif total["ready"] > total["completed"] and batches["current"]["processed"]:  # inside an epoch
            checkpoint["metric_states"] = metric_states(pl_module)
            if not resumable(trainer.train_dataloader):
                checkpoint["loader_restarts"] = [trainer.current_epoch, batches["current"]["processed"]]
        if trainer.datamodule is not None:  # what predict.py and a resume's checks need of the data
            if self.data_record is None:  # hashing 2M targets took 7 ms of each checkpoint's 11
                self.data_record = record(trainer.datamodule)
            checkpoint[RECORD] = self.data_record
        if self.config is not None:  # what a resume, eval and predict compare config.yaml with
            checkpoint[CONFIG] = self.config
        # MLflow holds every step before the checkpoint a resume continues from (loggers.MLflow.send)
        for logger in trainer.loggers:
            if hasattr(logger, "send"):
                logger.send(next_too=True)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        restore_metric_states(pl_module, checkpoint.get("metric_states", {}))
        if "loader_restarts" in checkpoint:
            epoch, served = checkpoint["loader_restarts"]
            log.info(
                f"this checkpoint was saved after {served} batches of epoch {epoch + 1}, and the training "
                "loader cannot say where it stopped (no state_dict): the epoch's other batches are drawn "
                "from the loader's start (a StatefulDataLoader resumes exactly: docs/data.md)"
            )
