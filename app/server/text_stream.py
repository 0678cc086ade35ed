"""From generated token ids to the text a client sees, one token at a time.

Two jobs, both in the model's worker thread so a stop sequence frees the slot at once:

* never emit half of a UTF-8 character (:class:`~app.tokenizer.detokenizer.IncrementalDetokenizer`);
* stop sequences that span token boundaries: text that could be the start of a stop sequence is
  held back until it either completes one (generation ends; the stop sequence and anything after
  it are dropped, as TGI and OpenAI do) or cannot any more (it is released).

Invariant: the concatenation of every ``delta`` returned equals the final ``text``.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.tokenizer.detokenizer import IncrementalDetokenizer
from app.tokenizer.load import Tokenizer


class TextStream:
    def __init__(self, encoder: Tokenizer, stop: Sequence[str] = ()):
        if any(not s for s in stop):
            raise ValueError("stop sequences must not be empty")
        self._detok = IncrementalDetokenizer(encoder)
        self._stop = tuple(stop)
        self._held = ""  # decoded but not yet released: may be the start of a stop sequence
        self.text = ""  # released so far
        self.stopped_by: str | None = None

    def push(self, token_id: int, *, special: bool = False) -> str:
        """Feed one generated token; return the text released by it (possibly empty).

        ``special`` tokens (``<|endoftext|>``) add no text. After a stop sequence matched,
        :attr:`stopped_by` is set and further pushes are ignored.
        """
        if self.stopped_by is not None:
            return ""
        if not special:
            self._held += self._detok.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        """End of generation: release what is held (including a trailing partial character)."""
        if self.stopped_by is None:
            self._held += self._detok.flush()
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        # Released text never ends with a proper prefix of a stop sequence (that part is held),
        # so a match lies wholly inside the held text.
        hits = [(i, len(s), s) for s in self._stop if (i := self._held.find(s)) != -1]
        if hits:
            cut, _, self.stopped_by = min(hits)
            out, self._held = self._held[:cut], ""
        else:
            keep = 0 if final else self._partial_stop_suffix(self._held)
            out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        self.text += out
        return out

    def _partial_stop_suffix(self, held: str) -> int:
        """Length of the longest suffix of ``held`` that is a proper prefix of a stop sequence."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(held)), best, -1):
                if held.endswith(s[:n]):
                    best = n
                    break
        return best
