"""Config to objects in one place: build data, model and trainer, fit, log, return the optimised metric."""

import logging
import math
import multiprocessing
import os
import shlex
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from litlab.callbacks import Pruning, SafeStop
from litlab.checkpoints import (
    SHAPE_KEYS,
    ResumeState,
    check_compatible,
    check_epochs,
    check_optimizer,
    check_resumable,
    check_unchanged,
    command_overrides,
    epochs_done,
    load,
    logger_kwargs,
    resumed_run,
)
from litlab.checks import TASKS, check_config
from litlab.cockpit import TensorBoard
from litlab.data.contract import (
    Problem,
    TaskMismatch,
    choose_task,
    describe,
    fast_batches,
    has_split,
    loaders_per_epoch,
    model_arguments,
    problem,
    rows_of,
    settled,
    split_declared,
)
from litlab.entry import (
    DEFERRED,
    TRAINING,
    RunLog,
    as_typed,
    busy_elsewhere,
    hold,
    in_sweep,
    run_choices,
    viewers,
)
from litlab.errors import ConfigError, DiskFull, Diverged, disk_full, flat, user_error
from litlab.search import job_trial
from litlab.signatures import arguments
from litlab.stepping import FastSteps, epochs_trained, refuse
from litlab.sweep import recorded_metrics, swept_keys, write_result

log = logging.getLogger(__name__)
# `import lightning` gives its logger a console handler of its own; Hydra's logging (conf/hydra) prints
# Lightning's messages already, once, into the console and the run's log file.
for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(name).handlers.clear()
    logging.getLogger(name).propagate = True


def flatten(values: dict, prefix: str = "") -> dict:
    """{'net': {'hidden': [8]}} -> {'net.hidden': [8]}, without Hydra's _target_ and _partial_."""
    flat = {}
    for key, value in values.items():
        if not key.startswith("_"):
            flat.update(
                flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
            )
    return flat


def plain(value: object) -> int | float | str | bool:
    """A value as TensorBoard's HParams takes it: numbers, strings and flags as they are, else as text."""
    return value if isinstance(value, int | float | str | bool) else str(value)


def hparams_of(cfg: DictConfig, choices: dict[str, str]) -> dict:
    """The run's choices as flat plain values for TensorBoard's HParams tab (`choices`: the options as typed,
    run_choices)."""
    chosen = OmegaConf.to_container(cfg, resolve=True)
    flat = {"seed": chosen["seed"]}
    # a model that picks its own optimizer and scheduler (configure_optimizers) lists neither of ours
    ours = [g for g in ("optimizer", "scheduler") if takes(cfg, g)]
    if "optimizer" in ours:
        flat["optimizer"] = optimizer_name(cfg)
    typed = ("data", "model", *(g for g in ours if g != "optimizer"), "experiment")  # optimizer: above
    flat |= {g: choices[g] for g in typed if choices.get(g)}
    for group in ("data", "model", *ours):
        for key, value in flatten(chosen.get(group) or {}).items():
            flat[f"{group}.{key}"] = plain(value)
    for key in ("max_epochs", "accelerator", "devices", "precision"):
        flat[f"trainer.{key}"] = (
            str(chosen["trainer"][key]) if key != "max_epochs" else chosen["trainer"][key]
        )
    return flat


def run_params(cfg: DictConfig) -> tuple[dict, list[str]]:
    """(the run's choices as flat plain values, the keys its command sweeps): TensorBoard's HParams, the
    params of MLflow and the config of W&B."""
    swept, choices = swept_keys(), run_choices(cfg.paths.output_dir)
    params = hparams_of(cfg, choices)
    for key in swept:  # a swept key that hparams_of leaves out (callbacks.*, a user's own; a group's option)
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig):  # a group: its option (logger=[tensorboard,mlflow] records none)
            value = choices.get(key)
        if key not in ("name", "tags", "resume") and value is not None:  # labels, not choices
            params.setdefault(key, plain(value))
    return params, swept


