"""A callback that sends its own process a signal at one point of training: SLURM's SIGTERM or a user's
Ctrl-C, landed exactly where a test wants it (tests/test_checkpoints.py)."""

import os
import signal

import lightning as L
from lightning.pytorch.callbacks import Callback

from litlab.entry import stop_outside_training


class SignalAt(Callback):
    """`name` (SIGTERM or SIGINT) to this process in `hook` of Lightning epoch `epoch` (at Lightning batch
    `batch` for the batch hooks), once, and only in a run that was not resumed."""

    fast_steps_aware = True  # counts Lightning's epochs and batches, whatever they hold

    def __init__(self, name: str, hook: str, epoch: int, batch: int = 0):
        super().__init__()
        self.signal, self.hook, self.epoch, self.batch = getattr(signal, name), hook, epoch, batch
        if self.signal == signal.SIGINT and not callable(signal.getsignal(signal.SIGINT)):
            # as in a terminal (a shell's background job ignores SIGINT): train.py's handler (entry.run)
            signal.signal(signal.SIGINT, stop_outside_training)

    def send(self, trainer: L.Trainer, hook: str, batch: int = 0) -> None:
        due = (hook, trainer.current_epoch, batch) == (self.hook, self.epoch, self.batch)
        if due and trainer.ckpt_path is None and not trainer.sanity_checking:
            self.hook = None  # once
            os.kill(os.getpid(), self.signal)

    def on_fit_start(self, trainer, pl_module) -> None:  # before the first batch: Lightning's set-up
        self.send(trainer, "on_fit_start")

    def on_fit_end(self, trainer, pl_module) -> None:  # after the last epoch: the run finishes
        self.send(trainer, "on_fit_end")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.send(trainer, "on_train_epoch_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.send(trainer, "on_train_batch_start", batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.send(trainer, "on_train_batch_end", batch_idx)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.send(trainer, "on_validation_batch_end", batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.send(trainer, "on_validation_end")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.send(trainer, "on_train_epoch_end")


def signal_at(name: str, hook: str, epoch: int, batch: int = 0) -> tuple[str, ...]:
    """The overrides that add a SignalAt callback to a run's config."""
    key = "+callbacks.stop"
    return (
        f"{key}._target_=tests.signal_at.SignalAt",
        f"{key}.name={name}",
        f"{key}.hook={hook}",
        f"{key}.epoch={epoch}",
        f"{key}.batch={batch}",
    )
