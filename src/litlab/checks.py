"""Up-front checks of a composed config: each failure is one ConfigError line naming the fix."""

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig

from litlab.errors import ConfigError


def check_config(cfg: DictConfig) -> None:
    """Refuse settings that would only fail, or silently mislead, deep inside a run."""
    opt = cfg.optimizer
    if not opt.lr > 0:
        raise ConfigError(f"optimizer.lr={opt.lr} must be > 0: try optimizer.lr=0.01")
    if opt.get("weight_decay", 0) < 0:
        raise ConfigError(
            f"optimizer.weight_decay={opt.weight_decay} must be >= 0: try optimizer.weight_decay=0"
        )
    if "momentum" in opt and not 0 <= opt.momentum < 1:
        raise ConfigError(f"optimizer.momentum={opt.momentum} must be in [0, 1): try optimizer.momentum=0.9")
    if cfg.trainer.max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={cfg.trainer.max_epochs} must be >= 1")
    if cfg.epochs_per_step < 1:
        raise ConfigError(f"epochs_per_step={cfg.epochs_per_step} must be >= 1")
    if cfg.data.get("val_fraction", 0.2) == 0 and cfg.optimized_metric.startswith("val/"):
        raise ConfigError(
            f"data.val_fraction=0 leaves no validation split to compute {cfg.optimized_metric}: "
            "add optimized_metric=train/loss"
        )
    if HydraConfig.initialized():
        check_multirun_strategy(cfg.trainer, HydraConfig.get())


def launches_command_line(trainer: DictConfig) -> bool:
    """Whether Lightning would start the other ranks by re-running `python train.py ...` (ddp, fsdp, and
    auto on several devices) rather than spawning them from this process (ddp_spawn, ddp_fork)."""
    strategy = str(trainer.get("strategy", "auto"))
    if strategy == "auto":
        devices = trainer.get("devices", "auto")
        listed = isinstance(devices, ListConfig)
        count = len(devices) if listed else int(devices) if str(devices).lstrip("-").isdigit() else 1
        return count != 1 or trainer.get("num_nodes", 1) > 1
    return strategy.startswith(("ddp", "fsdp", "deepspeed")) and not any(
        way in strategy for way in ("spawn", "fork", "notebook")
    )


def check_multirun_strategy(trainer: DictConfig, hydra: DictConfig) -> None:
    """Refuse a strategy that re-runs the command line inside a multirun: each rank would re-run the sweep.

    Under SLURM (hydra/launcher=slurm) the cluster starts one task per rank, so plain ddp is right there."""
    if hydra.mode != RunMode.MULTIRUN or "Slurm" in hydra.launcher.get("_target_", ""):
        return
    if launches_command_line(trainer):
        raise ConfigError(
            f"trainer.strategy={trainer.get('strategy', 'auto')} with trainer.devices={trainer.devices} "
            "re-runs the whole command in every rank, so under -m each rank would re-run the sweep: "
            "use trainer=ddp (strategy ddp_spawn), or hydra/launcher=slurm"
        )
