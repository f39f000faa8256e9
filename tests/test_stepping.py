"""Fast stepping keeps every setting's meaning (epochs, max_steps, clipping, schedulers) or refuses it."""

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loops.optimization.manual import _ManualOptimization
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

from litlab.errors import ConfigError
from litlab.train import train
from tests.conftest import CONF, SHARED_DATA, run_train
from tests.test_train import events, hparams_session

FAST = ("stepping=fast", "stepping.epochs=20", "stepping.batches=2")
# data for each task: (overrides, minibatch size)
TASK_DATA = {
    "regression": (("data=regression", "data.preset=points30"), 8),
    "binary": (("data=classification", "data.n=300"), 64),
    "multiclass": (("data=wine", "data.target=quality"), 1024),
}


def model_tasks() -> list[tuple[str, str]]:
    """(model option, task) for every model in conf/model and every task it fits."""
    from omegaconf import OmegaConf

    pairs = []
    for path in sorted((CONF / "model").glob("*.yaml")):
        pairs += [(path.stem, task) for task in OmegaConf.load(path).tasks]
    return pairs


def run(cfg_factory, *overrides: str) -> tuple[dict, dict, object]:
    """(metrics.json's metrics, last.ckpt, the run's TensorBoard events) of one in-process run."""
    cfg = cfg_factory("trainer=cpu", *overrides)
    train(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    return metrics, torch.load(out / "checkpoints" / "last.ckpt", weights_only=True), events(out)


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["full", "minibatch"])
@pytest.mark.parametrize(("model", "task"), model_tasks())
def test_every_model_trains_exactly_max_epochs_in_either_stepping(cfg_factory, model, task, batch):
    """70 epochs, validation every 30; fast steps of 15 epochs (the largest divisor of 30 up to 20) or
    groups of 2 minibatches: the same optimizer steps, logs and metrics as one step per Lightning step."""
    data, size = TASK_DATA[task]
    if "data=wine" in data and not SHARED_DATA.is_dir():
        pytest.skip(f"real data files not in {SHARED_DATA}")
    common = (
        *data, f"model={model}", "optimizer=adam", "trainer.max_epochs=70",
        "trainer.check_val_every_n_epoch=30", f"data.batch_size={size if batch == 'minibatch' else 'null'}",
    )  # fmt: skip
    runs = [run(cfg_factory, *common, "stepping=lightning"), run(cfg_factory, *common, *FAST)]
    for _, ckpt, acc in runs:
        steps = ckpt["global_step"]
        assert steps % 70 == 0 and hparams_session(acc)[0]["epochs"] == 70
        assert acc.Scalars("train/loss")[-1].step == steps - 1  # TensorBoard's x-axis: optimizer steps
        per_epoch = steps // 70
        assert [e.step for e in acc.Scalars("val/loss")][:2] == [30 * per_epoch - 1, 60 * per_epoch - 1]
    (lightning, l_ckpt, _), (fast, f_ckpt, _) = runs
    assert l_ckpt["global_step"] == f_ckpt["global_step"]
    assert fast == pytest.approx(lightning, rel=1e-5)  # the same maths


def test_lightning_still_reads_the_counters_that_fast_steps_credit():
    """credit_optimizer_steps (src/litlab/stepping.py) adds to Lightning's private step counters. This fails
    when an upgrade stops reading them: global_step from the manual loop's optim_step_progress, the logging
    step from the epoch loop's _batches_that_stepped."""
    global_step = inspect.getsource(_TrainingEpochLoop.global_step.fget)
    assert "manual_optimization.optim_step_progress.total.completed" in global_step
    assert "epoch_loop._batches_that_stepped" in inspect.getsource(_LoggerConnector.log_metrics)
    assert "optim_step_progress" in inspect.getsource(_ManualOptimization.__init__)


@pytest.mark.slow
@pytest.mark.parametrize("stepping", [("stepping=lightning",), FAST])
def test_max_steps_is_exact(cfg_factory, stepping):
    for data in (("data.batch_size=null",), ("data.batch_size=8",)):
        _, ckpt, acc = run(
            cfg_factory, "data=regression", "data.preset=points30", "+trainer.max_steps=50", *data, *stepping
        )
        assert ckpt["global_step"] == 50 and acc.Scalars("train/loss")[-1].step == 49


class RecordingSGD(torch.optim.SGD):
    """SGD that records the gradient norm each step is taken with."""

    norms: list[float] = []

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None  # Lightning's closure computes the gradients
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        RecordingSGD.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        super().step()
        return loss


