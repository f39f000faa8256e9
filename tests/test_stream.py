"""Tables bigger than memory: data=table data.stream=true streams Parquet row groups, with exact split sizes,
bounded memory, the exact optimum by streaming, shards per worker and rank, and exact resume."""

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from pyarrow import csv, parquet

from litlab.checkpoints import load
from litlab.data.contract import choose_task
from litlab.data.stream import StreamedTable, TableStream, split_labels, thresholds
from litlab.data.table import TableData
from litlab.errors import ConfigError
from litlab.train import train
from scripts.make_table import write_table
from tests.conftest import compose_train, run_dirs, run_train, train_command
from tests.signal_at import signal_at
from tests.test_checkpoints import assert_same_run
from tests.test_train import events


def streamed(path, **kwargs) -> StreamedTable:
    data = TableData(path=str(path), target="y", stream=True, **kwargs)
    choose_task(data, ["regression", "binary", "multiclass"])
    data.setup()
    return data


def test_hash_splits_have_the_sizes_of_the_in_memory_split_and_any_chunking():
    n, seed = 100_003, 7
    t1, t2 = thresholds(n, seed, (20_001, 10_000), chunk=4096)
    labels = split_labels(("hash", seed, t1, t2), 0, n)
    assert np.bincount(labels).tolist() == [70_002, 20_001, 10_000]
    pieces = np.concatenate(
        [split_labels(("hash", seed, t1, t2), s, min(999, n - s)) for s in range(0, n, 999)]
    )
    assert np.array_equal(labels, pieces)  # a row's split is its own, whatever the row groups
    other = split_labels(("hash", seed + 1, *thresholds(n, seed + 1, (20_001, 10_000))), 0, n)
    assert (other != labels).mean() > 0.3  # another seed, another split


def test_workers_and_ranks_get_disjoint_row_groups_and_ranks_as_many_batches(tmp_path):
    write_table(tmp_path / "t.parquet", 20_000, 3, group_rows=700)
    data = streamed(tmp_path / "t.parquet", batch_size=256, shuffle_buffer=2000)
    dealt = {}
    for rank in range(2):
        stream = TableStream(data, 0, epoch=3, rank=rank, world=2, workers=3)
        dealt[rank] = [u for fills in stream.deal(rank) for fill in fills for u in fill]
        assert len(stream) == min(sum(TableStream(data, 0, 3, r, 2, 3).caps()) for r in range(2))
    assert not set(dealt[0]) & set(dealt[1])
    assert sorted(dealt[0] + dealt[1]) == [u for u in range(len(data.units)) if data.counts[u, 0]]
    assert len(TableStream(data, 0, 3, 0, 2, 3)) == len(TableStream(data, 0, 3, 1, 2, 3))


def test_a_streamed_epoch_serves_every_training_row_once_in_a_new_order(tmp_path):
    write_table(tmp_path / "t.parquet", 10_000, 2, group_rows=500)
    data = streamed(tmp_path / "t.parquet", batch_size=300, shuffle_buffer=1200, scaling="none")
    epochs = []
    for epoch in (0, 1):
        rows = torch.cat([x for x, _ in TableStream(data, 0, epoch, 0, 1, 1)])
        epochs.append(rows)
    whole = parquet.read_table(tmp_path / "t.parquet")
    keep = split_labels(data.split, 0, whole.num_rows) == 0
    expected = np.sort(whole.column("f0").to_numpy()[keep])
    assert len(epochs[0]) == data.counts[:, 0].sum() == keep.sum()
    assert np.array_equal(np.sort(epochs[0][:, 0].numpy()), expected)
    assert not torch.equal(epochs[0], epochs[1]) and np.array_equal(
        np.sort(epochs[1][:, 0].numpy()), expected
    )


