"""Continuous batching over one :class:`~app.engine.engine.Engine`, with batched, chunked prefill.

A :class:`Entry` is one request's generation state. :meth:`Batcher.admit` gives it a free slot
(no compute); :meth:`Batcher.step` then does one round of work: one batched decode call that
advances every sequence that already has tokens, and one prefill call. The prefill call packs the
first pieces of several waiting prompts (up to the engine's ``prefill_chunk`` padded tokens), or
the next chunk of one long prompt, so a burst of arrivals is prefilled together and a 1,000-token
prompt is written a chunk per round while the others keep streaming (vLLM's chunked prefill). A
sequence emits its first token in the round its prompt is complete.

Slots stay dense: at the start of a round, a live sequence whose slot lies above the batch bucket
that the live count needs moves down to a free slot (:meth:`Engine.move`), so a request that
outlives a burst decodes as a one-row program, not as the burst's highest slot.

The window slide is the batcher's too: a sequence whose slot holds ``n_ctx`` tokens leaves the
decode rounds and re-prefills its last ``window_keep`` tokens (plus its newest token) through the
same plan as a waiting prompt (its first piece batched with others', the rest a chunk per
round), emitting its next token when done, while the other streams keep decoding. It is written
``slide_chunk`` tokens per round (64 by default, a quarter of a prompt's chunk: at 124M on 2 cores
a 256-token piece cost ~5 decode rounds of 8 streams, and every stream waits for it), the chunks
:meth:`Engine.step_scores`'s own slide runs, so its tokens are the serial slide's.

A sequence leaves its slot the moment it finishes (EOS, length, or :meth:`Batcher.finish` from the
caller: stop sequence, cancellation), so a new one can join at the next round. Sampling runs for
the whole batch at once (:func:`~app.engine.sampling.sample_batch`), each row with its own
parameters and seeded generator; a row whose scores are not finite (NaN, an infinity) fails its
own sequence (:class:`NonFiniteScores`) and the others draw what they draw alone.
Single-threaded: the server runs it in the model's worker thread; offline use calls
:func:`generate`.
"""

from __future__ import annotations

import time
from collections import abc, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from app.engine.buckets import round_up
from app.engine.engine import Engine, Piece, Scores
from app.engine.sampling import (
    SamplingParams,
    alternatives,
    distribution,
    make_rng,
    penalize_repetition,
    resolve_seed,
    sample,
    sample_batch,
)
from app.engine.spec import GenerationSpec
from app.engine.speculative import accept, propose

# New prompts waiting per decoding stream from which a round prefills them in full pieces rather
# than a slide_chunk's worth (TGI's router default for the same trade).
WAITING_SERVED_RATIO = 1.2


@dataclass(eq=False)
class Entry:
    """One admitted request: its :class:`GenerationSpec` and its generation state. ``generated``
    includes a final EOS token when it ended on one."""

    spec: GenerationSpec
    seed: int = field(init=False)  # the spec's seed, or a fresh one (reported back)
    generated: list[int] = field(default_factory=list, init=False)
    logprobs: list[float] = field(default_factory=list, init=False)
    finish_reason: str | None = field(default=None, init=False)  # "length" | "eos_token" | caller's
    slot: int | None = field(default=None, init=False)
    # What the slot must hold before the next token: the prompt's window, or a slid window.
    prefill_ids: list[int] = field(default_factory=list, init=False)
    prefilled: int = field(default=0, init=False)  # of prefill_ids, written into the slot so far
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.seed = resolve_seed(self.spec.sampling.seed)
        self._rng = make_rng(self.seed)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prefilling(self) -> bool:
        return self.prefilled < len(self.prefill_ids)

    def context(self) -> list[int]:
        """The prompt and the tokens generated so far (what a repetition penalty looks at)."""
        return [*self.spec.prompt_ids, *self.generated]


@dataclass(frozen=True)
class TokenEvent:
    seq: Entry
    token_id: int
    logprob: float  # log-probability under the model (temperature 1)
    finish_reason: str | None  # set on the sequence's last token
    top: tuple[tuple[int, float], ...] = ()  # (id, logprob) of the ``top_n`` most likely alternatives


