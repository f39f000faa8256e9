"""TensorBoard as the cockpit: a logger laid out for the answer, distance to the optimum, pictures of the fit
(drawn with src/litlab/drawing.py), the run's config as text."""

import io
import logging
import math
import re
import struct
from pathlib import Path
from textwrap import indent

import google_crc32c
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.summary.writer.event_file_writer import _AsyncWriter
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from litlab.checks import TASKS
from litlab.data.contract import batches, has_split, normalisation, provides, sample, whole_splits
from litlab.drawing import Frames, new_figure, png_bytes, render
from litlab.errors import ConfigError
from litlab.models.task import Model, predictions_of
from litlab.stepping import data_epoch, last_epoch, max_data_epochs, metrics_due

log = logging.getLogger(__name__)


STAGES = ("train", "val", "test")


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoardLogger, laid out so that TensorBoard opens on the answer:

    - a custom-scalars layout (`make tensorboard` opens on it): the losses first, train and val and the
      optimum on one chart, then each metric's train, val and test curves on one chart;
    - no `epoch` card: Lightning adds its epoch counter to every log_metrics call;
    - `log_results` writes the HParams entry: the keys the command line sweeps (or typed) first, the
      optimised metric first, and as metric values the last point of each curve, so that no single-point
      copy of the final values crowds Time Series and Scalars."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.charted: set[str] = set()
        self.saved = False  # hparams.yaml written

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        """The run's Events writer (Lightning's property makes torch's SummaryWriter)."""
        if self._experiment is None:
            if self.root_dir:
                self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = Events(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @rank_zero_only
    def save(self) -> None:
        """What Lightning does after every log_metrics: the events to disk, and hparams.yaml once (Lightning
        looks for it on the file system at every call)."""
        self.experiment.flush()
        if not self.saved:
            super().save()
            self.saved = True

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        super().log_metrics(metrics, step)
        if not metrics.keys() <= self.charted:  # a new metric: the layout again (the last one written counts)
            self.charted |= metrics.keys()
            self.experiment.add_custom_scalars(layout(self.charted))

    @rank_zero_only
    def log_picture(self, tag: str, picture: Image.Image | bytes, step: int) -> None:
        add_picture(self.experiment, tag, picture, step)

    @rank_zero_only
    def log_results(self, hparams: dict, metrics: list[str], first: list[str]) -> None:
        """The HParams entry: hparams (plain values), the metric tags whose last values it shows (in this
        order), and the hparams to list first (HParams lists those marked as differing first)."""
        experiment, start, end = hparams_summaries(hparams, dict.fromkeys(metrics, 0.0))
        content = HParamsPluginData.FromString(experiment.value[0].metadata.plugin_data.content)
        for info in content.experiment.hparam_infos:
            info.differs = info.name in first
        experiment.value[0].metadata.plugin_data.content = content.SerializeToString()
        for summary in (experiment, start, end):  # as Lightning's log_hyperparams writes them
            add_summary(self.experiment, summary)


class Events(SummaryWriter):
    """torch's SummaryWriter, writing each event on the caller's thread (Direct). TensorBoard's writer thread
    took the GIL from the training loop for up to milliseconds after each log (the first tensor operation
    after one took 1.3 ms instead of 50 us), and Lightning waits for that thread after every log_metrics
    anyway (save: flush). Writes go to the file's buffer; flush writes it out."""

    def _get_file_writer(self):
        writer = super()._get_file_writer()
        queued = writer.event_writer._async_writer
        if isinstance(queued, _AsyncWriter):  # a new event file: its thread has written the first event
            queued._worker.stop()
            writer.event_writer._async_writer = Direct(queued._writer._writer)
        return writer


def masked_crc(data: bytes) -> bytes:
    """The TFRecord format's masked CRC-32C, by google-crc32c's C code: tensorboard's own is pure Python
    (3 ms for a 30 KB picture)."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


class Direct:
    """An event file's records in TFRecord framing (tensorboard's RecordWriter), each written as it comes
    (the methods of tensorboard's _AsyncWriter, without its queue and thread)."""

    def __init__(self, file):
        self.file, self.closed = file, False

    def write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self.file.write(header + masked_crc(header) + record + masked_crc(record))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.file.flush()
            self.file.close()


def layout(tags: set[str]) -> dict:
    """The custom-scalars layout for these scalar tags: {category: {chart: ["Multiline", [tag regex]]}}."""
    names = sorted({t.split("/", 1)[1] for t in tags if t.split("/")[0] in STAGES})
    stages = "^(train|val|test)/"
    losses = {"loss": ["Multiline", [stages + "loss$", "^train/optimum_loss$"]]}  # the optimum: a flat line
    if "gap" in names:
        losses["gap to the optimum"] = ["Multiline", ["^train/gap$"]]
    charts = {"losses": losses}
    others = [n for n in names if n not in ("loss", "gap", "optimum_loss")]
    if others:
        charts["metrics"] = {n: ["Multiline", [stages + re.escape(n) + "$"]] for n in others}
    rest = sorted(t for t in tags if t.split("/")[0] not in STAGES)  # lr, and a user's own
    if rest:
        charts["other"] = {t: ["Multiline", ["^" + re.escape(t) + "$"]] for t in rest}
    return charts


def tensorboard_writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The run's TensorBoard writer on rank 0; None without a TensorBoard logger."""
    if not trainer.is_global_zero:
        return None
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def picture_loggers(trainer: L.Trainer) -> list:
    """The loggers that take pictures (log_picture: TensorBoard, MLflow, W&B) on rank 0."""
    return [lg for lg in trainer.loggers if hasattr(lg, "log_picture")] if trainer.is_global_zero else []


def add_described_scalar(writer: SummaryWriter, tag: str, value: float, step: int, description: str) -> None:
    """A scalar whose value carries the tag's description: TensorBoard keeps a tag's first metadata."""
    meta = SummaryMetadata(
        display_name=tag,
        summary_description=description,
        plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"),
    )
    summary = Summary(value=[Summary.Value(tag=tag, simple_value=value, metadata=meta)])
    add_summary(writer, summary, step)  # add_scalar takes no description


def as_image(picture: Image.Image | bytes) -> Image.Image:
    """A picture as loggers take it (an image, or PNG bytes: the fitted line's frames) as an image."""
    return Image.open(io.BytesIO(picture)) if isinstance(picture, bytes) else picture


def add_picture(writer: SummaryWriter, tag: str, picture: Image.Image | bytes, step: int) -> None:
    """An image (as png_bytes) or PNG bytes as a TensorBoard image."""
    png = picture if isinstance(picture, bytes) else png_bytes(picture)
    width, height = as_image(picture).size  # a PNG's size, from its header
    picture = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    add_summary(writer, Summary(value=[Summary.Value(tag=tag, image=picture)]), step)


def add_summary(writer: SummaryWriter, summary: Summary, step: int | None = None) -> None:
    """A summary proto as it is: the one place that reaches inside torch's SummaryWriter (its file writer),
    for what its add_* methods cannot write (a tag's description, a PNG at our level, HParams' flags).
    Every run's event files test it."""
    writer._get_file_writer().add_summary(summary, step)


class NormalEquations:
    """Least squares y ~ x W^T + b from sums over batches, in float64: [x 1]^T [x 1], [x 1]^T y and y^T y,
    features x features whatever the rows, so a split of any size is streamed once and never copied."""

    def __init__(self):
        self.gram = self.xty = self.yty = None
        self.count = 0  # target values (rows x outputs)

    def add(self, x: Tensor, y: Tensor) -> None:
        a = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        y = y.double().reshape(len(y), -1)
        if self.gram is None:
            d = a.shape[1]
            self.gram, self.xty, self.yty = a.new_zeros(d, d), a.new_zeros(d, y.shape[1]), 0.0
        self.gram += a.T @ a
        self.xty += a.T @ y
        self.yty += float((y * y).sum())
        self.count += y.numel()

    def solve(self) -> tuple[Tensor, Tensor, float]:
        """(W, b, mean squared error) of the exact fit: torch.linalg.lstsq's minimum-norm solution where
        inputs are collinear (one-hot groups beside a bias); at a solution of the normal equations the
        squared error is y^T y - w^T X^T y."""
        solution = torch.linalg.lstsq(self.gram, self.xty, driver="gelsd").solution  # [d + 1, k]
        squared = self.yty - float((solution * self.xty).sum())
        return solution[:-1].T, solution[-1], max(squared, 0.0) / self.count


def lbfgs_optimum(model: nn.Linear, loss_fn, x: Tensor, y: Tensor, max_iter: int) -> None:
    """Fit model to the whole of (x, y) with full-batch L-BFGS, in place: a reference near the optimum."""
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)


