"""make bench: the template against plain PyTorch, side by side in one run, on this machine.

(a) the book's temperature fit through train.py's training path vs a plain loop (5000 epochs each);
(b) an epoch of minibatch SGD on a generated 2,000,000 x 64 regression at batch 8192 (the median of 5
    epochs, over 5 alternating rounds), with memory bandwidth and peak RSS;
(c) start-up of `python train.py` for one step vs `import lightning`;
(d) a 27-job sweep through `train.py -m` vs a plain script doing the same 27 fits;
(e) cost growth with size: generated regression at 1e4 ... 1e7 rows x 64, samples/s and peak RSS, and the
    whole one-epoch run at 1e7 rows beside a plain script's;
(f) a 20-trial Optuna search on the book fit (hparams_search=optimizers, two trials at a time), with the
    median pruner vs without: wall time and the best loss each reached;
(g) how long a mistake (and --help) takes to answer: `python train.py <mistake>`, wall seconds;
(h) a 1e7 x 64 float32 Parquet file streamed (data=table data.stream=true stepping=fast) for one epoch at
    batch 8192 and a shuffle buffer of 1M rows vs a plain loop reading it with pyarrow alike (3 alternating
    rounds), and the template's peak RSS at 1e7 and 4e7 rows (the files written by scripts/make_table.py);
(i) torch's threads: the book fit, an MLP on wine and (b) through train.py with 1 thread, torch's default
    and threads=auto, on a quiet machine and with every core kept busy by another process (2 rounds).
Prints a Markdown table of medians and ratios and saves it (default logs/bench.md).
"""

import argparse
import inspect
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from litlab.data.files import FILES
from litlab.data.temperature import T_C, T_U

ROOT = Path(__file__).resolve().parents[1]
# (a) to (e) compare the loops at one thread count, torch's default here (the plain loops' own): row (i)
# measures threads=auto, which follows the load of the moment and would make these rows measure it instead.
THREADS = torch.get_num_threads()
BOOK_LOSS = 2.927647
# (b): the median of 5 epochs, a typical one: the template's first pays one-off set-up, its last the
# training metrics over every minibatch (logged at the end of training)
N, D, BATCH, EPOCHS = 2_000_000, 64, 8192, 5
# (b)'s alternating rounds, each side in a fresh interpreter: one alone swings by +-10% here
B_ROUNDS = 5
SWEEP = ["optimizer=sgd,adam,rmsprop", "optimizer.lr=1e-3,1e-2,1e-1", "seed=0,1,2"]
SWEEP_ROUNDS = 2  # (d) and (f): alternating rounds, for their spread


