"""The LightningModule: it fits what it should, and its checkpoints reload exactly."""

from functools import partial

import lightning as L
import pytest
import torch

from litlab.data.base import TensorBatches
from litlab.errors import ConfigError
from litlab.models.linear import LinearModel


def fit(
    x,
    y,
    task="regression",
    family="linear",
    lr=0.1,
    epochs=200,
    epochs_per_step=1,
    root=None,
    batch_size=None,
    group=1,
    **trainer,
):
    model = LinearModel(
        family,
        task,
        x.shape[1],
        1 if task != "multiclass" else int(y.max()) + 1,
        partial(torch.optim.SGD, lr=lr),
        epochs_per_step=epochs_per_step,
    )
    trainer = L.Trainer(
        max_epochs=-(-epochs // epochs_per_step),
        max_steps=epochs if epochs_per_step > 1 else -1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **trainer,
    )
    batches = TensorBatches(x, y, batch_size or len(x), shuffle=batch_size is not None, seed=0, group=group)
    trainer.fit(model, train_dataloaders=batches)
    return model


def test_linear_model_recovers_known_weights(tmp_path):
    x = torch.randn(512, 3, generator=torch.Generator().manual_seed(0))
    y = x @ torch.tensor([[2.0], [-1.0], [0.5]]) + 0.3
    model = fit(x, y, lr=0.1, epochs=200, root=tmp_path)
    torch.testing.assert_close(model.linear.weight, torch.tensor([[2.0, -1.0, 0.5]]), atol=1e-2, rtol=0)


def test_fused_epochs_match_one_epoch_per_step_exactly(tmp_path):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    y = x.sum(1, keepdim=True)
    torch.manual_seed(0)
    a = fit(x, y, epochs=130, epochs_per_step=1, root=tmp_path)
    torch.manual_seed(0)
    b = fit(x, y, epochs=130, epochs_per_step=50, root=tmp_path)  # 50 + 50 + 30: the cap makes it exact
    assert b.trainer.global_step == 130
    torch.testing.assert_close(a.linear.weight, b.linear.weight, atol=0, rtol=0)


def test_grouped_minibatches_match_one_step_per_batch_exactly(tmp_path):
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(2))
    y = x @ torch.tensor([[1.0], [2.0], [3.0]])
    runs = []
    for group in (1, 4):  # 10 minibatches an epoch: groups of 4, 4, 2
        torch.manual_seed(0)
        runs.append(fit(x, y, lr=0.05, epochs=7, batch_size=10, group=group, root=tmp_path))
    assert runs[1].trainer.global_step == runs[0].trainer.global_step == 70
    torch.testing.assert_close(runs[0].linear.weight, runs[1].linear.weight, atol=0, rtol=0)


def test_logistic_model_separates_classes(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g)
    y = (x[:, :1] - x[:, 1:] > 0).float()
    model = fit(x, y, task="binary", family="logistic", lr=1.0, epochs=300, root=tmp_path)
    acc = ((model(x) > 0).float() == y).float().mean()
    assert acc > 0.97


def test_model_refuses_a_task_of_the_other_family():
    with pytest.raises(ConfigError, match="model=linear cannot fit a binary task"):
        LinearModel("linear", "binary", 2, 1)
