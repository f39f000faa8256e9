"""The cockpit callbacks: distance to the optimum, pictures with their sizes and steps, GIF, config."""

import io
import json
import struct
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_crc
from torch import nn

from litlab.cockpit import Events, NormalEquations, add_picture, calibration, lbfgs_optimum, masked_crc
from litlab.data.regression import POINTS30_Y, generate
from litlab.drawing import png_bytes
from litlab.train import train
from tests.conftest import compose_train

POINTS30 = ("data=regression", "data.preset=points30", "trainer=cpu", "stepping=fast")


def fit(root: Path, *overrides: str) -> Path:
    """Train in-process with logs under root; the run directory."""
    cfg = compose_train(root, *overrides)
    train(cfg)
    return Path(cfg.paths.output_dir)


def read_events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def image_sizes(acc: EventAccumulator, tag: str) -> list[tuple[int, int, int]]:
    """(step, width, height) of every image of a tag, read from the PNG itself."""
    return [(e.step, *Image.open(io.BytesIO(e.encoded_image_string)).size) for e in acc.Images(tag)]


def test_least_squares_optimum_is_the_line_numpy_fits():
    x, y = torch.arange(1.0, 31.0).unsqueeze(1), torch.tensor(POINTS30_Y)
    sums = NormalEquations()
    for start in range(0, len(x), 7):  # several batches summed, as over a loader
        sums.add(x[start : start + 7], y[start : start + 7].unsqueeze(1))
    weight, bias, mse = sums.solve()
    slope, intercept = np.polyfit(x[:, 0].numpy(), y.numpy(), 1)
    assert weight.item() == pytest.approx(slope, rel=1e-10) and bias.item() == pytest.approx(
        intercept, rel=1e-10
    )
    residuals = slope * x[:, 0].double().numpy() + intercept - y.double().numpy()
    assert mse == pytest.approx(float(np.mean(residuals**2)), rel=1e-10)