def compose(root: Path, *overrides: str):
    """The config `python train.py <overrides>` runs, with its run directory below root."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={root}", *overrides])
    cfg.paths.output_dir = str(root / "run")
    (root / "run").mkdir(parents=True)
    return cfg


def plain_book(epochs: int = 5000, optimizer: str = "SGD", lr: float = 1e-2) -> float:
    """The book's training loop: t_un = 0.1 * t_u, w = 1, b = 0, full batch."""
    t_u, t_c = torch.tensor(T_U).unsqueeze(1) * 0.1, torch.tensor(T_C).unsqueeze(1)
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    opt = getattr(torch.optim, optimizer)(model.parameters(), lr=lr)
    for _ in range(epochs):
        loss = torch.nn.functional.mse_loss(model(t_u), t_c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def bench_book(repeats: int) -> dict:
    """(a): median wall time of the whole train(cfg) call vs the plain loop, alternating; and the lowest and
    highest ratio of a round."""
    from litlab.train import train

    template, plain = [], []
    for i in range(repeats + 1):  # the first round warms up both
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose(Path(tmp), "experiment=book_temperature", "trainer=cpu", f"threads={THREADS}")
            t_seconds, t_loss = timed(train, cfg)
        p_seconds, p_loss = timed(plain_book)
        assert round(t_loss, 6) == round(p_loss, 6) == BOOK_LOSS, (t_loss, p_loss)
        if i:
            template.append(t_seconds)
            plain.append(p_seconds)
    return {
        "template_s": statistics.median(template),
        "plain_s": statistics.median(plain),
        "loss": t_loss,
        "spread": spread(template, plain),
    }


def spread(template: list[float], plain: list[float]) -> tuple[float, float]:
    """The lowest and highest template/plain ratio of alternating rounds: whether a row is inside its target
    or only inside the noise."""
    ratios = [t / p for t, p in zip(template, plain, strict=True)]
    return min(ratios), max(ratios)


class EpochClock(Callback):
    """A callback that times each Lightning epoch (the bench adds it through the config), per data epoch:
    under fast stepping on small data one holds several data epochs, and the last one of a run may hold
    fewer than the others."""

    fast_steps_aware = True
    seconds: list[float] = []  # each Lightning epoch's seconds per data epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.steps = time.perf_counter(), trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from litlab.stepping import stepper

        fast = stepper(trainer)  # under stepping=lightning a Lightning epoch is one data epoch
        fused = fast is not None and fast.epochs_per_step
        data_epochs = (trainer.global_step - self.steps) / fast.nb if fused else 1
        EpochClock.seconds.append((time.perf_counter() - self.start) / data_epochs)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def big_template(n: int, epochs: int, shuffle: str) -> dict:
    """(b), (e) through train(): generated n x 64 regression, minibatch SGD at batch 8192, stepping=fast."""
    from litlab.train import train

    base = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            Path(tmp),
            "data=regression",
            "data.preset=generated",
            f"data.n={n}",
            f"data.features={D}",
            f"data.batch_size={BATCH}",
            f"data.shuffle={shuffle}",
            "data.val_fraction=0",
            "data.scaling=none",
            "optimized_metric=train/loss",
            "stepping=fast",
            "trainer=cpu",
            f"trainer.max_epochs={epochs}",
            f"threads={THREADS}",
            "+callbacks.clock._target_=__main__.EpochClock",
        )
        train(cfg)
    return {
        "seconds": statistics.median(EpochClock.seconds),
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base,
    }


