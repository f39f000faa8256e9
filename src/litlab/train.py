"""Config to objects in one place: build data, model and trainer, fit, log, return the optimised metric."""

import json
import logging
import math
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from litlab.checkpoints import check_compatible, check_resumable, load, logger_kwargs, resumed_run
from litlab.checks import check_config
from litlab.errors import ConfigError, Diverged

log = logging.getLogger(__name__)


def val_interval(trainer_cfg: DictConfig) -> int:
    """Epochs between validations (and between logs of the training metrics)."""
    return min(trainer_cfg.check_val_every_n_epoch, trainer_cfg.max_epochs)


def epochs_per_lightning_step(most: int, val_every: int | None) -> int:
    """With validation every val_every epochs, the largest k <= most dividing it: Lightning steps of k
    epochs then end exactly where validation is due (100 epochs a step for the default cadence, 30 for
    validation every 30); without validation, most."""
    if val_every is None:
        return most
    return max(k for k in range(1, min(most, val_every) + 1) if val_every % k == 0)


def lightning_schedule(trainer_cfg: DictConfig, epochs_per_step: int, has_val: bool) -> dict:
    """Trainer arguments in Lightning's units for the user's epoch counts.

    With epochs_per_step k > 1 (full-batch data) one Lightning epoch holds k epochs; max_steps then
    counts epochs exactly, since every epoch is one optimizer step."""
    epochs = trainer_cfg.max_epochs
    schedule = {
        "max_epochs": math.ceil(epochs / epochs_per_step),
        "max_steps": epochs if epochs_per_step > 1 else -1,
        "check_val_every_n_epoch": max(1, round(val_interval(trainer_cfg) / epochs_per_step)),
    }
    if not has_val:
        schedule["limit_val_batches"] = 0
    return schedule


def fusable(cfg: DictConfig) -> bool:
    """Whether several optimizer steps may share one Lightning step (epochs_per_step, batches_per_step):
    on one device (DDP synchronises gradients once per Lightning step) without fp16's gradient scaler."""
    single = cfg.trainer.devices in (1, "1") and cfg.trainer.get("num_nodes", 1) == 1
    return single and str(cfg.trainer.precision) not in ("16", "16-mixed")


def hparams_of(cfg: DictConfig) -> dict:
    """The run's choices as flat plain values for TensorBoard's HParams tab."""
    chosen = OmegaConf.to_container(cfg, resolve=True)
    flat = {"seed": chosen["seed"], "optimizer": chosen["optimizer"]["_target_"].rsplit(".", 1)[-1]}
    for group in ("data", "model", "optimizer"):
        for key, value in chosen[group].items():
            if not key.startswith("_"):
                flat[f"{group}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    for key in ("max_epochs", "accelerator", "devices", "precision"):
        flat[f"trainer.{key}"] = (
            str(chosen["trainer"][key]) if key != "max_epochs" else chosen["trainer"][key]
        )
    return flat


def write_result(out_dir: Path, status: str, metrics: dict, started: float, error: str = "") -> None:
    """metrics.json in the run directory: how the run ended (ok, diverged, failed) and its final metrics.

    Sweep summaries read these; a failed job writes one too, with the first line of its error."""
    result = {"status": status, "metrics": metrics, "duration_s": round(time.time() - started, 3)}
    if error:
        result["error"] = error.splitlines()[0] if error.strip() else error
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))


def fit(
    trainer: L.Trainer, model: L.LightningModule, data, val_every: int, ckpt_path: str | None
) -> BaseException | None:
    """trainer.fit and a final validation; the divergence, Ctrl-C or SIGTERM that stopped it early, if any."""
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except (Diverged, SystemExit) as e:  # SystemExit: Lightning's graceful stop on Ctrl-C or SIGTERM
        return e
    # So that the final val metrics are final (also for a resumed run that had nothing left to train):
    validated = any(k.startswith("val/") for k in trainer.callback_metrics)
    if "val" in data.splits and (trainer.current_epoch % val_every or not validated):
        trainer.validate(model, datamodule=data, verbose=False)
    return None