class OptimumGap(L.Callback):
    """train/optimum_loss, the best loss a linear model reaches on the training split, and
    train/gap = train/loss - optimum: whether the optimizer has converged or is still far away."""

    fast_steps_aware = True  # counts data epochs and optimizer steps (src/litlab/stepping.py)

    def __init__(
        self, lstsq_max_rows: int = 1_000_000, lbfgs_max_rows: int = 100_000, lbfgs_max_iter: int = 500
    ):
        self.lstsq_max_rows = lstsq_max_rows
        self.lbfgs_max_rows = lbfgs_max_rows
        self.lbfgs_max_iter = lbfgs_max_iter
        self.optimum: float | None = None

    def reference(self, trainer: L.Trainer, pl_module: Model) -> tuple[float, str, float] | None:
        """(optimum loss, how it was found, the model's loss now), in float64; None with an info line where
        the reference would not solve the model's own problem (a network that is not one linear layer, a
        regression loss other than MSE, symbol-index inputs), where it would cost seconds (beyond
        lstsq_max_rows or lbfgs_max_rows rows of a split in memory), or where L-BFGS would need a training
        split that the data streams."""
        if not provides(pl_module, Model) or not isinstance(pl_module.net, nn.Linear):
            return skipped("the model is not one linear layer")
        data, task = trainer.datamodule, pl_module.hparams.task
        whole = whole_splits(data)
        rows = len(whole["train"][0]) if whole is not None else None
        if task == "regression":
            if pl_module.loss_name != "mse":
                return skipped(f"model.loss={pl_module.loss_name} is not least squares")
            if rows is not None and rows > self.lstsq_max_rows:
                return skipped(f"{rows} training rows > callbacks.optimum_gap.lstsq_max_rows")
            return self.least_squares(trainer, pl_module)
        if whole is None:
            return skipped("L-BFGS needs the training split in memory, and the data streams it")
        if rows > self.lbfgs_max_rows:
            return skipped(f"{rows} training rows > callbacks.optimum_gap.lbfgs_max_rows")
        x, y = (t.cpu() for t in whole["train"])
        if not x.is_floating_point():
            return skipped("the inputs are symbol indices")
        with torch.no_grad():
            now = float(pl_module.loss(*model_batch(trainer, pl_module, x, y)))
        x, y = x.double(), (y.double() if y.is_floating_point() else y)
        model = nn.Linear(x.shape[1], pl_module.hparams.out_features, dtype=torch.float64)
        nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
        lbfgs_optimum(model, pl_module.loss, x, y, self.lbfgs_max_iter)
        how = (
            f"a full-batch L-BFGS fit of the training split ({self.lbfgs_max_iter} iterations): "
            "an approximation; on separable classes the infimum is 0"
        )
        with torch.no_grad():
            return float(pl_module.loss(model(x), y)), how, now

    @torch.no_grad()
    def least_squares(self, trainer: L.Trainer, pl_module: Model) -> tuple[float, str, float] | None:
        """The exact least-squares loss from normal equations summed over the training split (in memory or
        streamed from a new loader), and the model's loss now from the same pass."""
        sums, squared = NormalEquations(), 0.0
        for x, y in batches(trainer.datamodule, "train"):
            if not x.is_floating_point():
                return skipped("the inputs are symbol indices")
            out, target = model_batch(trainer, pl_module, x, y)  # on the model's device
            sums.add(x, y)
            squared += float(((out.double() - target.double()) ** 2).sum())
        if sums.gram is None:
            return None
        how = (
            "the exact least-squares solution of the training split (float64 normal equations solved by "
            "torch.linalg.lstsq)"
        )
        return sums.solve()[2], how, squared / sums.count

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = self.reference(trainer, pl_module)
        if found is None:
            return
        self.optimum, how, start = found
        if not trainer.is_global_zero or trainer.global_step > 0:  # a resumed run's first start logged these
            return
        # the gap before the first step; in TensorBoard with the tags' descriptions
        step = trainer.global_step
        values = {"train/optimum_loss": self.optimum, "train/gap": gap(start, self.optimum)}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                add_described_scalar(
                    logger.experiment, "train/optimum_loss", self.optimum, step, f"Loss of {how}."
                )
                description = f"train/loss minus the loss of {how}."
                add_described_scalar(logger.experiment, "train/gap", values["train/gap"], step, description)
            else:
                logger.log_metrics(values, step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss")  # this epoch's mean, as logged
        if self.optimum is None or loss is None or not metrics_due(trainer):
            return
        distance = gap(float(loss), self.optimum)
        if last_epoch(trainer):  # through Lightning: metrics.json, every logger
            pl_module.log("train/optimum_loss", self.optimum)
            pl_module.log("train/gap", distance)
            return
        # Elsewhere straight to the loggers, at train/loss's step: self.log costs ~0.5 ms a call.
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {"train/optimum_loss": self.optimum, "train/gap": distance}, trainer.global_step - 1
                )


