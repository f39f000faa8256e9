"""The Python entry, for notebooks: `config(...)` composes what `python train.py ...` would run, and
`fit(cfg)` runs it with the same checks, run directory, TensorBoard events and checkpoints. Errors are the
same one-line ConfigErrors, raised."""

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from litlab.entry import RunLog, discard_new_run, highest_missing, paths_as_typed
from litlab.errors import ConfigError, one_line

CONF = Path(__file__).resolve().parents[2] / "conf"  # the template's conf/, wherever the notebook runs


@dataclass
class Run:
    """A finished run: its directory, the final value of every metric (metrics.json), the trained model
    and its data module."""

    dir: Path
    metrics: dict[str, float]
    model: L.LightningModule
    data: L.LightningDataModule


def config(*overrides: str) -> DictConfig:
    """The config that `python train.py <overrides>` runs: the same conf/, the same override grammar
    (`model=logistic`, `optimizer.lr=0.1`, `+trainer.gradient_clip_val=1`)."""
    try:
        with initialize_config_dir(str(CONF), version_base="1.3", job_name="train"):
            return compose("train", overrides=paths_as_typed(list(overrides)), return_hydra_config=True)
    except Exception as e:
        if (message := one_line(e)) is None:
            raise
        raise ConfigError(message) from e


def fit(cfg: DictConfig) -> Run:
    """Train the config as train.py does, in a new run directory under paths.log_dir (logs/ of the working
    directory by default), with its log lines on the console and in the run's train.log."""
    from litlab.train import fit as fit_config

    if "hydra" not in cfg:
        raise ConfigError("fit() takes what config() returns: cfg = config('model=logistic', ...)")
    cfg = cfg.copy()
    HydraConfig.instance().set_config(cfg)  # the run's own choices and directory, as in a command
    run_dir = Path(cfg.hydra.run.dir).absolute()
    hydra = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(run_dir)
    made = highest_missing(run_dir)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # as Hydra writes for a command
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), run_dir / ".hydra" / "hydra.yaml")
    handlers = [logging.StreamHandler(sys.stdout), RunLog(str(run_dir / "train.log"))]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    litlab = logging.getLogger("litlab")
    level, RunLog.started, RunLog.held = litlab.level, False, []
    litlab.setLevel(logging.INFO)
    for handler in handlers:
        litlab.addHandler(handler)
    try:
        fitted = fit_config(cfg)
    except Exception as e:
        if not RunLog.started and made is not None:  # refused before its work: nothing of it stays
            discard_new_run(run_dir, made)
        if (message := one_line(e)) is None or isinstance(e, ConfigError):
            raise
        raise ConfigError(message) from e
    finally:
        for handler in handlers:
            litlab.removeHandler(handler)
            handler.close()
        litlab.setLevel(level)
        RunLog.held = []
    metrics = OmegaConf.to_container(OmegaConf.load(run_dir / "metrics.json"))["metrics"]
    return Run(run_dir, metrics, fitted.model, fitted.data)
