"""White wines: the table, the three targets, the split, train-only statistics, and bad files."""

import json
import math
import os

import pytest
import torch

from litlab.checks import TASKS
from litlab.data.contract import choose_task
from litlab.data.wine import FEATURES, WineData, read_wine
from litlab.errors import ConfigError
from litlab.train import train
from tests.conftest import SHARED_DATA, needs_real_data

pytestmark = needs_real_data
PATH = SHARED_DATA / "tabular-wine" / "winequality-white.csv"


def wine(tasks: tuple[str, ...] = TASKS, **kwargs) -> WineData:
    """Wine data posing the first task that a model fitting `tasks` takes, set up."""
    data = WineData(str(PATH), **kwargs)
    choose_task(data, list(tasks))
    data.setup()
    return data


def test_table_is_4898_wines_with_11_features():
    x, quality = read_wine(PATH)
    assert x.shape == (4898, 11) and x.dtype == quality.dtype == torch.float32
    assert sorted(quality.unique().tolist()) == [3, 4, 5, 6, 7, 8, 9]
    assert x[0].tolist() == pytest.approx([7, 0.27, 0.36, 20.7, 0.045, 45, 170, 1.001, 3, 0.45, 8.8])


def test_the_model_s_tasks_pick_the_target_and_task():
    quality, good, classes = (
        wine(),
        wine(tasks=["binary", "multiclass"]),
        wine(tasks=["binary", "multiclass"], target="quality"),
    )
    assert (quality.task, good.task, classes.task) == ("regression", "binary", "multiclass")
    assert quality.splits["train"][1].shape == (3918, 1) and quality.splits["train"][1].max() == 9
    y_good = good.splits["train"][1]
    assert set(y_good.unique().tolist()) == {0.0, 1.0} and 0.15 < y_good.mean() < 0.25
    torch.testing.assert_close(y_good, (quality.splits["train"][1] >= 7).float())
    y_class = classes.splits["train"][1]
    assert y_class.dtype == torch.int64 and classes.out_features == 7
    assert classes.classes.tolist() == list(range(3, 10))
    torch.testing.assert_close(classes.classes[y_class].unsqueeze(1), quality.splits["train"][1])
    asked = wine(task="multiclass")  # data.task: classes for a model that fits every task (mlp)
    assert asked.task == "multiclass" and torch.equal(asked.splits["train"][1], y_class)


def test_targets_that_do_not_fit_the_model_are_refused():
    with pytest.raises(ConfigError, match="poses a binary task: data.target=quality is regression"):
        wine(target="good", tasks=["regression"])
    with pytest.raises(ConfigError, match="data.task=regression: data=wine poses a binary task"):
        wine(target="good", task="regression")
    with pytest.raises(ConfigError, match="data.target=alcohol"):
        WineData(str(PATH), target="alcohol")


def test_split_is_seeded_and_statistics_come_from_training_rows():
    a, b, c = wine(split_seed=0), wine(split_seed=0), wine(split_seed=1, val_fraction=0.1, test_fraction=0.1)
    assert [len(a.splits[k][0]) for k in ("train", "val")] == [3918, 980]
    assert [len(c.splits[k][0]) for k in ("train", "val", "test")] == [3918, 490, 490]
    torch.testing.assert_close(a.splits["val"][0], b.splits["val"][0])
    assert not torch.equal(a.splits["val"][1], c.splits["val"][1][:490])
    x_train, x_val = a.splits["train"][0], a.splits["val"][0]
    torch.testing.assert_close(x_train.mean(0), torch.zeros(11), atol=1e-4, rtol=0)
    torch.testing.assert_close(x_train.std(0), torch.ones(11), atol=1e-4, rtol=0)
    assert (x_val.mean(0).abs() > 1e-3).any()  # val rows were not used for the statistics
    raw = read_wine(PATH)[0]
    assert not torch.allclose(a.x_shift, raw.mean(0))


def test_missing_and_broken_files_are_one_line_errors(tmp_path):
    lines = PATH.read_text().splitlines()
    cases = {
        "missing.csv": None,
        "empty.csv": "",
        "renamed.csv": "\n".join([lines[0].replace('"alcohol"', '"alc"'), *lines[1:5]]),
        "cell.csv": "\n".join([*lines[:3], lines[3].replace(";10.1;", ";n/a;"), *lines[4:6]]),
        "header-only.csv": lines[0],
    }
    expected = {
        "missing.csv": "not found: fetch it with `make data` \\(or `python scripts/download.py wine`\\)",
        "empty.csv": "is empty",
        "renamed.csv": "no column 'alcohol'",
        "cell.csv": "cell.csv, line 4, column 'alcohol': 'n/a' is not a number; fill or drop that row",
        "header-only.csv": "no rows",
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=expected[name]) as e:
            read_wine(tmp_path / name)
        assert "\n" not in str(e.value)


def test_a_read_only_data_directory_is_enough(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / PATH.name).write_bytes(PATH.read_bytes())
    folder.chmod(0o555)
    try:
        assert wine().splits["train"][0].shape == WineData(str(folder / PATH.name)).read()[0][:3918].shape
        assert os.listdir(folder) == [PATH.name]  # reading wrote nothing there
    finally:
        folder.chmod(0o755)
    assert FEATURES[-1] == "alcohol"


@pytest.mark.parametrize(
    "model,target,optimizer",
    [("linear", "null", "sgd"), ("logistic", "null", "adam"), ("logistic", "quality", "adam")],
)
def test_short_run_beats_the_trivial_baseline(cfg_factory, tmp_path, model, target, optimizer):
    cfg = cfg_factory(
        "data=wine", f"model={model}", f"data.target={target}", f"optimizer={optimizer}", "optimizer.lr=0.1",
        "trainer=cpu", "trainer.max_epochs=100", "callbacks=none",
    )  # fmt: skip
    train(cfg)
    val_loss = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["val/loss"]
    target = None if target == "null" else target
    data = wine(
        {"linear": ["regression"], "logistic": ["binary", "multiclass"]}[model],
        target=target,
        split_seed=cfg.seed,
    )
    (_, y), (_, y_val) = data.splits["train"], data.splits["val"]
    if data.task == "regression":  # MSE of always predicting the training mean
        baseline = float(((y.mean() - y_val) ** 2).mean())
    elif data.task == "binary":  # cross-entropy of always predicting the training share of good wines
        p = y.mean()
        baseline = float(-(y_val * p.log() + (1 - y_val) * (1 - p).log()).mean())
    else:  # cross-entropy of the training class frequencies
        prior = torch.bincount(y, minlength=7).float() / len(y)
        baseline = float(-prior[y_val].log().mean())
    assert math.isfinite(val_loss) and val_loss < 0.9 * baseline
