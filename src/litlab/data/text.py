"""Pride and Prejudice (Project Gutenberg #1342): the next character (or word) from the k before it."""

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from litlab.data.base import TensorDataModule
from litlab.data.files import not_utf8, require
from litlab.errors import ConfigError

START = re.compile(r"\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG EBOOK[^\n]*\n")
END = re.compile(r"\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG EBOOK")
END_NOTE = re.compile(r"^End of (the )?Project Gutenberg", re.MULTILINE)  # a last line before the marker
ASCII = 128  # the book's encoding: a character's code if below 128, else 0
PUNCTUATION = '.,;:"!?”“_-'  # the book's clean_words strips these from each word
UNKNOWN = "<unk>"


def read_book(path: str | Path) -> str:
    """The novel between the Gutenberg header and licence footer; a missing marker means a truncated file."""
    path = require(path, "text")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    start, end = START.search(text), END.search(text)
    if start is None or end is None or end.start() < start.end():
        raise ConfigError(
            f"{path} is not a whole Project Gutenberg book (no '*** START/END OF THIS PROJECT GUTENBERG "
            "EBOOK' marker): a truncated download? fetch it again with `python scripts/download.py text`"
        )
    text = text[start.end() : end.start()]
    note = END_NOTE.search(text)
    return text[: note.start() if note else len(text)].strip()


def ascii_codes(text: str) -> Tensor:
    """int64 [len(text)]: each character's code point, 0 for those >= 128 (curly quotes, accents)."""
    codes = torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
    return codes.masked_fill_(codes >= ASCII, 0)


def words_of(text: str) -> list[str]:
    """The book's tokenisation: lower-case, split on whitespace, strip punctuation; empty words dropped."""
    words = (w.strip(PUNCTUATION) for w in text.lower().split())
    return [w for w in words if w]


def windows(codes: Tensor, k: int, vocab_size: int) -> tuple[Tensor, Tensor]:
    """x int64 [n, k]: the k previous symbols, position j's index offset by j * vocab_size (one one-hot
    block per position); y int64 [n]: the symbol that follows."""
    x = codes.unfold(0, k, 1)[:-1] + torch.arange(k) * vocab_size
    return x.contiguous(), codes[k:].clone()


class TextData(TensorDataModule):
    """Next-character (level=char) or next-word (level=word) prediction by multinomial logistic regression
    on the one-hot encoding of the k previous symbols, split contiguously (train | val | test)."""

    name = "text"
    contiguous = True

    def __init__(
        self,
        path: str,
        level: str = "char",
        context: int = 1,
        vocab: str = "ascii",
        max_words: int = 2000,
        **kwargs,
    ):
        if level not in ("char", "word") or vocab not in ("ascii", "train") or context < 1 or max_words < 1:
            raise ConfigError(
                f"data.level={level}, data.vocab={vocab}, data.context={context}, "
                f"data.max_words={max_words}: need level char or word, vocab ascii or train, "
                "context >= 1, max_words >= 1"
            )
        if kwargs.get("scaling", "none") != "none":
            raise ConfigError("data=text inputs are symbol indices: data.scaling must stay none")
        self.path, self.level, self.context = path, level, context
        self.vocab, self.max_words = vocab, max_words
        super().__init__(**{**kwargs, "scaling": "none"})

    index_inputs = True  # x holds the indices of the one-hot inputs' ones, not numbers

    def poses(self) -> list[str]:
        return ["multiclass"]

    def mismatch_hint(self) -> str:
        return "the next symbol is one of the vocabulary's classes"

    def read(self) -> tuple[Tensor, Tensor]:
        text = read_book(self.path)
        symbols = text.lower() if self.level == "char" else words_of(text)
        # the symbols that training windows see, inputs and targets; the vocabulary comes from these only
        n_train = len(self.split_indices(len(symbols) - self.context)["train"]) + self.context
        self.symbols = self.vocabulary(symbols[:n_train])
        if self.symbols is None:  # the book's fixed ASCII encoding
            codes = ascii_codes(symbols)
        else:
            index = {s: i for i, s in enumerate(self.symbols)}
            codes = torch.tensor([index.get(s, 0) for s in symbols])
        self.vocab_size = len(self.symbols) if self.symbols is not None else ASCII
        return windows(codes, self.context, self.vocab_size)

    def vocabulary(self, train: str | list[str]) -> list[str] | None:
        """Index -> symbol, the unknown symbol first; None for the fixed ASCII codes."""
        if self.level == "char" and self.vocab == "ascii":
            return None
        counts = Counter(train)
        if self.level == "char":
            return ["\0", *sorted(counts)]
        return [UNKNOWN, *(w for w, _ in counts.most_common(self.max_words))]

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.num_classes = self.vocab_size  # every symbol can follow, also those absent from the text

    @property
    def in_features(self) -> int:
        """The width of the one-hot inputs: one block of vocab_size per context position."""
        return self.context * self.vocab_size

    def model_kwargs(self) -> dict:
        return {"language_metrics": True}
