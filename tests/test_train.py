"""End to end, as a user: run train.py, then read the console, event files, config and checkpoints."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from litlab.models.task import TaskModel
from litlab.nets import Linear
from litlab.train import train
from tests.conftest import ROOT, compose_train, run_dirs, run_train


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def hparams_session(acc) -> tuple[dict, list]:
    """(hparams, metric tags in their order) of the run's HParams session."""
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {k: v.number_value or v.string_value for k, v in start.session_start_info.hparams.items()}
    return values, [m.name.tag for m in exp.experiment.metric_infos]


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory) -> dict:
    """The README's first command lines, started at once (3 processes, 2 cores): {name: (root, proc)}."""
    lines = {
        "default": (),
        "logistic": ("model=logistic", "optimizer=adam"),
        "mismatch": ("model=logistic", "data=temperature"),
    }
    roots = {name: tmp_path_factory.mktemp(name) for name in lines}
    with ThreadPoolExecutor() as pool:
        started = {
            n: pool.submit(run_train, roots[n], *args, check=n != "mismatch") for n, args in lines.items()
        }
        return {name: (roots[name], proc.result()) for name, proc in started.items()}


@pytest.mark.slow
def test_default_run_writes_events_config_and_checkpoints(first_runs):
    tmp_path, proc = first_runs["default"]
    [run] = run_dirs(tmp_path)
    assert run.parent == tmp_path / "logs" / "train" / "runs"
    console = proc.stderr + proc.stdout
    typed = run.relative_to(tmp_path)  # as the shell in root (its working directory) shows it
    assert f"run directory: {typed}" in console
    assert (
        f"view it: {Path(sys.executable).parent / 'tensorboard'} --logdir logs" in console
    )  # outside a venv too
    assert console.rstrip().endswith(f"go on: python train.py resume={typed} trainer.max_epochs=2000")
    assert "\r" not in console and "epoch 500/1000: train/loss=" in console  # no bar where it is no terminal
    assert "(val/r2 left out: 2 val rows are too few to measure it)" in console  # and the other metrics shown
    acc = events(run)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1000))  # x-axis: optimizer steps, epochs on full-batch data
    assert loss[-1].value < loss[0].value / 5
    assert {"val/loss", "val/r2", "train/mae"} <= set(acc.Tags()["scalars"])
    assert "epoch" not in acc.Tags()["scalars"]  # Lightning's counter: no card of its own
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("final/")]  # no single-point copies
    hp, metric_tags = hparams_session(acc)
    assert hp["optimizer"] == "SGD" and hp["data.scaling"] == "standardize" and hp["data"] == "temperature"
    assert hp["status"] == "ok" and hp["epochs"] == 1000
    assert list(metric_tags)[:3] == ["val/loss", "train/loss", "train/gap"]  # the optimised metric first
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert acc.Scalars("val/loss")[-1].value == pytest.approx(metrics["val/loss"])  # HParams shows this one
    assert "train/gap=0 (at the optimum)" in proc.stderr + proc.stdout
    assert "\x1b[" not in proc.stderr + proc.stdout and "GPU available" not in proc.stderr + proc.stdout
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.model.tasks == ["regression"] and saved.data._target_.endswith("TemperatureData")
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_logistic_with_adam_trains_on_classification_data(first_runs):
    tmp_path, proc = first_runs["logistic"]
    assert "preset=generated: binary" in proc.stdout + proc.stderr
    [run] = run_dirs(tmp_path)
    acc = events(run)
    assert acc.Scalars("val/acc")[-1].value > 0.7
    assert {"val/auroc", "val/f1"} <= set(acc.Tags()["scalars"])
    assert OmegaConf.load(run / "config.yaml").optimizer._target_ == "torch.optim.Adam"


@pytest.mark.slow
def test_logistic_on_temperature_fails_in_one_line(first_runs):
    _, proc = first_runs["mismatch"]
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: model=logistic fits binary, multiclass tasks and data=temperature poses a regression task: "
        "use model=linear or model=mlp; or for classes use data=wine, data=text, data=classification or "
        "data=regression data.preset=toy6"
    ]


@pytest.mark.slow
def test_book_reproduction(cfg_factory):
    """Deep Learning with PyTorch, ch. 5: loss 2.927647, w 5.3671, b -17.3012 after 5000 epochs."""
    cfg = cfg_factory("experiment=book_temperature", "trainer=cpu")
    loss = train(cfg)
    ckpt = torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5000
    assert loss == pytest.approx(2.927647, abs=5e-6)
    assert ckpt["state_dict"]["net.weight"].item() == pytest.approx(5.3671, abs=5e-5)
    assert ckpt["state_dict"]["net.bias"].item() == pytest.approx(-17.3012, abs=5e-5)


@pytest.mark.slow
def test_checkpoint_reload_gives_identical_predictions(cfg_factory):
    cfg = cfg_factory("model=logistic", "trainer=cpu", "trainer.max_epochs=200")
    train(cfg)
    path = f"{cfg.paths.output_dir}/checkpoints/last.ckpt"
    # The network is config, not a hyperparameter (plain values only): hand it over, as predict.py does.
    reloaded = TaskModel.load_from_checkpoint(path, weights_only=True, net=Linear)
    state = torch.load(path, weights_only=True)["state_dict"]
    x = torch.randn(32, 2)
    expected = x @ state["net.weight"].T + state["net.bias"]
    torch.testing.assert_close(reloaded(x), expected, atol=0, rtol=0)


@pytest.mark.slow
def test_template_gives_the_plain_loops_loss_exactly(cfg_factory):
    """make bench compares speed against this plain loop; the maths must be the same, bit for bit."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import plain_book

    assert train(cfg_factory("experiment=book_temperature", "trainer=cpu")) == plain_book()


def test_a_fast_dev_run_is_recorded_as_a_debug_run_never_as_a_result(tmp_path, caplog):
    caplog.set_level("INFO")
    train(compose_train(tmp_path, "debug=fast_dev_run"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "debug"
    assert "fast_dev_run (one batch)" in caplog.text and "1000 epochs" not in caplog.text
