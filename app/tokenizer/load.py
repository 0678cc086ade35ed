"""The tokenizer of a model folder, whichever kind it is: GPT-2's byte-level BPE (``encoder.json`` +
``vocab.bpe``, or Hugging Face's ``vocab.json`` + ``merges.txt``) or a sentencepiece model
(``sp.model``). Everything that needs a model's tokenizer loads it here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from pathlib import Path
from typing import Literal, Protocol

from app.errors import ModelFileError
from app.tokenizer.bpe import TOKENIZER_FILES, Encoder
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


def load_tokenizer(model_dir: Path | str) -> Tokenizer:
    """The folder's BPE files if any is there (:meth:`Encoder.from_dir`, which names a missing
    partner), else its ``sp.model``; :class:`ModelFileError` when there is no tokenizer."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFileError(model_dir, "model folder is missing")
    if any((model_dir / name).exists() for pair in TOKENIZER_FILES for name in pair):
        return Encoder.from_dir(model_dir)
    if (model_dir / SP_MODEL).exists():
        return SentencePieceEncoder.from_file(model_dir / SP_MODEL)
    raise ModelFileError(
        model_dir / TOKENIZER_FILES[0][0],
        "file is missing; no tokenizer here (expected encoder.json and vocab.bpe, vocab.json and "
        f"merges.txt, or a sentencepiece {SP_MODEL})",
    )
