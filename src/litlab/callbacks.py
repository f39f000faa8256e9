"""Callbacks of our own: what Lightning has no built-in for."""

import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from tqdm.auto import tqdm

from litlab.data.contract import resumable
from litlab.entry import DEFERRED, in_sweep
from litlab.errors import ConfigError, Diverged
from litlab.stepping import data_epoch, max_data_epochs, metrics_due, steps_per_epoch

log = logging.getLogger(__name__)


class EpochProgressBar(ProgressBar):
    """One bar over epochs (not batches) showing the latest metrics; costs nothing per batch. On a terminal
    only: where the console is a file or a pipe, a log line at every tenth of the epochs instead of the
    bar's carriage-return updates. None in the jobs of a sweep: parallel jobs would draw over each other's
    line; each logs its start and end."""

    def __init__(self, lines: int = 10):
        super().__init__()
        self.bar: tqdm | None = None
        self.lines = lines  # where the console is no terminal
        self.every = 0  # epochs between those lines; 0: none
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero) or in_sweep():
            return
        total = max_data_epochs(trainer)
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, desc="epochs", unit="ep", dynamic_ncols=True, leave=True)
        elif self.lines > 0 and total:
            self.every = max(1, math.ceil(total / self.lines))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None and not self.every:
            return
        shown = {
            k: f"{float(v):.4g}" for k, v in trainer.callback_metrics.items() if k.endswith(("/loss", "/acc"))
        }
        epoch = data_epoch(trainer)
        if self.bar is not None:
            self.bar.update(epoch - self.bar.n)
            self.bar.set_postfix(shown, refresh=False)
        elif epoch % self.every == 0 or epoch == max_data_epochs(trainer):
            total = max_data_epochs(trainer)
            log.info(f"epoch {epoch}/{total}: " + "  ".join(f"{k}={v}" for k, v in shown.items()))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.every = 0
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.on_train_end(trainer, pl_module)  # so a diverged or stopped run's message starts its own line


