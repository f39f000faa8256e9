"""Your own model: a network (one module and one YAML file) or a LightningModule as Lightning teaches it."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litlab.train import train
from tests.conftest import ROOT, compose_train, run_dirs, run_train
from tests.test_stepping import RecordingSGD
from tests.test_train import events, hparams_session

pytestmark = pytest.mark.slow  # each runs train.py end to end


class Polynomial(nn.Module):
    """y = sum_p x^p W_p + b for p = 1..degree: a network written the way a user adds one, knowing nothing of
    losses, optimizers or logging (the task module adds them)."""

    def __init__(self, in_features: int, out_features: int, degree: int = 2):
        super().__init__()
        self.degree = degree
        self.linear = nn.Linear(in_features * degree, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.cat([x**p for p in range(1, self.degree + 1)], dim=1))


# conf/model/polynomial.yaml, as a user would add it (here in a config dir of the test's own).
MODEL_YAML = """
_target_: litlab.models.task.TaskModel
tasks: [regression, binary]
loss: mse
net:
  _target_: tests.test_extend.Polynomial
  _partial_: true
  degree: 2
"""


def our_model(root: Path, monkeypatch) -> tuple[str, ...]:
    """Overrides that pick the model above: its YAML in a config dir of its own, its module importable."""
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "model" / "polynomial.yaml").write_text(MODEL_YAML)
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return f"hydra.searchpath=[file://{root / 'conf'}]", "model=polynomial", "trainer=cpu"


def test_a_network_of_ones_own_trains_resumes_evaluates_and_predicts(tmp_path, monkeypatch):
    ours = our_model(tmp_path, monkeypatch)
    data = ("data=regression", "data.preset=double", "data.val_fraction=0", "optimized_metric=train/loss")

    run_train(tmp_path, *ours, *data, "stepping=fast", "trainer.max_epochs=100")
    [run] = run_dirs(tmp_path)
    assert "Polynomial" in (run / "config.yaml").read_text()
    run_train(tmp_path, f"resume={run}", "trainer.max_epochs=200")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 200 and ckpt["state_dict"]["net.linear.weight"].shape == (1, 2)
    assert events(run).Scalars("train/loss")[-1].step == 199

    with ThreadPoolExecutor() as pool:  # eval and predict at once: two processes, two cores
        evaluated = pool.submit(run_train, tmp_path, f"ckpt_path={run}", script="eval.py", check=False)
        predicted = pool.submit(
            run_train, tmp_path, f"ckpt_path={run}", "inputs=[[4.0]]", script="predict.py"
        )
    evaluated, proc = evaluated.result(), predicted.result()
    # eval.py rebuilds the user's network from the run, and says in one line that there is nothing held out
    assert "weights from" in evaluated.stdout + evaluated.stderr
    assert evaluated.stderr.strip().splitlines()[-1].endswith("(data.val_fraction=0): nothing to evaluate")
    net = Polynomial(1, 1)  # predict.py's answer is this network's, on the run's normalised input
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    stats = ckpt["data"]
    x = (torch.tensor([[4.0]]) - torch.tensor(stats["x_shift"])) * torch.tensor(stats["x_scale"]).reciprocal()
    assert float(proc.stdout.split()[-1]) == pytest.approx(net(x).item(), rel=1e-5)


def test_a_network_of_ones_own_sweeps(tmp_path, monkeypatch):
    ours = our_model(tmp_path, monkeypatch)
    run_train(tmp_path, "-m", *ours, "data=classification", "optimizer=sgd,adam", "trainer.max_epochs=30")
    [sweep] = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = [json.loads(p.read_text()) for p in sweep.rglob("metrics.json")]
    assert len(jobs) == 2 and all(j["status"] == "ok" and j["metrics"]["val/acc"] > 0.6 for j in jobs)
    assert (sweep / "summary.md").exists()


class LitRegressor(L.LightningModule):
    """A LightningModule written the way Lightning's docs teach: training_step returns the loss, and
    configure_optimizers picks the optimizer (SGD that records its gradient norms) and a StepLR."""

    def __init__(self, in_features: int, out_features: int, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        optimizer = RecordingSGD(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 100, 0.5)}


DOCS_MODEL = ("~model.net", "~model.tasks", "~model.loss", "model._target_=tests.test_extend.LitRegressor")


def test_a_lightning_module_as_the_docs_teach_trains_exactly_what_was_asked(cfg_factory):
    """250 epochs, StepLR(100, 0.5) of its own, clipping at 1 on unscaled inputs; then max_steps=50."""
    RecordingSGD.norms = []
    common = (
        *DOCS_MODEL,
        "trainer=cpu",
        "data.scaling=none",
        "+model.lr=1e-4",
        "+trainer.gradient_clip_val=1.0",
    )
    cfg = cfg_factory(*common, "trainer.max_epochs=250")
    train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 250 and events(cfg.paths.output_dir).Scalars("train/loss")[-1].step == 249
    [scheduler] = ckpt["lr_schedulers"]
    assert scheduler["last_epoch"] == 250 and scheduler["_last_lr"] == [pytest.approx(1e-4 / 4)]
    assert len(RecordingSGD.norms) == 250 and max(RecordingSGD.norms) <= 1.0 + 1e-5
    hp, _ = hparams_session(events(cfg.paths.output_dir))  # the template's optimizer is not the one it used
    assert not [k for k in hp if k.startswith(("optimizer", "scheduler"))] and hp["model"] is not None
    cfg = cfg_factory(*common, "+trainer.max_steps=50")
    cfg.paths.output_dir = str(Path(cfg.paths.output_dir).parent / "capped")
    Path(cfg.paths.output_dir).mkdir()
    train(cfg)
    assert torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")["global_step"] == 50


def test_a_docs_style_module_gets_pictures_eval_and_predict(tmp_path):
    """forward and the data's task are enough: no predictions, loss or metric_names of its own."""
    from litlab.inference import evaluate, predict
    from tests.test_inference import compose_entry

    train(compose_train(tmp_path, *DOCS_MODEL, "trainer=cpu", "trainer.max_epochs=30", "+model.lr=0.05"))
    run = tmp_path / "run"
    assert (run / "fit.gif").stat().st_size > 0
    assert {"fit/line", "params/layer.weight"} <= set(events(run).Tags()["images"]) | set(
        events(run).Tags()["histograms"]
    )
    recorded = json.loads((run / "metrics.json").read_text())["metrics"]
    assert evaluate(compose_entry(tmp_path, "eval", f"ckpt_path={run}")) == {"val/loss": recorded["val/loss"]}
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    w, b = state["layer.weight"].item(), state["layer.bias"].item()
    table = predict(compose_entry(tmp_path, "predict", f"ckpt_path={run}", "inputs=[[81.9]]"))
    shift, scale = (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["data"][k][0]
        for k in ("x_shift", "x_scale")
    )
    assert table["prediction"][0] == pytest.approx(w * (81.9 - shift) / scale + b, rel=1e-5)


