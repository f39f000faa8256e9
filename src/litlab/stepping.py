"""Fast stepping (`stepping=fast`): several optimizer steps inside one Lightning step.

Lightning's fixed cost per step (every callback's hooks, the logger connector: 0.1-3 ms) dwarfs one
optimizer step on small data (~0.1 ms on the book's 11 points). With stepping=fast

- on full-batch data one Lightning step holds up to `epochs` epochs, one optimizer step each on the same
  whole batch, and ends where validation is due;
- on minibatch data one Lightning step holds up to `batches` consecutive minibatches of one epoch (of a
  shuffle buffer's fill, on a streamed table).

Every optimizer step still gets what was configured: gradient clipping (trainer.gradient_clip_val and
_algorithm), learning-rate schedulers per data epoch or per optimizer step, max_epochs and max_steps
exactly. The inner steps are plain torch, without Lightning's per-step hooks, so whatever needs such a
hook (gradient accumulation, weight averaging, a callback's on_train_batch_end, fp16's gradient scaler,
DDP's gradient sync) is refused before training, in one line (`refuse`). `stepping=lightning`, the
default, runs one optimizer step per Lightning step and leaves all of it to Lightning.

A model takes fast steps when it has a `fast_steps` attribute and hands its training_step to
`fast_steps.training_step` while that is set (src/litlab/models/task.py)."""

from collections.abc import Callable, Iterator
from itertools import islice

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    ProgressBar,
    StochasticWeightAveraging,
)
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from litlab.checks import several_ranks
from litlab.data.contract import full_batch
from litlab.errors import ConfigError

OFF = "add stepping=lightning (one optimizer step per Lightning step)"
# Hooks Lightning calls once per optimizer step; under fast stepping they run once per Lightning step.
STEP_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)
# Hooks Lightning calls once per epoch; under fast stepping on full-batch data, once per Lightning epoch.
EPOCH_HOOKS = ("on_train_epoch_start", "on_train_epoch_end")
# trainer settings counted in Lightning steps or batches, or that need a hook per optimizer step:
# setting -> (the values that mean "off", why fast stepping cannot honour another)
TRAINER_REFUSED = {
    "accumulate_grad_batches": ((1, None), "it accumulates over Lightning steps"),
    "val_check_interval": ((None, 1.0), "it counts Lightning batches"),
    "limit_train_batches": ((None, 1.0), "it counts Lightning batches"),
    "overfit_batches": ((None, 0, 0.0), "it counts Lightning batches"),
    "reload_dataloaders_every_n_epochs": ((None, 0), "it counts Lightning epochs"),
    "precision": (
        (None, "32-true", "32", 32, "64-true", "64", 64, "bf16-mixed", "bf16-true", "16-true"),
        "fp16's gradient scaler steps with Lightning's optimizer step",
    ),
}