def begin_trackers(cfg: DictConfig, loggers: dict, resumed: bool) -> None:
    """Start the run in MLflow and W&B (loggers.py) with its choices and tags (tags=[...], and in a sweep
    each swept key with its value), and record their run ids in cfg: config.yaml then resumes the same."""
    trackers = {name: lg for name, lg in loggers.items() if hasattr(lg, "begin")}
    if not trackers:
        return
    params, swept = run_params(cfg)
    tags = dict.fromkeys(cfg.get("tags") or [], "")
    if in_sweep():
        tags |= {key: str(params[key]) for key in swept if key in params}
    for name, logger in trackers.items():
        with open_dict(cfg):
            cfg.logger[name].update(logger.begin(params, tags, resumed))


def fit_trainer(
    trainer: L.Trainer, model: L.LightningModule, data, ckpt_path: str | None, has_val: bool
) -> tuple[BaseException | None, dict]:
    """trainer.fit and a final validation: (the divergence, Ctrl-C or SIGTERM that stopped it early, if any;
    the final value of every metric)."""
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except (Diverged, SystemExit) as e:  # SystemExit: Lightning's graceful stop on Ctrl-C or SIGTERM
        return e, scalars(trainer.callback_metrics)
    except MisconfigurationException as e:  # Lightning's checks of settings against the model, at fit
        raise ConfigError(f"Lightning refuses these settings: {flat(str(e))}") from e
    except Exception as e:  # a full disk: what was saved before it stays, and the run says where it stopped
        if disk_full(e) is None:
            raise
        return DiskFull(), scalars(trainer.callback_metrics)
    metrics = scalars(trainer.callback_metrics)
    # So that the final val metrics are final (also for a resumed run that had nothing left to train):
    if has_val and getattr(model, "validated_at", None) != trainer.global_step:
        trainer.validate(model, datamodule=data, verbose=False)
        metrics.update(scalars(trainer.callback_metrics))
    return None, metrics


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


def finish(
    cfg: DictConfig,
    trainer: L.Trainer,
    stopped: BaseException | None,
    metrics: dict,
    epochs: int,
    started: float,
    pruned: bool = False,
) -> str:
    """Record how the run ended (ok, pruned, diverged, interrupted) in TensorBoard's hparams and
    metrics.json."""
    status = (
        "debug"  # trainer.fast_dev_run: a check that every part runs, never a result (summaries skip it)
        if trainer.fast_dev_run and stopped is None
        else "pruned"
        if pruned
        else "ok"
        if stopped is None
        else "diverged"
        if isinstance(stopped, Diverged)
        else "failed"
        if isinstance(stopped, DiskFull)
        else "interrupted"
    )
    out_dir = Path(cfg.paths.output_dir)
    for logger in trainer.loggers if not isinstance(stopped, DiskFull) else ():  # no space to log
        if isinstance(logger, TensorBoard):  # real final values: each curve's last point
            params, swept = run_params(cfg)
            hparams = {**params, "status": status, "epochs": epochs}  # how far each run got
            hparams |= {k: plain(cfg[k]) for k in ("name", "tags") if cfg.get(k)}
            order = [cfg.optimized_metric, *(m for m in ("train/loss", "val/loss") if m in metrics)]
            logger.log_results(hparams, list(dict.fromkeys([*order, *sorted(metrics)])), swept)
            logger.finalize("success" if status in ("ok", "pruned", "debug") else "failed")
        elif hasattr(logger, "end") and trainer.is_global_zero:  # MLflow, W&B (loggers.py)
            files = [out_dir / "config.yaml", *out_dir.glob("*.gif")]
            logger.end(status, epochs, [f for f in files if f.is_file()])
    error = str(stopped or "").removeprefix("error: ")
    if trainer.is_global_zero:  # ranks that srun or torchrun started share the run directory
        try:
            labels = {"name": cfg.get("name"), "tags": list(cfg.get("tags") or [])}
            write_result(out_dir, status, metrics, started, error, labels)
        except OSError as e:
            if not isinstance(stopped, DiskFull) or disk_full(e) is None:
                raise
            return "unrecorded"
    return status


