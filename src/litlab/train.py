"""Config to objects in one place: build data, model and trainer, fit, log, return the optimised metric."""

import json
import logging
import math
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from litlab.checks import check_config

log = logging.getLogger(__name__)


def lightning_schedule(trainer_cfg: DictConfig, epochs_per_step: int, has_val: bool) -> dict:
    """Trainer arguments in Lightning's units for the user's epoch counts.

    With epochs_per_step k > 1 (full-batch data) one Lightning epoch holds k epochs; max_steps then
    counts epochs exactly, since every epoch is one optimizer step."""
    epochs, val_every = (
        trainer_cfg.max_epochs,
        min(trainer_cfg.check_val_every_n_epoch, trainer_cfg.max_epochs),
    )
    schedule = {
        "max_epochs": math.ceil(epochs / epochs_per_step),
        "max_steps": epochs if epochs_per_step > 1 else -1,
        "check_val_every_n_epoch": max(1, round(val_every / epochs_per_step)),
    }
    if not has_val:  # and ModelCheckpoint saves at the end of every Lightning epoch instead
        schedule.update(limit_val_batches=0, check_val_every_n_epoch=1)
    return schedule


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


def train(cfg: DictConfig) -> float:
    """Fit the configured model; return the final value of cfg.optimized_metric."""
    started = time.time()
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = instantiate(cfg.data, family=cfg.model.family)
    data.setup("fit")  # sizes and task come from the data before the model exists
    k = cfg.epochs_per_step if data.full_batch else 1
    model = instantiate(
        cfg.model,
        optimizer=instantiate(cfg.optimizer),
        epochs_per_step=k,
        **data.model_kwargs(),
    )
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    schedule = lightning_schedule(cfg.trainer, k, "val" in data.splits)
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **schedule)
    out_dir = Path(cfg.paths.output_dir)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    log.info(
        f"{data.describe()}; model={cfg.model.family}, optimizer={hparams_of(cfg)['optimizer']} "
        f"lr={cfg.optimizer.lr}, {cfg.trainer.max_epochs} epochs"
    )

    trainer.fit(model, datamodule=data)
    if "val" in data.splits and trainer.current_epoch % schedule["check_val_every_n_epoch"]:
        trainer.validate(model, datamodule=data, verbose=False)  # so the final val metrics are final

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # real final values, never a placeholder hp_metric
            logger.log_hyperparams(hparams_of(cfg), {f"final/{k}": v for k, v in metrics.items()})
            logger.finalize("success")
    write_result(out_dir, "ok", metrics, started)
    log.info("final " + "  ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
    log.info(f"run directory: {out_dir}")
    log.info(f"see it: tensorboard --logdir {cfg.paths.log_dir}")
    return metrics[cfg.optimized_metric]
