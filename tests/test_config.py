"""Every config file composes, and every pair of data, model and optimizer options meets in a run that trains
or refuses in one line."""

import itertools
import math

import pytest

from litlab.errors import user_error
from litlab.stepping import FastSteps
from litlab.train import train
from tests.conftest import CONF

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(cfg_factory, group, option):
    cfg = cfg_factory(f"{group}={option}")
    assert cfg.data._target_.startswith("litlab.data.")
    assert cfg.trainer._target_ == "lightning.Trainer"


def all_pairs() -> list[tuple[str, str, str]]:
    """(data, model, optimizer) runs in which every pair of options meets: each data option with each
    optimizer, the models in turn, so that each data and each optimizer meets every model too (30 runs
    where the full product is 90; what a combination breaks, a pair of them breaks)."""
    models = options("model")
    return [
        (data, models[(i + j) % len(models)], optimizer)
        for i, data in enumerate(options("data"))
        for j, optimizer in enumerate(options("optimizer"))
    ]


def test_the_runs_meet_every_pair_of_options():
    groups = ("data", "model", "optimizer")
    runs = all_pairs()
    for a, b in itertools.combinations(range(3), 2):
        wanted = set(itertools.product(options(groups[a]), options(groups[b])))
        assert wanted == {(run[a], run[b]) for run in runs}, (groups[a], groups[b])


@pytest.mark.parametrize("data,model,optimizer", all_pairs())
def test_every_pair_of_options_trains_or_refuses(cfg_factory, data, model, optimizer):
    cfg = cfg_factory(
        f"data={data}",
        f"model={model}",
        f"optimizer={optimizer}",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "trainer.check_val_every_n_epoch=1",
        "callbacks=none",
    )
    try:
        value = train(cfg)
    except Exception as e:
        error = user_error(e)
        assert error is not None and "\n" not in str(error) and f"model={model}" in str(error)
        return
    assert math.isfinite(value)


def test_logistic_without_data_choice_trains_on_classification_data(cfg_factory):
    cfg = cfg_factory("model=logistic", "optimizer=adam")
    assert cfg.data.task == "binary" and cfg.data.preset == "generated"
    assert cfg_factory("model=logistic", "data=temperature").data._target_.endswith("TemperatureData")


def test_fast_steps_plan_the_trainer_in_lightning_units():
    trainer = {"max_epochs": 5000, "check_val_every_n_epoch": 100, "gradient_clip_val": 0.5}
    fast = FastSteps(epochs=50)
    s = fast.plan(trainer, has_val=True, batches_per_epoch=1)  # full-batch data: 50 epochs a step
    assert s == {"max_epochs": -1, "max_steps": 5000, "check_val_every_n_epoch": 2}  # clipping: done by fast
    assert fast.clip == (0.5, "norm") and (fast.epochs_per_step, fast.group) == (50, 50)
    fast = FastSteps(epochs=250, batches=128)
    s = fast.plan({**trainer, "check_val_every_n_epoch": 30}, has_val=True, batches_per_epoch=4)
    assert (fast.epochs_per_step, fast.group, s["check_val_every_n_epoch"]) == (30, 120, 1)  # 30 divides 30
    assert s["max_steps"] == 5000 * 4
    fast = FastSteps(batches=128)
    s = fast.plan({**trainer, "max_steps": 70, "min_epochs": 20}, has_val=True, batches_per_epoch=300)
    assert s["max_epochs"] == 5000 and s["max_steps"] == 70 and s["min_epochs"] == 20
    assert (fast.epochs_per_step, fast.group, fast.capped) == (0, 128, True)  # groups inside an epoch