def no_space(out_dir: Path, epochs: int, status: str) -> SystemExit:
    """The one line of a run that the disk filled up: what it kept, and how to go on."""
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    try:
        kept = f"{ckpt} holds {epochs_done(load(ckpt))} epochs"
    except (ConfigError, OSError):
        kept = "no checkpoint could be written"
    recorded = (
        "metrics.json says so" if status != "unrecorded" else "metrics.json could not be written either"
    )
    return SystemExit(
        f"error: no space left on the disk of {out_dir} after {epochs} epochs: {kept}; {recorded}; free "
        f"space (or move the run directory elsewhere), then resume={out_dir}"
    )


def model_choice(cfg: DictConfig) -> str:
    """'model=<option>' as the user chose it (Hydra's choice), else the model's network class."""
    if choice := run_choices(cfg.paths.output_dir).get("model"):
        return f"model={choice}"
    return f"model.net._target_={cfg.model.net._target_}"


def models_fitting(task: str) -> list[str]:
    """The model options (conf/model/*.yaml) whose tasks include this one; empty outside a Hydra run."""
    if not HydraConfig.initialized():
        return []
    sources = HydraConfig.get().runtime.config_sources
    conf = next((s.path for s in sources if s.provider == "main" and s.schema == "file"), None)
    options = sorted(Path(conf, "model").glob("*.yaml")) if conf else []
    return [p.stem for p in options if task in OmegaConf.load(p).get("tasks", TASKS)]


def build_data(cfg: DictConfig) -> tuple[L.LightningDataModule, Problem]:
    """The configured data, set up, posing the first task that the model fits (else one line naming both),
    with its task and sizes (data/contract.py): they come from the data before the model exists."""
    fits = [str(t) for t in cfg.model.get("tasks", TASKS)]
    node, declared = split_declared(cfg.data, arguments(cfg.data._target_))
    try:
        data = instantiate(node)
        for key, value in settled(data).items():  # recorded: a resume or eval builds the data alike
            cfg.data[key] = value
        choose_task(data, fits)
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # a download, as Lightning does before setup
            data.prepare_data()
        data.setup("fit")
        return data, problem(data, declared, fits)
    except Exception as e:
        if not isinstance(mismatch := user_error(e), TaskMismatch):
            raise
        fitting = [f"model={m}" for m in models_fitting(mismatch.offered[0])]
        use = f"use {' or '.join(fitting)}" if fitting else "choose a model that fits it"
        raise ConfigError(
            f"{model_choice(cfg)} fits {', '.join(fits)} tasks and data={mismatch.data} poses a "
            f"{' or '.join(mismatch.offered)} task: {use}; or {mismatch.hint}"
        ) from e


TORCH_THREADS = torch.get_num_threads()  # torch's default here (fewer in a parallel sweep's worker)


def use_threads(cfg: DictConfig) -> str:
    """Set torch's threads (cfg.threads: a number, or auto), record the number in cfg, and say it for the
    first console line. auto: the cores that other processes left free while this one started, at least 1
    and at most torch's default: on 2 busy cores torch's default threads ran 10-17x slower than one thread
    (docs/benchmarks.md)."""
    threads, why = cfg.get("threads", "auto"), ""
    if threads == "auto":
        threads, busy = TORCH_THREADS, busy_elsewhere()
        if busy is not None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            # a core counts as taken from 0.3 of it busy: too many threads cost far more than too few
            threads = max(1, min(TORCH_THREADS, cores - math.ceil(busy - 0.3)))
            why = f", threads=auto: {busy:.1f} of {cores} cores busy elsewhere"
    torch.set_num_threads(threads)
    with open_dict(cfg):
        cfg.threads = threads
    return f"{threads} thread{'s' if threads > 1 else ''}{why}"


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, Problem]:
    """The configured data (set up) and model, seeded: what train() fits and a checkpoint is loaded into;
    and the data's task and sizes."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data, found = build_data(cfg)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    given = {"optimizer": instantiate(cfg.optimizer), "scheduler": scheduler, **model_arguments(data, found)}
    model = instantiate(cfg.model, **accepted_arguments(cfg, given))
    for key in SHAPE_KEYS:  # a module of one's own: what pictures and predict.py need
        model.hparams.setdefault(key, getattr(found, key))
    return data, model, found


def takes(cfg: DictConfig, argument: str) -> bool:
    """Whether the model's constructor takes this argument (or any, through **kwargs)."""
    accepted = arguments(cfg.model._target_)
    return accepted is None or argument in accepted


