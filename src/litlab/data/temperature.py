"""The book's thermometer readings (Deep Learning with PyTorch, ch. 5), embedded."""

import torch
from torch import Tensor

from litlab.data.base import TensorDataModule

# Celsius readings and the same moments on the unknown thermometer.
T_C = [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0]
T_U = [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4]


class TemperatureData(TensorDataModule):
    """Predict t_c from t_u: 11 points, one input, one output."""

    name = "temperature"
    input_names = ["t_u"]  # the unknown thermometer's reading

    def read(self) -> tuple[Tensor, Tensor]:
        return torch.tensor(T_U).unsqueeze(1), torch.tensor(T_C).unsqueeze(1)
