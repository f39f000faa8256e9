"""Bike rentals: one-hot inputs without the answer in them, the daily view, the split by time."""

import json

import pytest
import torch

from litlab.data.bike import BikeData, read_bikes
from litlab.errors import ConfigError
from litlab.train import train
from tests.conftest import SHARED_DATA, needs_real_data

pytestmark = needs_real_data
PATH = SHARED_DATA / "bike-sharing-dataset" / "hour-fixed.csv"


def bikes(path=PATH, **kwargs) -> BikeData:
    data = BikeData(str(path), **kwargs)
    data.setup()
    return data


def test_hourly_view_one_hot_encodes_the_categories():
    x, y = BikeData(str(PATH), scaling="none").read()
    assert x.shape == (17520, 58) and y.shape == (17520, 1) and x.dtype == y.dtype == torch.float32
    blocks = torch.split(x[:, :51], [4, 12, 24, 7, 4], dim=1)  # season, month, hour, weekday, weather
    for block in blocks:
        assert torch.equal(block.sum(1), torch.ones(17520)) and set(block.unique().tolist()) == {0.0, 1.0}
    assert blocks[2].argmax(1)[:25].tolist() == [*range(24), 0]  # hour of the day, in file order
    assert blocks[4].sum(0).tolist() == [11471, 4581, 1465, 3]  # weathersit 4 levels, as in the book
    assert y[:2, 0].tolist() == [16, 40]


def test_casual_and_registered_are_never_inputs(tmp_path):
    lines = PATH.read_text().splitlines()
    head = lines[0].split(",")
    casual, registered = head.index("casual"), head.index("registered")
    shuffled = []
    for i, line in enumerate(lines[1:]):  # change both, keep cnt: the inputs must not move
        cells = line.split(",")
        cells[casual], cells[registered] = str(i % 7), str(i % 11)
        shuffled.append(",".join(cells))
    (tmp_path / "hour.csv").write_text("\n".join([lines[0], *shuffled]))
    for view in ("hourly", "daily"):
        a, b = BikeData(str(PATH), view=view).read(), BikeData(str(tmp_path / "hour.csv"), view=view).read()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert "casual" not in read_bikes(PATH)[0] and "registered" not in read_bikes(PATH)[0]


def test_split_is_by_time_and_statistics_come_from_earlier_days():
    data = bikes()
    cnt = read_bikes(PATH)[1]
    (x, y), (_, y_val) = data.splits["train"], data.splits["val"]
    assert (len(y), len(y_val)) == (14016, 3504)  # 584 days, then the last 146 days
    assert torch.equal(y.squeeze(1), cnt[:14016]) and torch.equal(y_val.squeeze(1), cnt[14016:])
    torch.testing.assert_close(x.mean(0), torch.zeros(58), atol=1e-4, rtol=0)
    assert bikes(split_seed=7).splits["val"][1].equal(y_val)  # the seed does not shuffle a time series


def test_daily_view_is_days_by_channels_by_hours():
    data = bikes(view="daily", scaling="none", batch_size=None)
    x, y = data.splits["train"]
    assert x.shape == (584, data.channels * 24) and data.channels == 34 and y.shape == (584, 24)
    days = x.view(584, data.channels, 24)
    hourly = BikeData(str(PATH), scaling="none").read()[0]
    hourly = torch.cat([hourly[:, :16], hourly[:, 40:]], 1)  # the hourly inputs without the hour one-hot
    torch.testing.assert_close(days[1], hourly[24:48].T)  # day 2: channel c at hour h
    assert torch.equal(y[1], read_bikes(PATH)[1][24:48]) and data.out_features == 24


def test_log_target_and_bad_values(tmp_path):
    torch.testing.assert_close(bikes(log_target=True).splits["val"][1], bikes().splits["val"][1].log1p())
    lines = PATH.read_text().splitlines()
    (tmp_path / "bad.csv").write_text(
        "\n".join([lines[0], lines[1].replace(",1,0.24,", ",5,0.24,"), *lines[2:25]])
    )
    with pytest.raises(ConfigError, match="bad.csv, line 2, column 'weathersit': 5 is not a level 1..4"):
        BikeData(str(tmp_path / "bad.csv")).read()
    (tmp_path / "short.csv").write_text("\n".join(lines[:30]))
    with pytest.raises(ConfigError, match="29 rows are not whole days"):
        BikeData(str(tmp_path / "short.csv")).read()
    with pytest.raises(ConfigError, match="data.view='weekly'"):
        BikeData(str(PATH), view="weekly")


@pytest.mark.slow
@pytest.mark.parametrize("view", ["hourly", "daily"])
def test_short_run_beats_the_train_mean(cfg_factory, tmp_path, view):
    cfg = cfg_factory(
        "data=bike", f"data.view={view}", "data.batch_size=null", "optimizer=sgd", "optimizer.lr=0.1",
        "trainer=cpu", "trainer.max_epochs=300", "callbacks=none",
    )  # fmt: skip
    train(cfg)
    val_mse = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["val/loss"]  # the MSE
    data = bikes(view=view)
    (_, y), (_, y_val) = data.splits["train"], data.splits["val"]
    assert val_mse < 0.6 * float(((y.mean(0) - y_val) ** 2).mean())