def optimizer_name(cfg: DictConfig) -> str:
    """'SGD' for torch.optim.SGD."""
    return cfg.optimizer._target_.rsplit(".", 1)[-1]


def accepted_arguments(cfg: DictConfig, given: dict) -> dict:
    """What the model's constructor takes of the optimizer, scheduler and the data's sizes. A model written
    as Lightning's docs teach picks its optimizer in configure_optimizers: an optimizer or scheduler typed
    on the command line is then refused, since it would not be used."""
    accepted = arguments(cfg.model._target_)
    if accepted is None:  # **kwargs
        return given
    typed = [o for o in command_overrides() if o.lstrip("+~").startswith(("optimizer", "scheduler"))]
    for key in ("optimizer", "scheduler"):
        if key not in accepted and (chosen := [o for o in typed if o.lstrip("+~").startswith(key)]):
            raise ConfigError(
                f"{chosen[0]}: {model_choice(cfg)} takes no {key} argument (its configure_optimizers chooses "
                f"its own): drop {key} settings, or give its constructor a {key} argument"
            )
    return {k: v for k, v in given.items() if k in accepted}


def trainer_settings(
    cfg: DictConfig, fast: FastSteps | None, data: L.LightningDataModule, has_val: bool
) -> dict:
    """The Trainer's keyword arguments: the user's, in Lightning's units under fast stepping."""
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    if fast is not None:
        batches = fast_batches(data)
        if loaders_per_epoch(data):  # each epoch its own count of minibatches (a stream's fills)
            per_epoch = [batches.batches_per_epoch(e) for e in range(settings["max_epochs"])]
        else:
            per_epoch = batches.batches_per_epoch()
        settings = fast.plan(settings, has_val, per_epoch)
        batches.serve_steps(fast.group, fast.epochs_per_step)
    if not has_val:
        settings.setdefault("limit_val_batches", 0)
    if loaders_per_epoch(data):  # each epoch's loader has that epoch's length (a stream's deal)
        settings["reload_dataloaders_every_n_epochs"] = 1
    return settings


class Fitted(NamedTuple):
    """What a fit leaves: the final value of optimized_metric, and the trained model and its data."""

    metric: float
    model: L.LightningModule
    data: L.LightningDataModule


def train(cfg: DictConfig) -> float:
    """Fit the configured model; return the final value of cfg.optimized_metric."""
    return fit(cfg).metric


def fit(cfg: DictConfig) -> Fitted:
    """Fit the configured model (train.py's and litlab.fit's work)."""
    started = time.time()
    if multiprocessing.get_start_method(allow_none=True) == "loky":
        # a parallel sweep's job, in a joblib worker, whose default start method is loky's: DataLoader
        # workers (num_workers > 0) would start as loky processes, which they cannot; Python's own start
        multiprocessing.set_start_method(None, force=True)
    cfg, resume_ckpt = resumed_run(cfg)  # resume=<run>: its saved config and checkpoint
    resume_ckpt = resume_ckpt or requeued(cfg)
    check_config(cfg)
    # Rank 0 writes the run, holding its directory: a second process that would write it is refused.
    with hold(Path(cfg.paths.output_dir)) if rank_zero_only.rank == 0 else nullcontext():
        return fit_run(cfg, resume_ckpt, started)


