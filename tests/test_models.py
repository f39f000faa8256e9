"""The task module and the networks: they fit what they should, with the task's loss, in either stepping."""

from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from litlab.data.base import TensorBatches
from litlab.data.contract import provides
from litlab.errors import ConfigError
from litlab.models.task import Model, TaskModel
from litlab.nets import MLP, Linear
from litlab.stepping import FastSteps


def fit(x, y, task="regression", net=Linear, lr=0.1, epochs=200, fast=None, batch_size=None, root=None, **kw):
    """A TaskModel fitted to (x, y) by SGD; fast: a FastSteps, else one optimizer step per Lightning step."""
    out = int(y.max()) + 1 if task == "multiclass" else y.shape[1]
    model = TaskModel(net, task, x.shape[1], out, optimizer=partial(torch.optim.SGD, lr=lr), **kw)
    settings = {"max_epochs": epochs, "check_val_every_n_epoch": epochs}
    batches = -(-len(x) // batch_size) if batch_size else 1
    group, k = 0, 0
    if fast is not None:
        settings = fast.plan(settings, has_val=False, batches_per_epoch=batches)
        model.fast_steps = fast
        group, k = fast.group, fast.epochs_per_step
    trainer = L.Trainer(
        **settings,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[fast] if fast else [],
    )
    shuffle = "rows" if batch_size else None
    loader = TensorBatches(x, y, batch_size or len(x), shuffle, seed=0, group=group, epochs_per_item=k)
    trainer.fit(model, train_dataloaders=loader)
    return model


def test_linear_model_recovers_known_weights(tmp_path):
    x = torch.randn(512, 3, generator=torch.Generator().manual_seed(0))
    y = x @ torch.tensor([[2.0], [-1.0], [0.5]]) + 0.3
    model = fit(x, y, lr=0.1, epochs=200, root=tmp_path)
    torch.testing.assert_close(model.net.weight, torch.tensor([[2.0, -1.0, 0.5]]), atol=1e-2, rtol=0)
    assert provides(model, Model)  # the declared contract


def test_fast_epochs_match_one_epoch_per_step_exactly(tmp_path):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    y = x.sum(1, keepdim=True)
    torch.manual_seed(0)
    a = fit(x, y, epochs=130, root=tmp_path)
    torch.manual_seed(0)
    b = fit(x, y, epochs=130, fast=FastSteps(epochs=50), root=tmp_path)  # 50 + 50 + 30: max_steps caps it
    assert (
        a.trainer.global_step == b.trainer.global_step == 130 and b.trainer.current_epoch == 3
    )  # 50, 50, 30
    torch.testing.assert_close(a.net.weight, b.net.weight, atol=0, rtol=0)


def test_grouped_minibatches_match_one_step_per_batch_exactly(tmp_path):
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(2))
    y = x @ torch.tensor([[1.0], [2.0], [3.0]])
    runs = []
    # 10 minibatches an epoch: groups of 1; groups of 4, 4, 2; 3 epochs a step
    for fast in (None, FastSteps(batches=1), FastSteps(batches=4), FastSteps(batches=30)):
        torch.manual_seed(0)
        runs.append(fit(x, y, lr=0.05, epochs=7, batch_size=10, fast=fast, root=tmp_path))
    for run in runs[1:]:
        assert run.trainer.global_step == runs[0].trainer.global_step == 70
        torch.testing.assert_close(runs[0].net.weight, run.net.weight, atol=0, rtol=0)


def test_logistic_model_separates_classes(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g)
    y = (x[:, :1] - x[:, 1:] > 0).float()
    model = fit(x, y, task="binary", lr=1.0, epochs=300, root=tmp_path)
    assert ((model(x) > 0).float() == y).float().mean() > 0.97


def test_mlp_fits_what_a_line_cannot(tmp_path):
    """y = x^2: a line's best MSE is the variance of x^2 (~2 for x ~ N(0, 1)); 16 tanh units get far below."""
    x = torch.randn(256, 1, generator=torch.Generator().manual_seed(3))
    y = x**2
    line = fit(x, y, lr=0.1, epochs=300, fast=FastSteps(), root=tmp_path)
    torch.manual_seed(0)
    mlp = fit(x, y, net=partial(MLP, hidden=[16]), lr=0.1, epochs=3000, fast=FastSteps(), root=tmp_path)
    with torch.no_grad():
        assert float(F.mse_loss(mlp(x), y)) < 0.1 * float(F.mse_loss(line(x), y))


def test_mlp_classifies_rings(tmp_path):
    """Two classes on rings of radius 1 and 2: no line separates them, one hidden layer does."""
    g = torch.Generator().manual_seed(4)
    angle, label = torch.rand(400, generator=g) * 6.283, torch.randint(0, 2, (400,), generator=g)
    x = torch.stack([angle.cos(), angle.sin()], 1) * (1 + label).unsqueeze(1)
    torch.manual_seed(0)
    model = fit(
        x,
        label,
        task="multiclass",
        net=partial(MLP, hidden=[16], activation="relu"),
        lr=0.5,
        epochs=2000,
        fast=FastSteps(),
    )
    assert (model(x).argmax(1) == label).float().mean() > 0.97


@pytest.mark.parametrize(
    ("loss", "expected"), [("mse", F.mse_loss), ("mae", F.l1_loss), ("huber", F.huber_loss)]
)
def test_regression_takes_the_chosen_loss(loss, expected):
    model = TaskModel(Linear, "regression", 2, 1, loss=loss)
    out, y = torch.randn(50, 1), 3 * torch.randn(50, 1)
    assert model.loss(out, y) == expected(out, y) and model.loss_name == loss


def test_an_unknown_loss_and_an_unfitted_task_are_refused():
    with pytest.raises(ConfigError, match="model.loss=hinge is not a regression loss"):
        TaskModel(Linear, "regression", 2, 1, loss="hinge")
    with pytest.raises(ConfigError, match="fits regression tasks, not binary"):
        TaskModel(Linear, "binary", 2, 1, tasks=["regression"])


def test_integer_inputs_are_one_hot_indices():
    """Linear on indices [n, k] equals Linear on the one-hot rows that have ones there (data=text)."""
    net = Linear(12, 5)
    x = torch.tensor([[1, 7], [3, 11]])
    one_hot = F.one_hot(x, 12).sum(1).float()
    torch.testing.assert_close(net(x), net(one_hot))
    assert MLP(12, 5, hidden=[4])(x).shape == (2, 5)
