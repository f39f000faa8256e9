"""The embedded and generated datasets: values, shapes, splits, normalisation."""

import ctypes
import os
import platform
import sys
from pathlib import Path

import pytest
import torch

from litlab.data.base import HUGE_PAGE, THP_SETTING, TensorBatches, on_huge_pages
from litlab.data.contract import TaskMismatch, choose_task
from litlab.data.regression import RegressionData, generate, noisy100
from litlab.data.temperature import T_C, T_U, TemperatureData
from litlab.errors import ConfigError


def test_temperature_split_is_seeded_and_disjoint():
    a, b, c = (TemperatureData(split_seed=s) for s in (0, 0, 1))
    for d in (a, b, c):
        d.setup()
    assert [len(a.splits[k][0]) for k in ("train", "val")] == [9, 2]
    torch.testing.assert_close(a.splits["val"][1], b.splits["val"][1])
    assert not torch.equal(a.splits["val"][1], c.splits["val"][1])
    seen = torch.cat([a.splits["train"][1], a.splits["val"][1]]).squeeze(1).sort().values
    torch.testing.assert_close(seen, torch.tensor(T_C).sort().values)


def test_standardisation_uses_training_rows_only():
    data = TemperatureData(split_seed=3)
    data.setup()
    x_train = data.splits["train"][0]
    torch.testing.assert_close(x_train.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(x_train.std(), torch.tensor(1.0), atol=1e-6, rtol=0)
    raw_train = x_train * data.x_scale + data.x_shift
    assert data.x_shift.item() == pytest.approx(raw_train.mean().item(), abs=1e-4)
    assert data.x_shift.item() != pytest.approx(sum(T_U) / len(T_U), abs=1e-3)  # not the all-rows mean


def test_book_scaling_multiplies_by_a_tenth():
    data = TemperatureData(scaling=0.1, val_fraction=0.0)
    data.setup()
    torch.testing.assert_close(
        data.splits["train"][0].squeeze(1).sort().values, (0.1 * torch.tensor(T_U)).sort().values
    )


def test_noisy100_is_the_tutorials_draw():
    x, y = noisy100()
    torch.manual_seed(43052)
    x_ref = torch.randn(100).sort().values
    y_ref = 2.5 + 4 * x_ref + 0.5 * torch.randn(100)
    torch.testing.assert_close(x.squeeze(1), x_ref)
    torch.testing.assert_close(y.squeeze(1), y_ref)


def test_generated_classification_labels_follow_a_logistic_model():
    x, y = generate(20_000, 3, 0.0, "binary", seed=0)
    assert x.dtype == y.dtype == torch.float32 and set(y.unique().tolist()) == {0.0, 1.0}
    w = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y).solution
    assert w[:3].abs().sum() > 0.1  # labels depend on the inputs


def test_presets_pose_the_right_task():
    assert RegressionData(preset="toy6").offered() == ["binary"]
    assert RegressionData(preset="double").offered() == ["regression"]
    with pytest.raises(TaskMismatch, match="poses a binary task: for a regression target use data.preset"):
        choose_task(RegressionData(preset="toy6"), ["regression"])
    with pytest.raises(ConfigError, match="preset='nope'"):
        RegressionData(preset="nope")


def test_batches_cover_every_row_once_per_epoch_in_a_new_order():
    x = torch.arange(10.0).unsqueeze(1)
    batches = TensorBatches(x, x, batch_size=3, shuffle="rows", seed=0)
    epochs = [torch.cat([b for b, _ in batches]).squeeze(1) for _ in range(3)]
    assert len(batches) == 4
    for e in epochs:
        assert sorted(e.tolist()) == list(range(10))
    assert any(not torch.equal(epochs[0], e) for e in epochs[1:])


PAGE, MADV_DONTDUMP = 4096, 16  # madvise(2)