def test_what_a_docs_style_module_cannot_take_is_refused_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "docs.yaml").write_text("_target_: tests.test_extend.LitRegressor\n")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    ours = (f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=docs", "trainer=cpu")
    for typed, message in (
        ("optimizer=adam", "error: optimizer=adam: model=docs takes no optimizer argument"),
        ("stepping=fast", "error: LitRegressor does not take fast steps (no fast_steps attribute)"),
    ):
        proc = run_train(tmp_path, *ours, typed, check=False)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr


class Branchy(LitRegressor):
    """Its forward branches on the values it gets: torch.export cannot trace that into one program."""

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x) if float(x.sum()) > 0 else -self.layer(x)


def test_a_module_that_cannot_be_exported_is_refused_in_one_line_naming_the_cause(tmp_path):
    from litlab.errors import ConfigError
    from litlab.inference import export
    from tests.test_inference import compose_entry

    model = ("~model.net", "~model.tasks", "~model.loss", "model._target_=tests.test_extend.Branchy")
    train(compose_train(tmp_path, *model, "trainer=cpu", "trainer.max_epochs=2"))
    with pytest.raises(ConfigError) as refused:
        export(compose_entry(tmp_path, "export", f"ckpt_path={tmp_path / 'run'}"))
    message = str(refused.value)
    assert message.startswith("Branchy cannot be exported (") and "\n" not in message, message
    assert not (tmp_path / "run" / "model.pt2").exists()