def test_the_same_table_streamed_and_in_memory(tmp_path):
    """The same split sizes (other rows: a hash of the row index, not memory's permutation), the training
    rows' statistics exact (float64 over the stream), and final metrics within 1%: the rows split and the
    minibatches (row groups and a buffer, not a full permutation) differ, and 20 epochs of SGD end at the
    same optimum."""
    write_table(tmp_path / "t.parquet", 20_000, 4, group_rows=1000)
    common = ("data=table", f"data.path={tmp_path / 't.parquet'}", "data.target=y", "data.batch_size=256")
    common = (
        *common,
        "trainer=cpu",
        "trainer.max_epochs=20",
        "trainer.check_val_every_n_epoch=5",
        "callbacks=none",
    )
    metrics = {}
    for stream in ("true", "false"):
        cfg = compose_train(tmp_path / stream, *common, f"data.stream={stream}", "data.shuffle_buffer=4000")
        train(cfg)
        metrics[stream] = json.loads((tmp_path / stream / "run" / "metrics.json").read_text())["metrics"]
    memory = TableData(path=str(tmp_path / "t.parquet"), target="y", stream=False)
    memory.setup()
    stream = streamed(tmp_path / "t.parquet")
    assert [len(memory.splits[s][0]) for s in ("train", "val")] == stream.counts.sum(0)[:2].tolist()
    whole = parquet.read_table(tmp_path / "t.parquet")
    x = np.column_stack([whole.column(f"f{i}").to_numpy() for i in range(4)]).astype(np.float64)
    x = x[split_labels(stream.split, 0, whole.num_rows) == 0]
    np.testing.assert_allclose(stream.x_shift.numpy(), x.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(stream.x_scale.numpy(), x.std(0, ddof=1), rtol=1e-6)
    for key in ("val/loss", "train/loss", "val/r2"):
        assert metrics["true"][key] == pytest.approx(metrics["false"][key], rel=1e-2), key


@pytest.mark.slow
def test_linear_reaches_the_streamed_optimum_and_logistic_a_reference(tmp_path):
    """The optimum from float64 normal equations summed over the stream; logistic's reference here from
    L-BFGS on the whole table (the run skips it: streamed data has no split in memory)."""
    write_table(tmp_path / "r.parquet", 20_000, 8, group_rows=2000)
    write_table(tmp_path / "b.parquet", 20_000, 8, task="binary", group_rows=2000)
    common = ("data=table", "data.target=y", "data.stream=true", "data.batch_size=1024", "optimizer=adam")
    common = (*common, "trainer=cpu", "trainer.max_epochs=20", "trainer.check_val_every_n_epoch=10")
    train(compose_train(tmp_path / "r", *common, f"data.path={tmp_path / 'r.parquet'}", "optimizer.lr=0.05"))
    final = json.loads((tmp_path / "r" / "run" / "metrics.json").read_text())["metrics"]
    assert final["train/gap"] < 0.01 * final["train/optimum_loss"]
    assert final["train/optimum_loss"] == pytest.approx(0.25, rel=0.03)  # the noise's variance
    train(compose_train(tmp_path / "b", *common, f"data.path={tmp_path / 'b.parquet'}", "model=logistic"))
    final = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())["metrics"]
    data = TableData(path=str(tmp_path / "b.parquet"), target="y", stream=False)
    choose_task(data, ["binary"])
    data.setup()
    x, y = data.splits["train"]
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        reference = float(torch.nn.functional.binary_cross_entropy_with_logits(model(x), y))
    assert final["train/loss"] == pytest.approx(reference, rel=1e-2)


def peak_rss_mb(tmp_path, path, name: str) -> float:
    """The peak RSS of `python train.py` streaming `path` for one epoch, in a process of its own."""
    command = train_command(
        tmp_path / name, "data=table", f"data.path={path}", "data.target=y", "data.stream=true"
    )
    command += ["data.batch_size=4096", "data.shuffle_buffer=32768", "trainer=cpu", "trainer.max_epochs=1"]
    (tmp_path / name).mkdir()
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *command], cwd=tmp_path / name, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1]) / 1024


@pytest.mark.slow
def test_peak_memory_stays_flat_as_the_table_grows(tmp_path):
    """38 MB and 154 MB of values: the larger run's peak RSS within 30 MB of the smaller's (in memory it
    would grow by at least the 116 MB of values added). bench row (h) measures 1e7 and 4e7 rows."""
    write_table(tmp_path / "small.parquet", 300_000, 31, group_rows=1 << 15)
    write_table(tmp_path / "large.parquet", 1_200_000, 31, group_rows=1 << 15)
    small = peak_rss_mb(tmp_path, tmp_path / "small.parquet", "s")
    large = peak_rss_mb(tmp_path, tmp_path / "large.parquet", "l")
    assert large - small < 30, (small, large)