@dataclass(frozen=True)
class StepFailure:
    """A compute call failed: these sequences were ended with ``finish_reason == "error"``."""

    seqs: list[Entry]
    error: Exception
    phase: str  # "decode" | "prefill"


class NonFiniteScores(ArithmeticError):
    """A row's scores hold NaN or an infinity (the model's numbers overflowed): no token can be
    drawn from them, so that row's sequence fails and the others of its call go on."""

    def __init__(self) -> None:
        super().__init__("the model produced non-finite scores")


@dataclass
class StepTimes:
    decode_s: float = 0.0  # the last round's decode call (0 when there was none)
    prefill_s: float = 0.0  # the last round's prefill call (0 when there was none)


class Batcher:
    def __init__(self, engine: Engine, *, eos_id: int | None):
        self.engine = engine
        self.eos_id = eos_id
        self._slots: dict[int, Entry] = {}  # slot -> admitted sequence (prefilling or decoding)
        self._waiting: deque[Entry] = deque()  # admitted, prompt not fully written, oldest first
        self.times = StepTimes()

    @property
    def active(self) -> list[Entry]:
        return list(self._slots.values())

    def free_slots(self) -> int:
        return self.engine.slots - len(self._slots)

    def admit(self, spec: GenerationSpec) -> Entry:
        """A new sequence for ``spec`` in the lowest free slot; its prompt is written by the next
        :meth:`step` calls."""
        free = [s for s in range(self.engine.slots) if s not in self._slots]
        if not free:
            raise RuntimeError("no free slot")
        seq = Entry(spec)
        seq.slot = free[0]
        # Sliding window from the start: a prompt longer than the context keeps its last tokens.
        seq.prefill_ids = list(spec.prompt_ids[-self.engine.hp.n_ctx :])
        self._slots[seq.slot] = seq
        self._waiting.append(seq)
        return seq

    def step(self) -> list[TokenEvent | StepFailure]:
        """One round: decode every sequence that has tokens, then one prefill call."""
        events: list[TokenEvent | StepFailure] = []
        self._compact()
        self._slide_full_windows()
        decoding = [s for s in self._slots.values() if s.generated and not s.prefilling]
        self.times = StepTimes()
        if decoding:
            t0 = time.perf_counter()
            draft = self._draft(decoding[0]) if len(decoding) == 1 else []
            if draft:
                events += self._speculate(decoding[0], draft)
            else:
                tokens = {s.slot: s.generated[-1] for s in decoding}
                events += self._run(decoding, lambda: self.engine.step_scores(tokens), phase="decode")
            self.times.decode_s = time.perf_counter() - t0
        pieces = self._prefill_plan(decoding=len(decoding))
        if pieces:
            t0 = time.perf_counter()
            events += self._prefill(pieces)
            self.times.prefill_s = time.perf_counter() - t0
        return events

    def finish(self, seq: Entry, reason: str) -> None:
        """End ``seq`` now (stop sequence, cancellation, error) and free its slot."""
        if seq.finish_reason is None:
            seq.finish_reason = reason
        self._release(seq)

    # ---- slots ----

    def _compact(self) -> None:
        """Move live sequences above the batch bucket of the live count into free lower slots."""
        if not self._slots:
            return
        limit = round_up(len(self._slots), self.engine.batch_buckets)
        for src in sorted((s for s in self._slots if s >= limit), reverse=True):
            dst = min(s for s in range(limit) if s not in self._slots)
            seq = self._slots.pop(src)
            if self.engine.occupied(src):
                self.engine.move(src, dst)
            seq.slot = dst
            self._slots[dst] = seq

    def _slide_full_windows(self) -> None:
        """Queue every decoding sequence whose slot is full for a re-prefill of its kept window
        (first in line: a stream is waiting mid-answer)."""
        n_ctx, keep = self.engine.hp.n_ctx, self.engine.window_keep
        for seq in self._slots.values():
            if seq.generated and not seq.prefilling and self.engine.length(seq.slot) >= n_ctx:
                seq.prefill_ids = (self.engine.window(seq.slot) + [seq.generated[-1]])[-keep:]
                seq.prefilled = 0
                self._waiting.appendleft(seq)

    # ---- prefill ----

    def _prefill_plan(self, *, decoding: int) -> list[Piece]:
        """The oldest waiting prompt's next chunk alone, or the first pieces of the oldest waiting
        prompts that fit one prefill call together.

        Every decoding stream waits on the round (124M, 2 AMD cores: seven 32-token first pieces in
        one call 723 ms, two 242 ms, a decode round of 8 streams at context 1024 241 ms). So while
        streams decode, first pieces are packed only up to ``slide_chunk`` padded tokens (the
        oldest always goes), unless the waiting new prompts number at least
        ``WAITING_SERVED_RATIO`` times the decoding streams (TGI's ``waiting_served_ratio``): a
        burst is then prefilled in full pieces, since most of the work is waiting (32 clients at
        once: served 0.69x offline, TTFT p50 9.8 s with the cap alone). Where a prompt is cut into
        chunks never depends on the load, only how many first pieces share a call."""
        if not self._waiting:
            return []
        head = self._waiting[0]
        if head.prefilled:
            start, end = head.prefilled, head.prefilled + self._chunk(head)
            return [Piece(head.slot, head.prefill_ids[start:end], start)]
        new = sum(1 for s in self._waiting if not s.generated)
        burst = new >= WAITING_SERVED_RATIO * decoding
        budget = self.engine.chunk_buckets[-1] if burst else self.engine.slide_chunk
        if self.engine.config.batch_invariant:
            budget = 0  # one piece a call: a prompt's rows never share a matmul with another's
        plan: list[Piece] = []
        for seq in self._waiting:
            ids = seq.prefill_ids[: self._chunk(seq)]
            lengths = [len(p.ids) for p in plan] + [len(ids)]
            if seq.prefilled or not self.engine.piece_fits(lengths):
                break
            if plan and self.engine.padded_tokens(lengths) > budget:
                break
            plan.append(Piece(seq.slot, ids, 0))
        return plan

    def _chunk(self, seq: Entry) -> int:
        return chunk_size(self.engine, sliding=bool(seq.generated))

    def _prefill(self, pieces: list[Piece]) -> list[TokenEvent | StepFailure]:
        seqs = [self._slots[p.slot] for p in pieces]
        for seq, piece in zip(seqs, pieces):
            seq.prefilled = piece.start + len(piece.ids)
        done = [i for i, s in enumerate(seqs) if not s.prefilling]
        for i in done:
            self._waiting.remove(seqs[i])
        return self._run(seqs, lambda: self.engine.prefill_batch(pieces), phase="prefill", rows=done)

    # ---- speculative decoding (a lone stream) ----

    def _draft(self, seq: Entry) -> list[int]:
        """A prompt-lookup draft for the only decoding sequence, or [] when speculation is off, not
        allowed for it (repetition penalty: its distributions depend on the draft), or out of room."""
        k = self.engine.config.speculative_tokens
        if not k or not seq.spec.speculative or seq.spec.sampling.repetition_penalty != 1.0:
            return []
        if self.engine.config.batch_invariant:
            return []  # a verify call scores 5 positions with prefill's kernels, not decode's
        context = self.engine.window(seq.slot) + [seq.generated[-1]]
        if len(context) + k > self.engine.hp.n_ctx:
            return []  # the window slides first (a plain step)
        return propose(context, k=k, min_ngram=2)  # a lone repeated token is too weak a hint

    def _speculate(self, seq: Entry, draft: list[int]) -> list[TokenEvent | StepFailure]:
        """Verify ``draft`` in one call and emit the tokens plain decoding would draw from the same
        random stream (:func:`~app.engine.speculative.accept`), cut at EOS or the token limit."""
        held = len(self.engine.window(seq.slot))
        try:
            scores = self.engine.verify(seq.slot, [seq.generated[-1], *draft])
        except Exception as exc:  # noqa: BLE001 - as a failed decode call
            self.finish(seq, "error")
            return [StepFailure([seq], exc, "decode")]
        if not finite_rows(scores).all():  # any position: a broken model, whichever it accepts
            self.finish(seq, "error")
            return [StepFailure([seq], NonFiniteScores(), "decode")]
        emitted = accept(draft, _Lazy(scores.logits, seq.spec.sampling), seq._rng)
        if seq.slot is not None:
            self.engine.truncate(seq.slot, held + len(emitted))  # the input token + accepted drafts
        events = []
        for i, token in enumerate(emitted):
            top = self._alternatives(seq, scores, i)
            events.append(self._append(seq, token, float(scores.logits[i, token] - scores.lse[i]), top))
            if seq.finished:
                break
        return events

    # ---- sampling ----

    def _run(
        self, seqs: list[Entry], call, *, phase: str, rows: list[int] | None = None
    ) -> list[TokenEvent | StepFailure]:
        """Run one compute ``call`` for ``seqs`` and emit a token for ``rows`` of it (all by default);
        a failure ends all of ``seqs``."""
        try:
            scores = call()
        except Exception as exc:  # noqa: BLE001 - the caller decides what a failure means for its requests
            for seq in seqs:
                self.finish(seq, "error")
            return [StepFailure(seqs, exc, phase)]
        rows = list(range(len(seqs))) if rows is None else rows
        if not rows:
            return []
        return self._emit([seqs[i] for i in rows], Scores(*(a[rows] for a in scores)), phase)

    def _emit(self, seqs: list[Entry], scores: Scores, phase: str) -> list[TokenEvent | StepFailure]:
        """A token for each row of ``scores``; a row that is not finite fails its sequence alone."""
        finite = finite_rows(scores)
        if finite.all():
            return self._tokens(seqs, scores)
        bad = [seq for seq, ok in zip(seqs, finite) if not ok]
        for seq in bad:
            self.finish(seq, "error")
        keep = np.flatnonzero(finite)
        events = self._tokens([seqs[i] for i in keep], Scores(*(a[keep] for a in scores)))
        return [StepFailure(bad, NonFiniteScores(), phase), *events]

    def _tokens(self, seqs: list[Entry], scores: Scores) -> list[TokenEvent]:
        """Each row's token, drawn for the batch at once, appended to its sequence."""
        if not seqs:
            return []
        tokens = self._sample(seqs, scores)
        return [
            self._append(
                seq,
                int(token),
                float(scores.logits[i, token] - scores.lse[i]),
                self._alternatives(seq, scores, i),
            )
            for i, (seq, token) in enumerate(zip(seqs, tokens))
        ]

    def _alternatives(self, seq: Entry, scores: Scores, row: int) -> tuple[tuple[int, float], ...]:
        """Row ``row``'s most likely tokens for ``seq`` (before its new token is appended): from the
        penalised logits when it has a repetition penalty, as its token was drawn; from the model's
        own logits at temperature 1 when it asks for ``raw_alternatives``."""
        spec = seq.spec
        if not spec.top_n_tokens:
            return ()
        logits, ranked = scores.logits[row], scores.top_ids[row]
        if spec.raw_alternatives:
            return tuple(alternatives(logits, spec.top_n_tokens, 1.0, top_ids=ranked))
        if spec.sampling.repetition_penalty != 1.0:
            logits = penalize_repetition(logits, seq.context(), spec.sampling.repetition_penalty)
            ranked = None
        return tuple(alternatives(logits, spec.top_n_tokens, spec.sampling.temperature, top_ids=ranked))

    def _append(
        self, seq: Entry, token: int, logprob: float, top: tuple[tuple[int, float], ...] = ()
    ) -> TokenEvent:
        seq.generated.append(token)
        seq.logprobs.append(logprob)
        if seq.spec.stop_at_eos and token == self.eos_id:
            seq.finish_reason = "eos_token"
        elif len(seq.generated) >= seq.spec.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finished:
            self._release(seq)
        return TokenEvent(seq, token, logprob, seq.finish_reason, top)

    def _sample(self, seqs: list[Entry], scores: Scores) -> np.ndarray:
        """Every row's token; rows with a repetition penalty sample from their penalised logits."""
        plain = [i for i, s in enumerate(seqs) if s.spec.sampling.repetition_penalty == 1.0]
        out = np.empty(len(seqs), np.int64)
        if plain:
            out[plain] = sample_batch(
                scores.logits[plain],
                [seqs[i].spec.sampling for i in plain],
                [seqs[i]._rng for i in plain],
                top_ids=scores.top_ids[plain],
                top_logits=scores.top_logits[plain],
            )
        for i, seq in enumerate(seqs):
            sampling = seq.spec.sampling
            if sampling.repetition_penalty != 1.0:
                row = penalize_repetition(scores.logits[i], seq.context(), sampling.repetition_penalty)
                out[i] = sample(row, sampling, seq._rng)
        return out

    def _release(self, seq: Entry) -> None:
        if seq.slot is not None and self._slots.get(seq.slot) is seq:
            del self._slots[seq.slot]
            if seq in self._waiting:
                self._waiting.remove(seq)
            if self.engine.occupied(seq.slot):
                self.engine.release(seq.slot)
        seq.slot = None


