"""Pride and Prejudice: the novel without Gutenberg's wrapping, next-symbol windows, contiguous splits."""

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from litlab.data.contract import TaskMismatch, choose_task
from litlab.data.text import ASCII, TextData, ascii_codes, read_book, windows, words_of
from litlab.errors import ConfigError
from litlab.nets import Linear
from litlab.train import train
from tests.conftest import SHARED_DATA, needs_real_data

pytestmark = needs_real_data
PATH = SHARED_DATA / "jane-austen" / "1342-0.txt"


def text(**kwargs) -> TextData:
    data = TextData(str(PATH), **kwargs)
    data.setup()
    return data


def test_book_is_the_novel_without_the_gutenberg_wrapping():
    book = read_book(PATH)
    assert "gutenberg" not in book.lower() and "\ufeff" not in book
    assert book.startswith("Produced by") and "It is a truth universally acknowledged" in book[:300]
    assert book.endswith("had been the means of uniting them.")
    # the book's tokenisation of the whole file gives 7261 distinct words, counting the empty string
    # that stripping leaves of words such as "--"; words_of drops it
    assert len(set(words_of(PATH.read_text(encoding="utf-8")))) + 1 == 7261


def test_truncated_or_empty_books_are_refused(tmp_path):
    raw = PATH.read_text(encoding="utf-8-sig")
    (tmp_path / "cut.txt").write_text(raw[: len(raw) // 2])
    with pytest.raises(ConfigError, match="not a whole Project Gutenberg book .*download.py text"):
        read_book(tmp_path / "cut.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        read_book(tmp_path / "empty.txt")


def test_windows_hold_the_k_previous_symbols_with_position_offsets():
    codes = ascii_codes("abcd\u201c")
    assert codes.tolist() == [97, 98, 99, 100, 0]  # the book's encoding: >= 128 becomes 0
    x, y = windows(codes, 2, ASCII)
    assert x.dtype == y.dtype == torch.int64
    assert x.tolist() == [[97, 128 + 98], [98, 128 + 99], [99, 128 + 100]] and y.tolist() == [99, 100, 0]


def test_char_splits_are_contiguous_and_disjoint():
    started = time.perf_counter()
    data = text(context=3)
    assert time.perf_counter() - started < 2.0  # the config grid sets it up many times
    codes = ascii_codes(read_book(PATH).lower())
    (x, y), (_, y_val) = data.splits["train"], data.splits["val"]
    n = len(codes) - 3
    assert (len(y), len(y_val)) == (n - round(0.2 * n), round(0.2 * n))
    assert torch.equal(torch.cat([y, y_val]), codes[3:])  # every target once, train strictly before val
    assert torch.equal(x[:, 0], codes[: len(y)]) and data.model_kwargs() == {"language_metrics": True}
    assert data.out_features == ASCII and data.in_features == 3 * ASCII  # the one-hot width


def test_vocabularies_come_from_the_training_text_only():
    chars = text(vocab="train")
    train_chars = set(read_book(PATH).lower()[: len(chars.splits["train"][1]) + 1])
    assert chars.symbols[1:] == sorted(train_chars) and chars.out_features == len(train_chars) + 1
    words = text(level="word", max_words=500)
    counts = torch.bincount(words.splits["train"][1], minlength=501)
    assert words.symbols[0] == "<unk>" and words.out_features == 501 and len(words.symbols) == 501
    assert counts[1] >= counts[2] >= counts[500] and words.symbols[1] == "the"
    assert (words.splits["val"][1] == 0).float().mean() > 0.1  # rarer words are unknown


def test_linear_on_indices_is_one_hot_times_weight():
    layer = Linear(2 * 5, 3)
    x = torch.tensor([[1, 5 + 4], [0, 5 + 0]])  # k = 2 positions of a 5-symbol vocabulary
    one_hot = F.one_hot(x, 10).sum(1).float()
    torch.testing.assert_close(layer(x), one_hot @ layer.weight.T + layer.bias)


def test_unfitting_settings_are_refused():
    with pytest.raises(TaskMismatch, match="poses a multiclass task"):
        choose_task(TextData(str(PATH)), ["regression"])
    with pytest.raises(ConfigError, match="data.scaling must stay none"):
        TextData(str(PATH), scaling="standardize")
    with pytest.raises(ConfigError, match="context >= 1"):
        TextData(str(PATH), context=0)


def test_short_run_beats_unigram_frequencies(cfg_factory, tmp_path):
    cfg = cfg_factory(
        "data=text", "model=logistic", "optimizer=adam", "optimizer.lr=0.1",
        "trainer=cpu", "trainer.max_epochs=1", "callbacks=none",
    )  # fmt: skip
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    data = text()
    (_, y), (_, y_val) = data.splits["train"], data.splits["val"]
    unigram = torch.bincount(y, minlength=ASCII).double().add(1e-3) / len(y)
    assert metrics["val/loss"] < float(-unigram[y_val].log().mean()) - 0.4  # 3.02 nats -> about 2.5
    assert metrics["val/bits"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-4)
    assert metrics["val/perplexity"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-4)
    assert 0.2 < metrics["val/acc"] < 0.5
