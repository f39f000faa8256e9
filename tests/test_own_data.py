"""Data of one's own: a LightningDataModule as Lightning's docs teach it (tests/own_data.py, no litlab
import) picked by data=<its yaml> from a config dir of its own, through train.py, eval.py and predict.py."""

import json
import os
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import Tensor

from litlab.checkpoints import load
from litlab.data.base import TensorDataModule
from litlab.errors import ConfigError
from litlab.search import storage_of as search_storage
from litlab.train import train
from tests.conftest import ROOT, compose_train, run_dirs, run_train
from tests.own_data import Sines
from tests.signal_at import signal_at
from tests.test_checkpoints import assert_same_run
from tests.test_extend import DOCS_MODEL
from tests.test_train import events, hparams_session

pytestmark = pytest.mark.slow  # each runs train.py end to end

SINES_YAML = "_target_: tests.own_data.Sines\nn: 640\nbatch_size: 32\nnum_workers: 2\n"
SHORT = ("trainer=cpu", "trainer.max_epochs=12", "trainer.check_val_every_n_epoch=4")


def own_conf(root: Path, monkeypatch, yaml: str = SINES_YAML) -> tuple[str, str]:
    """data=sines from a config dir of the test's own, its module importable by train.py's processes."""
    (root / "conf" / "data").mkdir(parents=True, exist_ok=True)
    (root / "conf" / "data" / "sines.yaml").write_text(yaml)
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return f"hydra.searchpath=[file://{root / 'conf'}]", "data=sines"


def test_a_docs_style_data_module_fits_resumes_evaluates_and_predicts(tmp_path, monkeypatch):
    ours = own_conf(tmp_path, monkeypatch)
    proc = run_train(tmp_path, *ours, "model=mlp", *SHORT)
    assert (
        "Sines: regression, 1 inputs -> 1 outputs (task, in_features and out_features from one training "
        "batch; train 512, val 128 rows)" in (proc.stdout + proc.stderr)
    )
    [run] = run_dirs(tmp_path)
    run_train(tmp_path, f"resume={run}", "trainer.max_epochs=16")
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 16 * 16  # 512 rows in batches of 32
    final = json.loads((run / "metrics.json").read_text())["metrics"]

    evaluated = run_train(tmp_path, f"ckpt_path={run}", script="eval.py")
    [metrics] = [json.loads(p.read_text()) for p in (tmp_path / "logs" / "eval").rglob("metrics.json")]
    assert metrics["metrics"] == {k: v for k, v in final.items() if k.startswith("val/")}, evaluated.stdout

    predicted = run_train(tmp_path, f"ckpt_path={run}", "inputs=[[230.0], [270.0]]", script="predict.py")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    from litlab.nets import MLP

    net = MLP(1, 1, hidden=[8])
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    data = Sines()
    data.setup()
    x = (torch.tensor([[230.0], [270.0]]) - data.x_shift) / data.x_scale
    answers = [float(line.split()[-1]) for line in predicted.stdout.strip().splitlines()[-2:]]
    assert answers == pytest.approx(net(x).flatten().tolist(), rel=1e-5)

    images = events(run).Tags()["images"]
    assert "fit/line" in images  # one input, regression: the fitted line over the data, in original units
    hparams, metrics = hparams_session(events(run))
    assert hparams["data"] == "sines" and hparams["data.batch_size"] == 32 and metrics[0] == "val/loss"


def test_classes_from_the_module_s_num_classes_and_a_model_of_ones_own(tmp_path, monkeypatch):
    """Integer labels and a num_classes attribute: logistic regression over 3 classes, pictures included;
    a LightningModule of one's own (tests/test_extend.py) takes the data's sizes too."""
    ours = own_conf(tmp_path, monkeypatch)
    (tmp_path / "classes").mkdir()
    proc = run_train(
        tmp_path / "classes", *ours, "+data.classes=3", "model=logistic", "optimizer=adam", *SHORT
    )
    said = "Sines: multiclass, 1 inputs -> 3 outputs (num_classes from its attributes; in_features from one"
    assert said in proc.stdout + proc.stderr
    [run] = run_dirs(tmp_path / "classes")
    assert json.loads((run / "metrics.json").read_text())["metrics"]["val/acc"] > 0.6
    assert "fit/confusion_matrix" in events(run).Tags()["images"]
    train(compose_train(tmp_path / "own", *ours, *DOCS_MODEL, *SHORT))
    assert json.loads((tmp_path / "own" / "run" / "metrics.json").read_text())["status"] == "ok"