class DivergenceGuard(Callback):
    """Stop at the first epoch whose training loss is not finite, or (with growth_factor) that many times
    the lowest loss so far; under stepping=fast it checks every optimizer step of a Lightning step
    (`losses` in the step's output) and finds the exact epoch."""

    # its on_train_batch_end reads every optimizer step's loss (src/litlab/stepping.py)
    fast_steps_aware = True

    def __init__(self, growth_factor: float | None = None):
        super().__init__()
        if growth_factor is not None and not growth_factor > 1:  # else the first loss would already "diverge"
            raise ConfigError(
                f"callbacks.divergence.growth_factor={growth_factor} must be > 1 (or null: only a non-finite "
                "loss stops the run): try callbacks.divergence.growth_factor=1000"
            )
        self.growth_factor = growth_factor
        self.lowest: Tensor | None = None

    def state_dict(self) -> dict:
        """The lowest loss so far, which a resumed run's growth_factor compares with."""
        return {"lowest": self.lowest}

    def load_state_dict(self, state_dict: dict) -> None:
        self.lowest = state_dict.get("lowest")

    def bad_epochs(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """(which epochs diverged, the lowest loss up to each epoch)."""
        prior = self.lowest if self.lowest is not None else losses.new_tensor(math.inf)
        lowest = torch.minimum(torch.cummin(losses.nan_to_num(nan=math.inf), 0).values, prior)
        bad = ~torch.isfinite(losses)
        if self.growth_factor:
            bad |= losses > self.growth_factor * lowest
        return bad, lowest

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        losses = outputs["losses"] if "losses" in outputs else outputs["loss"].detach().reshape(1)
        bad, lowest = self.bad_epochs(losses)
        first = torch.where(bad.any(), bad.int().argmax(), len(losses)).float()
        first = int(trainer.strategy.reduce(first, reduce_op="min"))  # one host sync; all ranks stop together
        if first == len(losses):
            self.lowest = lowest[-1]
            return
        start, nb = trainer.global_step - len(losses), steps_per_epoch(trainer)
        loss = float(losses[first])
        if nb == 1 and len(losses) > 1:  # each fused epoch up to the bad one, as one epoch per step logs it
            for logger in trainer.loggers:
                for i, value in enumerate(losses[: first + 1].tolist()):
                    logger.log_metrics({"train/loss": value}, step=start + i)
        why = "" if not math.isfinite(loss) else f", {loss / float(lowest[first]):.3g} times its lowest"
        raise Diverged((start + first) // nb + 1 if nb else data_epoch(trainer), loss, why)


class LastCheckpoint(Callback):
    """checkpoints/last.ckpt: where training is, to resume from. Written when training starts, at most every
    `every_s` seconds at an epoch end, when it ends, and when Ctrl-C or SIGTERM stops it; never with
    non-finite weights, and not when it diverged (DivergenceGuard raises before the epoch end), so a
    diverged run keeps its last sound state. Lightning's save_last refreshes only on a better metric,
    and its save_on_exception would also save diverged weights.

    An epoch end's checkpoint is written beside last.ckpt and renamed over it when the next epoch starts:
    Lightning logs an epoch's training metrics after the callbacks' epoch end, so a kill in between
    leaves the previous last.ckpt, whose epochs are all in the logs."""

    fast_steps_aware = True  # counts data epochs and optimizer steps (src/litlab/stepping.py)

    def __init__(self, dirpath: str, every_s: float = 10.0):
        super().__init__()
        self.path = Path(dirpath) / "last.ckpt"
        self.pending = self.path.with_name(".last.ckpt.pending")
        self.every_s = every_s
        self.saved_at = -math.inf

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path | None = None) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if all(torch.isfinite(p).all() for p in pl_module.parameters()):
            for logger in trainer.loggers:  # logs at least as new as the checkpoint, even after a SIGKILL
                logger.save()
            # optimizer and loop state: resumable
            trainer.save_checkpoint(path or self.path, weights_only=False)
            self.saved_at = time.monotonic()
            if path is None and trainer.is_global_zero:
                self.pending.unlink(missing_ok=True)

    def commit(self, trainer: L.Trainer) -> None:
        """The pending epoch-end checkpoint becomes last.ckpt, now that its epoch is logged and flushed."""
        if trainer.is_global_zero and self.pending.exists():
            for logger in trainer.loggers:
                logger.save()
            self.pending.replace(self.path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:  # a killed run's uncommitted epoch end: not where this one resumed
            self.pending.unlink(missing_ok=True)
        # A run stopped before its first save still has a checkpoint. Rank 0 decides for all: it may write
        # the file before another rank looks, and save_checkpoint ends in a barrier every rank must reach.
        if trainer.strategy.broadcast(not self.path.exists()):
            self.save(trainer, pl_module)
            self.saved_at = -math.inf  # and the first epoch end saves too

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Rank 0's clock decides for all: save_checkpoint ends in a barrier every rank must reach.
        if trainer.strategy.broadcast(time.monotonic() - self.saved_at >= self.every_s):
            self.save(trainer, pl_module, self.pending)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            self.save(trainer, pl_module)
        elif trainer.is_global_zero:  # an epoch end that raised half-way (divergence commits at epoch start)
            self.pending.unlink(missing_ok=True)


class SafeStop(Callback):
    """SIGTERM (SLURM's notice, `kill`) and Ctrl-C stop training where its checkpoint resumes exactly: after
    a training batch that no validation follows, after a validation, or at an epoch's end. Lightning's own
    handling stops at once, also inside a validation or between an epoch's last batch and its end, and
    resumes such a state without that validation or epoch end. A second Ctrl-C stops at once. Where the
    training loader cannot say where it stopped (no state_dict: a plain DataLoader), only an epoch's end
    resumes exactly, and the run stops there.

    At that point this calls Lightning's SIGTERM handler (installed when fit starts), so Lightning's own
    stop follows: its loops raise where their state is resumable and LastCheckpoint saves it. On several
    ranks Lightning's handling is left as it is (its handler also signals and synchronises the ranks)."""

    fast_steps_aware = True  # stops between Lightning steps, whatever each holds

    def __init__(self):
        super().__init__()
        self.received: str | None = None  # what asked the run to stop: "SIGTERM" or "Ctrl-C"
        self.inside_epochs, self.told = True, False  # whether it may stop inside an epoch; said why not
        self.replaced: dict[int, object] = {}  # signal -> the handler this one replaced

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a loader that cannot say where it stopped (no state_dict) resumes exactly only at an epoch's end
        self.inside_epochs = resumable(trainer.train_dataloader)
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            # Ctrl-C only where it would interrupt (not where SIGINT is ignored, as in a background job)
            ctrl_c = callable(signal.getsignal(signal.SIGINT))
            signals = (signal.SIGTERM, signal.SIGINT) if ctrl_c else (signal.SIGTERM,)
            self.replaced = {s: signal.signal(s, self.notice) for s in signals}
            if DEFERRED:  # came during Lightning's set-up (entry.stop_outside_training)
                self.received = DEFERRED.pop(0)

    def notice(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.received = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"

    def stop_here(self) -> None:
        if self.received is None or not self.replaced:
            return
        lightnings = self.replaced[signal.SIGTERM]
        self.put_back()
        if not callable(lightnings):  # Lightning had none (it installs one on the main thread)
            raise SIGTERMException
        lightnings(signal.SIGTERM, None)

    def put_back(self) -> None:
        for signum, handler in self.replaced.items():
            signal.signal(signum, handler)
        self.replaced = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        if self.received is not None and not self.inside_epochs and not self.told:
            log.info(
                f"{self.received}: the training loader cannot say where it stopped (no state_dict), so the "
                "run stops at this epoch's end, where it resumes exactly (Ctrl-C again stops now)"
            )
            self.told = True
        if self.inside_epochs and not validates_after(trainer, batch_idx):
            self.stop_here()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self.inside_epochs:
            self.stop_here()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_here()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.put_back()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException):
        self.put_back()


def validates_after(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether Lightning validates after this training batch (as its training loop decides, from the
    Trainer's public settings; True where it cannot tell, e.g. a time-based val_check_interval)."""
    every = trainer.check_val_every_n_epoch
    if not trainer.enable_validation or (every is not None and (trainer.current_epoch + 1) % every):
        return False
    if trainer.should_stop or trainer.val_check_batch is None:
        return True
    if trainer.val_check_batch == math.inf:
        return batch_idx + 1 >= trainer.num_training_batches
    # check_val_every_n_epoch=None counts batches across epochs (every epoch has num_training_batches)
    i = trainer.current_epoch * trainer.num_training_batches + batch_idx if every is None else batch_idx
    return (i + 1) % trainer.val_check_batch == 0


class Pruning(Callback):
    """Reports the optimised metric to this job's Optuna trial (litlab.search) wherever it is new (after
    each validation; on each logged training loss where there is no validation split), at the data epoch,
    and stops the run at once where the study's pruner says so. Added by train() in our sweeper's jobs."""

    fast_steps_aware = True  # reports at data epochs (src/litlab/stepping.py)

    def __init__(self, trial, metric: str):
        super().__init__()
        self.trial, self.metric = trial, metric
        self.pruned = False  # whether the pruner stopped the run

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not metrics_due(trainer):
            return
        prune = False
        value = trainer.callback_metrics.get(self.metric)
        if trainer.is_global_zero and value is not None and math.isfinite(float(value)):
            self.trial.report(float(value), data_epoch(trainer))
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune):  # rank 0 decides for all
            self.pruned = trainer.should_stop = True
