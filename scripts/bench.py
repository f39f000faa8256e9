"""make bench: the template against plain PyTorch, side by side in one run, on this machine.

(a) the book's temperature fit through train.py's training path vs a plain loop (5000 epochs each);
(b) an epoch of minibatch SGD on a generated 2,000,000 x 64 regression at batch 8192 (the median of 5
    epochs, over 3 alternating rounds), with memory bandwidth and peak RSS;
(c) start-up of `python train.py` for one step vs `import lightning`;
(d) a 27-job sweep through `train.py -m` vs a plain script doing the same 27 fits.
Prints a Markdown table of medians and ratios and saves it (default logs/bench.md).
"""

import argparse
import inspect
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from litlab.data.temperature import T_C, T_U

ROOT = Path(__file__).resolve().parents[1]
BOOK_LOSS = 2.927647
# (b): the median of 5 epochs, a typical one: the template's first pays one-off set-up, its last the
# training metrics over every minibatch (logged at the end of training)
N, D, BATCH, EPOCHS = 2_000_000, 64, 8192, 5
SWEEP = ["optimizer=sgd,adam,rmsprop", "optimizer.lr=1e-3,1e-2,1e-1", "seed=0,1,2"]


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
    """(a): median wall time of the whole train(cfg) call vs the plain loop, alternating."""
    from litlab.train import train

    template, plain = [], []
    for i in range(repeats + 1):  # the first round warms up both
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose(Path(tmp), "experiment=book_temperature", "trainer=cpu")
            t_seconds, t_loss = timed(train, cfg)
        p_seconds, p_loss = timed(plain_book)
        assert round(t_loss, 6) == round(p_loss, 6) == BOOK_LOSS, (t_loss, p_loss)
        if i:
            template.append(t_seconds)
            plain.append(p_seconds)
    return {"template_s": statistics.median(template), "plain_s": statistics.median(plain), "loss": t_loss}


class EpochClock(Callback):
    """A callback that times each training epoch (the bench adds it through the config)."""

    seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        EpochClock.seconds.append(time.perf_counter() - self.start)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def big_template() -> dict:
    """(b) through train(): data=regression generated 2M x 64, one epoch at batch 8192."""
    from litlab.train import train

    base = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            Path(tmp),
            "data=regression",
            "data.preset=generated",
            f"data.n={N}",
            f"data.features={D}",
            f"data.batch_size={BATCH}",
            "data.val_fraction=0",
            "data.scaling=none",
            "optimized_metric=train/loss",
            "trainer=cpu",
            f"trainer.max_epochs={EPOCHS}",
            "+callbacks.clock._target_=__main__.EpochClock",
        )
        train(cfg)
    return {"seconds": statistics.median(EpochClock.seconds), "peak_rss_mb": rss_mb(), "base_rss_mb": base}