class _Lazy(abc.Sequence):
    """The sampling distribution of each verified row, computed when ``accept`` first reads it
    (it stops at the first rejection, so later rows of a top-p request are never sorted)."""

    def __init__(self, logits: np.ndarray, params: SamplingParams):
        self._logits, self._params, self._cache = logits, params, {}

    def __len__(self) -> int:
        return len(self._logits)

    def __getitem__(self, i):
        if i not in self._cache:
            self._cache[i] = distribution(self._logits[i], self._params)
        return self._cache[i]


def finite_rows(scores: Scores) -> np.ndarray:
    """Which rows of ``scores`` hold only finite logits (a NaN or an infinity makes the row's
    distribution, and so its token, meaningless); ~40 us for 4 rows of GPT-2's vocabulary."""
    return np.isfinite(scores.logits).all(axis=1)


def chunk_size(engine: Engine, *, sliding: bool) -> int:
    """Tokens per prefill call of one sequence: a slide (a sequence with tokens already) goes in
    the engine's smaller ``slide_chunk``, so the streams waiting on each round wait less; a new
    prompt in the longest piece, for its first token's sake."""
    return engine.slide_chunk if sliding else engine.chunk_buckets[-1]


def programs(engine: Engine) -> list[tuple[str, tuple[int, ...]]]:
    """Every program the batcher's rounds can reach on ``engine`` (what the server's warm-up
    compiles): the engine's step programs, and the prefill program of every call
    :meth:`Batcher._prefill_plan` can make: first pieces alone or packed (as
    :meth:`Engine.piece_fits` allows), and each later chunk of a prompt or a slide, cut by
    :func:`chunk_size` from every length a window can have."""
    n_ctx = engine.hp.n_ctx
    prefills: set[tuple[int, int, int]] = set()
    for n in engine.piece_buckets:
        for t in engine.chunk_buckets:
            if n == 1 or engine.piece_fits([t] * n):
                prefills.add(engine.prefill_shape([(0, t)] * n))
    for chunk in {chunk_size(engine, sliding=False), chunk_size(engine, sliding=True)}:
        for start in range(chunk, n_ctx, chunk):
            for length in range(1, min(chunk, n_ctx - start) + 1):
                prefills.add(engine.prefill_shape([(start, length)]))
    return sorted([*engine.step_programs(), *(("prefill", shape) for shape in prefills)])


def generate(engine: Engine, specs: Iterable[GenerationSpec], *, eos_id: int | None) -> list[Entry]:
    """Run ``specs`` to completion with continuous batching; their sequences, finished, in order."""
    pending = deque(specs)
    seqs: list[Entry] = []
    batcher = Batcher(engine, eos_id=eos_id)
    while pending or batcher.active:
        while pending and batcher.free_slots():
            seqs.append(batcher.admit(pending.popleft()))
        for event in batcher.step():
            if isinstance(event, StepFailure):
                raise event.error
    return seqs
