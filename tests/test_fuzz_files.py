"""Bad files of every kind, drawn by generators: data tables and texts, checkpoints, a run's config.yaml,
predict's input files. Each is refused in one line (or, for a random mutation that happens to stay
valid, trains), and nothing is written outside the run's own directory."""

import pickle
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from litlab.data.wine import FEATURES
from litlab.errors import one_line
from litlab.inference import evaluate, predict
from litlab.train import train
from tests.conftest import ROOT, compose_train
from tests.test_inference import compose_entry


def good_wine(rng: random.Random, rows: int = 60) -> bytes:
    """A small table in the wine file's layout (`;`, quoted header), random but plausible values."""
    header = ";".join(f'"{name}"' for name in [*FEATURES, "quality"])
    lines = [
        ";".join(f"{rng.uniform(0.1, 9):.3f}" for _ in FEATURES) + f";{rng.randint(3, 9)}"
        for _ in range(rows)
    ]
    return ("\n".join([header, *lines]) + "\n").encode()


def mutations(good: bytes, rng: random.Random, n: int) -> Iterator[tuple[str, bytes]]:
    """n random damages: bytes flipped, cut, doubled or deleted somewhere in the file."""
    for i in range(n):
        data, at = bytearray(good), rng.randrange(len(good))
        kind = rng.choice(["flip", "cut", "double", "delete"])
        if kind == "flip":
            data[at] = rng.randrange(256)
        elif kind == "cut":
            data = data[:at]
        elif kind == "double":
            data[at:at] = data[at : at + rng.randint(1, 40)]
        else:
            del data[at : at + rng.randint(1, 40)]
        yield f"random {kind} #{i}", bytes(data)


def bad_tables(good: bytes, rng: random.Random) -> Iterator[tuple[str, bytes, bool]]:
    """(what, bytes, whether it may still be valid) for a ;-separated table with a header."""
    header, *rows = good.splitlines(keepends=True)
    first = rows[0].split(b";")
    yield "empty", b"", False
    yield "header only", header, False
    yield "one row", header + rows[0], False
    yield "two rows", header + b"".join(rows[:2]), False
    yield "binary", bytes(range(256)) * 40, False
    yield "NUL bytes", good.replace(b";", b";\x00", 3), False
    yield "latin-1", header + "é;".encode("latin-1") + b"".join(rows), False
    yield "a row cut short", header + b"".join(rows[:30]) + b";".join(first[:4]) + b"\n", False
    yield "a row too long", header + rows[0].rstrip(b"\n") + b";1\n" + b"".join(rows[1:]), False
    yield "a renamed column", header.replace(b"alcohol", b"alcool") + b"".join(rows), False
    yield "no header", b"".join(rows), False
    for cell in (b"abc", b"nan", b"inf", b"-inf", b"1e308", b"-1e39", b""):
        yield f"a cell {cell!r}", header + b";".join([cell, *first[1:]]) + b"".join(rows[1:]), False
    for what, data in mutations(good, rng, 12):
        yield what, data, True


def bad_texts(rng: random.Random) -> Iterator[tuple[str, bytes, bool]]:
    """(what, bytes, whether it may still be valid) for a Project Gutenberg book."""
    body = " ".join(
        rng.choice(["the", "a", "letter", "Elizabeth", "said", "Darcy", "and"]) for _ in range(3000)
    )
    marker = "OF THE PROJECT GUTENBERG EBOOK X ***"
    good = f"*** START {marker}\n{body}\n*** END {marker}\n"
    yield "empty", b"", False
    yield "no markers", body.encode(), False
    yield "markers only", good.replace(body, "").encode(), False
    yield "a few characters", good.replace(body, "Mr. B").encode(), False
    yield "latin-1", good.replace("Darcy", "Darcé").encode("latin-1"), False
    yield "binary", bytes(range(256)) * 40, False
    for what, data in mutations(good.encode(), rng, 6):
        yield what, data, True