def skipped(why: str) -> None:
    log.info(f"no reference optimum: {why} (callbacks.optimum_gap)")


def model_batch(
    trainer: L.Trainer, pl_module: L.LightningModule, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """(outputs, targets) of a CPU batch as a training step sees them: on the model's device, converted
    as Lightning converts a batch (precision), targets [n] of numbers as [n, 1]."""
    x, y = trainer.precision_plugin.convert_input((x.to(pl_module.device), y.to(pl_module.device)))
    out = pl_module(x)
    if pl_module.hparams.task != "multiclass":
        y = y.to(out.dtype).view(len(y), -1)
    return out, y


def gap(loss: float, optimum: float) -> float:
    """loss - optimum, and 0 within float32's precision of the loss: a float32 mean over the split lands a
    rounding error either side of the float64 optimum, and a gap is never below zero."""
    distance = loss - optimum
    return 0.0 if distance <= 8 * torch.finfo(torch.float32).eps * abs(loss) else distance


def regression_pictures(y: Tensor, pred: Tensor, size, max_points: int = 20_000) -> dict[str, Image.Image]:
    """Predicted vs actual (a seeded sample of max_points values: 2M dots took 2 s to draw), and the
    histogram of every residual."""
    y, pred = y.flatten(), pred.flatten()
    shown = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:max_points]
    fig, ax = new_figure(size)
    ax.plot(y[shown], pred[shown], ".", alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="actual", ylabel="predicted", title="predicted vs actual")
    scatter = render(fig)
    fig, ax = new_figure(size)
    ax.hist(pred - y, bins=40)
    ax.set(xlabel="predicted - actual", ylabel="rows", title="residuals")
    return {"predicted_vs_actual": scatter, "residuals": render(fig)}


