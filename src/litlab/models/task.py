"""The task module: any network, trained with the loss, metrics and predictions of the data's task."""

import math
from collections.abc import Callable
from functools import partial
from typing import Protocol

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics as tm
from torch import Tensor, nn

from litlab.checks import TASKS
from litlab.errors import ConfigError
from litlab.stepping import FastSteps, metrics_due, optimizer_steps

REGRESSION_LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}
CLASS_LOSSES = {"binary": F.binary_cross_entropy_with_logits, "multiclass": F.cross_entropy}


class Model(Protocol):
    """What train.py, the callbacks, the cockpit and eval/predict call on a model. TaskModel is one;
    a LightningModule of your own that provides these works with all of them.

    - hparams: task (regression | binary | multiclass), in_features, out_features, and plain values only;
    - net: the nn.Module that maps inputs to raw outputs;
    - forward(x) -> raw outputs [n, out_features] (values, or logits for classes);
    - loss(out, y) -> the training loss; loss_name: its name (mse, mae, huber, cross_entropy);
    - predictions(out) -> values, P(class 1) [n, 1], or class probabilities [n, classes];
    - metric_names: every metric it logs (train/loss, val/acc, ...), what optimized_metric may name.

    Pictures, eval and predict need only forward: a module without predictions gets its task's
    (task_predictions; train.build records the data's task, in_features and out_features in its hparams
    where it does not). loss and loss_name refine the optimum's gap; metric_names, a check of
    optimized_metric before training."""

    net: nn.Module
    loss_name: str
    metric_names: set[str]

    def forward(self, x: Tensor) -> Tensor: ...

    def loss(self, out: Tensor, y: Tensor) -> Tensor: ...

    def predictions(self, out: Tensor) -> Tensor: ...


def task_predictions(task: str, out: Tensor) -> Tensor:
    """What raw outputs mean for a task: values (identity), P(class 1) (sigmoid), class probabilities
    (softmax)."""
    if task == "regression":
        return out
    return torch.sigmoid(out) if task == "binary" else out.softmax(dim=-1)


def predictions_of(module: L.LightningModule, out: Tensor) -> Tensor:
    """A module's predictions: its own `predictions` where it has one, else its task's (every run's module
    has hparams.task: train.build gives it the data's where the module does not record one)."""
    if callable(getattr(module, "predictions", None)):
        return module.predictions(out)
    return task_predictions(module.hparams.task, out)


def task_metrics(task: str, out_features: int) -> tm.MetricCollection:
    """The torchmetrics that describe a fit of this task, beside its loss."""
    if task == "regression":
        return tm.MetricCollection(
            {"mae": tm.MeanAbsoluteError(), "r2": tm.R2Score(multioutput="uniform_average")}
        )
    if task == "binary":
        return tm.MetricCollection(
            {
                "acc": tm.classification.BinaryAccuracy(),
                "f1": tm.classification.BinaryF1Score(),
                "auroc": tm.classification.BinaryAUROC(),
            }
        )
    return tm.MetricCollection(
        {
            "acc": tm.classification.MulticlassAccuracy(out_features, average="micro"),
            "f1": tm.classification.MulticlassF1Score(out_features, average="macro"),
        }
    )