@pytest.mark.slow
def test_gradient_clipping_applies_to_every_optimizer_step(cfg_factory):
    """Unscaled t_u at lr 1e-4: gradients in the thousands; clipped at 1 in every step, fast or not."""
    weights = []
    for stepping in (("stepping=lightning",), FAST):
        RecordingSGD.norms = []
        _, ckpt, _ = run(
            cfg_factory, "data.scaling=none", "optimizer._target_=tests.test_stepping.RecordingSGD",
            "optimizer.lr=1e-4", "trainer.max_epochs=300", "+trainer.gradient_clip_val=1.0", *stepping,
        )  # fmt: skip
        assert len(RecordingSGD.norms) == 300 and max(RecordingSGD.norms) <= 1.0 + 1e-5
        weights.append(ckpt["state_dict"]["net.weight"])
    torch.testing.assert_close(weights[0], weights[1])


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["null", "8"])
@pytest.mark.parametrize("stepping", [("stepping=lightning",), FAST])
def test_step_scheduler_halves_lr_every_100_data_epochs(cfg_factory, batch, stepping):
    """StepLR(100, 0.5) over 250 epochs ends at 0.01 / 4, whatever the batch size and stepping."""
    metrics, ckpt, acc = run(
        cfg_factory, "data=regression", "data.preset=points30", f"data.batch_size={batch}",
        "scheduler=step", "scheduler.step_size=100", "scheduler.gamma=0.5", "trainer.max_epochs=250",
        *stepping,
    )  # fmt: skip
    [scheduler] = ckpt["lr_schedulers"]
    assert scheduler["last_epoch"] == 250 and scheduler["_last_lr"] == [0.0025]
    per_epoch = ckpt["global_step"] // 250
    lr = {e.step // per_epoch + 1: e.value for e in acc.Scalars("lr")}  # data epoch -> its learning rate
    assert (
        lr[100] == pytest.approx(0.01)
        and lr[150] == pytest.approx(0.005)
        and lr[250] == pytest.approx(0.0025)
    )


@pytest.mark.slow
@pytest.mark.parametrize("stepping", [("stepping=lightning",), FAST])
def test_onecycle_spans_exactly_the_runs_optimizer_steps(cfg_factory, stepping):
    for batch in ("null", "8"):
        _, ckpt, _ = run(
            cfg_factory, "data=regression", "data.preset=points30", f"data.batch_size={batch}",
            "scheduler=onecycle", "trainer.max_epochs=40", *stepping,
        )  # fmt: skip
        [scheduler] = ckpt["lr_schedulers"]
        assert scheduler["total_steps"] == scheduler["last_epoch"] == ckpt["global_step"]


REFUSED = [
    ("+trainer.accumulate_grad_batches=4", "trainer.accumulate_grad_batches=4 cannot be honoured"),
    ("+trainer.val_check_interval=0.5", "trainer.val_check_interval=0.5 cannot be honoured"),
    ("+trainer.limit_train_batches=0.5", "trainer.limit_train_batches=0.5"),
    ("+trainer.overfit_batches=1", "trainer.overfit_batches=1"),
    ("+trainer.reload_dataloaders_every_n_epochs=1", "trainer.reload_dataloaders_every_n_epochs=1"),
    ("trainer.precision=16-mixed", "fp16's gradient scaler"),
    ("trainer=ddp", "trainer.devices=2, num_nodes=1, strategy=ddp_spawn cannot be honoured"),
    (
        "+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging",
        "swaps in a learning-rate",
    ),
    ("+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging", "hooks on_train_batch_end"),
    (
        "+callbacks.timer._target_=lightning.pytorch.callbacks.LearningRateMonitor",
        "hooks on_train_batch_start",
    ),
]


@pytest.mark.parametrize(("override", "message"), REFUSED)
def test_what_fast_stepping_cannot_honour_is_refused(cfg_factory, override, message):
    extra = ("+callbacks.swa.swa_lrs=0.01",) if "swa" in override else ()
    with pytest.raises(ConfigError, match=message) as error:
        train(cfg_factory("trainer=cpu", "stepping=fast", override, *extra))
    assert str(error.value).endswith("add stepping=lightning (one optimizer step per Lightning step)")


@pytest.mark.slow
def test_a_refusal_is_one_line_and_lightning_stepping_honours_the_setting(tmp_path):
    proc = run_train(
        tmp_path, "experiment=book_temperature", "+trainer.accumulate_grad_batches=4", check=False
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: trainer.accumulate_grad_batches=4 cannot be honoured under stepping=fast (it accumulates "
        "over Lightning steps): add stepping=lightning (one optimizer step per Lightning step)"
    ]
    run_train(
        tmp_path, "data=regression", "data.preset=points30", "data.batch_size=8", "trainer.max_epochs=4",
        "+trainer.accumulate_grad_batches=3", "task_name=accumulated",
    )  # fmt: skip
    [ckpt] = (tmp_path / "logs" / "accumulated").rglob("last.ckpt")
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4  # 3 minibatches an epoch, one step
    assert math.isfinite(json.loads((ckpt.parent.parent / "metrics.json").read_text())["metrics"]["val/loss"])


def test_a_combination_lightning_refuses_is_one_line(cfg_factory):
    """barebones=True excludes checkpoints, loggers and callbacks: Lightning's own refusal, as one line."""
    with pytest.raises(
        ConfigError, match=r"Lightning refuses these trainer settings: `Trainer\(barebones=True"
    ):
        train(cfg_factory("trainer=cpu", "+trainer.barebones=true"))