class FastSteps(Callback):
    """The fast-stepping mechanism: plans the Trainer's schedule, runs a Lightning step's optimizer steps,
    and keeps its step length in every checkpoint (a resume must keep it)."""

    def __init__(self, epochs: int = 500, batches: int = 256, log_every_n_epochs: int = 50):
        super().__init__()
        self.epochs, self.batches, self.log_every_n_epochs = epochs, batches, log_every_n_epochs
        # plan() sets these: optimizer steps per data epoch (None: each epoch's own, a stream's); data
        # epochs per Lightning step (0: a Lightning epoch is one data epoch, in groups); optimizer steps per
        # Lightning step at most
        self.nb: int | None = 1
        self.epochs_per_step, self.group = 1, 1
        self.clip: tuple[float, str] | None = None
        self.capped = False  # the user's max_steps ends the run before max_epochs
        self.epoch_loss = torch.zeros(2, dtype=torch.float64)  # sum and rows so far, for ReduceLROnPlateau

    def plan(self, trainer: dict, has_val: bool, batches_per_epoch: int | list[int]) -> dict:
        """The Trainer's arguments for the user's ones, in Lightning's units; clipping is taken over here.
        batches_per_epoch: the minibatches of every epoch, or a list of each epoch's own (a stream's,
        whose loaders are each epoch's: a Lightning step then never spans epochs).

        Where a whole epoch fits in `batches` minibatches, a Lightning step holds k whole epochs: k at
        most `epochs` (full-batch data) or what fits in `batches`, and dividing the validation interval,
        so that Lightning steps end where validation is due; max_steps ends the run. Larger epochs run
        in groups of `batches` minibatches, and max_epochs keeps its meaning. max_steps is always set
        (the smaller of the user's and the run's optimizer steps): it caps the last step exactly, and
        gives OneCycleLR its total_steps (optimizer_steps)."""
        trainer = dict(trainer)
        value = trainer.pop("gradient_clip_val", None)
        algorithm = trainer.pop("gradient_clip_algorithm", None) or "norm"
        self.clip = (float(value), algorithm) if value else None
        epochs, wanted = trainer["max_epochs"], trainer.get("max_steps") or -1
        each = batches_per_epoch if isinstance(batches_per_epoch, list) else None
        self.nb = nb = None if each is not None else batches_per_epoch
        if nb is not None and nb <= self.batches:
            val_every = min(trainer["check_val_every_n_epoch"], epochs)
            fit = self.epochs if nb == 1 else min(self.epochs, self.batches // nb)  # full-batch: `epochs`
            most = min(fit, val_every) if has_val else fit  # max_steps cuts the last step short
            k = max(d for d in range(1, most + 1) if not has_val or val_every % d == 0)
            self.epochs_per_step, self.group = k, k * nb
            # max_steps ends the run, not Lightning's epochs of k: a last, shorter one would also count as
            # done when the run is resumed with more trainer.max_epochs
            trainer["max_epochs"] = -1
            trainer["check_val_every_n_epoch"] = max(1, val_every // k)
            if trainer.get("min_epochs"):  # min_steps says the same exactly
                trainer["min_steps"] = max(trainer.get("min_steps") or 0, trainer.pop("min_epochs") * nb)
        else:
            self.epochs_per_step, self.group = 0, self.batches
        total = sum(each[:epochs]) if each is not None else epochs * nb
        trainer["max_steps"] = total if wanted < 0 else min(wanted, total)
        self.capped = trainer["max_steps"] < total
        return trainer

    def describe(self) -> str:
        """What a Lightning step holds, for the console."""
        k, nb = self.epochs_per_step, self.nb
        held = f"{k} epochs of {nb} minibatch(es)" if k else f"up to {self.group} minibatches of an epoch"
        return f"stepping=fast ({held} a Lightning step)"

    def state_dict(self) -> dict:
        """Its step length, and the epoch's loss sum for ReduceLROnPlateau so far (a run stopped inside an
        epoch)."""
        return {"epochs_per_step": self.epochs_per_step, "group": self.group, "epoch_loss": self.epoch_loss}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_loss = state_dict.get("epoch_loss", self.epoch_loss).clone()

    def training_step(self, module: L.LightningModule, steps, batch_idx: int) -> dict[str, Tensor]:
        """The optimizer steps of one Lightning step (`steps`: the minibatches, src/litlab/data/base.py),
        capped by max_steps. Returns the last loss, every step's loss (`losses`, for DivergenceGuard), and
        each whole data epoch's mean loss and learning rate (for the logs)."""
        trainer = module.trainer
        start, nb = trainer.global_step, self.nb
        # in groups, the data epoch ends with the last step of the epoch's last item (before max_steps cuts)
        ends = len(steps) if not self.epochs_per_step and batch_idx + 1 == trainer.num_training_batches else 0
        steps = steps[: trainer.max_steps - start]
        n = len(steps)
        optimizer = module.optimizers().optimizer
        schedulers = trainer.lr_scheduler_configs
        # training metrics over the step's last data epoch (a group: its every minibatch), when due
        tracked = (n - (n % nb or nb) if self.epochs_per_step else 0) if metrics_due(trainer) else n
        losses, sizes, lrs = [], [], []
        # 64-true, 16-true, bf16-true: each minibatch converted as Lightning converts its batches
        convert = trainer.precision_plugin.convert_input
        # torch's zero_grad(set_to_none=True) sets each .grad to None inside a profiler scope, ~10 us a call
        # (7% of a book epoch): the same assignments here, where the optimizer keeps torch's zero_grad
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if type(optimizer).zero_grad is not Optimizer.zero_grad:
            params = None
        for i, (x, y) in enumerate(steps):
            x, y = convert((x, y))
            out = module(x)
            loss = module.loss(out, y)
            if i >= tracked:
                module.update_train_metrics(out.detach(), y)
            if schedulers:
                lrs.append(optimizer.param_groups[0]["lr"])  # the one this step uses
            if params is None:
                optimizer.zero_grad(set_to_none=True)
            else:
                for p in params:
                    p.grad = None
            loss.backward()
            if self.clip is not None:
                module.clip_gradients(optimizer, *self.clip)
            optimizer.step()
            losses.append(loss.detach())
            sizes.append(x.shape[0])  # len(x) is Python: 2 us more, 2% of a book epoch
            if schedulers:
                epoch_end = (start + i + 1) % nb == 0 if self.epochs_per_step else i + 1 == ends
                self.step_schedulers(schedulers, loss.detach(), sizes[-1], epoch_end)
        losses = torch.stack(losses)
        credit_optimizer_steps(trainer, n)
        rows = losses.new_tensor(sizes)
        if self.epochs_per_step:  # each data epoch's size-weighted mean; the last one goes through self.log
            epoch_losses, logged_rows = per_epoch(losses, rows, nb), sum(sizes[-(n % nb or nb) :])
        else:  # a group: Lightning averages the groups' means over the epoch
            epoch_losses, logged_rows = ((losses * rows).sum() / rows.sum()).reshape(1), sum(sizes)
        epoch_lrs = per_epoch(rows.new_tensor(lrs), rows, nb if self.epochs_per_step else n) if lrs else None
        module.log_train_means(epoch_losses[-1], logged_rows, None if epoch_lrs is None else epoch_lrs[-1])
        return {"loss": losses[-1], "losses": losses, "epoch_losses": epoch_losses, "epoch_lrs": epoch_lrs}

    def step_schedulers(self, configs: list, loss: Tensor, rows: int, epoch_end: bool) -> None:
        """Per-step schedulers now; per-epoch ones at a data epoch's end, ReduceLROnPlateau with the
        epoch's mean training loss."""
        self.epoch_loss += torch.stack([loss.double() * rows, loss.new_tensor(rows, dtype=torch.float64)])
        for config in configs:
            if config.interval == "step" or (epoch_end and config.interval == "epoch"):
                if isinstance(config.scheduler, ReduceLROnPlateau):
                    config.scheduler.step(float(self.epoch_loss[0] / self.epoch_loss[1]))
                else:
                    config.scheduler.step()
        if epoch_end:
            self.epoch_loss.zero_()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        """train/loss (and lr) of the data epochs inside a Lightning step that end a log_every_n_epochs
        interval, straight to the loggers at their own steps (the step's last epoch went through
        self.log). After DivergenceGuard's hook, which sits before this callback, so a diverged step
        logs nothing here."""
        losses = outputs["epoch_losses"][:-1]
        if not self.epochs_per_step or not len(losses) or not trainer.is_global_zero:
            return
        first = trainer.global_step // self.nb - len(losses)  # the data epoch of losses[0], from 1
        due = [i for i in range(len(losses)) if (first + i) % self.log_every_n_epochs == 0]
        values = losses[due].tolist() if due else []
        lrs = outputs["epoch_lrs"][due].tolist() if due and outputs["epoch_lrs"] is not None else []
        for logger in trainer.loggers if due else ():
            for j, (i, value) in enumerate(zip(due, values, strict=True)):
                lr = {"lr": lrs[j]} if lrs else {}
                logger.log_metrics({"train/loss": value, **lr}, step=(first + i) * self.nb - 1)


class Grouped:
    """A loader's minibatches, `group` consecutive ones an item (an epoch's last item fewer): one fast
    Lightning step's over data that serves its own loader (a stream's), in the loader's order whatever its
    workers. Each item draws its minibatches as the step iterates them (Pulled), moved by `to_device` (the
    strategy's batch_to_device, as Lightning moves a batch), so that no more of them are held at once than
    under stepping=lightning. It resumes where the loader does: a checkpoint falls between items, so a
    resumed epoch's items are those an unbroken one serves."""

    def __init__(self, loader, group: int, epoch: int, to_device: Callable):
        self.loader, self.group, self.epoch, self.to_device = loader, group, epoch, to_device
        self.served, self.resumed = 0, 0  # minibatches of this epoch drawn; where a checkpoint left it

    def __len__(self) -> int:
        return -(-len(self.loader) // self.group)

    def __iter__(self) -> Iterator["Pulled"]:
        batches, total = iter(self.loader), len(self.loader)
        self.served, self.resumed = self.resumed, 0
        for first in range(self.served, total, self.group):
            yield Pulled(self, batches, min(self.group, total - first))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "served": self.served, "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.resumed = state["served"] if state["epoch"] == self.epoch else 0
        self.loader.load_state_dict(state["loader"])

    @property
    def _iterator(self):
        """The loader's iterator: where a run stops, Lightning shuts a loader's workers down through it
        (lightning.pytorch.utilities.combined_loader._shutdown_workers_and_reset_iterator); else they
        would outlive the run (tests/test_stream.py's SIGTERM test resumes the run at once)."""
        return getattr(self.loader, "_iterator", None)

    @_iterator.setter
    def _iterator(self, value) -> None:
        self.loader._iterator = value


class Pulled:
    """n minibatches of a Grouped loader, each drawn (and moved to the device, as Lightning moves a batch)
    only as the fast step reaches it. Not a collections Sequence, so that Lightning passes it on."""

    def __init__(self, grouped: Grouped, batches: Iterator, n: int):
        self.grouped, self.batches, self.n = grouped, batches, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, cut: slice) -> "Pulled":  # steps[:k]: max_steps cuts the last step short
        return Pulled(self.grouped, self.batches, len(range(self.n)[cut]))

    def __iter__(self) -> Iterator:
        for batch in islice(self.batches, self.n):
            self.grouped.served += 1
            yield self.grouped.to_device(batch)


def per_epoch(values: Tensor, rows: Tensor, nb: int) -> Tensor:
    """Size-weighted means of consecutive runs of nb steps (a last, shorter run where max_steps cut it)."""
    if nb == 1:
        return values
    m = len(values) // nb * nb
    runs = [(values[:m] * rows[:m]).view(-1, nb).sum(1) / rows[:m].view(-1, nb).sum(1)]
    if m < len(values):
        runs.append(((values[m:] * rows[m:]).sum() / rows[m:].sum()).reshape(1))
    return torch.cat(runs)


def credit_optimizer_steps(trainer: L.Trainer, n: int) -> None:
    """Count n plain-torch optimizer steps as Lightning's own: trainer.global_step (what max_steps,
    checkpoints and estimated_stepping_batches count) and the logging step (TensorBoard's x-axis), which
    Lightning adds one to once this batch ends. Lightning has no public API for either: these private
    attributes are touched here alone, and tests/test_stepping.py fails when an upgrade moves them."""
    loop = trainer.fit_loop.epoch_loop
    progress = loop.manual_optimization.optim_step_progress
    progress.total.increment_by(n)
    progress.current.increment_by(n)
    loop._batches_that_stepped = trainer.global_step - 1


def stepper(trainer: L.Trainer) -> FastSteps | None:
    """The running model's fast stepper, None under stepping=lightning."""
    return getattr(trainer.lightning_module, "fast_steps", None)


def fused_epochs(trainer: L.Trainer) -> bool:
    """Whether one Lightning epoch holds several data epochs (fast stepping on small data)."""
    fast = stepper(trainer)
    return fast is not None and fast.epochs_per_step > 0


def steps_per_epoch(trainer: L.Trainer) -> int | None:
    """Optimizer steps per data epoch where they are fixed (fast stepping on data whose epochs are alike;
    full-batch data without gradient accumulation: one); None elsewhere."""
    if (fast := stepper(trainer)) is not None:
        return fast.nb
    return 1 if full_batch(trainer.datamodule) and trainer.accumulate_grad_batches == 1 else None


def data_epoch(trainer: L.Trainer) -> int:
    """The data epoch that a training hook is in, or that on_train_epoch_end ends, from 1."""
    nb = steps_per_epoch(trainer)
    return -(-trainer.global_step // nb) if nb else trainer.current_epoch + 1


def epochs_trained(trainer: L.Trainer) -> int:
    """Data epochs completed, after trainer.fit (also one stopped inside a Lightning epoch)."""
    nb = steps_per_epoch(trainer)
    return trainer.global_step // nb if nb else trainer.current_epoch


def max_data_epochs(trainer: L.Trainer) -> int:
    """The data epochs this run trains at most (a progress bar's total)."""
    nb = steps_per_epoch(trainer)
    if fused_epochs(trainer):
        return -(-trainer.max_steps // nb)
    capped = nb is not None and trainer.max_steps > 0
    return min(trainer.max_epochs, -(-trainer.max_steps // nb)) if capped else trainer.max_epochs


def optimizer_steps(trainer: L.Trainer) -> int:
    """The optimizer steps this run takes (what OneCycleLR's total_steps means): Lightning estimates them in
    its own steps; under fast stepping plan() has set max_steps to the run's total."""
    return trainer.max_steps if stepper(trainer) is not None else int(trainer.estimated_stepping_batches)


def last_epoch(trainer: L.Trainer) -> bool:
    """Whether the Lightning epoch now running or ending is the run's last (by epochs; max_steps may also
    end a run inside an epoch)."""
    if fused_epochs(trainer):  # Lightning epoch e holds optimizer steps e * group ... (e + 1) * group - 1
        return (trainer.current_epoch + 1) * stepper(trainer).group >= trainer.max_steps
    return trainer.current_epoch + 1 >= trainer.max_epochs or 0 < trainer.max_steps <= trainer.global_step


def metrics_due(trainer: L.Trainer) -> bool:
    """Whether this Lightning epoch logs the training metrics besides the loss: where validation is due,
    and at the end (each self.log costs ~0.5 ms, more than 50 epochs of the book's maths). In Lightning's
    units, which plan() keeps in step with the data's."""
    fast = stepper(trainer)
    if fast.capped if fast is not None else trainer.max_steps > 0:
        return True  # max_steps may end the run inside any epoch
    return (trainer.current_epoch + 1) % trainer.check_val_every_n_epoch == 0 or last_epoch(trainer)


def refuse(
    trainer: DictConfig | dict,
    callbacks: dict[str, tuple[DictConfig, Callback]],
    model: L.LightningModule,
    fused: bool,
    has_val: bool,
) -> None:
    """One ConfigError line for the first setting that fast stepping cannot honour (callbacks: name ->
    (its config, the callback); fused: several data epochs in one Lightning epoch)."""
    if not hasattr(model, "fast_steps"):
        raise ConfigError(
            f"{type(model).__qualname__} does not take fast steps (no fast_steps attribute): {OFF}"
        )
    for key, (off, why) in TRAINER_REFUSED.items():
        value = trainer.get(key)
        if value not in off:
            raise ConfigError(f"trainer.{key}={value} cannot be honoured under stepping=fast ({why}): {OFF}")
    if several_ranks(trainer) or str(trainer.get("strategy", "auto")) not in ("auto", "single_device"):
        ranks = f"trainer.devices={trainer.get('devices')}, num_nodes={trainer.get('num_nodes', 1)}"
        raise ConfigError(
            f"{ranks}, strategy={trainer.get('strategy', 'auto')} cannot be honoured under stepping=fast "
            f"(DDP synchronises gradients once per Lightning step): {OFF}"
        )
    if trainer.get("check_val_every_n_epoch") is None:
        raise ConfigError(f"trainer.check_val_every_n_epoch=null counts Lightning batches: {OFF}")
    for name, (config, callback) in callbacks.items():
        what = f"callbacks.{name} ({type(callback).__name__})"
        if isinstance(callback, StochasticWeightAveraging):
            raise ConfigError(f"{what} swaps in a learning-rate schedule of its own mid-run: {OFF}")
        hooks = [h for h in STEP_HOOKS if is_overridden(h, callback, parent=Callback)]
        if hooks and not per_step_safe(callback, config):
            raise ConfigError(
                f"{what} hooks {hooks[0]}, which runs once per Lightning step of many optimizer steps: {OFF}"
            )
        hooks = [h for h in EPOCH_HOOKS if is_overridden(h, callback, parent=Callback)] if fused else []
        if hooks and not per_epoch_safe(callback, has_val, trainer["max_epochs"]):
            raise ConfigError(
                f"{what} hooks {hooks[0]}, which runs once per Lightning epoch of many data epochs: {OFF}"
            )


def per_epoch_safe(callback: Callback, has_val: bool, max_epochs: int) -> bool:
    """Callbacks whose epoch hooks are right once per Lightning epoch of several data epochs: ours (they
    count data epochs), progress bars, ModelCheckpoint (it checks where validation is due), EarlyStopping
    where it checks validations, or where its patience outlasts the run."""
    if getattr(callback, "fast_steps_aware", False) or isinstance(callback, ProgressBar | ModelCheckpoint):
        return True
    return isinstance(callback, EarlyStopping) and (has_val or callback.patience >= max_epochs)


def per_step_safe(callback: Callback, config: DictConfig) -> bool:
    """Callbacks whose per-batch hooks are right once per Lightning step: ours that read a fast step's
    `losses` (fast_steps_aware), progress bars (they only draw), and ModelCheckpoint saving by epoch."""
    if getattr(callback, "fast_steps_aware", False) or isinstance(callback, ProgressBar | FastSteps):
        return True
    if isinstance(callback, ModelCheckpoint):
        return not config.get("every_n_train_steps") and config.get("train_time_interval") is None
    return False
