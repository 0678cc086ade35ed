"""Token-by-token text for streaming: never emits half of a UTF-8 character.

A GPT-2 token is a run of bytes, not of characters (byte-level BPE, openai/gpt-2
``src/encoder.py``): an emoji or a CJK character is often split over two or three tokens. A
sentencepiece model with byte fallback does the same with its ``<0xE2>`` pieces. Either tokenizer
turns the ids of a text into a stream of bytes (``byte_stream()``: for BPE each token's own bytes,
for sentencepiece also whether the text has started, which decides its leading space). The
incremental UTF-8 decoder of :mod:`codecs` holds back an incomplete trailing sequence until its
continuation arrives, and replaces invalid bytes exactly as a one-shot ``bytes.decode("utf-8",
"replace")`` does, so the pieces add up to the tokenizer's ``decode`` of the whole sequence.
"""

from __future__ import annotations

import codecs

from app.tokenizer.load import Tokenizer


class IncrementalDetokenizer:
    """``push(id)`` returns the newly completed text; ``flush()`` the rest.

    ``"".join(push(i) for i in ids) + flush() == encoder.decode(ids)``, in O(1) amortised per
    token: only the held-back bytes (at most 3) are carried between calls.
    """

    def __init__(self, encoder: Tokenizer):
        self._encoder = encoder
        self._bytes_of = encoder.byte_stream()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token ("" while a character is still incomplete)."""
        return self._decoder.decode(self._bytes_of(token_id))

    def flush(self) -> str:
        """Whatever is held back (an incomplete character becomes U+FFFD); then start afresh."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._bytes_of = self._encoder.byte_stream()
        return text

    @property
    def pending(self) -> bool:
        """True while bytes of an incomplete character are held back."""
        return bool(self._decoder.getstate()[0])
