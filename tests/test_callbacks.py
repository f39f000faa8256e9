"""DivergenceGuard finds the exact epoch a run blew up, also inside fused steps; nothing finite is lost."""

import json
import math
from pathlib import Path

import pytest
import torch

from litlab.callbacks import DivergenceGuard
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