def test_linear_regression_on_own_data_reaches_the_streamed_optimum(tmp_path, monkeypatch):
    """The gap to the optimum comes from normal equations summed over the training loader: the optimum
    equals numpy's least squares of the training split, and full-batch gradient descent ends on it."""
    ours = own_conf(tmp_path, monkeypatch)
    full_batch = ("data.batch_size=512", "data.num_workers=0", "trainer.max_epochs=60")
    run_train(tmp_path, *ours, "model=linear", "optimizer.lr=0.1", "trainer=cpu", *full_batch)
    [run] = run_dirs(tmp_path)
    data = Sines()
    data.setup()
    x, y = (data.train_set.dataset[data.train_set.indices][i].double().numpy() for i in (0, 1))
    a = np.hstack([x, np.ones((len(x), 1))])
    w, *_ = np.linalg.lstsq(a, y, rcond=None)
    optimum = float(((a @ w - y) ** 2).mean())
    logged = events(run).Scalars("train/optimum_loss")
    assert logged[-1].value == pytest.approx(optimum, rel=1e-6)
    gaps = [e.value for e in events(run).Scalars("train/gap")]
    assert gaps[0] > 1 and 0 <= gaps[-1] < 1e-3 * optimum  # from the first step's loss to the optimum


@pytest.mark.parametrize("stateful", [True, False], ids=["stateful-loader", "plain-loader"])
def test_sigterm_mid_epoch_then_resume_equals_an_unbroken_run(tmp_path, monkeypatch, stateful):
    """A StatefulDataLoader stops where it is and resumes there; a plain DataLoader cannot say where it
    stopped, so the run stops at the epoch's end instead. Either way the resumed run is the unbroken one."""
    ours = own_conf(tmp_path, monkeypatch)
    args = (*ours, "model=mlp", "optimizer=adam", *SHORT, "callbacks.last_checkpoint.every_s=0")
    args = (*args, f"+data.stateful={stateful}")
    with pytest.raises(SystemExit, match="^error: stopped by SIGTERM after "):
        train(compose_train(tmp_path, *args, *signal_at("SIGTERM", "on_train_batch_end", 5, 6)))
    run = tmp_path / "run"
    stopped = load(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 5 * 16 < stopped < 6 * 16 if stateful else stopped == 6 * 16  # inside epoch 6, or at its end
    time.sleep(1.0)  # the resume's event file sorts after the first (tests/test_checkpoints.py)
    train(compose_train(tmp_path / "elsewhere", *ours, f"resume={run}"))
    train(compose_train(tmp_path / "unbroken", *args))
    assert_same_run(run, tmp_path / "unbroken" / "run")


def test_predict_without_the_data_s_normalisation_is_refused_in_one_line(tmp_path, monkeypatch):
    ours = own_conf(tmp_path, monkeypatch)
    raw = ("+data.standardise=false", "optimizer.lr=1e-6", "trainer=cpu", "trainer.max_epochs=2")
    train(compose_train(tmp_path, *ours, *raw))
    proc = run_train(
        tmp_path, f"ckpt_path={tmp_path / 'run'}", "inputs=[[230.0]]", script="predict.py", check=False
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].endswith(
        "give the data module x_shift and x_scale tensors (model input = (raw - x_shift) / x_scale; zeros "
        "and ones where it does not normalise), then train again"
    )


def test_stepping_fast_on_own_loaders_is_refused_in_one_line(tmp_path, monkeypatch):
    ours = own_conf(tmp_path, monkeypatch)
    with pytest.raises(
        ConfigError, match=r"stepping=fast needs whole-tensor batches .* add stepping=lightning"
    ):
        train(compose_train(tmp_path, *ours, "stepping=fast", "trainer=cpu"))


def test_a_sweep_runs_its_jobs_in_parallel_on_own_data(tmp_path, monkeypatch):
    """The jobs run in joblib's workers, whose DataLoader workers start as Python's own processes."""
    ours = own_conf(tmp_path, monkeypatch)
    run_train(tmp_path, "-m", *ours, "model=mlp", "optimizer=sgd,adam", *SHORT)  # two jobs at once
    [sweep] = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = [json.loads(p.read_text()) for p in sweep.rglob("metrics.json")]
    assert len(jobs) == 2 and all(j["status"] == "ok" and j["metrics"]["val/r2"] > 0.5 for j in jobs)


def test_an_optuna_search_prunes_on_own_data(tmp_path, monkeypatch):
    """A grid of two learning rates; the threshold pruner stops lr 1e-6 at its first validation."""
    ours = own_conf(tmp_path, monkeypatch)
    search = (
        "hydra/sweeper=optuna",
        "hydra/launcher=basic",
        f"hydra.sweep.dir={tmp_path}/search",
        "hydra.sweeper.sampler=grid",
        "optimizer.lr=choice(0.1,1e-6)",
        "hydra.sweeper.pruner=threshold",
        "+hydra.sweeper.pruner_kwargs.upper=1.0",
        "hydra.sweeper.n_trials=2",
    )
    run_train(tmp_path, "-m", *ours, "model=mlp", *search, *SHORT)
    storage = search_storage(f"sqlite:///{tmp_path}/search/optuna.db")
    trials = optuna.load_study(study_name="train", storage=storage).trials
    states = {t.params["optimizer.lr"]: t.state for t in trials}
    assert states == {0.1: TrialState.COMPLETE, 1e-6: TrialState.PRUNED}
    assert list(next(t for t in trials if t.state == TrialState.PRUNED).intermediate_values) == [4]


def test_ddp_on_two_processes_equals_one_process(tmp_path, monkeypatch):
    """Full-batch: Lightning's DistributedSampler gives each rank half the rows, DDP averages the two
    gradients, and the fit is one process's on all rows (to float32 rounding)."""
    ours = own_conf(tmp_path, monkeypatch)
    full_batch = ("model=linear", "optimizer.lr=0.1", "data.batch_size=512", "data.num_workers=0", *SHORT)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    run_train(tmp_path / "one", *ours, *full_batch)
    run_train(
        tmp_path / "two", *ours, *full_batch, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"
    )
    [one], [two] = run_dirs(tmp_path / "one"), run_dirs(tmp_path / "two")
    weights = [load(r / "checkpoints" / "last.ckpt")["state_dict"] for r in (one, two)]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-5, atol=1e-6)
    metrics = [json.loads((r / "metrics.json").read_text())["metrics"] for r in (one, two)]
    assert metrics[1]["val/loss"] == pytest.approx(metrics[0]["val/loss"], rel=1e-5)


