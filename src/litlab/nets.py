"""Networks: plain nn.Modules built as net(in_features, out_features, **own knobs).

A network maps inputs to raw outputs (values, or logits for classes) and knows nothing about losses,
optimizers, logging or epochs: the task module (src/litlab/models/task.py) adds those. Sizes come
from the data; knobs from conf/model/<option>.yaml (`net:`). Write your own the same way."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litlab.errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class Linear(nn.Linear):
    """y = x W^T + b, optionally started at one value for every weight and the bias (the book's w = 1,
    b = 0). Integer inputs are one-hot vectors given as the indices of their ones (data=text): the
    lookup sums those columns of W, one_hot(x) @ W^T, without building the one-hot matrix."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        init_weight: float | None = None,
        init_bias: float | None = None,
    ):
        super().__init__(in_features, out_features)
        with torch.no_grad():
            if init_weight is not None:
                self.weight.fill_(init_weight)
            if init_bias is not None:
                self.bias.fill_(init_bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_floating_point():
            return super().forward(x)
        return F.embedding_bag(x, self.weight.t(), mode="sum") + self.bias


class MLP(nn.Sequential):
    """Fully connected layers with one activation between them (the book's ch. 6 model: hidden [8], tanh).
    The first layer is a Linear, so one-hot index inputs work as they do for the linear model."""

    def __init__(self, in_features: int, out_features: int, hidden: list[int], activation: str = "tanh"):
        if activation not in ACTIVATIONS or not hidden or min(hidden) < 1:
            raise ConfigError(
                f"model.net.hidden={list(hidden)} and model.net.activation={activation}: give at least one "
                f"hidden size >= 1 and an activation among {', '.join(ACTIVATIONS)}"
            )
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
            layers += [Linear(a, b) if i == 0 else nn.Linear(a, b), ACTIVATIONS[activation]()]
        super().__init__(*layers, nn.Linear(sizes[-1], out_features))
