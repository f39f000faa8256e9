"""Callbacks of our own: what Lightning has no built-in for."""

import lightning as L
from lightning.pytorch.callbacks import ProgressBar
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