class Lagged(TensorDataModule):
    """A series -> the next value from the `lags` values before it (docs/data.md's example)."""

    name = "lagged"
    contiguous = True  # time order: the first rows train, the last validate

    def __init__(self, path: str, lags: int = 3, **kwargs):
        self.path, self.lags = path, lags
        super().__init__(**kwargs)  # scaling, val_fraction, batch_size, shuffle, split_seed, task

    def read(self) -> tuple[Tensor, Tensor]:
        series = torch.tensor([float(v) for v in Path(self.path).read_text().split()])
        x = series.unfold(0, self.lags, 1)[:-1]  # [n, lags]: the values before each target
        return x.contiguous(), series[self.lags :].unsqueeze(1)


LAGGED_YAML = """
_target_: tests.test_own_data.Lagged
path: ${paths.data_dir}/load.txt
lags: 3
scaling: standardize
val_fraction: 0.2
batch_size: null
shuffle: rows
split_seed: ${seed}
"""


def test_a_tensor_data_module_of_ones_own_takes_fast_steps_to_the_optimum(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    series = [0.0, 0.0, 0.0]
    for _ in range(400):  # x_t = 0.6 x_{t-1} - 0.2 x_{t-2} + 0.1 x_{t-3} + noise
        series.append(
            0.6 * series[-1] - 0.2 * series[-2] + 0.1 * series[-3] + float(torch.randn(1, generator=g))
        )
    (tmp_path / "load.txt").write_text("\n".join(map(str, series)))
    ours = own_conf(tmp_path, monkeypatch, LAGGED_YAML)
    cfg = compose_train(tmp_path, *ours, f"paths.data_dir={tmp_path}", "stepping=fast", "optimizer.lr=0.1")
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert metrics["train/gap"] == 0 and metrics["val/r2"] > 0.1  # at the exact least-squares optimum
    ckpt = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["callbacks"]["FastSteps"]["epochs_per_step"] == 100  # fast steps of 100 epochs each