def requeued(cfg: DictConfig) -> Path | None:
    """The checkpoint to continue from in a job that SLURM requeued (preempted, `scontrol requeue`,
    submitit's requeue before the time limit): the same job, with the same config, starts again in its own
    directory, where its first start saved checkpoints/last.ckpt when SLURM's SIGTERM stopped it
    (SLURM_RESTART_COUNT counts the restarts). None elsewhere."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if restarts == 0 or not last.is_file():
        return None
    log.info(f"SLURM requeued this job (restart {restarts}): resuming from {last}")
    return last


# An R^2 on fewer rows than this says nothing (on 2 points it takes any value from -inf to 1): left out of
# the console's last line (TensorBoard and metrics.json keep it).
MIN_R2_ROWS = 5


def closing_lines(cfg: DictConfig, status: str, metrics: dict, data: L.LightningDataModule, epochs: int):
    """A finished run's last lines: its metrics, its directory, how to view it, and how to go on."""
    shown, dropped = {}, []
    for key, value in sorted(metrics.items()):
        split = key.split("/")[0]
        if key.endswith("/r2") and (rows := rows_of(data, split)) is not None and rows < MIN_R2_ROWS:
            dropped.append(f"{key} left out: {rows} {split} rows are too few to measure it")
            continue
        shown[key] = f"{value:.6g}"
    if metrics.get("train/gap") == 0:  # within float32's precision of the float64 optimum (cockpit.gap)
        shown["train/gap"] = "0 (at the optimum)"
    line = f"{status}: " + "  ".join(f"{k}={v}" for k, v in shown.items())
    out_dir = as_typed(Path(cfg.paths.output_dir))
    log_dir = out_dir.parents[2] if out_dir.parent.name == "runs" else Path(cfg.paths.log_dir)  # resumed too
    lines = [line + (f"  ({'; '.join(dropped)})" if dropped else ""), f"run directory: {out_dir}"]
    if not in_sweep():  # a sweep says it once, at its end (sweep.py)
        lines += [
            line.replace("<run directory>", str(out_dir)) for line in viewers(log_dir, cfg.get("logger"))
        ]
    more = f" trainer.max_epochs={2 * epochs}" if status == "ok" else ""
    lines.append(f"go on: python train.py resume={shlex.quote(str(out_dir))}{more}")
    return lines


