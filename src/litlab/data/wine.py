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
# The tasks each target poses, preferred first: quality is a number, or its 7 values as classes.
TARGETS = {"quality": ["regression", "multiclass"], "good": ["binary"]}


def read_wine(path: str | Path) -> tuple[Tensor, Tensor]:
    """The 11 features as float32 [n, 11] and quality as float32 [n]."""
    table = torch.tensor(read_table(require(path, "wine"), [*FEATURES, "quality"], delimiter=";"))
    return table[:, :-1].contiguous(), table[:, -1].contiguous()


class WineData(TensorDataModule):
    """Quality as a number (regression) or as 7 classes, or good = quality >= 7 (binary). target=null:
    quality for a model that fits regression (or with task=multiclass), else good."""

    name = "wine"
    input_names = FEATURES

    def __init__(self, path: str, target: str | None = None, **kwargs):
        if target not in (None, *TARGETS):
            raise ConfigError(
                f"data.target={target} is not a wine target: choose one of {', '.join(TARGETS)}"
            )
        self.path, self.target = path, target
        super().__init__(**kwargs)

    def poses(self) -> list[str]:
        if self.target is not None:
            return TARGETS[self.target]
        return ["regression", "binary", "multiclass"]

    def mismatch_hint(self) -> str:
        return "data.target=quality is regression or classes, data.target=good binary"

    def read(self) -> tuple[Tensor, Tensor]:
        x, quality = read_wine(self.path)
        if self.task == "regression":
            return x, quality.unsqueeze(1)
        if self.task == "binary":
            self.classes = [f"quality<{GOOD}", f"quality>={GOOD}"]
            return x, (quality >= GOOD).float().unsqueeze(1)
        # class i is the i-th distinct quality in the file (3..9 -> 0..6): no empty classes for 0, 1, 2, 10
        self.classes = quality.unique()
        return x, torch.searchsorted(self.classes, quality)
