"""Every bad setting is refused before training in one line that says what to type instead."""

import json
import math
import random
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from litlab import signatures
from litlab.checks import check_config, device_count
from litlab.errors import ConfigError, UserError, one_line, user_error
from litlab.train import train
from tests.conftest import CONF, compose_train

BAD = [
    (["optimizer.lr=fast"], "optimizer.lr='fast' is not a number"),
    (["data.batch_size=abc"], "data.batch_size='abc' is not an integer"),  # and no value merely valid
    (
        ["model=mlp", "model.net.hidden=8"],
        "model.net.hidden=8 is not a list of integers: try model.net.hidden=[8]",
    ),
    (["trainer.max_epochs=3.0"], "trainer.max_epochs=3.0 is not an integer: try trainer.max_epochs=3"),
    (["optimizer.lr=0"], "optimizer.lr=0 must be > 0"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be > 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1 must be >= 0"),
    (["optimizer.momentum=1"], "must be in [0, 1)"),
    (["optimizer.momentum=-0.5"], "must be in [0, 1)"),
    (["optimizer=rmsprop", "optimizer.momentum=1.5"], "must be in [0, 1)"),
    (["optimizer=adam", "optimizer.betas=[0.9,fast]"], "optimizer.betas=[0.9, 'fast'] is not [a number"),
    (["optimizer.nesterov=1"], "optimizer.nesterov=1 is not true or false"),
    (["+optimizer.foo=1"], "optimizer.foo is not an argument of torch.optim.SGD"),
    (["+trainer.max_epoch=3"], "did you mean trainer.max_epochs?"),
    (["+data.valfraction=0.1"], "did you mean data.val_fraction?"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be >= 1"),
    (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5 is not an integer"),
    (["trainer.precision=33"], "trainer.precision=33 is not one of 64, 32, 16"),
    (["trainer=mps"], "trainer.accelerator=mps is not available here"),
    (["trainer.accelerator=banana"], "trainer.accelerator=banana does not exist: choose one of auto, gpu"),
    (["trainer.devices=9999"], "trainer.devices=9999 asks for more"),
    (["trainer=cpu", "trainer.devices=[0]"], "on cpu must be a number of processes"),
    (["callbacks.early_stopping.patience=soon"], "patience='soon' is not an integer"),
    (["seed=abc"], "seed='abc' is not an integer"),
    (["stepping=fast", "stepping.epochs=0"], "stepping.epochs=0 must be a whole number >= 1"),
    (["optimized_mode=biggest"], "optimized_mode='biggest' must be min or max"),
    (["data.val_fraction=0"], "data.val_fraction=0 leaves no validation split"),
    (["seed=-1"], "seed=-1 must be in [0, 2**32)"),
    (["threads=0"], "threads=0 must be auto or a whole number >= 1"),
    (["scheduler=step", "scheduler.gamma=-0.5"], "scheduler.gamma=-0.5 must be > 0 for StepLR"),
    (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma=0 must be > 0 for StepLR"),
    (["scheduler=step", "scheduler.gamma=nan"], "scheduler.gamma=nan is not a finite number"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 must be a whole number >= 1"),
    (["scheduler=step", "scheduler.step_size=-1"], "scheduler.step_size=-1 must be a whole number >= 1"),
    (["scheduler=cosine", "scheduler.eta_min=-1"], "scheduler.eta_min=-1 must be >= 0 for CosineAnnealingLR"),
    (["scheduler=cosine", "scheduler.T_max=0"], "scheduler.T_max=0 must be a whole number >= 1"),
    (["scheduler=onecycle", "scheduler.max_lr=0"], "scheduler.max_lr=0 must be > 0 for OneCycleLR"),
    (["scheduler=onecycle", "scheduler.max_lr=-1"], "scheduler.max_lr=-1 must be > 0"),
    (["scheduler=onecycle", "scheduler.max_lr=nan"], "scheduler.max_lr=nan is not a finite number"),
    (["scheduler=onecycle", "scheduler.pct_start=1.5"], "scheduler.pct_start=1.5 must be in (0, 1)"),
    (["scheduler=plateau", "scheduler.patience=-1"], "scheduler.patience=-1 must be a whole number >= 0"),
    (["scheduler=plateau", "scheduler.factor=1.5"], "scheduler.factor=1.5 must be in (0, 1)"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not a finite number"),
    (["optimizer.weight_decay=inf"], "optimizer.weight_decay=inf is not a finite number"),
    (["model.net.init_weight=nan"], "model.net.init_weight=nan is not a finite number"),
    (["threads=many"], "threads='many' must be auto or a whole number >= 1"),
    (["seed=4294967296"], "seed=4294967296 must be in [0, 2**32)"),
    (["callbacks.early_stopping.patience=-1"], "callbacks.early_stopping.patience=-1 must be >= 0"),
    # torch's own range checks, at once rather than as a traceback at fit
    (["optimizer=adam", "optimizer.betas=[1.5,0.999]"], "torch.optim.Adam refuses these optimizer settings"),
    (["optimizer=adam", "+optimizer.eps=-1"], "Invalid epsilon value: -1"),
    (["optimizer=rmsprop", "optimizer.alpha=-1"], "Invalid alpha value: -1"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "Nesterov momentum requires a momentum"),
]
if not torch.cuda.is_available():
    BAD += [
        (["trainer=gpu"], "trainer.accelerator=gpu is not available here (available: cpu): use trainer=auto"),
        (["trainer.accelerator=cuda"], "trainer.accelerator=cuda is not available here"),
    ]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_setting_is_refused_in_one_line(cfg_factory, overrides, message):
    with pytest.raises(ConfigError) as error:
        check_config(cfg_factory(*overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_picture_size_of_nothing_is_refused(cfg_factory):
    with pytest.raises(Exception) as error:  # raised in the constructor, wrapped by Hydra's instantiate
        train(cfg_factory("callbacks.fit_pictures.size=[0,0]"))
    expected = "callbacks.fit_pictures.size=[0, 0] must be a width and height of 16 pixels"
    assert expected in one_line(error.value)


def test_a_growth_factor_that_would_stop_at_once_is_refused(cfg_factory):
    with pytest.raises(Exception) as error:  # raised in the constructor, wrapped by Hydra's instantiate
        train(cfg_factory("callbacks.divergence.growth_factor=1.0"))
    assert "growth_factor=1.0 must be > 1" in str(user_error(error.value))


@pytest.mark.parametrize("fraction", ["1", "1.5", "-0.1"])
def test_validation_fraction_outside_0_1_is_refused_before_training(cfg_factory, tmp_path, fraction):
    """[0, 1): 0 is the book's 'no hold-out' (experiment=book_temperature), 1 would leave nothing to train."""
    cfg = cfg_factory(f"data.val_fraction={fraction}", "optimized_metric=train/loss")
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_an_optimized_metric_the_run_never_logs_is_refused_before_training(cfg_factory, tmp_path):
    cfg = cfg_factory("optimized_metric=val/mse")  # regression logs its MSE as val/loss
    with pytest.raises(ConfigError, match="optimized_metric=val/mse is not a metric of this run: choose"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_good_settings_pass(cfg_factory):
    for overrides in (
        [],
        ["experiment=book_temperature"],  # data.val_fraction=0 with optimized_metric=train/loss
        ["model=logistic", "optimizer=adam", "trainer=cpu", "trainer.devices=auto"],
        ["optimizer=rmsprop", "optimizer.momentum=0.9", "trainer.deterministic=warn", "logger=csv"],
        ["trainer.precision=bf16-mixed", "data.scaling=0.1", "trainer.devices=1"],
    ):
        check_config(cfg_factory(*overrides))


def test_device_counts():
    assert [device_count(d) for d in (1, 3, "2", "0,3", [1], -1, "auto")] == [1, 3, 2, 4, 2, 0, 0]
    assert device_count("two") is None and device_count(0) is None and device_count(True) is None


def composition_error(*overrides: str) -> str:
    with pytest.raises(Exception) as error, initialize_config_dir(str(CONF), version_base="1.3"):
        compose("train", overrides=list(overrides))
    return one_line(error.value)


def test_hydra_composition_errors_become_one_line():
    assert (
        composition_error("model=foo") == "there is no model=foo: the model options are linear, logistic, mlp"
    )
    assert "did you mean seed?" in composition_error("sed=1")
    message = composition_error("optimizer=adam", "optimizer.momentum=0.9")
    assert message.startswith(
        "optimizer.momentum is not a key of optimizer (its keys: lr, betas, weight_decay)"
    )
    for message in (composition_error("optimizer.lr=[1"), composition_error("optimizer.lr=1,2")):
        assert message and "\n" not in message
    assert "did you mean optimizer.lr?" in composition_error("lr=0.1")  # a key deeper down
    assert "did you mean trainer.max_epochs?" in composition_error("max_epochs=3")


def test_the_written_signatures_match_the_installed_packages_and_our_sources():
    """signatures.json is what checks.py reads instead of importing torch and Lightning: a changed
    signature (an upgrade, an argument added to one of ours) fails here first."""
    saved = json.loads(signatures.FILE.read_text())
    assert saved == json.loads(json.dumps(signatures.written())), "run: python -m litlab.signatures"
    assert {"lightning.Trainer", "torch.optim.SGD", "litlab.data.wine.WineData"} <= set(saved["targets"])


def test_a_signature_whose_source_changed_or_whose_package_differs_is_read_live(monkeypatch):
    stale = {"arguments": {}, "sources": {"litlab/nets.py": "0" * 64}}
    monkeypatch.setattr(signatures, "known", lambda: {"litlab.nets.MLP": stale})
    assert "hidden" in signatures.arguments("litlab.nets.MLP")
    monkeypatch.undo()
    monkeypatch.setattr(signatures, "versions", lambda: {"torch": "0.0", "lightning": "0.0"})
    signatures.known.cache_clear()
    assert signatures.known() == {}
    monkeypatch.undo()
    signatures.known.cache_clear()
    assert signatures.known()


TYPED_MISTAKES = """
import sys
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from litlab.checks import check_config
from litlab.errors import ConfigError
for overrides in {mistakes!r}:
    with initialize_config_dir({conf!r}, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/x", *overrides])
    try:
        check_config(cfg)
    except ConfigError as e:
        print(e)
print(sorted(m for m in ("torch", "lightning") if m in sys.modules))
"""


def test_typed_mistakes_in_lightning_and_data_arguments_are_answered_without_torch_or_lightning():
    mistakes = [
        ["trainer.max_epochs=abc"],
        ["trainer.precision=33"],
        ["data=wine", "data.batch_size=abc"],
        ["logger=csv", "+logger.csv.flush_logs_every_n_steps=often"],
        ["callbacks.early_stopping.patience=soon"],
        ["callbacks.model_checkpoint.save_top_k=x"],
        ["scheduler=step", "scheduler.step_size=abc"],
        ["optimizer=adam", "optimizer.betas=[0.9,fast]"],
    ]
    code = TYPED_MISTAKES.format(mistakes=mistakes, conf=str(CONF))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = out.strip().splitlines()
    assert len(lines) == len(mistakes) + 1 and all("is not" in line for line in lines[:-1]), out
    assert lines[-1] == "[]", f"imported {lines[-1]}"


# The config space of the randomised test: (valid values, typos and out-of-range values) per override.
SPACE = {
    "data": (["temperature", "regression", "classification"], ["wine_typo"]),
    "model": (["linear", "logistic"], ["lineer"]),
    "optimizer": (["sgd", "adam", "rmsprop"], ["adamw"]),
    "optimizer.lr": (["0.01", "0.1", "1e-4"], ["0", "-1", "fast", "1e9"]),
    "optimizer.weight_decay": (["0", "0.01"], ["-0.5", "none"]),
    "trainer": (["cpu", "auto"], ["mps", "tpu_typo"]),
    "trainer.max_epochs": (["1", "3", "7"], ["0", "-2", "2.5", "many"]),
    "trainer.devices": (["1", "auto"], ["9999", "[0]"]),
    "data.val_fraction": (["0.2", "0.5"], ["1", "1.5", "-0.1", "half"]),
    "data.scaling": (["standardize", "none", "0.1"], ["-1", "banana"]),
    "seed": (["0", "7"], ["abc"]),
    "callbacks": (["default", "none"], []),
    "callbacks.progress_bar": (["null"], []),
    "+optimizer.lrr": ([], ["0.1"]),
    "optimized_metric": (["val/loss", "train/loss"], []),
}


def draw(rng: random.Random) -> list[str]:
    """2-6 overrides; each one is a bad value one time in six."""
    drawn = []
    for key in rng.sample(sorted(SPACE), rng.randint(2, 6)):
        good, bad = SPACE[key]
        drawn.append(f"{key}={rng.choice(bad if bad and (not good or rng.random() < 1 / 6) else good)}")
    return drawn


def trains_or_says_why(root, overrides: list[str]) -> str:
    """'trained' or the single line the user would see; anything else fails the test."""
    try:
        cfg = compose_train(root, *overrides)
        value = train(cfg)
    except Exception as e:
        message = one_line(e)
        assert message is not None, f"{overrides}: a bare traceback, {e!r}"
        assert "\n" not in message and message.strip(), overrides
        return message
    assert isinstance(value, float) and not math.isnan(value)
    return "trained"


@pytest.mark.slow
def test_random_overrides_train_or_fail_in_one_line(tmp_path):
    rng = random.Random(20260523)
    outcomes = []
    for i in range(40):
        overrides = [*draw(rng), "trainer.check_val_every_n_epoch=1"]
        if not any(o.startswith("trainer.max_epochs") for o in overrides):
            overrides.append("trainer.max_epochs=3")
        outcomes.append(trains_or_says_why(tmp_path / str(i), overrides))
    assert 5 <= outcomes.count("trained") < len(outcomes)  # the draw covers both outcomes


# The fuzz: for every option of every group, every leaf key of its config with bad values drawn from these
# (a word, negatives, zero, huge, nan, empty and non-empty lists and mappings, null, an empty string).
PARSER = OverridesParser.create()
BAD_VALUES = ["fast", "-1", "0", "1e308", "nan", "[]", "{}", "null", "''", "-0.5", "2", "[1,2]"]


def leaf_keys(node, prefix: str) -> list[str]:
    keys = []
    for key, value in node.items():
        if not str(key).startswith("_"):
            keys += leaf_keys(value, f"{prefix}{key}.") if OmegaConf.is_dict(value) else [f"{prefix}{key}"]
    return keys


@pytest.mark.slow
@pytest.mark.parametrize(
    "group", ["data", "model", "optimizer", "scheduler", "trainer", "stepping", "callbacks"]
)
def test_every_key_of_every_group_takes_bad_values_in_one_line_or_passes_the_checks(tmp_path, group):
    rng = random.Random(group)
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml") if p.stem not in ("gpu", "mps"))
    draws = 0
    for option in options:
        node = compose_train(tmp_path, f"{group}={option}").get(group)
        for key in leaf_keys(node, f"{group}.") if node is not None else []:
            for bad in rng.sample(BAD_VALUES, 2):
                overrides = [f"{group}={option}", f"{key}={bad}"]
                try:
                    check_config(compose_train(tmp_path, *overrides))
                except Exception as e:
                    message = one_line(e)
                    assert message is not None and "\n" not in message, f"{overrides}: {e!r}"
                draws += 1
    assert draws > 0


def test_every_key_of_the_sweeper_takes_bad_values_in_one_line_or_passes_its_checks(tmp_path):
    """The Optuna sweeper's settings (conf/hydra/sweeper/optuna.yaml, with the params of
    hparams_search=optimizers), each checked before the sweep writes anything."""
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train", [f"paths.root_dir={tmp_path}", "hparams_search=optimizers"], return_hydra_config=True
        )
    draws = refused = 0
    keys = [(k,) for k in cfg.hydra.sweeper if k != "_target_"] + [
        ("params", k) for k in cfg.hydra.sweeper.params
    ]
    for key in keys:  # params' keys hold dots (optimizer.lr): a path of nodes, not a dotted key
        for bad in BAD_VALUES:
            edited = cfg.copy()
            node = edited.hydra.sweeper if len(key) == 1 else edited.hydra.sweeper.params
            with open_dict(node):
                node[key[-1]] = PARSER.parse_override(f"k={bad}").value()  # as the command line reads it
            sweeper = instantiate(edited.hydra.sweeper)
            sweeper.config = edited
            try:
                sweeper.check([])
            except Exception as e:
                message = one_line(e)
                assert message is not None and "\n" not in message, f"{'.'.join(key)}={bad}: {e!r}"
                refused += 1
            draws += 1
    # nothing written
    assert draws >= 12 * 14 and draws / 2 < refused < draws and not list(tmp_path.iterdir())


def test_a_user_error_is_one_line_through_every_wrapper():
    """Hydra's instantiate wraps constructor errors; the user still gets our line."""
    from hydra.errors import InstantiationException

    inner = ConfigError("data.preset='x' is unknown")
    try:
        raise InstantiationException("Error in call to target") from inner
    except InstantiationException as e:
        assert one_line(e) == str(inner) and isinstance(inner, UserError)
    assert one_line(ZeroDivisionError("a bug")) is None  # a bug keeps its traceback
    assert one_line(InstantiationException("Error in call to target")) is None
