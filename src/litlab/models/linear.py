"""Linear and logistic regression: one linear layer whose loss and metrics follow the data's task."""

import math
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics as tm
from torch import Tensor, nn

from litlab.data.base import TASKS_OF_FAMILY
from litlab.errors import ConfigError


def task_metrics(task: str, out_features: int) -> tm.MetricCollection:
    """The torchmetrics that describe a fit of this task, beside its loss (for regression, the MSE)."""
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


def symbol_metrics() -> dict[str, tm.Metric]:
    """Next-symbol prediction: cross-entropy per symbol in bits (per character at char level), perplexity."""
    return {"bits": CrossEntropy("bits"), "perplexity": CrossEntropy("perplexity")}


class OneHotLinear(nn.Module):
    """nn.Linear on one-hot inputs given as their indices [n, k]: k weight rows summed, no one-hot matrix.

    one_hot(x) @ W^T == weight[x].sum(1) with weight = W^T, the data offsetting each position's indices."""

    def __init__(self, num_embeddings: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_embeddings, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.embedding_bag(x, self.weight, mode="sum") + self.bias


LOSSES = {
    "regression": F.mse_loss,
    "binary": F.binary_cross_entropy_with_logits,
    "multiclass": F.cross_entropy,
}


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
        log_every_n_epochs: int = 50,
        init_weight: float | None = None,
        init_bias: float | None = None,
        num_embeddings: int | None = None,
        language_metrics: bool = False,
    ):
        super().__init__()
        if task not in TASKS_OF_FAMILY.get(family, ()):
            raise ConfigError(
                f"model={family} cannot fit a {task} task: use model=linear for regression, "
                "model=logistic for classes"
            )
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.loss_fn = LOSSES[task]  # chosen once: the fused loop calls loss() thousands of times
        self.automatic_optimization = False  # epochs_per_step optimizer steps per batch, see training_step
        # num_embeddings: the inputs are indices of one-hot features (text), looked up, never multiplied
        if num_embeddings:
            self.linear = OneHotLinear(num_embeddings, out_features)
        else:
            self.linear = nn.Linear(in_features, out_features)
        with torch.no_grad():
            if init_weight is not None:
                self.linear.weight.fill_(init_weight)
            if init_bias is not None:
                self.linear.bias.fill_(init_bias)
        metrics = task_metrics(task, out_features)
        if language_metrics:  # macro-F1 over a vocabulary says little and, deterministic, costs n x classes^2
            metrics = tm.MetricCollection({"acc": metrics["acc"], **symbol_metrics()})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(out, y)

    def predictions(self, out: Tensor) -> Tensor:
        """Values, P(class 1), or class probabilities."""
        task = self.hparams.task
        if task == "regression":
            return out
        return torch.sigmoid(out) if task == "binary" else out.softmax(dim=-1)

    def update_metrics(self, metrics: tm.MetricCollection, out: Tensor, y: Tensor) -> None:
        metrics.update(self.predictions(out), y if self.hparams.task == "regression" else y.long())

    def training_step(
        self, batch: tuple[Tensor, Tensor] | list[tuple[Tensor, Tensor]], batch_idx: int
    ) -> dict[str, Tensor]:
        # One Lightning step, several optimizer steps (Lightning's fixed cost per step is paid once):
        # minibatch data arrives as a list of consecutive minibatches (train() sets batches_per_step);
        # full-batch data as the whole set, stepped epochs_per_step times, i.e. that many epochs, capped
        # by max_steps (train() sets it to the epoch count) so that the total is exact.
        minibatches = isinstance(batch, list)
        if minibatches:
            steps = batch
        else:
            n = self.hparams.epochs_per_step
            if self.trainer.max_steps > 0:
                n = min(n, self.trainer.max_steps - self.global_step)
            steps = [batch] * n
        opt = self.optimizers()
        # Training metrics only where they are logged: every minibatch of a group, or the last epoch.
        track = self.is_metrics_epoch()
        # All but the last are plain torch steps; the last goes through Lightning, so callbacks and
        # precision plugins see one step per Lightning step. Then the step counters catch up.
        losses = []  # each step's loss, for DivergenceGuard to read once per Lightning step
        for x, y in steps[:-1]:
            out = self(x)
            loss = self.loss(out, y)
            losses.append(loss.detach())
            if track and minibatches:
                self.update_metrics(self.train_metrics, out.detach(), y)
            opt.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            opt.optimizer.step()
        x, y = steps[-1]
        out = self(x)
        loss = self.loss(out, y)
        losses.append(loss.detach())
        losses = torch.stack(losses)
        if track:
            self.update_metrics(self.train_metrics, out.detach(), y)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        self.count_fused_steps(len(steps) - 1)
        # The loss of this step's data: over a group, the minibatches' size-weighted mean; on full-batch
        # data, the last epoch's (the earlier ones are history, as in a plain loop's last print).
        sizes = torch.tensor([len(b[0]) for b in steps] if minibatches else [len(x)], device=losses.device)
        step_loss = (losses * sizes).sum() / sizes.sum() if minibatches else loss.detach()
        # Under DDP each rank holds an equal shard: the mean over ranks is the full-batch loss one process
        # reports. all_gather here, in a step every rank runs (sync_dist would reduce when rank 0's progress
        # bar first reads the metrics, while the other ranks wait elsewhere: a deadlock).
        logged = self.all_gather(step_loss).mean() if self.trainer.world_size > 1 else step_loss
        self.log("train/loss", logged, on_step=False, on_epoch=True, batch_size=int(sizes.sum()))
        return {"loss": loss, "epoch_losses": losses}  # callbacks (DivergenceGuard) get it as `outputs`

    def on_train_batch_end(self, outputs: dict[str, Tensor], batch, batch_idx: int) -> None:
        """train/loss of the epochs inside a fused full-batch step that end a log_every_n_epochs
        interval, straight to the loggers at their own steps: self.log, ~1 ms a call with its logger
        flush, logs once per Lightning step, at its last epoch. Here, after the callbacks' hook, so that
        DivergenceGuard has stopped a diverged step first."""
        losses = outputs["epoch_losses"][:-1]
        if isinstance(batch, list) or not len(losses) or not self.trainer.is_global_zero:
            return
        every, first = self.hparams.log_every_n_epochs, self.global_step - len(losses) - 1
        due = [i for i in range(len(losses)) if (first + i + 1) % every == 0]
        for logger in self.loggers if due else ():
            for i, value in zip(due, losses[due].tolist(), strict=True):
                logger.log_metrics({"train/loss": value}, step=first + i)

    def count_fused_steps(self, n: int) -> None:
        """Credit n plain-torch optimizer steps to Lightning's counters: global_step (what max_steps and
        checkpoints count) and the logging step, so TensorBoard's x-axis is optimizer steps (epochs).

        The logging step is set from global_step rather than counted up: Lightning adds this batch once
        the step ends, and, resumed under max_steps from an epoch-end checkpoint, it first runs an empty
        iteration that counts one batch more."""
        loop = self.trainer.fit_loop.epoch_loop
        loop.manual_optimization.optim_step_progress.total.increment_by(n)
        loop.manual_optimization.optim_step_progress.current.increment_by(n)
        loop._batches_that_stepped = self.global_step - 1

    def is_metrics_epoch(self) -> bool:
        """Whether this epoch logs more than the loss: where validation runs, and at the end.
        Each self.log costs ~0.5 ms, more than 50 epochs of the book's maths."""
        return self.is_last_epoch() or (self.current_epoch + 1) % self.trainer.check_val_every_n_epoch == 0

    def is_last_epoch(self) -> bool:
        trainer = self.trainer
        return self.current_epoch + 1 >= trainer.max_epochs or 0 < trainer.max_steps <= self.global_step

    def on_train_epoch_end(self) -> None:
        if self.is_metrics_epoch():
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