class CrossEntropy(tm.Metric):
    """Mean cross-entropy of class probabilities over a whole epoch, in nats, bits or as perplexity."""

    def __init__(self, unit: str = "nats"):
        super().__init__()
        self.unit = unit
        self.add_state("nll", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        p = probs.gather(1, target.unsqueeze(1)).clamp_min(torch.finfo(probs.dtype).tiny)
        self.nll += -p.log().double().sum()
        self.count += target.numel()

    def compute(self) -> Tensor:
        nats = self.nll / self.count
        return {"nats": nats, "bits": nats / math.log(2), "perplexity": nats.exp()}[self.unit].float()


class EpochMean(tm.Metric):
    """The size-weighted mean of a value over an epoch's batches, summed as Lightning sums a logged value
    (a non-finite value stays in: a diverged epoch's mean is not finite). A torchmetrics Metric, so that a
    checkpoint taken mid-epoch holds the sum so far (checkpoints.ResumeState)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("rows", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, value: Tensor, rows: int) -> None:
        self.total = self.total + value.float() * rows
        self.rows = self.rows + rows

    def compute(self) -> Tensor:
        return self.total / self.rows


def symbol_metrics() -> dict[str, tm.Metric]:
    """Next-symbol prediction: cross-entropy per symbol in bits (per character at char level), perplexity."""
    return {"bits": CrossEntropy("bits"), "perplexity": CrossEntropy("perplexity")}


def loss_function(task: str, loss: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Regression: mse, mae or huber; classes: cross-entropy (with logits), whatever `loss` says."""
    if task != "regression":
        return CLASS_LOSSES[task]
    if loss not in REGRESSION_LOSSES:
        raise ConfigError(
            f"model.loss={loss} is not a regression loss: choose one of {', '.join(REGRESSION_LOSSES)}"
        )
    return REGRESSION_LOSSES[loss]


class TaskModel(L.LightningModule):
    """A network (`net`, built from the data's sizes) with the loss, metrics and predictions of the data's
    task: MSE, MAE or Huber for regression (model.loss), BCE-with-logits for binary labels, cross-entropy
    for classes. One step(batch, stage) serves train, val and test."""

    def __init__(
        self,
        net: Callable[..., nn.Module],
        task: str,
        in_features: int,
        out_features: int,
        loss: str = "mse",
        tasks: list[str] = TASKS,
        optimizer: partial[torch.optim.Optimizer] | None = None,
        scheduler: partial | None = None,
        language_metrics: bool = False,
    ):
        super().__init__()
        tasks = [str(t) for t in tasks]  # plain values in hparams, never a ListConfig
        if task not in tasks:  # train() refuses this first, naming the model option the user chose
            raise ConfigError(f"this model fits {', '.join(tasks)} tasks, not {task}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])  # plain values only
        self.net = net(in_features, out_features)
        self.loss_fn = loss_function(task, loss)
        self.loss_name = loss if task == "regression" else "cross_entropy"
        self.optimizer, self.scheduler = optimizer, scheduler
        self.fast_steps: FastSteps | None = None  # stepping=fast: train() sets it (src/litlab/stepping.py)
        self.validated_at: int | None = None
        # the training loss and learning rate, averaged over each epoch's optimizer steps
        self.train_loss, self.train_lr = EpochMean(), EpochMean()
        self.train_logged_epoch: int | None = None  # the epoch whose means were handed to self.log
        # validation and test losses over every rank's rows (a DistributedSampler gives each rank a shard)
        self.val_loss, self.test_loss = EpochMean(), EpochMean()
        metrics = task_metrics(task, out_features)
        if language_metrics:  # macro-F1 over a vocabulary says little and, deterministic, costs n x classes^2
            metrics = tm.MetricCollection({"acc": metrics["acc"], **symbol_metrics()})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        losses = {f"{stage}/loss" for stage in ("train", "val", "test")}
        self.metric_names = {*losses, *self.train_metrics, *self.val_metrics, *self.test_metrics}

    @property
    def automatic_optimization(self) -> bool:
        return self.fast_steps is None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(out, y)

    def predictions(self, out: Tensor) -> Tensor:
        """Values, P(class 1), or class probabilities."""
        return task_predictions(self.hparams.task, out)

    def update_metrics(self, metrics: tm.MetricCollection, out: Tensor, y: Tensor) -> None:
        metrics.update(self.predictions(out), y if self.hparams.task == "regression" else y.long())

    def update_train_metrics(self, out: Tensor, y: Tensor) -> None:
        self.update_metrics(self.train_metrics, out, y)

    def log_train_means(self, loss: Tensor, rows: int, lr: Tensor | float | None = None) -> None:
        """train/loss (and lr, where a scheduler changes it): means over the epoch's optimizer steps, each
        weighted by its rows (a fast step's mean of its steps: their rows together)."""
        self.train_loss.update(loss, rows)
        if lr is not None:
            self.train_lr.update(torch.as_tensor(lr), rows)
        # Lightning computes a logged Metric where the epoch ends, from every update of it since the epoch
        # began: one self.log an epoch is enough (each call walks the Metric's states, ~0.3 ms: a tenth of a
        # step on a streamed table)
        if self.train_logged_epoch != self.trainer.current_epoch:
            self.train_logged_epoch = self.trainer.current_epoch
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
            if lr is not None:
                self.log("lr", self.train_lr, on_step=False, on_epoch=True)

    def step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        out = self(x)
        if self.hparams.task != "multiclass" and (y.dim() == 1 or y.dtype != out.dtype):
            y = y.to(out.dtype).view(len(y), -1)  # a loader's per-row numbers or 0/1 labels: [n] -> [n, 1]
        loss = self.loss(out, y)
        logged = loss.detach()
        if stage != "train":
            mean = getattr(self, f"{stage}_loss")
            mean.update(logged, len(x))
            self.log(f"{stage}/loss", mean, on_step=False, on_epoch=True)
            self.update_metrics(getattr(self, f"{stage}_metrics"), out.detach(), y)
            return loss
        if self.trainer.world_size > 1:
            # Each rank holds an equal shard: the mean over ranks is the loss one process reports. all_gather
            # in a step every rank runs (sync_dist would reduce when rank 0's progress bar first reads the
            # metrics, while the other ranks wait elsewhere: a deadlock).
            logged = self.all_gather(logged).mean()
        scheduled = self.trainer.lr_scheduler_configs
        self.log_train_means(
            logged, len(x), self.trainer.optimizers[0].param_groups[0]["lr"] if scheduled else None
        )
        if metrics_due(self.trainer):
            self.update_train_metrics(out.detach(), y)
        return loss

    def training_step(self, batch, batch_idx: int):
        if self.fast_steps is not None:
            return self.fast_steps.training_step(self, batch, batch_idx)
        return self.step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.step(batch, "test")

    def on_train_epoch_end(self) -> None:
        if any(m.update_called for m in self.train_metrics.values()):  # on the epochs metrics_due() picked
            self.log_dict(self.train_metrics.compute())
            self.train_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()
        self.validated_at = self.global_step  # train() validates once more unless this was the end

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": scheduler_config(self.scheduler, optimizer, self.trainer),
        }


# Schedulers whose step means one optimizer step; every other steps once per data epoch.
PER_STEP = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)


def scheduler_config(scheduler: partial, optimizer: torch.optim.Optimizer, trainer: L.Trainer) -> dict:
    """Lightning's scheduler dict: per optimizer step for OneCycleLR (its total_steps the run's optimizer
    steps, unless set) and CyclicLR, else per epoch; ReduceLROnPlateau watches train/loss."""
    cls = scheduler.func
    if issubclass(cls, torch.optim.lr_scheduler.OneCycleLR) and "total_steps" not in scheduler.keywords:
        scheduler = partial(scheduler, total_steps=optimizer_steps(trainer))
    config = {"scheduler": scheduler(optimizer), "interval": "step" if issubclass(cls, PER_STEP) else "epoch"}
    if issubclass(cls, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = "train/loss"
    return config