def outside(root: Path, run: Path | None) -> dict[str, tuple[int, int]]:
    """Every file below root but outside the run directory: path -> (size, mtime)."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and (run is None or run not in p.parents)
    }


def refused_or_trained(call: Callable[[], object], may_be_valid: bool, what: str) -> str:
    """'trained' or the one line a user would see; a traceback or a valid-looking bad file fails."""
    try:
        call()
    except Exception as e:
        message = one_line(e)
        assert message is not None, f"{what}: a bare traceback, {e!r}"
        assert message.strip() and "\n" not in message, f"{what}: {message!r}"
        return message
    assert may_be_valid, f"{what}: accepted"
    return "trained"


@pytest.mark.slow
@pytest.mark.parametrize("data", ["wine", "text"])
def test_bad_data_files_are_one_line_and_write_nothing_outside_the_run(tmp_path, data):
    rng = random.Random(data)
    if data == "wine":
        files, name, args = bad_tables(good_wine(rng), rng), "wine.csv", ("model=linear",)
    else:
        files, name, args = bad_texts(rng), "book.txt", ("model=logistic", "data.batch_size=null")
    outcomes = []
    for i, (what, content, may_be_valid) in enumerate(files):
        root = tmp_path / str(i)
        (root / "data").mkdir(parents=True)
        path = root / "data" / name
        path.write_bytes(content)
        before = outside(root, None)
        cfg = compose_train(
            root, f"data={data}", f"data.path={path}", "trainer=cpu", "trainer.max_epochs=2", *args
        )
        outcomes.append(refused_or_trained(lambda cfg=cfg: train(cfg), may_be_valid, what))
        assert outside(root, root / "run") == before, what  # the data file untouched, nothing beside it
    assert sum(o != "trained" for o in outcomes) >= len(outcomes) // 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    train(compose_train(root, "trainer=cpu", "trainer.max_epochs=20"))
    return root / "run"


def bad_checkpoints(good: bytes, rng: random.Random) -> Iterator[tuple[str, bytes, bool]]:
    class Payload:  # what a crafted pickle would run on load; weights_only refuses to
        def __reduce__(self):
            return (print, ("ran code",))

    yield "empty", b"", False
    yield "a third", good[: len(good) // 3], False
    yield "all but the last byte", good[:-1], False
    yield "random bytes", rng.randbytes(4096), False
    yield "a pickle with code", pickle.dumps(Payload()), False
    yield "a zip of nothing", b"PK\x05\x06" + b"\x00" * 18, False
    yield "text", b"not a checkpoint\n", False


def bad_configs(good: str) -> Iterator[tuple[str, bytes, bool]]:
    yield "empty", b"", False
    yield "not YAML", b"data: [unclosed\n  x: : :\n", False
    yield "a list", b"- 1\n- 2\n", False
    yield "binary", bytes(range(256)), False
    yield "a crafted _target_", good.replace("litlab.data.", "shutil.copyfile #", 1).encode(), False
    yield (
        "open() as a target",
        (good + "\nextra:\n  _target_: builtins.open\n  file: x\n  mode: w\n").encode(),
        False,
    )
    yield (
        "no model",
        "\n".join(line for line in good.splitlines() if not line.startswith("model:")).encode(),
        False,
    )
    yield "lr a word", good.replace("  lr: 0.01", "  lr: fast", 1).encode(), False


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["checkpoint", "config"])
@pytest.mark.parametrize("entry", ["eval", "resume"])
def test_bad_run_files_are_one_line_and_write_nothing(run_dir, tmp_path, damaged, entry):
    rng = random.Random(damaged)
    good_ckpt = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    drawn = (
        bad_checkpoints(good_ckpt, rng)
        if damaged == "checkpoint"
        else bad_configs((run_dir / "config.yaml").read_text())
    )
    for i, (what, content, may_be_valid) in enumerate(drawn):
        run = tmp_path / str(i) / "run"
        shutil.copytree(run_dir, run)
        (run / ("checkpoints/last.ckpt" if damaged == "checkpoint" else "config.yaml")).write_bytes(content)
        before = outside(tmp_path / str(i), None)
        elsewhere = tmp_path / str(i) / "elsewhere"  # where the command runs from
        if entry == "eval":
            call = partial(evaluate, compose_entry(elsewhere, "eval", f"ckpt_path={run}"))
        else:
            call = partial(train, compose_train(elsewhere, f"resume={run}"))
        refused_or_trained(call, may_be_valid, what)
        after = outside(tmp_path / str(i), elsewhere)
        assert after == before, what  # the run refused before anything in it was written


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"t_u\n",
        b"t_u\nabc\n",
        b"t_u\nnan\n",
        b"t_u\n1e308\n",
        b"a,x\n1,2\n",  # t_u,x would read t_u by name, beside x
        bytes(range(256)),
        b"\xe9\n1\n",
    ],
    ids=["empty", "header-only", "word", "nan", "huge", "too-wide", "binary", "latin-1"],
)
def test_bad_predict_inputs_are_one_line_and_write_no_predictions(run_dir, tmp_path, content):
    csv = tmp_path / "readings.csv"
    csv.write_bytes(content)
    cfg = compose_entry(tmp_path, "predict", f"ckpt_path={run_dir}", f"input_file={csv}")
    refused_or_trained(lambda: predict(cfg), False, repr(content))
    assert not (tmp_path / "readings.predictions.csv").exists()


@pytest.mark.slow
def test_a_bad_file_as_a_user_meets_it_is_exit_1_and_one_line(tmp_path):
    (tmp_path / "wine.csv").write_bytes(good_wine(random.Random(1)).replace(b"\n", b"\nabc;", 1))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"paths.root_dir={tmp_path}",
            "data=wine",
            f"data.path={tmp_path / 'wine.csv'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "wine.csv" in lines[0]
