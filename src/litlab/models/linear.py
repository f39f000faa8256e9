"""Linear and logistic regression: one linear layer whose loss and metrics follow the data's task."""

from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics as tm
from torch import Tensor, nn

from litlab.data.base import TASKS_OF_FAMILY
from litlab.errors import ConfigError


def task_metrics(task: str, out_features: int) -> tm.MetricCollection:
    """The torchmetrics that describe a fit of this task."""
    if task == "regression":
        return tm.MetricCollection(
            {
                "mse": tm.MeanSquaredError(),
                "mae": tm.MeanAbsoluteError(),
                "r2": tm.R2Score(multioutput="uniform_average"),
            }
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


class LinearModel(L.LightningModule):
    """y = x W^T + b; MSE for regression, BCE-with-logits (binary), cross-entropy (multiclass)."""

    def __init__(
        self,
        family: str,
        task: str,
        in_features: int,
        out_features: int,
        optimizer: partial[torch.optim.Optimizer] | None = None,
        epochs_per_step: int = 1,
        init_weight: float | None = None,
        init_bias: float | None = None,
    ):
        super().__init__()
        if task not in TASKS_OF_FAMILY.get(family, ()):
            raise ConfigError(
                f"model={family} cannot fit a {task} task: use model=linear for regression, "
                "model=logistic for classes"
            )
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.automatic_optimization = False  # epochs_per_step optimizer steps per batch, see training_step
        self.linear = nn.Linear(in_features, out_features)
        with torch.no_grad():
            if init_weight is not None:
                self.linear.weight.fill_(init_weight)
            if init_bias is not None:
                self.linear.bias.fill_(init_bias)
        self.train_metrics = task_metrics(task, out_features).clone(prefix="train/")
        self.val_metrics = task_metrics(task, out_features).clone(prefix="val/")
        self.test_metrics = task_metrics(task, out_features).clone(prefix="test/")

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        task = self.hparams.task
        if task == "regression":
            return F.mse_loss(out, y)
        if task == "binary":
            return F.binary_cross_entropy_with_logits(out, y)
        return F.cross_entropy(out, y)

    def predictions(self, out: Tensor) -> Tensor:
        """Values, P(class 1), or class probabilities."""
        task = self.hparams.task
        if task == "regression":
            return out
        return torch.sigmoid(out) if task == "binary" else out.softmax(dim=-1)

    def update_metrics(self, metrics: tm.MetricCollection, out: Tensor, y: Tensor) -> None:
        metrics.update(self.predictions(out), y if self.hparams.task == "regression" else y.long())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        opt = self.optimizers()
        # Full-batch data: several epochs per Lightning step, each a real optimizer step on the whole set;
        # max_steps (set by train() to the epoch count) caps the last chunk so the total is exact.
        steps = self.hparams.epochs_per_step
        if self.trainer.max_steps > 0:
            steps = min(steps, self.trainer.max_steps - self.global_step)
        for _ in range(steps):
            out = self(x)
            loss = self.loss(out, y)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
        # Lightning counts one logging step per batch; count every fused epoch so that TensorBoard's
        # x-axis (also for callbacks such as LearningRateMonitor) is optimizer steps, i.e. epochs here.
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += steps - 1
        # Under DDP each rank holds an equal shard: the mean over ranks is the full-batch loss one process
        # reports. all_gather here, in a step every rank runs (sync_dist would reduce when rank 0's progress
        # bar first reads the metrics, while the other ranks wait elsewhere: a deadlock).
        self.log(
            "train/loss",
            self.all_gather(loss.detach()).mean(),
            on_step=False,
            on_epoch=True,
            batch_size=len(x),
        )
        self.update_metrics(self.train_metrics, out.detach(), y)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str, metrics: tm.MetricCollection) -> None:
        x, y = batch
        out = self(x)
        self.log(f"{stage}/loss", self.loss(out, y), batch_size=len(x))
        self.update_metrics(metrics, out, y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())