def big_plain() -> dict:
    """(b) as a plain loop over pre-shuffled tensor slices, on the same generated data."""
    from litlab.data.regression import generate

    base = rss_mb()
    x, y = generate(N, D, 0.5, "regression", seed=42)
    perm = torch.randperm(N)
    x, y = x[perm], y[perm]
    model = torch.nn.Linear(D, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seconds = []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        for i in range(0, N, BATCH):
            loss = torch.nn.functional.mse_loss(model(x[i : i + BATCH]), y[i : i + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    return {"seconds": statistics.median(seconds), "peak_rss_mb": rss_mb(), "base_rss_mb": base}


def read_bandwidth_gbs() -> float:
    """Memory read bandwidth: best of 5 sums over a 1 GiB float32 tensor."""
    a = torch.ones(2**28)
    best = min(timed(a.sum)[0] for _ in range(5))
    return a.numel() * 4 / best / 1e9


def in_subprocess(part: str) -> dict:
    """Run one part in a fresh interpreter (its own peak RSS) and return its JSON."""
    out = subprocess.run([sys.executable, __file__, "--part", part], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{part} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def big_rounds(rounds: int) -> tuple[dict, dict]:
    """(b) template and plain, alternating in fresh interpreters: the median epoch over the rounds and the
    highest peak RSS of each (one (b) part alone swings by +-20% on this machine)."""
    runs = {"big-template": [], "big-plain": []}
    for _ in range(rounds):
        for part, results in runs.items():
            results.append(in_subprocess(part))
    return tuple(
        {
            "seconds": statistics.median(r["seconds"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "base_rss_mb": min(r["base_rss_mb"] for r in results),
        }
        for results in runs.values()
    )


def wall(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


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
        imports = [wall([py, "-c", "import lightning"], ROOT) for _ in range(repeats)]
        starts = [wall(one_step, ROOT) for _ in range(repeats)]
        sweep_cmd = [py, str(ROOT / "train.py"), "-m", f"paths.root_dir={tmp}", "experiment=book_temperature"]
        sweep = wall([*sweep_cmd, "trainer=cpu", *SWEEP], ROOT)  # the default launcher: joblib, parallel
        serial = wall([*sweep_cmd, "trainer=cpu", "hydra/launcher=basic", *SWEEP], ROOT)
        plain = wall([py, "-c", PLAIN_SWEEP], ROOT)
        jobs = (len(list(Path(tmp, "logs").rglob("metrics.json"))) - repeats) // 2
    return {
        "serial_sweep_s": serial,
        "import_s": statistics.median(imports),
        "one_step_s": statistics.median(starts),
        "sweep_s": sweep,
        "plain_sweep_s": plain,
        "sweep_jobs": jobs,
    }


def table(a: dict, b_t: dict, b_p: dict, bandwidth: float, c: dict) -> str:
    rows = [("measure", "template", "plain", "ratio", "target")]
    per_epoch = (a["template_s"] / 5000 * 1e6, a["plain_s"] / 5000 * 1e6)
    rows.append(
        (
            "(a) book fit, 5000 epochs: us/epoch (final loss " + f"{a['loss']:.6f})",
            f"{per_epoch[0]:.1f}",
            f"{per_epoch[1]:.1f}",
            f"{per_epoch[0] / per_epoch[1]:.2f}x",
            "<= 2.0x",
        )
    )
    rate_t, rate_p = N / b_t["seconds"], N / b_p["seconds"]
    rows.append(
        (
            f"(b) 2M x 64, batch 8192: samples/s (median epoch of 3 x {EPOCHS})",
            f"{rate_t:,.0f}",
            f"{rate_p:,.0f}",
            f"{rate_t / rate_p:.2f}x",
            ">= 0.8x",
        )
    )
    data_gb = N * (D + 1) * 4 / 1e9
    share_t, share_p = data_gb / b_t["seconds"] / bandwidth, data_gb / b_p["seconds"] / bandwidth
    rows.append(
        (
            f"(b) dataset bytes per second / read bandwidth ({bandwidth:.1f} GB/s)",
            f"{share_t:.0%}",
            f"{share_p:.0%}",
            "",
            "",
        )
    )
    extra = c["one_step_s"] - c["import_s"]
    rows.append(
        (
            "(c) `python train.py` one step vs `import lightning`: s",
            f"{c['one_step_s']:.2f}",
            f"{c['import_s']:.2f}",
            f"+{extra:.2f} s",
            "<= +1.5 s",
        )
    )
    rows.append(
        (
            f"(d) {c['sweep_jobs']}-job sweep, book fit each (default launcher, parallel): wall s",
            f"{c['sweep_s']:.1f}",
            f"{c['plain_sweep_s']:.1f}",
            f"{c['sweep_s'] / c['plain_sweep_s']:.2f}x",
            "<= 2.0x",
        )
    )
    rows.append(
        (
            "(d) the same with `hydra/launcher=basic` (one job at a time): wall s",
            f"{c['serial_sweep_s']:.1f}",
            f"{c['plain_sweep_s']:.1f}",
            f"{c['serial_sweep_s'] / c['plain_sweep_s']:.2f}x",
            "",
        )
    )
    peak = b_t["peak_rss_mb"] - b_t["base_rss_mb"]
    rows.append(
        (
            "(b) peak RSS beyond the interpreter: MB (dataset " + f"{data_gb * 1e3:.0f} MB)",
            f"{peak:.0f}",
            f"{b_p['peak_rss_mb'] - b_p['base_rss_mb']:.0f}",
            f"{peak / (data_gb * 1e3):.2f}x dataset",
            "<= 2x dataset",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["big-template", "big-plain"], help="internal: one part, as JSON")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "bench.md")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    if args.part:
        print(json.dumps(big_template() if args.part == "big-template" else big_plain()))
        return
    torch.set_num_threads(torch.get_num_threads())
    a = bench_book(args.repeats)
    b_t, b_p = big_rounds(3)
    bandwidth = read_bandwidth_gbs()
    c = bench_processes(max(3, args.repeats // 2))
    report = f"# make bench ({time.strftime('%Y-%m-%d %H:%M')}, {torch.get_num_threads()} threads)\n\n"
    report += table(a, b_t, b_p, bandwidth, c) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
