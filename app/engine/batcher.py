"""Continuous batching over one :class:`~app.engine.engine.Engine`.

A :class:`Sequence` is one request's generation state. :meth:`Batcher.admit` puts it in a free
slot (prefill + its first token); :meth:`Batcher.step` advances every admitted sequence by one
token in a single batched decode. A sequence leaves its slot the moment it finishes (EOS, length,
or :meth:`Batcher.finish` from the caller: stop sequence, cancellation), so a new one can join at
the next step. Single-threaded: the server runs it in the model's worker thread; offline use calls
:func:`generate`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from app.engine.engine import Engine
from app.engine.sampling import (
    SamplingParams,
    make_rng,
    penalize_repetition,
    resolve_seed,
    sample,
    token_logprob,
)


@dataclass(eq=False)
class Sequence:
    """One request being generated. ``generated`` includes a final EOS token when it ended on one."""

    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams = SamplingParams()
    stop_at_eos: bool = True
    seed: int = field(init=False)
    generated: list[int] = field(default_factory=list, init=False)
    logprobs: list[float] = field(default_factory=list, init=False)
    finish_reason: str | None = field(default=None, init=False)  # "length" | "eos_token" | caller's
    slot: int | None = field(default=None, init=False)
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a sequence needs at least one prompt token (use <|endoftext|> for none)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.seed = resolve_seed(self.params.seed)
        self._rng = make_rng(self.seed)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class TokenEvent:
    seq: Sequence
    token_id: int
    logprob: float  # log-probability under the model (temperature 1)
    finish_reason: str | None  # set on the sequence's last token


class Batcher:
    def __init__(self, engine: Engine, *, eos_id: int | None):
        self.engine = engine
        self.eos_id = eos_id
        self._active: dict[int, Sequence] = {}  # slot -> sequence

    @property
    def active(self) -> list[Sequence]:
        return list(self._active.values())

    def free_slots(self) -> int:
        return self.engine.slots - len(self._active)

    def admit(self, seq: Sequence) -> TokenEvent:
        """Prefill ``seq`` into a free slot and sample its first token."""
        if seq.finished or seq.slot is not None:
            raise ValueError("sequence was already admitted")
        free = [s for s in range(self.engine.slots) if s not in self._active]
        if not free:
            raise RuntimeError("no free slot")
        slot = free[0]
        # Sliding window from the start: a prompt longer than the context keeps its last tokens.
        ids = seq.prompt_ids[-self.engine.hp.n_ctx :]
        logits = self.engine.prefill(slot, ids)
        seq.slot = slot
        self._active[slot] = seq
        return self._emit(seq, logits)

    def step(self) -> list[TokenEvent]:
        """Advance every active sequence by one token."""
        if not self._active:
            return []
        seqs = list(self._active.values())
        logits = self.engine.step({s.slot: s.generated[-1] for s in seqs})
        return [self._emit(seq, row) for seq, row in zip(seqs, logits)]

    def finish(self, seq: Sequence, reason: str) -> None:
        """End ``seq`` now (stop sequence, cancellation, error) and free its slot."""
        if seq.finish_reason is None:
            seq.finish_reason = reason
        self._release(seq)

    def _emit(self, seq: Sequence, logits: np.ndarray) -> TokenEvent:
        penalty = seq.params.repetition_penalty
        if penalty != 1.0:
            scores = penalize_repetition(logits, seq.prompt_ids + seq.generated, penalty)
        else:
            scores = logits
        token = sample(scores, seq.params, seq._rng)
        logprob = token_logprob(logits, token)
        seq.generated.append(token)
        seq.logprobs.append(logprob)
        if seq.stop_at_eos and token == self.eos_id:
            seq.finish_reason = "eos_token"
        elif len(seq.generated) >= seq.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finished:
            self._release(seq)
        return TokenEvent(seq, token, logprob, seq.finish_reason)

    def _release(self, seq: Sequence) -> None:
        if seq.slot is not None and self._active.get(seq.slot) is seq:
            del self._active[seq.slot]
            self.engine.release(seq.slot)
        seq.slot = None


def generate(engine: Engine, seqs: Iterable[Sequence], *, eos_id: int | None) -> list[Sequence]:
    """Run ``seqs`` to completion with continuous batching; returns them, finished, in order."""
    seqs = list(seqs)
    pending = deque(seqs)
    batcher = Batcher(engine, eos_id=eos_id)
    while pending or batcher.active:
        while pending and batcher.free_slots():
            batcher.admit(pending.popleft())
        batcher.step()
    return seqs
