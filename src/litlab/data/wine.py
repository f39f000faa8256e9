"""White wines (UCI Wine Quality): 11 physico-chemical measurements -> the tasters' quality score."""

from pathlib import Path

import torch
from torch import Tensor

from litlab.data.base import TensorDataModule
from litlab.data.files import read_table, require
from litlab.errors import ConfigError

FEATURES = [
    "fixed acidity",
    "volatile acidity",
    "citric acid",
    "residual sugar",
    "chlorides",
    "free sulfur dioxide",
    "total sulfur dioxide",
    "density",
    "pH",
    "sulphates",
    "alcohol",
]
GOOD = 7  # quality >= 7 is a good wine (about a fifth of them)
# Which target each model family may learn, and the task it becomes; the first is the family's default.
TARGETS = {"linear": {"quality": "regression"}, "logistic": {"good": "binary", "quality": "multiclass"}}


def read_wine(path: str | Path) -> tuple[Tensor, Tensor]:
    """The 11 features as float32 [n, 11] and quality as float32 [n]."""
    table = torch.tensor(read_table(require(path, "wine"), [*FEATURES, "quality"], delimiter=";"))
    return table[:, :-1].contiguous(), table[:, -1].contiguous()


class WineData(TensorDataModule):
    """Quality as a number (model=linear), good = quality >= 7 (logistic), or quality classes (logistic)."""

    name = "wine"

    def __init__(self, path: str, target: str | None = None, **kwargs):
        self.path, self.target = path, target
        super().__init__(**kwargs)

    def task_for(self, family: str) -> str:
        targets = TARGETS.get(family, {})
        self.target = self.target or next(iter(targets), None)
        if self.target not in targets:
            fits = ", ".join(f"model={f} data.target={t}" for f, ts in TARGETS.items() for t in ts)
            raise ConfigError(f"data=wine data.target={self.target} does not fit model={family}: use {fits}")
        return targets[self.target]

    def read(self) -> tuple[Tensor, Tensor]:
        x, quality = read_wine(self.path)
        if self.task == "regression":
            return x, quality.unsqueeze(1)
        if self.task == "binary":
            return x, (quality >= GOOD).float().unsqueeze(1)
        # class i is the i-th distinct quality in the file (3..9 -> 0..6): no empty classes for 0, 1, 2, 10
        self.classes = quality.unique()
        return x, torch.searchsorted(self.classes, quality)
