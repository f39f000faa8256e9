"""Small classic regression and classification sets from the Korean PyTorch tutorials, and a generator."""

import torch
from torch import Tensor

from litlab.data.base import TensorDataModule
from litlab.errors import ConfigError

# The 30-point set of the tutorials: x = 1..30.
POINTS30_Y = [
    0.94,
    1.98,
    2.88,
    3.92,
    3.96,
    4.55,
    5.64,
    6.3,
    7.44,
    9.1,
    8.46,
    9.5,
    10.67,
    11.6,
    14,
    11.83,
    14.4,
    14.25,
    16.2,
    16.32,
    17.46,
    19.8,
    18,
    21.34,
    22,
    22.5,
    24.57,
    26.04,
    21.6,
    28.8,
]
TOY6_X = [[1, 2], [2, 3], [3, 1], [4, 3], [5, 3], [6, 2]]
TOY6_Y = [0, 0, 0, 1, 1, 1]
PRESET_TASKS = {"points30": "regression", "double": "regression", "noisy100": "regression", "toy6": "binary"}


def points30() -> tuple[Tensor, Tensor]:
    return torch.arange(1.0, 31.0).unsqueeze(1), torch.tensor(POINTS30_Y).unsqueeze(1)


def double() -> tuple[Tensor, Tensor]:
    """y = 2x on x = 1, 2, 3: the tutorial whose model should answer about 8 for x = 4."""
    x = torch.tensor([[1.0], [2.0], [3.0]])
    return x, 2 * x


def noisy100() -> tuple[Tensor, Tensor]:
    """y = 2.5 + 4x + 0.5 eps, drawn exactly as the tutorial does after torch.manual_seed(43052)."""
    g = torch.Generator().manual_seed(43052)
    x = torch.randn(100, generator=g).sort().values
    eps = 0.5 * torch.randn(100, generator=g)
    return x.unsqueeze(1), (2.5 + 4 * x + eps).unsqueeze(1)


def toy6() -> tuple[Tensor, Tensor]:
    return torch.tensor(TOY6_X, dtype=torch.float32), torch.tensor(TOY6_Y, dtype=torch.float32).unsqueeze(1)


def generate(n: int, features: int, noise: float, task: str, seed: int) -> tuple[Tensor, Tensor]:
    """x ~ N(0, I); y = x w + b + noise (regression) or y ~ Bernoulli(sigmoid(x w + b)) (binary).

    Built in place, one [n, features] float32 tensor, so it scales to millions of rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    b = torch.randn(1, generator=g)
    logits = torch.addmm(b, x, w)
    if task == "regression":
        return x, logits.add_(torch.randn(n, 1, generator=g), alpha=noise)
    return x, torch.bernoulli(torch.sigmoid_(logits), generator=g)


class RegressionData(TensorDataModule):
    """One of the tutorials' small sets (preset) or a generated set of any size."""

    def __init__(
        self,
        preset: str = "points30",
        n: int = 1000,
        features: int = 2,
        noise: float = 0.5,
        task: str = "regression",
        generator_seed: int = 0,
        **kwargs,
    ):
        if preset not in (*PRESET_TASKS, "generated"):
            raise ConfigError(
                f"data.preset={preset!r} is unknown: choose one of {', '.join(PRESET_TASKS)}, generated"
            )
        if task not in ("regression", "binary"):
            raise ConfigError(f"data.task={task!r} is unknown: choose regression or binary")
        if n < 2 or features < 1 or noise < 0:
            raise ConfigError(
                f"data.n={n}, data.features={features}, data.noise={noise}: need n >= 2, "
                "features >= 1 and noise >= 0"
            )
        self.preset, self.n, self.features, self.noise = preset, n, features, noise
        # Generated rows are independent draws: consecutive blocks split them as randomly as a shuffle, and
        # as views, without copying millions of rows.
        self.contiguous = preset == "generated"
        self.preset_task = PRESET_TASKS.get(preset, task)
        self.generator_seed = generator_seed
        self.name = f"regression preset={preset}"
        super().__init__(**kwargs)

    def poses(self) -> list[str]:
        return [self.preset_task]

    def mismatch_hint(self) -> str:
        if self.preset_task == "binary":
            return "for a regression target use data.preset=points30 or data.task=regression"
        return super().mismatch_hint()

    def read(self) -> tuple[Tensor, Tensor]:
        if self.preset == "generated":
            return generate(self.n, self.features, self.noise, self.preset_task, self.generator_seed)
        return {"points30": points30, "double": double, "noisy100": noisy100, "toy6": toy6}[self.preset]()
