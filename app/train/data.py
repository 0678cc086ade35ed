"""Training data: text or pre-encoded ``.npz`` in, token windows out.

Follows nshepperd's gpt-2 ``load_dataset.py``: files are read (a single file, a folder, or a glob),
small files are combined into chunks of at least ``combine`` characters with ``<|endoftext|>``
between them, and training samples random windows of the concatenated chunks (weighted by length).

The window of every step is a pure function of ``(seed, step)``, so the "data position" a checkpoint
must keep is just the step number: a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.keywords.dataset import read_jsonl
from app.tokenizer.bpe import ENDOFTEXT
from app.tokenizer.load import Tokenizer


def _files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.is_file())
    if p.is_file():
        return [p]
    found = sorted(Path(q) for q in glob.glob(path, recursive=True) if os.path.isfile(q))
    if not found:
        raise FileNotFoundError(f"no dataset at {path!r}: not a file, a folder, or a glob that matches files")
    return found


def _read_text(f: Path, encoding: str) -> str:
    try:
        return f.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{f}: not valid {encoding} text (byte {exc.start}); use --encoding") from None


def read_texts(path: str, *, encoding: str = "utf-8") -> Iterator[str]:
    """The texts of a corpus, as :func:`load_chunks` finds its files (a file, a folder or a glob):
    each file whole, except ``.jsonl`` files, one ``"text"`` field per line. For training a
    tokenizer, where ``.npz`` token arrays have no text: they raise ``ValueError``."""
    for f in _files(path):
        if f.suffix == ".npz":
            raise ValueError(f"{f}: token arrays (.npz) hold no text; give the text files")
        yield from _documents(f, encoding)


def _documents(f: Path, encoding: str) -> Iterator[str]:
    """A text file's documents: the file whole, or a ``.jsonl`` file's ``"text"`` fields."""
    if f.suffix == ".jsonl":
        yield from (doc.text for doc in read_jsonl(f, encoding))
    else:
        yield _read_text(f, encoding)


def load_chunks(
    path: str, enc: Tokenizer, *, combine: int = 50000, encoding: str = "utf-8", progress: bool = True
) -> list[np.ndarray]:
    """Token arrays (``int32``) from ``path``: ``.npz`` files are taken as already encoded; every
    document (a text file, or a line of a ``.jsonl`` file) ends with ``<|endoftext|>``."""
    chunks: list[np.ndarray] = []
    raw = ""
    for f in tqdm(_files(path), desc="encoding", unit="file", disable=not progress):
        if f.suffix == ".npz":
            with np.load(f) as npz:
                chunks.extend(np.asarray(npz[k], dtype=np.int32) for k in npz.files)
            continue
        for text in _documents(f, encoding):
            if len(raw) >= combine:
                chunks.append(_encode(enc, raw))
                raw = ""
            raw += text + ENDOFTEXT
    if raw:
        chunks.append(_encode(enc, raw))
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        raise ValueError(f"dataset {path!r} holds no text")
    return chunks


def _encode(enc: Tokenizer, text: str) -> np.ndarray:
    """Encode, mapping each literal ``<|endoftext|>`` to the special token (as files are joined by it)."""
    return np.asarray(enc.encode(text, allowed_special="all"), dtype=np.int32)


def save_npz(path: str | Path, chunks: list[np.ndarray]) -> None:
    np.savez_compressed(path, *chunks)


class Sampler:
    """Random windows of ``length`` tokens from chunks, each chunk weighted by its length."""

    def __init__(self, chunks: list[np.ndarray], *, seed: int):
        self.tokens = np.concatenate(chunks).astype(np.int32)
        self.seed = seed

    @property
    def total(self) -> int:
        return len(self.tokens)

    def batch(self, step: int, batch_size: int, length: int) -> np.ndarray:
        """``[batch_size, length]`` windows for ``step`` (the same every time it is asked)."""
        if self.total < length + 1:
            raise ValueError(
                f"the dataset has {self.total} tokens; need more than the context length {length}"
            )
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, self.total - length, size=batch_size)
        return np.stack([self.tokens[s : s + length] for s in starts])

    def split(self, fraction: float) -> tuple[Sampler, Sampler]:
        """A (train, validation) pair: the last ``fraction`` of tokens held out."""
        cut = int(self.total * (1 - fraction))
        return Sampler([self.tokens[:cut]], seed=self.seed), Sampler([self.tokens[cut:]], seed=self.seed + 1)