def test_lbfgs_reference_is_a_stationary_point_of_the_logistic_loss():
    x, y = (t.double() for t in generate(1000, 3, 0.0, "binary", seed=0))
    model = nn.Linear(3, 1, dtype=torch.float64)
    nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)  # as OptimumGap starts it
    lbfgs_optimum(model, F.binary_cross_entropy_with_logits, x, y, max_iter=500)
    loss = F.binary_cross_entropy_with_logits(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-6  # convex loss: stationary means optimal


def test_calibration_of_calibrated_probabilities_lies_on_the_diagonal():
    g = torch.Generator().manual_seed(0)
    prob = torch.rand(200_000, generator=g)
    y = torch.bernoulli(prob, generator=g)
    mean_prob, positives = calibration(y, prob, bins=10)
    torch.testing.assert_close(mean_prob, torch.arange(10) / 10 + 0.05, atol=2e-3, rtol=0)
    torch.testing.assert_close(positives, mean_prob, atol=1e-2, rtol=0)


@pytest.mark.slow
def test_gap_reaches_zero_for_a_long_sgd_run_and_stays_positive_for_a_short_one(tmp_path):
    all_points = ("data.val_fraction=0.0", "optimized_metric=train/loss")
    runs = {n: fit(tmp_path / str(n), *POINTS30, *all_points, f"trainer.max_epochs={n}") for n in (20, 3000)}
    final = {n: json.loads((run / "metrics.json").read_text())["metrics"] for n, run in runs.items()}
    slope, intercept = np.polyfit(np.arange(1, 31), POINTS30_Y, 1)
    best = float(np.mean((slope * np.arange(1, 31) + intercept - np.array(POINTS30_Y)) ** 2))
    assert final[3000]["train/optimum_loss"] == pytest.approx(best, rel=1e-6)
    assert abs(final[3000]["train/gap"]) < 1e-4 * best
    assert final[20]["train/gap"] > 10 * best  # SGD at lr 1e-2 is far from done after 20 epochs

    acc = read_events(runs[3000])
    loss, gap = acc.Scalars("train/loss"), acc.Scalars("train/gap")
    # The start, then beside train/loss wherever the other metrics log too: without a validation split,
    # at the end of each Lightning step (stepping.epochs: 500); train/loss itself logs every 50.
    assert [e.step for e in loss] == list(range(49, 3000, 50))
    at_metrics = [e for e in loss if (e.step + 1) % 500 == 0]
    assert [e.step for e in gap] == [0] + [e.step for e in at_metrics]
    for g, lo in zip(gap[1:], at_metrics, strict=True):
        assert g.value == pytest.approx(lo.value - best, abs=1e-4)
    assert "torch.linalg.lstsq" in acc.SummaryMetadata("train/gap").summary_description


def test_fitted_line_frames_and_gif_have_one_frame_per_recorded_epoch(tmp_path):
    # validation every 100 epochs, 250 epochs: frames at 100 and 200, and the end of training at 250
    run = fit(tmp_path, *POINTS30, "trainer.max_epochs=250", "trainer.check_val_every_n_epoch=100")
    acc = read_events(run)
    assert image_sizes(acc, "fit/line") == [(100, 640, 480), (200, 640, 480), (250, 640, 480)]
    gif = iio.imread(run / "fit.gif", index=None)
    assert gif.shape == (3, 480, 640, 3)
    assert [e.step for e in acc.Histograms("params/net.weight")] == [100, 200, 250]
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "preset: points30" in config and "_target_: litlab.cockpit.FitPictures" in config


@pytest.mark.slow
def test_classification_pictures_have_the_configured_size_and_steps(tmp_path):
    run = fit(
        tmp_path,
        "model=logistic",
        "trainer=cpu",
        "trainer.max_epochs=200",
        "trainer.check_val_every_n_epoch=50",
        "callbacks.fit_pictures.plot_every_n_val=3",
        "callbacks.fit_pictures.size=[320,240]",
    )
    acc = read_events(run)
    # recorded at 50, 100, 150, 200: the third is due, and the end of training
    for tag in ("fit/roc", "fit/calibration", "fit/confusion_matrix"):
        assert image_sizes(acc, tag) == [(150, 320, 240), (200, 320, 240)]
    assert "fit/line" not in acc.Tags()["images"] and not (run / "fit.gif").exists()
    assert "L-BFGS" in acc.SummaryMetadata("train/optimum_loss").summary_description
    assert acc.Scalars("train/gap")[-1].value > 0


@pytest.mark.slow
def test_fused_steps_log_the_train_loss_every_50_epochs_as_unfused_steps_do(tmp_path):
    # 100 epochs a Lightning step (validation every 100): the loss at epoch 50 of each step goes
    # straight to the loggers, the step's last through self.log; both equal one-epoch steps' values.
    common = (*POINTS30, "trainer.max_epochs=330", "callbacks=none")
    fused = read_events(fit(tmp_path / "fused", *common)).Scalars("train/loss")
    plain = read_events(fit(tmp_path / "plain", *common, "stepping=lightning")).Scalars("train/loss")
    assert [e.step for e in fused] == [49, 99, 149, 199, 249, 299, 329]  # and the last epoch
    by_step = {e.step: e.value for e in plain}
    assert [e.value for e in fused] == [by_step[e.step] for e in fused]


def test_event_files_are_written_without_a_thread_and_read_back(tmp_path):
    writer = Events(log_dir=str(tmp_path))
    assert not [t for t in threading.enumerate() if "AsyncWriter" in type(t).__name__]
    picture = Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3))
    add_picture(writer, "fit/picture", picture, 3)
    add_picture(writer, "fit/png", png_bytes(picture), 4)
    for step in range(5):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    writer.close()
    acc = read_events(tmp_path)  # TensorBoard's reader checks every record's CRC-32C
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (s, pytest.approx(1 / (s + 1))) for s in range(5)
    ]
    assert image_sizes(acc, "fit/picture") == [(3, 64, 48)] and image_sizes(acc, "fit/png") == [(4, 64, 48)]
    record = b"some event"
    assert masked_crc(record) == struct.pack("<I", tensorboard_crc(record))