@pytest.mark.slow
@pytest.mark.parametrize("stepping", [("stepping=lightning",), ("stepping=fast", "stepping.batches=3")])
def test_sigterm_mid_epoch_with_two_workers_resumes_to_the_weights_of_an_unbroken_run(tmp_path, stepping):
    """38 batches an epoch; under stepping=fast a Lightning step holds up to 3 of a fill."""
    write_table(tmp_path / "t.parquet", 12_000, 4, group_rows=500)
    args = ("data=table", f"data.path={tmp_path / 't.parquet'}", "data.target=y", "data.stream=true")
    args = (*args, "data.batch_size=256", "data.shuffle_buffer=2000", "data.num_workers=2", "optimizer=adam")
    args = (*args, "trainer=cpu", "trainer.max_epochs=4", "callbacks.last_checkpoint.every_s=0", *stepping)
    args = (*args, "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.8")  # steps at epochs' ends
    with pytest.raises(SystemExit, match="^error: stopped by SIGTERM after "):
        train(compose_train(tmp_path, *args, *signal_at("SIGTERM", "on_train_batch_end", 2, 5)))
    run = tmp_path / "run"
    assert 2 * 38 < load(run / "checkpoints" / "last.ckpt")["global_step"] < 3 * 38  # inside epoch 3
    time.sleep(1.0)  # the resume's event file sorts after the first (tests/test_checkpoints.py)
    train(compose_train(tmp_path / "elsewhere", f"resume={run}"))
    train(compose_train(tmp_path / "unbroken", *args))
    assert_same_run(run, tmp_path / "unbroken" / "run")


@pytest.mark.parametrize("workers", [0, 2])
def test_fast_stepping_on_a_stream_takes_the_same_steps_bit_for_bit(tmp_path, workers):
    """stepping=fast takes up to 3 batches of a fill a Lightning step (fills of 5 row groups: 8 batches, the
    last one shorter); the weights end bit for bit as with one batch a step, StepLR stepping at each epoch's
    end; OneCycleLR spans the run's optimizer steps exactly (each epoch's own count: the fills differ)."""
    write_table(tmp_path / "t.parquet", 12_000, 4, group_rows=500)
    args = ("data=table", f"data.path={tmp_path / 't.parquet'}", "data.target=y", "data.stream=true")
    args = (*args, "data.batch_size=256", "data.shuffle_buffer=2000", f"data.num_workers={workers}")
    args = (*args, "trainer=cpu", "trainer.max_epochs=3", "logger=csv", "callbacks.last_checkpoint.every_s=0")
    steppings = {"lightning": ("stepping=lightning",), "fast": ("stepping=fast", "stepping.batches=3")}
    ckpts = {}
    for name, stepping in steppings.items():
        root = tmp_path / name
        scheduler = ("scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5")
        train(compose_train(root, *args, *stepping, *scheduler))
        ckpts[name] = load(root / "run" / "checkpoints" / "last.ckpt")
    assert ckpts["fast"]["global_step"] == ckpts["lightning"]["global_step"]
    for key, value in ckpts["lightning"]["state_dict"].items():
        assert torch.equal(ckpts["fast"]["state_dict"][key], value), key
    assert [c["lr_schedulers"][0]["_last_lr"] for c in ckpts.values()] == [[0.01 / 8]] * 2
    train(compose_train(tmp_path / "onecycle", *args, *steppings["fast"], "scheduler=onecycle"))
    ckpt = load(tmp_path / "onecycle" / "run" / "checkpoints" / "last.ckpt")
    [scheduler] = ckpt["lr_schedulers"]
    assert scheduler["total_steps"] == scheduler["last_epoch"] == ckpt["global_step"]


