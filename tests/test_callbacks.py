"""DivergenceGuard finds the exact epoch a run blew up, also inside fused steps; nothing finite is lost."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from litlab.callbacks import DivergenceGuard, validates_after
from litlab.errors import Diverged
from litlab.train import train
from tests.test_train import events, hparams_session


def diverge(cfg_factory, *overrides: str):
    """(the Diverged error, the run's config) of a run that must diverge."""
    cfg = cfg_factory("experiment=book_divergence", "trainer=cpu", *overrides)
    with pytest.raises(Diverged) as error:
        train(cfg)
    return error.value, cfg


def test_book_divergence_stops_at_epoch_11_with_the_books_numbers(cfg_factory):
    """Deep Learning with PyTorch, ch. 5: SGD lr 1e-2 on unscaled t_u gives 1763.88, 5802484.5, ..., inf."""
    error, cfg = diverge(cfg_factory)
    assert (error.epoch, error.loss) == (11, math.inf)
    assert str(error) == "diverged at epoch 11 (loss=inf): try a smaller learning rate or scaled inputs"
    run = cfg.paths.output_dir
    result = json.loads(Path(run, "metrics.json").read_text())
    assert result["status"] == "diverged" and result["error"] == str(error)
    acc = events(run)
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in loss] == list(range(11))  # epochs 1..11, as the book prints them
    assert loss[0][1] == pytest.approx(1763.8846) and loss[1][1] == pytest.approx(5802484.5, rel=1e-6)
    assert math.isfinite(loss[9][1]) and loss[10][1] == math.inf
    hp, _ = hparams_session(acc)
    assert hp["status"] == "diverged"
    ckpt = torch.load(f"{run}/checkpoints/last.ckpt", weights_only=True)  # where it started: finite
    assert ckpt["global_step"] == 0 and ckpt["state_dict"]["net.weight"].item() == 1.0


@pytest.mark.parametrize("stepping", ["stepping.epochs=50", "stepping=lightning"])
def test_divergence_inside_a_fused_step_keeps_the_last_finite_checkpoint(cfg_factory, stepping):
    """lr 4e-4 on unscaled t_u blows up slowly: inf at epoch 132, inside the third 50-epoch step."""
    error, cfg = diverge(
        cfg_factory,
        "optimizer.lr=4e-4",
        stepping,
        "trainer.max_epochs=1000",
        "callbacks.last_checkpoint.every_s=0",  # a last.ckpt at every epoch end
    )
    assert (error.epoch, error.loss) == (132, math.inf)  # the same epoch whether fused or not
    ckpt = torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == (100 if "50" in stepping else 131)  # the last epoch end before it
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_growth_factor_stops_at_the_explosion(cfg_factory):
    error, _ = diverge(cfg_factory, "callbacks.divergence.growth_factor=1000")
    assert error.epoch == 2 and "3.29e+03 times its lowest" in str(error)  # 5802484.5 / 1763.88


def test_guard_reads_each_epoch_of_a_fused_step():
    guard = DivergenceGuard(growth_factor=10)
    bad, lowest = guard.bad_epochs(torch.tensor([5.0, 3.0, 29.0, 31.0, float("nan")]))
    assert bad.tolist() == [False, False, False, True, True] and lowest.tolist() == [5, 3, 3, 3, 3]
    guard.lowest = torch.tensor(1.0)
    assert guard.bad_epochs(torch.tensor([2.0, 11.0]))[0].tolist() == [False, True]


def test_without_the_guard_a_non_finite_result_is_still_diverged(cfg_factory):
    error, cfg = diverge(cfg_factory, "callbacks=none", "trainer.max_epochs=20")
    assert error.epoch == 20 and not math.isfinite(error.loss)
    assert json.loads(Path(cfg.paths.output_dir, "metrics.json").read_text())["status"] == "diverged"


class Schedule(L.Callback):
    """Says, after each training batch, whether validates_after expects a validation next; records which
    batches a validation really followed."""

    def __init__(self):
        self.expected, self.followed, self.last = [], [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last = (trainer.current_epoch, batch_idx)
        if validates_after(trainer, batch_idx):
            self.expected.append(self.last)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.followed.append(self.last)


@pytest.mark.parametrize(
    "settings",
    [
        {"check_val_every_n_epoch": 2},
        {"val_check_interval": 0.5},
        {"val_check_interval": 3, "check_val_every_n_epoch": None},
        {"limit_val_batches": 0},
    ],
    ids=["every-2-epochs", "twice-an-epoch", "every-3-batches", "no-validation"],
)
def test_validates_after_says_where_lightning_validates(settings):
    """SafeStop stops only after batches no validation follows: validates_after must agree with
    Lightning's own schedule, which this fails first to show if an upgrade changes it."""
    data = TensorDataset(torch.randn(40, 2), torch.randn(40, 1))
    model = BoringRegression()
    schedule = Schedule()
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[schedule],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **settings,
    )
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    assert schedule.expected == schedule.followed
    assert bool(schedule.followed) == (settings.get("limit_val_batches") != 0)


class BoringRegression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)
