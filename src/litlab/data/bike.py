"""Capital Bikeshare rentals, 2011-2012 (UCI Bike Sharing, the book's hour-fixed.csv): 730 days x 24 hours."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from litlab.data.base import TensorDataModule
from litlab.data.files import read_table, require
from litlab.errors import ConfigError

# Categorical columns and their levels (Readme.txt); one-hot encoded. weathersit keeps all 4 levels as in
# the book, although level 4 (heavy rain, snow) occurs in only 3 of the 17520 hours.
CATEGORIES = {"season": (1, 4), "mnth": (1, 12), "hr": (0, 23), "weekday": (0, 6), "weathersit": (1, 4)}
FLAGS = ["yr", "holiday", "workingday"]
WEATHER = ["temp", "atemp", "hum", "windspeed"]  # already scaled to [0, 1] by the dataset's authors
# casual + registered = cnt: they are the answer split in two, never inputs.
TARGET = "cnt"
HOURS = 24


def read_bikes(path: str | Path) -> tuple[dict[str, Tensor], Tensor]:
    """The input columns by name (float32 [n] each) and the hourly counts cnt (float32 [n])."""
    names = [*CATEGORIES, *FLAGS, *WEATHER, TARGET]
    table = torch.tensor(read_table(require(path, "bike"), names))
    return {name: table[:, i] for i, name in enumerate(names[:-1])}, table[:, -1].contiguous()


def one_hot(path: str | Path, name: str, values: Tensor) -> Tensor:
    """[n, levels] float32 one-hot of a categorical column; a value outside its levels is a ConfigError."""
    first, last = CATEGORIES[name]
    bad = (values < first) | (values > last) | (values != values.round())
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ConfigError(
            f"{path}, line {row + 2}, column {name!r}: {values[row]:g} is not a level {first}..{last}"
        )
    return F.one_hot(values.long() - first, last - first + 1).float()


def input_names(hour: bool = True) -> list[str]:
    """The names of hourly_inputs' columns: season=1 .. season=4, ..., yr, ..., windspeed."""
    levels = [
        f"{c}={v}"
        for c, (first, last) in CATEGORIES.items()
        if hour or c != "hr"
        for v in range(first, last + 1)
    ]
    return [*levels, *FLAGS, *WEATHER]


def hourly_inputs(path: str | Path, columns: dict[str, Tensor], hour: bool = True) -> Tensor:
    """float32 [n, features]: one-hot categoricals (hr only if hour), 0/1 flags, weather numbers."""
    categorical = [one_hot(path, c, columns[c]) for c in CATEGORIES if hour or c != "hr"]
    return torch.cat([*categorical, *(columns[c].unsqueeze(1) for c in [*FLAGS, *WEATHER])], dim=1)


class BikeData(TensorDataModule):
    """Predict rentals per hour (view=hourly), or a day's 24 hourly counts from its 24 hours (view=daily).

    Split by time: the first days train, the later ones validate (and test)."""

    name = "bike"
    contiguous = True

    def __init__(self, path: str, view: str = "hourly", log_target: bool = False, **kwargs):
        if view not in ("hourly", "daily"):
            raise ConfigError(f"data.view={view!r} is unknown: choose hourly or daily")
        self.path, self.view, self.log_target = path, view, log_target
        super().__init__(**kwargs)

    def read(self) -> tuple[Tensor, Tensor]:
        columns, cnt = read_bikes(self.path)
        if len(cnt) % HOURS:
            raise ConfigError(f"{self.path}: {len(cnt)} rows are not whole days of {HOURS} hours")
        y = cnt.log1p() if self.log_target else cnt
        if self.view == "hourly":
            self.input_names = input_names()
            return hourly_inputs(self.path, columns), y.unsqueeze(1)
        # the book's reshaping: [days, hours, channels] -> [days, channels, hours]; the hour is the position
        x = hourly_inputs(self.path, columns, hour=False)
        days = x.view(-1, HOURS, x.shape[1]).transpose(1, 2)
        self.channels = days.shape[1]
        self.input_names = [f"{name}@{h:02d}" for name in input_names(hour=False) for h in range(HOURS)]
        return days.reshape(len(days), -1), y.view(-1, HOURS)