@pytest.mark.slow
def test_ddp_streams_disjoint_shards_and_ends_near_one_process(tmp_path):
    """Two ranks, each its own row groups and as many batches; DDP averages two batches of 512 where one
    process steps on one: after 10 epochs both are at the optimum, within 1%."""
    write_table(tmp_path / "t.parquet", 12_000, 4, group_rows=1000)
    common = ("data=table", f"data.path={tmp_path / 't.parquet'}", "data.target=y", "data.stream=true")
    common = (*common, "data.batch_size=512", "optimizer=adam", "optimizer.lr=0.05", "trainer.max_epochs=10")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    run_train(tmp_path / "one", *common, "trainer=cpu")
    run_train(tmp_path / "two", *common, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")
    metrics = [
        json.loads((r / "metrics.json").read_text())["metrics"]
        for r in (*run_dirs(tmp_path / "one"), *run_dirs(tmp_path / "two"))
    ]
    assert metrics[1]["val/loss"] == pytest.approx(metrics[0]["val/loss"], rel=1e-2)


@pytest.mark.slow
def test_a_streamed_csv_is_converted_once_and_eval_and_predict_use_the_run(tmp_path):
    write_table(tmp_path / "t.parquet", 5_000, 3)
    csv.write_csv(parquet.read_table(tmp_path / "t.parquet"), tmp_path / "t.csv")
    run_train(
        tmp_path,
        "data=table",
        f"data.path={tmp_path / 't.csv'}",
        "data.target=y",
        "data.stream=true",
        "trainer=cpu",
        "trainer.max_epochs=3",
    )
    assert (tmp_path / "t.csv.parquet").is_file()
    [run] = run_dirs(tmp_path)
    final = json.loads((run / "metrics.json").read_text())["metrics"]
    run_train(tmp_path, f"ckpt_path={run}", script="eval.py")
    [evaluated] = [json.loads(p.read_text()) for p in (tmp_path / "logs" / "eval").rglob("metrics.json")]
    assert evaluated["metrics"] == {k: v for k, v in final.items() if k.startswith("val/")}
    assert "fit/predicted_vs_actual" in events(run).Tags()["images"]
    # predict.py: raw inputs, normalised with the stream's float64 statistics kept in the checkpoint
    proc = run_train(tmp_path, f"ckpt_path={run}", "inputs=[[0.5, -1.0, 2.0]]", script="predict.py")
    ckpt = load(run / "checkpoints" / "last.ckpt")
    shift, scale = (torch.tensor(ckpt["data"][k]) for k in ("x_shift", "x_scale"))
    x = (torch.tensor([[0.5, -1.0, 2.0]]) - shift) * scale.reciprocal()
    expected = x @ ckpt["state_dict"]["net.weight"].T + ckpt["state_dict"]["net.bias"]
    assert float(proc.stdout.split()[-1]) == pytest.approx(float(expected), rel=1e-5)


def test_bad_cells_of_a_streamed_table_are_one_line(tmp_path):
    columns = pa.table({"x": [1.0, 2.0, float("nan"), 4.0] * 5, "y": [1.0, 2.0, 3.0, 4.0] * 5})
    parquet.write_table(columns, tmp_path / "t.parquet", row_group_size=7)
    with pytest.raises(ConfigError, match=r"t.parquet, row 3, column 'x': nan is not a finite number"):
        streamed(tmp_path / "t.parquet")
    with pytest.raises(ConfigError, match="data.target=z is not a column of"):
        TableData(path=str(tmp_path / "t.parquet"), target="z", stream=True).offered()
    parquet.write_table(pa.table({"x": [1.0, 2.0] * 10, "y": ["a"] * 20}), tmp_path / "one.parquet")
    with pytest.raises(ConfigError, match="its multiclass target has one class in all 20 rows"):
        streamed(tmp_path / "one.parquet")


def test_auto_s_choice_is_recorded_so_a_resume_reads_the_run_alike(tmp_path, monkeypatch):
    """Streamed because memory was short when the run started: config.yaml says stream: true, and the
    resume streams again with memory to spare (reading it whole would resume other loaders' state)."""
    write_table(tmp_path / "t.parquet", 2000, 3)
    args = ("data=table", f"data.path={tmp_path / 't.parquet'}", "data.target=y", "data.batch_size=256")
    monkeypatch.setattr("litlab.data.table.memory_free", lambda: 40_000)
    train(compose_train(tmp_path, *args, "trainer=cpu", "trainer.max_epochs=2"))
    assert "stream: true" in (tmp_path / "run" / "config.yaml").read_text()
    monkeypatch.undo()  # the resume, in a process of its own, has memory to spare
    proc = run_train(tmp_path, f"resume={tmp_path / 'run'}", "trainer.max_epochs=3")
    assert "streamed (data.stream=true" in proc.stdout + proc.stderr
    assert load(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 3 * 7


def test_auto_streams_a_file_larger_than_a_quarter_of_the_memory_free(tmp_path, monkeypatch):
    write_table(tmp_path / "t.parquet", 1000, 3)  # 16 kB of float32 values
    assert type(TableData(path=str(tmp_path / "t.parquet"), target="y")) is TableData
    monkeypatch.setattr("litlab.data.table.memory_free", lambda: 40_000)
    data = TableData(path=str(tmp_path / "t.parquet"), target="y")
    assert type(data) is StreamedTable and data.why.startswith(
        "data.stream=auto: 0.0 GB of values > a quarter"
    )
    assert type(TableData(path=str(tmp_path / "t.parquet"), target="y", stream=False)) is TableData
    with pytest.raises(ConfigError, match="data.stream='maybe' is not one of auto, true, false"):
        TableData(path=str(tmp_path / "t.parquet"), target="y", stream="maybe")