def fit_run(cfg: DictConfig, resume_ckpt: Path | None, started: float) -> Fitted:
    """train() once the config is checked and the run directory held."""
    fast = instantiate(cfg.stepping) if cfg.get("stepping") else None
    saved = load(resume_ckpt) if resume_ckpt else None  # loaded once: checks, then TensorBoard's purge step
    if saved is not None:  # before anything is built from a config.yaml edited since
        check_unchanged(saved, resume_ckpt, Path(cfg.paths.output_dir))
    threads = use_threads(cfg)
    data, model, found = build(cfg)
    has_val = has_split(data, "val")
    logged = set(getattr(model, "metric_names", ())) | {"train/gap", "train/optimum_loss"}
    # else EarlyStopping fails at the first check, mid-run (a model that declares no metric_names: after)
    if hasattr(model, "metric_names") and cfg.optimized_metric not in logged:
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} is not a metric of this run: "
            f"choose one of {', '.join(sorted(logged))}"
        )
    callbacks = {name: (c, instantiate(c)) for name, c in (cfg.get("callbacks") or {}).items() if c}
    settings = trainer_settings(cfg, fast, data, has_val)
    if fast is not None:
        refuse(cfg.trainer, callbacks, model, fast.epochs_per_step > 0, has_val)
        model.fast_steps = fast
    if saved is not None:
        check_epochs(saved, resume_ckpt, cfg.trainer.max_epochs)
        check_optimizer(
            saved,
            resume_ckpt,
            cfg.get("optimizer") if takes(cfg, "optimizer") else None,
            bool(cfg.get("scheduler")),
        )
        check_compatible(saved, resume_ckpt, model, data)
        check_resumable(saved, resume_ckpt, fast)
    loggers = {
        n: instantiate(c, **logger_kwargs(c, saved)) for n, c in (cfg.get("logger") or {}).items() if c
    }
    trial = job_trial()  # a trial of our Optuna sweeper: report to it, stop where its pruner says
    pruning = Pruning(trial, cfg.optimized_metric) if trial is not None else None
    callbacks = [c for _, c in callbacks.values()] + [c for c in (fast, pruning) if c is not None]
    # Without a ModelCheckpoint of ours, Lightning would add its own (one file per epoch).
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer_class = get_class(settings.pop("_target_"))
    try:
        trainer = trainer_class(
            **settings,
            logger=list(loggers.values()) or False,
            callbacks=callbacks,
            enable_checkpointing=checkpointing,
        )
    except (ValueError, MisconfigurationException) as e:  # Lightning's own refusal of a combination
        raise ConfigError(f"Lightning refuses these trainer settings: {flat(str(e))}") from e
    except RuntimeError as e:  # SLURM's variables that do not fit what Lightning runs (--ntasks alone)
        if "SLURM" not in str(e):
            raise
        raise ConfigError(f"Lightning refuses this SLURM environment: {flat(str(e))}") from e
    # trainer.deterministic picks deterministic kernels and by default also fills every new tensor with NaN
    # before an op writes it, a check for ops that read memory they never wrote: 6% of a minibatch epoch
    # ((b) in docs/benchmarks.md); the kernels, and so every result, stay the same without it
    torch.utils.deterministic.fill_uninitialized_memory = False
    out_dir = Path(cfg.paths.output_dir)
    RunLog.start()  # every check passed: from here on the run is written (its log, config.yaml, ...)
    if trainer.is_global_zero:
        begin_trackers(cfg, loggers, resumed=saved is not None)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    for callback in callbacks:  # every checkpoint keeps the config it was made with (check_unchanged)
        if isinstance(callback, ResumeState):
            callback.config = OmegaConf.to_container(cfg, resolve=True)
    how = fast.describe() if fast is not None else "stepping=lightning"
    if takes(cfg, "optimizer"):
        optimizer = f"optimizer={optimizer_name(cfg)} lr={cfg.optimizer.lr}"
    else:
        optimizer = "its own optimizer (configure_optimizers)"
    length = f"{cfg.trainer.max_epochs} epochs" if not trainer.fast_dev_run else "fast_dev_run (one batch)"
    log.info(
        f"{describe(data, found)}; {model_choice(cfg)}, {optimizer}, {length}, {how}, "
        f"on {trainer.num_devices} {trainer.strategy.root_device.type} ({threads})"
    )

    DEFERRED.clear()
    TRAINING.set()  # SIGTERM: Lightning's and SafeStop's to handle, until the run has recorded its end
    stopped, metrics = fit_trainer(trainer, model, data, resume_ckpt, has_val)
    if saved is not None:  # a resume that trains no further epoch logs no training metric: keep the run's
        metrics = {**recorded_metrics(out_dir), **metrics}
    epochs = epochs_trained(trainer)
    if stopped is None and not math.isfinite(metrics.get(cfg.optimized_metric, 0.0)):  # no DivergenceGuard
        stopped = Diverged(epochs, metrics[cfg.optimized_metric])
    if stopped is None and cfg.optimized_metric not in metrics:
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} was never logged; this run logs "
            f"{', '.join(sorted(metrics))}"
        )
    if isinstance(stopped, SystemExit):  # also ends a sweep, as a Ctrl-C should
        asked = [c.received for c in trainer.callbacks if isinstance(c, SafeStop) and c.received]
        why = asked[0] if asked else "SIGTERM" if isinstance(stopped, SIGTERMException) else "Ctrl-C"
        where = out_dir / "checkpoints" / "last.ckpt"
        stopped = SystemExit(f"error: stopped by {why} after {epochs} epochs; {where} holds where it stopped")
    if isinstance(stopped, Diverged):
        epochs = stopped.epoch
    pruned = stopped is None and pruning is not None and pruning.pruned
    if pruned:
        log.info(f"pruned after {epochs} epochs: trial {trial.number} is behind the study's others")
    if isinstance(stopped, DiskFull):
        stopped = DiskFull(f"no space left on the disk of {out_dir} after {epochs} epochs")
    status = finish(cfg, trainer, stopped, metrics, epochs, started, pruned)
    TRAINING.clear()  # from here a SIGTERM stops the command in one line; the run stays as recorded
    if stopped is None and DEFERRED:  # came as the run finished: it stays as recorded, and the command stops
        stopped = SystemExit(
            f"error: stopped by {DEFERRED[0]} as the run finished; it trained its {epochs} epochs and is "
            f"recorded {status} in {out_dir / 'metrics.json'}"
        )
    if isinstance(stopped, DiskFull):
        stopped = no_space(out_dir, epochs, status)
    if stopped is not None:
        raise stopped
    for line in closing_lines(cfg, status, metrics, data, epochs):
        log.info(line)
    return Fitted(metrics[cfg.optimized_metric], model, data)