def huge_page_bytes(t: torch.Tensor) -> int:
    """AnonHugePages inside t's storage (/proc/self/smaps). smaps counts per mapping, and the kernel
    merges a new anonymous mapping into its neighbour (an earlier test's collapsed tensor, say), so the
    storage's whole 4 KiB pages are first made a mapping of their own: madvise MADV_DONTDUMP (left out of
    core dumps; nothing else changes) splits them off, and only mappings inside the storage are counted."""
    start = t.untyped_storage().data_ptr()
    end = start + t.untyped_storage().nbytes()
    first, last = -(-start // PAGE) * PAGE, end // PAGE * PAGE
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert madvise(first, last - first, MADV_DONTDUMP) == 0, os.strerror(ctypes.get_errno())
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's first line: its address range
            low, high = (int(a, 16) for a in head.split("-"))
            inside = first <= low and high <= last
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(
    sys.platform != "linux"
    or tuple(int(v) for v in platform.release().split(".")[:2]) < (6, 1)
    or not THP_SETTING.exists()
    or "[never]" in THP_SETTING.read_text(),
    reason="MADV_COLLAPSE needs Linux 6.1+ with transparent huge pages not set to never",
)
def test_a_served_split_sits_on_huge_pages_with_its_values_unchanged():
    """A split is moved onto 2 MiB pages as it is served (fewer TLB misses for minibatches of random
    rows), every whole huge page of it, bit for bit the same values; small data is left as it is."""
    # 41 MB: over glibc's largest mmap threshold, so x is a mapping of its own (smaps counts per mapping)
    data = RegressionData(preset="generated", n=160_000, features=64, val_fraction=0.2, scaling="none")
    data.setup()
    x, y = data.splits["train"]
    before = x.clone(), y.clone()
    whole = (x.untyped_storage().nbytes() // HUGE_PAGE - 1) * HUGE_PAGE  # x's storage, 41 MB: 18 pages
    # As generated, on 4 KiB pages when this test runs alone; in the whole suite (CI, twice) 12-23 MB of
    # it already sat on huge pages, by the kernel, for a reason not found (THP is madvise-only here, the
    # count is of x's own mapping, khugepaged left a fresh tensor alone for 70 s), so only "not all of it"
    # is certain before it is served.
    before_served = huge_page_bytes(x)
    assert before_served < whole
    batches = data.batches("train", "rows")
    # MADV_COLLAPSE is best effort: a 2 MiB page the kernel finds no free huge page for stays as it was
    # (17 of the 18 moved in one whole-suite CI run; all 18 alone): more than before, and most of it
    served = huge_page_bytes(x)
    assert served > before_served and served > whole // 2
    assert torch.equal(batches.x, before[0]) and torch.equal(batches.y, before[1])
    assert on_huge_pages([x[:100].clone()]) == 0  # 25 KB: no whole huge page inside, nothing to move


def test_a_step_of_several_epochs_cut_short_draws_only_the_epochs_it_runs():
    x = torch.arange(20.0).unsqueeze(1)
    batches = TensorBatches(x, x, 5, "rows", seed=0, epochs_per_item=3)  # 4 minibatches an epoch
    draw, drawn = batches.takes, []
    batches.takes = lambda epoch: drawn.append(epoch) or draw(epoch)
    (steps,) = list(batches)
    assert len(steps) == 12 and drawn == []
    cut = steps[:6]  # max_steps ends the run inside the step's second epoch
    served = [b for b, _ in cut]
    assert len(cut) == len(served) == 6 and drawn == [0, 1]  # the third epoch's permutation never drawn
    expected = [x[t] for e in (0, 1) for t in draw(e)][:6]
    assert all(torch.equal(a, b) for a, b in zip(served, expected, strict=True))


def test_ddp_ranks_get_equal_disjoint_shards():
    x = torch.arange(11.0).unsqueeze(1)
    shards = [TensorBatches(x, x, 100, None, 0, rank=r, world_size=2) for r in (0, 1)]
    rows = [torch.cat([b for b, _ in s]).squeeze(1).tolist() for s in shards]
    assert len(rows[0]) == len(rows[1]) == 5 and not set(rows[0]) & set(rows[1])


WINE_HEADER = (
    '"fixed acidity";"volatile acidity";"citric acid";"residual sugar";"chlorides";"free sulfur dioxide";'
    '"total sulfur dioxide";"density";"pH";"sulphates";"alcohol";"quality"'
)
WINE_ROW = "7;0.27;0.36;20.7;0.045;45;170;1.001;3;0.45;8.8;6"


@pytest.mark.parametrize(
    "cell, why",
    [
        ("nan", "'nan' is not a finite number"),
        ("inf", "'inf' is not a finite"),
        ("1e308", "'1e308' is not a"),
    ],
)
def test_a_csv_cell_that_float32_cannot_hold_is_one_line(tmp_path, cell, why):
    from litlab.data.wine import read_wine

    path = tmp_path / "wine.csv"
    path.write_text("\n".join([WINE_HEADER, WINE_ROW, cell + WINE_ROW[1:], WINE_ROW]))
    with pytest.raises(ConfigError, match=rf"wine.csv, line 3, column 'fixed acidity': {why}.*fill or drop"):
        read_wine(path)


def test_a_csv_field_over_the_csv_modules_limit_is_one_line(tmp_path):
    from litlab.data.wine import read_wine

    path = tmp_path / "wine.csv"
    path.write_text("\n".join([WINE_HEADER, WINE_ROW, '"' + "1" * 200_000 + '"' + WINE_ROW[1:], WINE_ROW]))
    with pytest.raises(ConfigError, match=r"wine.csv, line 3 is not a row of a ';'-separated table \(field"):
        read_wine(path)


def test_utf8_with_a_bom_and_blank_trailing_lines_reads_and_other_encodings_are_one_line(tmp_path):
    from litlab.data.text import read_book
    from litlab.data.wine import read_wine

    path = tmp_path / "wine.csv"
    path.write_text("\ufeff" + "\n".join([WINE_HEADER, WINE_ROW, WINE_ROW]) + "\n\n\n", encoding="utf-8")
    features, quality = read_wine(path)
    assert features.shape == (2, 11) and quality.tolist() == [6.0, 6.0]
    path.write_bytes("\n".join([WINE_HEADER.replace("alcohol", "alcoh\u00f6l"), WINE_ROW]).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xf6 at offset \d+\): convert it"):
        read_wine(path)
    book = tmp_path / "book.txt"
    book.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_book(book)


def test_a_directory_or_fifo_as_the_data_file_is_named_so(tmp_path):
    from litlab.data.files import require

    with pytest.raises(ConfigError, match="is a directory: point data.path= at the wine file itself"):
        require(tmp_path, "wine")
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"is not a regular file \(a FIFO"):
        require(fifo, "wine")


@pytest.mark.parametrize(
    "val_fraction, message",
    [
        (0.99, r"of its 11 rows, 0 are left for training .* a fit needs at least 2"),
        (0.05, r"data.val_fraction=0.05 of 11 rows holds out 1: its metrics need at least 2 rows"),
    ],
)
def test_splits_too_small_to_fit_or_measure_are_refused_before_training(val_fraction, message):
    data = TemperatureData(val_fraction=val_fraction)
    with pytest.raises(ConfigError, match=message):
        data.setup("fit")