def finish(
    cfg: DictConfig,
    trainer: L.Trainer,
    stopped: BaseException | None,
    metrics: dict,
    epochs: int,
    started: float,
) -> str:
    """Record how the run ended (ok, diverged, interrupted) in TensorBoard's hparams and metrics.json."""
    status = "ok" if stopped is None else "diverged" if isinstance(stopped, Diverged) else "interrupted"
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # real final values, never a placeholder hp_metric
            hparams = {**hparams_of(cfg), "status": status}
            # final/epochs: how far each run got (also a run that stopped before logging anything)
            final = {"final/epochs": epochs, **{f"final/{k}": v for k, v in metrics.items()}}
            logger.log_hyperparams(hparams, final)
            logger.finalize("success" if status == "ok" else "failed")
    error = str(stopped or "").removeprefix("error: ")
    write_result(Path(cfg.paths.output_dir), status, metrics, started, error)
    return status


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The configured data (set up) and model, seeded: what train() fits and a checkpoint is loaded into."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    fuse = fusable(cfg)
    data = instantiate(
        cfg.data, family=cfg.model.family, batches_per_step=cfg.batches_per_step if fuse else 1
    )
    data.setup("fit")  # sizes and task come from the data before the model exists
    epochs_per_step = 1
    if fuse and data.full_batch:
        val_every = val_interval(cfg.trainer) if "val" in data.splits else None
        epochs_per_step = epochs_per_lightning_step(cfg.epochs_per_step, val_every)
    model = instantiate(
        cfg.model,
        optimizer=instantiate(cfg.optimizer),
        epochs_per_step=epochs_per_step,
        log_every_n_epochs=cfg.get("log_every_n_epochs", 50),  # runs saved before it existed: 50
        **data.model_kwargs(),
    )
    return data, model


def train(cfg: DictConfig) -> float:
    """Fit the configured model; return the final value of cfg.optimized_metric."""
    started = time.time()
    cfg, resume_ckpt = resumed_run(cfg)  # resume=<run>: its saved config and checkpoint
    check_config(cfg)
    data, model = build(cfg)
    logged = {"train/loss", "val/loss", "train/gap", "train/optimum_loss"}
    logged |= {*model.train_metrics, *model.val_metrics}
    if cfg.optimized_metric not in logged:  # else EarlyStopping fails at the first check, mid-run
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} is not a metric of this run: "
            f"choose one of {', '.join(sorted(logged))}"
        )
    saved = load(resume_ckpt) if resume_ckpt else None  # loaded once: checks, then TensorBoard's purge step
    if saved is not None:
        check_compatible(saved, resume_ckpt, model, data)
        check_resumable(saved, resume_ckpt, model)
    k = model.hparams.epochs_per_step
    loggers = [instantiate(c, **logger_kwargs(c, saved)) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]  # name=null: off
    schedule = lightning_schedule(cfg.trainer, k, "val" in data.splits)
    # Without a ModelCheckpoint of ours, Lightning would add its own (one file per epoch).
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=checkpointing,
        **schedule,
    )
    out_dir = Path(cfg.paths.output_dir)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    log.info(
        f"{data.describe()}; model={cfg.model.family}, optimizer={hparams_of(cfg)['optimizer']} "
        f"lr={cfg.optimizer.lr}, {cfg.trainer.max_epochs} epochs"
    )

    stopped = fit(trainer, model, data, schedule["check_val_every_n_epoch"], resume_ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    epochs = trainer.global_step if data.full_batch else trainer.current_epoch
    if stopped is None and not math.isfinite(metrics.get(cfg.optimized_metric, 0.0)):  # no DivergenceGuard
        stopped = Diverged(epochs, metrics[cfg.optimized_metric])
    if stopped is None and cfg.optimized_metric not in metrics:
        raise ConfigError(
            f"optimized_metric={cfg.optimized_metric} was never logged; this run logs "
            f"{', '.join(sorted(metrics))}"
        )
    if isinstance(stopped, SystemExit):  # also ends a sweep, as a Ctrl-C should
        why = "SIGTERM" if isinstance(stopped, SIGTERMException) else "Ctrl-C"
        where = out_dir / "checkpoints" / "last.ckpt"
        stopped = SystemExit(f"error: stopped by {why} after {epochs} epochs; {where} holds where it stopped")
    if isinstance(stopped, Diverged):
        epochs = stopped.epoch
    status = finish(cfg, trainer, stopped, metrics, epochs, started)
    if stopped is not None:
        raise stopped
    log.info(f"{status}: " + "  ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
    log.info(f"run directory: {out_dir}")
    log.info(f"see it: tensorboard --logdir {cfg.paths.log_dir}")
    return metrics[cfg.optimized_metric]
