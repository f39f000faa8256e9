"""Callbacks of our own: what Lightning has no built-in for."""

import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar
from tqdm.auto import tqdm


class EpochProgressBar(ProgressBar):
    """One bar over epochs (not batches) showing the latest metrics; costs nothing per batch."""

    def __init__(self):
        super().__init__()
        self.bar: tqdm | None = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            # With epochs_per_step > 1, train() sets max_steps to the epoch count (one step per epoch).
            total = trainer.max_steps if trainer.max_steps > 0 else trainer.max_epochs
            self.bar = tqdm(total=total, desc="epochs", unit="ep", dynamic_ncols=True, leave=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None:
            return
        done = trainer.global_step if trainer.max_steps > 0 else trainer.current_epoch + 1
        self.bar.update(done - self.bar.n)
        shown = {
            k: f"{float(v):.4g}"
            for k, v in trainer.callback_metrics.items()
            if k.endswith(("/loss", "/acc", "/r2"))
        }
        self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LastCheckpoint(Callback):
    """checkpoints/last.ckpt: where training is, to resume from; written at most every `every_s` seconds,
    when training ends or is interrupted, and never with non-finite weights (a diverged run keeps its
    last finite state). Lightning's save_last refreshes only when the monitored value improves."""

    def __init__(self, dirpath: str, every_s: float = 10.0):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_s = every_s
        self.saved_at = -math.inf

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if all(torch.isfinite(p).all() for p in pl_module.parameters()):
            trainer.save_checkpoint(self.path, weights_only=False)  # optimizer and loop state: resumable
            self.saved_at = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if time.monotonic() - self.saved_at >= self.every_s:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.save(trainer, pl_module)