def confusion_picture(y: Tensor, pred: Tensor, classes: int, size) -> Image.Image:
    """Rows: true class, columns: predicted class, with counts."""
    counts = torch.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)
    fig, ax = new_figure(size)
    ax.imshow(counts, cmap="Blues")
    if classes <= 20:
        for (i, j), n in np.ndenumerate(counts.numpy()):
            ax.text(j, i, str(n), ha="center", va="center", color="w" if n > counts.max() / 2 else "k")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix", xticks=range(classes))
    ax.set_yticks(range(classes))
    return render(fig)


def calibration(y: Tensor, prob: Tensor, bins: int = 10) -> tuple[Tensor, Tensor]:
    """(mean predicted probability, fraction of positives) in each non-empty probability bin."""
    which = (prob * bins).long().clamp(max=bins - 1)
    rows = torch.bincount(which, minlength=bins)
    used = rows > 0
    mean_prob = torch.zeros(bins).index_add_(0, which, prob.float())[used] / rows[used]
    return mean_prob, torch.zeros(bins).index_add_(0, which, y.float())[used] / rows[used]


def binary_pictures(y: Tensor, prob: Tensor, size) -> dict[str, Image.Image]:
    """ROC curve and calibration plot."""
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    fpr, tpr, _ = binary_roc(prob, y)
    fig, ax = new_figure(size)
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    auc = float(binary_auroc(prob, y))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (AUC {auc:.3f})")
    roc = render(fig)
    fig, ax = new_figure(size)
    ax.plot(*calibration(y, prob), "o-")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="mean predicted probability", ylabel="fraction of positives", title="calibration")
    return {"roc": roc, "calibration": render(fig)}


