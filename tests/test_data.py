"""The embedded and generated datasets: values, shapes, splits, normalisation."""

import pytest
import torch

from litlab.data.base import TaskMismatch, TensorBatches
from litlab.data.regression import RegressionData, generate, noisy100
from litlab.data.temperature import T_C, T_U, TemperatureData
from litlab.errors import ConfigError


def test_temperature_split_is_seeded_and_disjoint():
    a, b, c = (TemperatureData(split_seed=s) for s in (0, 0, 1))
    for d in (a, b, c):
        d.setup()
    assert [len(a.splits[k][0]) for k in ("train", "val")] == [9, 2]
    torch.testing.assert_close(a.splits["val"][1], b.splits["val"][1])
    assert not torch.equal(a.splits["val"][1], c.splits["val"][1])
    seen = torch.cat([a.splits["train"][1], a.splits["val"][1]]).squeeze(1).sort().values
    torch.testing.assert_close(seen, torch.tensor(T_C).sort().values)


def test_standardisation_uses_training_rows_only():
    data = TemperatureData(split_seed=3)
    data.setup()
    x_train = data.splits["train"][0]
    torch.testing.assert_close(x_train.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(x_train.std(), torch.tensor(1.0), atol=1e-6, rtol=0)
    raw_train = x_train * data.x_scale + data.x_shift
    assert data.x_shift.item() == pytest.approx(raw_train.mean().item(), abs=1e-4)
    assert data.x_shift.item() != pytest.approx(sum(T_U) / len(T_U), abs=1e-3)  # not the all-rows mean


def test_book_scaling_multiplies_by_a_tenth():
    data = TemperatureData(scaling=0.1, val_fraction=0.0)
    data.setup()
    torch.testing.assert_close(
        data.splits["train"][0].squeeze(1).sort().values, (0.1 * torch.tensor(T_U)).sort().values
    )


def test_noisy100_is_the_tutorials_draw():
    x, y = noisy100()
    torch.manual_seed(43052)
    x_ref = torch.randn(100).sort().values
    y_ref = 2.5 + 4 * x_ref + 0.5 * torch.randn(100)
    torch.testing.assert_close(x.squeeze(1), x_ref)
    torch.testing.assert_close(y.squeeze(1), y_ref)


def test_generated_classification_labels_follow_a_logistic_model():
    x, y = generate(20_000, 3, 0.0, "binary", seed=0)
    assert x.dtype == y.dtype == torch.float32 and set(y.unique().tolist()) == {0.0, 1.0}
    w = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y).solution
    assert w[:3].abs().sum() > 0.1  # labels depend on the inputs


def test_presets_pose_the_right_task():
    assert RegressionData(preset="toy6").task == "binary"
    assert RegressionData(preset="double").task == "regression"
    with pytest.raises(TaskMismatch, match="poses a binary task: for a regression target use data.preset"):
        RegressionData(preset="toy6", tasks=["regression"])
    with pytest.raises(ConfigError, match="preset='nope'"):
        RegressionData(preset="nope")


def test_batches_cover_every_row_once_per_epoch_in_a_new_order():
    x = torch.arange(10.0).unsqueeze(1)
    batches = TensorBatches(x, x, batch_size=3, shuffle="rows", seed=0)
    epochs = [torch.cat([b for b, _ in batches]).squeeze(1) for _ in range(3)]
    assert len(batches) == 4
    for e in epochs:
        assert sorted(e.tolist()) == list(range(10))
    assert any(not torch.equal(epochs[0], e) for e in epochs[1:])


def test_ddp_ranks_get_equal_disjoint_shards():
    x = torch.arange(11.0).unsqueeze(1)
    shards = [TensorBatches(x, x, 100, None, 0, rank=r, world_size=2) for r in (0, 1)]
    rows = [torch.cat([b for b, _ in s]).squeeze(1).tolist() for s in shards]
    assert len(rows[0]) == len(rows[1]) == 5 and not set(rows[0]) & set(rows[1])
