"""A sentencepiece model (``sp.model``, as lopuhin/transformer-lm uses) behind the interface of
:class:`app.tokenizer.bpe.Encoder`: ``encode``, ``decode``, ``n_vocab``, ``eot_token`` and the byte
stream the streaming detokenizer reads.

Encoding is sentencepiece's own (``SentencePieceProcessor.encode``). Decoding follows
sentencepiece's ``Decode`` piece by piece, as bytes, so that it can be streamed: ``▁`` is a space,
a byte-fallback piece (``<0xE2>``) is that byte, control pieces (``<s>``, ``</s>``) are nothing,
``<unk>`` is its surface (`` ⁇ ``), and the first piece that is not a control piece loses one
leading ``▁`` when the model adds a dummy prefix (even when that leaves nothing). The bytes are
then read as UTF-8 as GPT-2's are, so :class:`~app.tokenizer.detokenizer.IncrementalDetokenizer`
never releases half a character. For valid text this is exactly
``SentencePieceProcessor.decode``; only invalid byte sequences differ (one U+FFFD per maximal
invalid run, as Python's ``"replace"``, where sentencepiece writes one per byte).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Set
from pathlib import Path
from typing import Literal

from app.errors import ModelFileError
from app.tokenizer.bpe import ENDOFTEXT, SPECIAL_TOKENS

SP_MODEL = "sp.model"  # the file name in a model folder
SPACE = "\u2581"  # sentencepiece's "▁"
# Pieces that may stand for end of text, in order of preference: GPT-2's name, then transformer-lm's.
EOT_PIECES = (ENDOFTEXT, "<endoftext>")


class SentencePieceEncoder:
    """``encode(text) -> ids`` and back with a sentencepiece model."""

    def __init__(self, processor):
        self._sp = processor
        n = processor.get_piece_size()
        self._kind: list[str] = []  # per id: "control", "unknown", "byte" or "text"
        self._bytes: list[bytes] = []  # per id, when not the first piece of a text
        self._lead_space: list[bool] = []  # per id: a text piece that starts with "▁"
        for i in range(n):
            piece = processor.id_to_piece(i)
            if processor.is_control(i):
                kind, data = "control", b""
            elif processor.is_unknown(i):
                kind, data = "unknown", processor.decode([i]).encode("utf-8")
            elif processor.is_byte(i):
                kind, data = "byte", bytes([int(piece[3:-1], 16)])
            else:
                kind, data = "text", piece.replace(SPACE, " ").encode("utf-8")
            self._kind.append(kind)
            self._bytes.append(data)
            self._lead_space.append(kind == "text" and piece.startswith(SPACE))
        self._strip_first = self._strips_first_space()
        self._eot = next(
            (i for name in EOT_PIECES if processor.id_to_piece(i := processor.piece_to_id(name)) == name),
            processor.eos_id() if processor.eos_id() >= 0 else None,
        )

    @classmethod
    def from_file(cls, path: Path | str) -> SentencePieceEncoder:
        """Load ``sp.model``; any problem raises :class:`ModelFileError` naming it."""
        import sentencepiece

        path = Path(path)
        if not path.is_file():
            raise ModelFileError(path, "file is missing")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelFileError(path, f"cannot be read ({exc.strerror or exc.__class__.__name__})") from None
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(data)
        except (RuntimeError, OSError, TypeError):
            raise ModelFileError(path, "not a sentencepiece model") from None
        if processor.get_piece_size() == 0:
            raise ModelFileError(path, "sentencepiece model has no pieces")
        return cls(processor)

    def _strips_first_space(self) -> bool:
        """Whether sentencepiece drops the ``▁`` a text starts with (a dummy-prefix model): asked of
        the processor itself on one piece that starts with ``▁``."""
        for i, lead_space in enumerate(self._lead_space):
            if lead_space:
                return not self._sp.decode([i]).startswith(" ")
        return False

    # -- properties ------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self._kind)

    @property
    def eot_token(self) -> int | None:
        """Id of the end-of-text piece: ``<|endoftext|>``, else ``<endoftext>`` (transformer-lm),
        else the model's ``</s>``; None if it has none of them."""
        return self._eot

    @property
    def special_tokens(self) -> frozenset[str]:
        """Names ``allowed_special`` may hold (``<|endoftext|>``, standing for :attr:`eot_token`)."""
        return SPECIAL_TOKENS

    # -- encoding --------------------------------------------------------------------------

    def encode(self, text: str, *, allowed_special: Set[str] | Literal["all"] = frozenset()) -> list[int]:
        """Sentencepiece's ids of ``text`` (its user-defined symbols always become their piece).

        With ``<|endoftext|>`` allowed (as :meth:`Encoder.encode`), each occurrence becomes
        :attr:`eot_token` and the text between is encoded piece by piece, each as a text of its
        own (as transformer-lm joins documents).
        """
        if allowed_special == "all":
            allowed_special = SPECIAL_TOKENS
        elif isinstance(allowed_special, str) or not isinstance(allowed_special, Set):
            raise ValueError(
                f'allowed_special must be a set of special-token names or "all", got {allowed_special!r}'
            )
        unknown = sorted(allowed_special - SPECIAL_TOKENS)
        if unknown:
            raise ValueError(f"not special tokens: {', '.join(map(repr, unknown))} (known: {ENDOFTEXT!r})")
        if ENDOFTEXT not in allowed_special or self._eot is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for n, part in enumerate(text.split(ENDOFTEXT)):
            if n:
                ids.append(self._eot)
            ids.extend(self._encode_ordinary(part))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._sp.encode(text) if text else []

    # -- decoding --------------------------------------------------------------------------

    def byte_stream(self) -> Callable[[int], bytes]:
        """A function from the ids of one text, in order, to the bytes each stands for (which may
        be part of a UTF-8 character). It remembers whether a piece other than a control piece
        has come: only the first such piece loses its leading ``▁``, as in sentencepiece."""
        started = False

        def token_bytes(token_id: int) -> bytes:
            nonlocal started
            i = self._check_id(token_id)
            data = self._bytes[i]
            if not started and self._strip_first and self._lead_space[i]:
                data = data[1:]
            started = started or self._kind[i] != "control"
            return data

        return token_bytes

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(map(self.byte_stream(), ids))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a token sequence; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _check_id(self, token_id: int) -> int:
        i = operator.index(token_id)
        if not 0 <= i < len(self._kind):
            raise ValueError(f"token id {i} is outside the vocabulary (0..{len(self._kind) - 1})")
        return i