class FitPictures(L.Callback):
    """Pictures of what the model learned, as TensorBoard images at the step of trainer.global_step.

    Recorded epochs come every_n_epochs data epochs (the validation cadence in our config) and at the
    end of training: each records weight histograms and, for one-input regression, a frame of the
    fitted line (fit/line, and the animated GIF in the run directory). The other pictures are drawn
    every plot_every_n_val recorded epochs and at the end. Nothing runs on the per-step path. They show
    every point of data held in memory (data/contract.py: WholeSplits), else the first max_points rows
    that a new loader of the split serves."""

    fast_steps_aware = True  # counts data epochs and optimizer steps (src/litlab/stepping.py)

    def __init__(
        self,
        every_n_epochs: int = 100,
        max_records: int = 10,
        plot_every_n_val: int = 5,
        gif: str | None = "fit.gif",
        frame_ms: int = 200,
        size: tuple[int, int] = (640, 480),
        max_points: int = 20_000,
    ):
        if len(size) != 2 or not all(isinstance(v, int) and v >= 16 for v in size):
            raise ConfigError(
                f"callbacks.fit_pictures.size={list(size)} must be a width and height of 16 pixels or more: "
                "try callbacks.fit_pictures.size=[640,480]"
            )
        self.every_n_epochs = every_n_epochs
        self.max_points = max_points
        self.max_records = max_records
        self.plot_every_n_val = plot_every_n_val
        self.gif = gif
        self.frame_ms = frame_ms
        self.size = tuple(size)
        self.line_frames: Frames | None = None  # one-input regression: the drawing process (rank zero)
        self.line_inputs: Tensor | None = None
        self.recorded, self.last_step, self.drawn_step, self.epochs = 0, -1, -1, 0
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.enabled = pl_module.hparams.get("task") in TASKS  # forward and the task: its predictions
        if not self.enabled:
            log.info(f"no fit pictures: {type(pl_module).__name__} records no task in its hparams")
        # Each record costs tens of ms of drawing: spread at most max_records over a long run.
        total = max_data_epochs(trainer)
        self.every = max(self.every_n_epochs, math.ceil(total / self.max_records))
        if self.enabled and trainer.is_global_zero and self.one_input_regression(pl_module):
            # a run whose one frame comes at its end (trainer.max_epochs=1) has nothing to draw it beside
            self.start_frames(trainer, pl_module, process=total > self.every)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        epochs = data_epoch(trainer)
        crossed = epochs // self.every > self.epochs // self.every
        self.epochs = epochs
        if crossed:
            self.record(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        if self.last_step != trainer.global_step:
            self.record(trainer, pl_module)
        if self.drawn_step != trainer.global_step:
            self.draw(trainer, pl_module)
        if self.line_frames is not None and self.gif:
            self.line_frames.ask_gif(Path(trainer.default_root_dir) / self.gif, self.frame_ms)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The last frames and the GIF, drawn while the other callbacks ended training (the last
        checkpoint), logged before the loggers close."""
        self.end_frames(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A stopped run keeps the frames it recorded, and its drawing process ends."""
        self.end_frames(trainer)

    def end_frames(self, trainer: L.Trainer) -> None:
        """Log every frame not logged yet, with the GIF written where on_train_end asked for it, and end the
        drawing process."""
        if self.line_frames is not None:
            self.log_frames(trainer, self.line_frames.end())
            self.line_frames = None

    def log_frames(self, trainer: L.Trainer, frames: list[tuple[int, bytes]]) -> None:
        for step, png in frames:
            for logger in picture_loggers(trainer):
                logger.log_picture("fit/line", png, step)

    def one_input_regression(self, pl_module: L.LightningModule) -> bool:
        return pl_module.hparams.task == "regression" and pl_module.hparams.in_features == 1

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Weight histograms and a frame of the fitted line now; the other pictures when due."""
        self.recorded, self.last_step = self.recorded + 1, trainer.global_step
        writer = tensorboard_writer(trainer)
        if not trainer.is_global_zero:
            return
        if writer is not None:
            for name, param in pl_module.named_parameters():
                writer.add_histogram(f"params/{name}", param.detach().cpu(), trainer.global_step)
        if self.line_frames is not None:
            self.line_frame(trainer, pl_module)
            self.log_frames(trainer, self.line_frames.drawn())
        if self.recorded % self.plot_every_n_val == 0:
            self.draw(trainer, pl_module)

    def points(self, trainer: L.Trainer, split: str) -> tuple[Tensor, Tensor] | None:
        """(model inputs, targets) of a split on the CPU: all of a split in memory, else the first
        max_points rows that a new loader serves."""
        whole = whole_splits(trainer.datamodule)
        if whole is not None:
            return tuple(t.cpu() for t in whole[split]) if split in whole else None
        if not has_split(trainer.datamodule, split):
            return None
        return sample(trainer.datamodule, split, self.max_points)

    def start_frames(self, trainer: L.Trainer, pl_module: L.LightningModule, process: bool) -> None:
        """The drawing process of the fitted line's frames, started as training starts, with the data points
        and the line's inputs (a grid over them) in original units where the data says how it normalised its
        inputs (the normalisation undone), else in the model's."""
        found = normalisation(trainer.datamodule)
        shift, scale = (t.to(pl_module.device) for t in found) if found is not None else (0.0, 1.0)
        points = {}
        for split in ("train", "val", "test"):
            if (held := self.points(trainer, split)) is not None:
                x, y = held
                x = (x.to(pl_module.device) * scale + shift).cpu()
                points[split] = (x.float().numpy(), y.reshape(len(y), -1).float().numpy())
        xs = np.concatenate([x for x, _ in points.values()])
        grid = torch.linspace(float(xs.min()), float(xs.max()), 100).unsqueeze(1)
        units = "original units" if found is not None else "as the model sees it"
        outputs = pl_module.hparams.out_features
        self.line_frames = Frames(
            points, grid.numpy(), outputs, self.size, f"input ({units})", process=process
        )
        self.line_inputs = (grid.to(pl_module.device) - shift) / scale

    @torch.no_grad()
    def line_frame(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Ask for a frame of the fitted line."""
        fitted = pl_module(trainer.precision_plugin.convert_input(self.line_inputs))
        loss = trainer.callback_metrics.get("train/loss", float("nan"))
        title = f"epoch {self.epochs}: train/loss {float(loss):.4g}"
        self.line_frames.ask(trainer.global_step, fitted.float().cpu().numpy(), title)

    @torch.no_grad()
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every picture of this task, on the validation split (the training split without one)."""
        self.drawn_step = trainer.global_step
        loggers = picture_loggers(trainer)
        if not loggers or self.one_input_regression(pl_module):
            return
        held = self.points(trainer, "val") or self.points(trainer, "train")
        if held is None:
            return
        x, y = held
        pred = predictions_of(pl_module, model_batch(trainer, pl_module, x, y)[0]).float().cpu()
        task = pl_module.hparams.task
        if task == "regression":
            pictures = regression_pictures(y.reshape(pred.shape), pred, self.size, self.max_points)
        elif task == "binary":
            prob, y = pred[:, 0], y.reshape(-1).long()
            pictures = binary_pictures(y, prob, self.size)
            pictures["confusion_matrix"] = confusion_picture(y, (prob > 0.5).long(), 2, self.size)
        else:
            pictures = {"confusion_matrix": confusion_picture(y, pred.argmax(1), pred.shape[1], self.size)}
        for name, image in pictures.items():
            for logger in loggers:
                logger.log_picture(f"fit/{name}", image, trainer.global_step)


class ConfigText(L.Callback):
    """The run's resolved config.yaml (written by train()) and its command line as TensorBoard text."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer, run = tensorboard_writer(trainer), Path(trainer.default_root_dir)
        if writer is None or not (run / "config.yaml").exists():
            return
        text = indent((run / "config.yaml").read_text(), "    ")  # indented: markdown code block
        overrides = run / ".hydra" / "overrides.yaml"
        if overrides.exists():
            from omegaconf import OmegaConf

            text = f"    python train.py {' '.join(OmegaConf.load(overrides))}\n\n{text}"
        writer.add_text("config", text, trainer.global_step)