def big_plain(n: int, epochs: int, shuffle: str) -> dict:
    """(b), (e) as a plain loop doing the same: rows, a new permutation of the rows every epoch, gathered
    minibatch by minibatch; batches, contiguous slices in a new order every epoch."""
    from litlab.data.regression import generate

    base = rss_mb()
    x, y = generate(n, D, 0.5, "regression", seed=42)
    model = torch.nn.Linear(D, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(epoch)
        if shuffle == "rows":
            takes = torch.randperm(n, generator=generator).split(BATCH)
        else:
            order = torch.randperm(-(-n // BATCH), generator=generator).tolist()
            takes = [slice(i * BATCH, (i + 1) * BATCH) for i in order]
        for take in takes:
            loss = torch.nn.functional.mse_loss(model(x[take]), y[take])
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    return {"seconds": statistics.median(seconds), "peak_rss_mb": rss_mb(), "base_rss_mb": base}


# (h): the streamed table's shuffle buffer (rows) and sizes
STREAM_BUFFER, STREAM_SIZES = 1_000_000, (10_000_000, 40_000_000)


def stream_template(path: str) -> dict:
    """(h) one epoch of the file streamed through train(): data=table data.stream=true, linear regression,
    SGD, stepping=fast, nothing held out, no input scaling (as the plain loop)."""
    from litlab.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            Path(tmp),
            "data=table",
            f"data.path={path}",
            "data.target=y",
            "data.stream=true",
            f"data.batch_size={BATCH}",
            f"data.shuffle_buffer={STREAM_BUFFER}",
            "data.val_fraction=0",
            "data.scaling=none",
            "optimized_metric=train/loss",
            "trainer=cpu",
            "trainer.max_epochs=1",
            "stepping=fast",
            "+callbacks.clock._target_=__main__.EpochClock",
        )
        train(cfg)
    return {"seconds": EpochClock.seconds[-1], "peak_rss_mb": rss_mb()}


def stream_plain(path: str) -> dict:
    """(h) a plain loop over the same file: its row groups in a seeded order, read with pyarrow into
    [features, rows] float32 fills of at least the buffer, each permuted and stepped through in batches."""
    import numpy as np
    from pyarrow import parquet

    table = parquet.ParquetFile(path)
    features = table.schema_arrow.names[:-1]
    model = torch.nn.Linear(len(features), 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    fill, held = [], 0
    for group in [*torch.randperm(table.num_row_groups, generator=generator).tolist(), None]:
        if group is not None:
            rows = table.read_row_group(group)
            fill.append(
                (np.stack([rows.column(c).to_numpy() for c in features]), rows.column("y").to_numpy())
            )
            held += rows.num_rows
        if held >= STREAM_BUFFER or (group is None and fill):
            order = torch.randperm(held, generator=generator)
            x = torch.from_numpy(np.take(np.concatenate([f[0] for f in fill], axis=1), order.numpy(), axis=1))
            y = torch.from_numpy(np.concatenate([f[1] for f in fill]))[order].unsqueeze(1)
            for i in range(0, held, BATCH):
                loss = torch.nn.functional.mse_loss(model(x[:, i : i + BATCH].T), y[i : i + BATCH])
                opt.zero_grad()
                loss.backward()
                opt.step()
            fill, held = [], 0
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": rss_mb()}


def bench_stream() -> dict:
    """(h) samples/s of the template and the plain loop at 1e7 rows, alternating in fresh interpreters (the
    median of 3 rounds), and the template's peak RSS at each size."""
    from make_table import write_table  # scripts/, where this file runs

    results = {}
    (ROOT / "logs").mkdir(exist_ok=True)  # on this disk (13 GB of tables): /tmp may be a small tmpfs
    with tempfile.TemporaryDirectory(dir=ROOT / "logs") as tmp:
        for n in STREAM_SIZES:
            path = Path(tmp) / f"t{n:.0e}.parquet"
            write_table(path, n, D)
            rounds = 3 if n == STREAM_SIZES[0] else 1
            parts = ("stream-template", "stream-plain") if n == STREAM_SIZES[0] else ("stream-template",)
            runs = {part: [] for part in parts}
            for _ in range(rounds):  # alternating, as (b)
                for part, rs in runs.items():
                    rs.append(in_subprocess(part, n, 1, str(path)))
            results[n] = {
                part: {
                    "seconds": statistics.median(r["seconds"] for r in rs),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                }
                for part, rs in runs.items()
            }
            if len(parts) == 2:
                results[n]["spread"] = spread(*([r["seconds"] for r in rs] for rs in runs.values()))
            path.unlink()
    return results


def streams(h: dict) -> list[tuple]:
    """The rows (h): samples/s beside the plain loop, and peak RSS at two sizes."""
    small, large = STREAM_SIZES
    t, p = h[small]["stream-template"], h[small]["stream-plain"]
    label = (
        f"(h) 1e7 x 64 Parquet streamed (stepping=fast), batch {BATCH}, shuffle buffer {STREAM_BUFFER:,} "
        "rows: samples/s"
    )
    rows = [
        row(
            label,
            small / t["seconds"],
            small / p["seconds"],
            "",
            ">= 0.8x",
            rate=True,
            ratios=h[small]["spread"],
        )
    ]
    rss = (h[small]["stream-template"]["peak_rss_mb"], h[large]["stream-template"]["peak_rss_mb"])
    data = f"{small * (D + 1) * 4 / 1e9:.1f} / {large * (D + 1) * 4 / 1e9:.1f} GB"
    label = f"(h) peak RSS streaming 1e7 / 4e7 rows (data {data}): MB"
    growth_ok = rss[1] <= rss[0] * 1.1 + 100
    rows.append(
        (
            label,
            f"{rss[0]:,.0f} / {rss[1]:,.0f}",
            "",
            f"+{rss[1] - rss[0]:,.0f} MB",
            "4e7 <= 1e7 x 1.1 + 100 MB" + ("" if growth_ok else " (missed)"),
        )
    )
    return rows


def read_bandwidth_gbs() -> float:
    """Memory read bandwidth: best of 5 sums over a 1 GiB float32 tensor."""
    a = torch.ones(2**28)
    best = min(timed(a.sum)[0] for _ in range(5))
    return a.numel() * 4 / best / 1e9


def in_subprocess(part: str, n: int, epochs: int, shuffle: str) -> dict:
    """Run one part in a fresh interpreter (its own peak RSS) and return its JSON; `shuffle` is the part's
    data.shuffle, or for (h) the file's path."""
    args = ["--part", part, "--n", str(n), "--epochs", str(epochs), "--shuffle", shuffle]
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{part} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternating(rounds: int, n: int, epochs: int, shuffle: str) -> tuple[dict, dict]:
    """Template and plain, alternating in fresh interpreters: the median epoch over the rounds, the highest
    peak RSS of each (one part alone swings by +-20% on this machine), and the template's spread: the lowest
    and highest ratio of its epoch to the plain one's in a round."""
    runs = {"big-template": [], "big-plain": []}
    for _ in range(rounds):
        for part, results in runs.items():
            results.append(in_subprocess(part, n, epochs, shuffle))
    template, plain = (
        {
            "seconds": statistics.median(r["seconds"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "base_rss_mb": min(r["base_rss_mb"] for r in results),
        }
        for results in runs.values()
    )
    template["spread"] = spread(*([r["seconds"] for r in results] for results in runs.values()))
    return template, plain


# (e): sizes, the data epochs timed at each, and the alternating rounds (one at 1e6 read 0.76x against
# 0.91-1.00x in three by hand). The template's median is over its Lightning epochs (128 data epochs each at
# 1e4 rows, 19 at 1e5): ten of them, so that it is a typical one, not the mean of the first (warm-up) and
# a steady one, as four made it (0.85x at 1e4, where a steady epoch ran 0.95-1.05x the plain loop's).
GROWTH = {10_000: (1280, 3), 100_000: (190, 3), 1_000_000: (6, 3), 10_000_000: (2, 2)}


def generate_source():
    """litlab's generate(), for a plain script to define without importing litlab (and Lightning)."""
    from litlab.data.regression import generate

    return generate


# (e) the whole one-epoch run at 1e7 rows, as a user types it, and a plain script doing the same
WHOLE = [
    "data=regression",
    "data.preset=generated",
    "data.n=10000000",
    "data.features=64",
    "data.batch_size=8192",
]
PLAIN_WHOLE = f"""
import torch
from torch import Tensor
{inspect.getsource(generate_source())}
x, y = generate(10_000_000, 64, 0.5, "regression", 42)
n_train = 8_000_000  # the template's split: the last 20% of the independent rows validate
x_train, y_train, x_val, y_val = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
shift, scale = x_train.mean(0), x_train.std(0)
x.sub_(shift).div_(scale)  # standardised with training statistics, in place
model = torch.nn.Linear(64, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for take in torch.randperm(len(x_train)).split(8192):
    loss = torch.nn.functional.mse_loss(model(x_train[take]), y_train[take])
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    print(torch.nn.functional.mse_loss(model(x_val), y_val).item())
"""


def growth() -> dict:
    """(e) samples/s and peak RSS at every size, and the whole one-epoch run at 1e7 rows vs a plain script."""
    sizes = {}
    for n, (epochs, rounds) in GROWTH.items():
        sizes[n] = alternating(rounds, n, epochs, "rows")
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={tmp}", "trainer=cpu"]
        whole = wall([*command, *WHOLE, "stepping=fast", "trainer.max_epochs=1"], ROOT)
    plain = wall([sys.executable, "-c", PLAIN_WHOLE], ROOT)
    return {"sizes": sizes, "whole_s": whole, "plain_whole_s": plain}


def wall(cmd: list[str], cwd: Path, check: bool = True) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=check, capture_output=True)
    return time.perf_counter() - start


# (g): (what a user types, the target in seconds): every mistake is answered before torch or Lightning is
# imported: unknown options and keys by Hydra, types and ranges from the written signatures (signatures.py).
ANSWERS = [
    ("--help", 1.5),
    ("model=nosuch", 1.5),
    ("optimizer.lrr=0.1", 1.5),
    ("optimizer.lr=fast", 1.5),
    ("optimizer.lr=-1", 1.5),
    ("seed=-1", 1.5),
    ("trainer.max_epochs=0", 1.5),
    ("trainer.max_epochs=abc", 1.5),
    ("data.batch_size=abc", 1.5),
]


# (i): the workloads, as train.py arguments; each run's training time is its metrics.json duration_s.
THREAD_WORK = {
    "book fit, 1000 epochs": [],
    "MLP [32,32] on wine, 100 epochs": [
        "data=wine", "model=mlp", "model.net.hidden=[32,32]", "trainer.max_epochs=100"
    ],
    "(b) 2M x 64, 3 epochs": [
        "data=regression", "data.preset=generated", f"data.n={N}", f"data.features={D}",
        f"data.batch_size={BATCH}", "data.val_fraction=0", "data.scaling=none",
        "optimized_metric=train/loss", "stepping=fast", "trainer.max_epochs=3",
    ],
}  # fmt: skip


# (i)'s MLP trains on wine: where `make data` puts it, or LITLAB_DATA_DIR
DATA_DIR = Path(os.environ.get("LITLAB_DATA_DIR", ROOT / "data"))


def bench_threads(rounds: int = 2) -> dict[tuple[str, str, str], float]:
    """(i) {(workload, load, threads): median training seconds} for threads 1, torch's default and auto,
    quiet and with one busy process per core (a plain Python loop each), alternating the settings."""
    default = str(torch.get_num_threads())
    env = {k: v for k, v in os.environ.items() if k != "LITLAB_THREADS"}
    found: dict[tuple[str, str, str], list[float]] = {}
    for load in ("quiet", "busy"):
        busy = cores() if load == "busy" else 0
        hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(busy)]
        try:
            for r in range(rounds):
                for work, args in THREAD_WORK.items():
                    settings = ["1", default, "auto"]
                    for threads in settings if r % 2 == 0 else settings[::-1]:
                        seconds = trained_seconds([*args, f"threads={threads}"], env)
                        found.setdefault((work, load, threads), []).append(seconds)
        finally:
            for hog in hogs:
                hog.kill()
    return {key: statistics.median(values) for key, values in found.items()}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def trained_seconds(args: list[str], env: dict) -> float:
    """The training time of `python train.py args`, from its metrics.json."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            f"paths.root_dir={tmp}",
            f"paths.data_dir={DATA_DIR}",
            *args,
        ]
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        [metrics] = Path(tmp).rglob("metrics.json")
        return json.loads(metrics.read_text())["duration_s"]


def thread_rows(i: dict[tuple[str, str, str], float]) -> list[tuple]:
    """The rows (i): threads=auto's time against the best of 1 thread and torch's default."""
    default = str(torch.get_num_threads())
    rows = []
    for work in THREAD_WORK:
        for load in ("quiet", "busy"):
            one, many, auto = (i[(work, load, t)] for t in ("1", default, "auto"))
            label = f"(i) {work}, {load}: s (1 thread {one:.2f}, {default} threads {many:.2f})"
            best = min(one, many)
            rows.append((label, f"{auto:.2f}", f"{best:.2f}", f"{auto / best:.2f}x", "<= 1.3x"))
    return rows


def bench_answers(repeats: int) -> dict[str, float]:
    """(g) the median wall seconds of `python train.py <mistake>` for each of ANSWERS."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={tmp}"]
        return {
            arg: statistics.median(wall([*command, arg], ROOT, check=False) for _ in range(repeats))
            for arg, _ in ANSWERS
        }


# The plain 27 fits run in their own interpreter that imports torch only (not Lightning).
PLAIN_SWEEP = f"""
import torch
T_U, T_C = {T_U}, {T_C}
{inspect.getsource(plain_book)}
for name in ("SGD", "Adam", "RMSprop"):
    for lr in (1e-3, 1e-2, 1e-1):
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            plain_book(5000, name, lr)
"""


def bench_processes(repeats: int) -> dict:
    """(c) start-up and (d) the 27-job sweep, as a user runs them."""
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        one_step = [
            py,
            str(ROOT / "train.py"),
            f"paths.root_dir={tmp}",
            "trainer=cpu",
            "trainer.max_epochs=1",
        ]
        imports, starts = [], []
        for _ in range(repeats):  # alternating: a round's difference is one measure of the spread
            imports.append(wall([py, "-c", "import lightning"], ROOT))
            starts.append(wall(one_step, ROOT))
        sweep_cmd = [py, str(ROOT / "train.py"), "-m", f"paths.root_dir={tmp}", "experiment=book_temperature"]
        sweeps, serials, plains = [], [], []
        for _ in range(SWEEP_ROUNDS):  # alternating
            sweeps.append(wall([*sweep_cmd, "trainer=cpu", *SWEEP], ROOT))  # the default launcher: parallel
            serials.append(wall([*sweep_cmd, "trainer=cpu", "hydra/launcher=basic", *SWEEP], ROOT))
            plains.append(wall([py, "-c", PLAIN_SWEEP], ROOT))
        jobs = (len(list(Path(tmp, "logs").rglob("metrics.json"))) - repeats) // (2 * SWEEP_ROUNDS)
    return {
        "serial_sweep_s": statistics.median(serials),
        "import_s": statistics.median(imports),
        "one_step_s": statistics.median(starts),
        "one_step_extra": sorted(s - i for s, i in zip(starts, imports, strict=True)),
        "sweep_s": statistics.median(sweeps),
        "plain_sweep_s": statistics.median(plains),
        "sweep_spread": spread(sweeps, plains),
        "serial_spread": spread(serials, plains),
        "sweep_jobs": jobs,
    }


def bench_search() -> dict[str, dict]:
    """(f) the same seeded 20-trial search with pruner=median and pruner=none: wall s, best loss, trials
    pruned."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results, walls = {}, {"median": [], "none": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(SWEEP_ROUNDS):  # alternating
            for pruner in walls:
                command = [sys.executable, str(ROOT / "train.py"), "-m", f"paths.root_dir={tmp}"]
                command += ["hparams_search=optimizers", "experiment=book_temperature", "trainer=cpu"]
                command += [f"hydra.sweeper.pruner={pruner}", f"hydra.sweep.dir={Path(tmp, f'{pruner}{r}')}"]
                walls[pruner].append(wall(command, ROOT))
        for pruner, seconds in walls.items():  # the last round's study: the samplers are seeded alike
            storage = f"sqlite:///{Path(tmp, f'{pruner}{SWEEP_ROUNDS - 1}')}/optuna.db"
            study = optuna.load_study(study_name="book_temperature", storage=storage)
            states = [t.state.name for t in study.trials]
            results[pruner] = {
                "wall_s": statistics.median(seconds),
                "best": study.best_value,
                "pruned": states.count("PRUNED"),
                "trials": len(states),
            }
    results["spread"] = spread(walls["median"], walls["none"])
    return results


def searches(f: dict[str, dict]) -> list[tuple]:
    """The row (f): the pruned search beside the unpruned one."""
    pruned, full = f["median"], f["none"]
    label = (
        f"(f) {full['trials']}-trial search, book fit: pruner=median ({pruned['pruned']} pruned, best loss "
        f"{pruned['best']:.6f}) vs none (best {full['best']:.6f}): wall s"
    )
    return [row(label, pruned["wall_s"], full["wall_s"], "s", "< 1x, same best", ratios=f["spread"])]


def row(
    label: str,
    template: float,
    plain: float,
    unit: str,
    target: str,
    rate: bool = False,
    ratios: tuple[float, float] | None = None,
) -> tuple:
    """(label, template, plain, ratio, target); ratio template/plain, for a rate plain's time over ours;
    ratios: the lowest and highest time ratio of the alternating rounds (for a rate, inverted)."""
    shown = "{:,.0f}" if rate else "{:.1f}" if unit == "s" else "{:.2f}"
    ratio = f"{template / plain:.2f}x"
    if ratios is not None:
        low, high = sorted(1 / r for r in ratios) if rate else ratios
        ratio += f" ({low:.2f}-{high:.2f})"
    return label, shown.format(template), shown.format(plain), ratio, target


def table(rows: list[tuple]) -> str:
    """The Markdown table of these measures: template, plain, their ratio, the target."""
    rows = [("measure", "template", "plain", "ratio", "target"), *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def answers(g: dict[str, float]) -> list[tuple]:
    """The rows (g): how long each mistake took to answer, against its target."""
    rows = []
    for arg, target in ANSWERS:
        rows.append((f"(g) `python train.py {arg}` answered: s", f"{g[arg]:.2f}", "", "", f"<= {target} s"))
    return rows


def loops(a: dict, b: dict, bandwidth: float) -> list[tuple]:
    """The rows (a) and (b): the template's training loop beside plain PyTorch's."""
    us = (a["template_s"] / 5000 * 1e6, a["plain_s"] / 5000 * 1e6)
    rows = []
    label = f"(a) book fit, 5000 epochs: us/epoch (loss {a['loss']:.6f}); ratio (lowest-highest of a round)"
    rows.append(row(label, *us, "us", "<= 1.4x", ratios=a["spread"]))
    for mode, (t, p) in b.items():
        label = (
            f"(b) 2M x 64, batch 8192, data.shuffle={mode}: samples/s (median epoch, {B_ROUNDS} x {EPOCHS})"
        )
        target = ">= 0.95x" if mode == "rows" else ">= 0.9x"
        rows.append(row(label, N / t["seconds"], N / p["seconds"], "", target, rate=True, ratios=t["spread"]))
    t, p = b["rows"]
    data_mb = N * (D + 1) * 4 / 1e6
    peak = (t["peak_rss_mb"] - t["base_rss_mb"], p["peak_rss_mb"] - p["base_rss_mb"])
    rss = f"{peak[0] / data_mb:.2f}x dataset"
    label = f"(b) peak RSS beyond the interpreter: MB (dataset {data_mb:.0f} MB)"
    rows.append((label, f"{peak[0]:.0f}", f"{peak[1]:.0f}", rss, "<= 2x dataset"))
    share = [N * (D + 1) * 4 / 1e9 / r["seconds"] / bandwidth for r in b["rows"]]
    label = f"(b) dataset bytes/s over read bandwidth ({bandwidth:.1f} GB/s)"
    rows.append((label, f"{share[0]:.0%}", f"{share[1]:.0%}", "", ""))
    return rows


def processes(c: dict) -> list[tuple]:
    """The rows (c) and (d): commands as a user runs them."""
    rows = []
    extra = c["one_step_extra"]
    extra = f"+{c['one_step_s'] - c['import_s']:.2f} s ({extra[0]:+.2f} to {extra[-1]:+.2f})"
    label = "(c) `python train.py` one step vs `import lightning`: s"
    rows.append((*row(label, c["one_step_s"], c["import_s"], "s", "")[:3], extra, "<= +1.0 s"))
    label = f"(d) {c['sweep_jobs']}-job sweep, book fit each (default launcher, parallel): wall s"
    rows.append(row(label, c["sweep_s"], c["plain_sweep_s"], "s", "<= 2.0x", ratios=c["sweep_spread"]))
    label = "(d) the same with `hydra/launcher=basic` (one job at a time): wall s"
    rows.append(row(label, c["serial_sweep_s"], c["plain_sweep_s"], "s", "", ratios=c["serial_spread"]))
    return rows


def growing(e: dict) -> list[tuple]:
    """The rows (e): cost growth with size."""
    rows = []
    for n, (t, p) in e["sizes"].items():
        data_mb = n * (D + 1) * 4 / 1e6
        rss = t["peak_rss_mb"] - t["base_rss_mb"]
        label = f"(e) {n:.0e} x 64, batch 8192: samples/s (peak RSS +{rss:,.0f} MB, data {data_mb:,.0f} MB)"
        rows.append(
            row(label, n / t["seconds"], n / p["seconds"], "", ">= 0.8x", rate=True, ratios=t["spread"])
        )
    label = "(e) the whole one-epoch `train.py` run at 1e7 x 64 vs a plain script: wall s"
    rows.append(row(label, e["whole_s"], e["plain_whole_s"], "s", "<= 1.5x"))
    return rows


def header() -> str:
    """The report's title: when, at how many threads, and how long `import torch` takes here, for scale."""
    import_torch = statistics.median(wall([sys.executable, "-c", "import torch"], ROOT) for _ in range(3))
    return (
        f"# make bench ({time.strftime('%Y-%m-%d %H:%M')}, {THREADS} threads; `import torch` takes "
        f"{import_torch:.2f} s here, for scale)\n\n"
    )


PARTS = {
    "big-template": big_template,
    "big-plain": big_plain,
    "stream-template": stream_template,
    "stream-plain": stream_plain,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS], help="internal: one part, as JSON")
    parser.add_argument("--n", type=int, default=N, help="internal: rows of the part")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="internal: epochs of the part")
    parser.add_argument("--shuffle", default="rows", help="internal: data.shuffle of the part")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only-g", action="store_true", help="only (g), the answers to mistakes (a minute)")
    parser.add_argument(
        "--only-f", action="store_true", help="only (f), the searches with and without pruning"
    )
    parser.add_argument("--only-h", action="store_true", help="only (h), the streamed table (10 minutes)")
    parser.add_argument("--only-i", action="store_true", help="only (i), torch's threads (8 minutes)")
    parser.add_argument(
        "--only-abc", action="store_true", help="only (a) to (d), the loops and the start-up (5 minutes)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "bench.md")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    if (args.only_i or not any((args.part, args.only_g, args.only_f, args.only_h, args.only_abc))) and not (
        DATA_DIR / FILES["wine"]
    ).exists():
        sys.exit(
            f"row (i) trains on the wine file, not in {DATA_DIR}: make data, or LITLAB_DATA_DIR=<a copy>"
        )
    if args.part:
        part = PARTS[args.part]
        print(
            json.dumps(
                part(args.shuffle)
                if args.part.startswith("stream")
                else part(args.n, args.epochs, args.shuffle)
            )
        )
        return
    if args.only_i:
        print(table(thread_rows(bench_threads())))
        return
    if args.only_h:
        print(table(streams(bench_stream())))
        return
    if args.only_f:
        print(table(searches(bench_search())))
        return
    g = answers(bench_answers(args.repeats))
    if args.only_g:
        print(table(g))
        return
    a = bench_book(args.repeats)
    b = {mode: alternating(B_ROUNDS, N, EPOCHS, mode) for mode in ("rows", "batches")}
    bandwidth = read_bandwidth_gbs()
    c = bench_processes(max(3, args.repeats // 2))
    if args.only_abc:
        print(header() + table(loops(a, b, bandwidth) + processes(c) + g))
        return
    e = growth()
    f = searches(bench_search())
    h = streams(bench_stream())
    i = thread_rows(bench_threads())
    report = header() + table(loops(a, b, bandwidth) + processes(c) + growing(e) + f + g + h + i) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
