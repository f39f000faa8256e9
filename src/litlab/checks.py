"""Up-front checks of a composed config: each failure is one ConfigError line naming the fix."""

from omegaconf import DictConfig

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
