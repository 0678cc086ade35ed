"""The tokenizer of a model folder, whichever kind it is: GPT-2's byte-level BPE (``encoder.json`` +
``vocab.bpe``, or Hugging Face's ``vocab.json`` + ``merges.txt``) or a sentencepiece model
(``sp.model``). Everything that needs a model's tokenizer loads it here, and everything that copies
a tokenizer with a model (``init-model``, ``train``'s run folder, ``export``, the layout writers)
asks :func:`tokenizer_files` which files make it up."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from app.errors import ModelFileError
from app.tokenizer.bpe import ENDOFTEXT, GPT2_DIGEST, TOKENIZER_FILES, Encoder, bpe_files, read_vocab
from app.tokenizer.bundled import bundled_bpe_files
from app.tokenizer.sentencepiece_encoder import SP_MODEL, SentencePieceEncoder


class Tokenizer(Protocol):
    """What the server, the detokenizer and the commands use of a tokenizer."""

    @property
    def n_vocab(self) -> int: ...

    @property
    def eot_token(self) -> int | None: ...

    def encode(self, text: str, *, allowed_special: Set[str] | Literal["all"] = ...) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...

    def byte_stream(self) -> Callable[[int], bytes]: ...


@dataclass(frozen=True)
class TokenizerFiles:
    """The files that make up a tokenizer: a BPE vocabulary and its merges, or a sentencepiece model."""

    kind: Literal["bpe", "sentencepiece"]
    paths: tuple[Path, ...]  # (encoder.json or vocab.json, vocab.bpe or merges.txt), or (sp.model,)

    def load(self) -> Tokenizer:
        if self.kind == "bpe":
            return Encoder.from_files(*self.paths)
        return SentencePieceEncoder.from_file(self.paths[0])

    def eot_token(self) -> int | None:
        """The end-of-text id (a BPE's read from its vocabulary alone, without building the merges)."""
        if self.kind == "bpe":
            return read_vocab(self.paths[0]).get(ENDOFTEXT)
        return self.load().eot_token

    def names(self, layout: str = "openai") -> tuple[str, ...]:
        """Their file names in a model folder of ``layout``: OpenAI's ``encoder.json`` + ``vocab.bpe``,
        Hugging Face's (``"hf"``) ``vocab.json`` + ``merges.txt``; ``sp.model`` in either."""
        if self.kind == "sentencepiece":
            return (SP_MODEL,)
        return TOKENIZER_FILES[1] if layout == "hf" else TOKENIZER_FILES[0]

    def copy_to(self, dest: Path | str, layout: str = "openai") -> TokenizerFiles:
        """Copy the files into ``dest`` (created if needed) under :meth:`names`; the copies."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        copies = tuple(
            Path(shutil.copyfile(src, dest / name))
            for src, name in zip(self.paths, self.names(layout), strict=True)
        )
        return TokenizerFiles(self.kind, copies)


def find_tokenizer_files(folder: Path | str) -> TokenizerFiles | None:
    """The folder's tokenizer files: its BPE pair if any BPE file is there (:func:`bpe_files`, which
    names a missing partner), else its ``sp.model``; None when it has neither."""
    folder = Path(folder)
    if any((folder / name).exists() for pair in TOKENIZER_FILES for name in pair):
        return TokenizerFiles("bpe", bpe_files(folder))
    if (folder / SP_MODEL).exists():
        return TokenizerFiles("sentencepiece", (folder / SP_MODEL,))
    return None


def tokenizer_files(model_dir: Path | str) -> TokenizerFiles:
    """Which files make up the tokenizer of a model folder (:func:`find_tokenizer_files`);
    :class:`ModelFileError` when the folder or its tokenizer is missing."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFileError(model_dir, "model folder is missing")
    found = find_tokenizer_files(model_dir)
    if found is None:
        raise ModelFileError(
            model_dir / TOKENIZER_FILES[0][0],
            "file is missing; no tokenizer here (expected encoder.json and vocab.bpe, vocab.json and "
            f"merges.txt, or a sentencepiece {SP_MODEL})",
        )
    return found


def gpt2_tokenizer_files() -> TokenizerFiles:
    """GPT-2's own ``encoder.json`` and ``vocab.bpe`` (:mod:`app.tokenizer.bundled`)."""
    return TokenizerFiles("bpe", bundled_bpe_files())


def load_tokenizer(model_dir: Path | str) -> Tokenizer:
    """The tokenizer of a model folder: its BPE files if any is there, else its ``sp.model``;
    :class:`ModelFileError` when there is no tokenizer."""
    return tokenizer_files(model_dir).load()


def describe_tokenizer(tokenizer: Tokenizer) -> dict[str, str | int]:
    """What ``GET /models`` and a model card say of a tokenizer: its kind, ``"GPT-2 BPE"`` (GPT-2's
    own vocabulary and merges), ``"byte-level BPE"`` (another, e.g. ``tokenizer train``'s) or
    ``"sentencepiece"``, and its vocabulary size ``n_vocab``."""
    if isinstance(tokenizer, SentencePieceEncoder):
        kind = "sentencepiece"
    elif isinstance(tokenizer, Encoder) and tokenizer.n_vocab == 50257 and tokenizer.digest == GPT2_DIGEST:
        kind = "GPT-2 BPE"
    else:
        kind = "byte-level BPE"
    return {"kind": kind, "n_vocab": tokenizer.n_vocab}
