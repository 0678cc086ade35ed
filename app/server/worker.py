"""One model's worker: a thread that runs continuous batching and hands tokens to asyncio.

The event loop never calls TensorFlow. A route builds a :class:`GenerationRequest`, calls
:meth:`ModelWorker.submit` (which refuses at once when the worker is full or stopping) and reads
events from the returned :class:`RequestHandle`. The worker thread admits queued requests into free
slots at step boundaries, advances all active ones by one token per step, and delivers each event
with ``loop.call_soon_threadsafe`` into the request's own asyncio queue.

A request ends at EOS, a stop sequence, its token limit, cancellation (the client left: its slot
is freed before the next step; if it was still queued it is never prefilled) or an error. An
exception in a step fails the requests of that step only; the worker goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from app.engine.batcher import Batcher, Entry, StepFailure, TokenEvent
from app.engine.load import LoadedModel
from app.engine.sampling import SamplingParams
from app.server.metrics import Metrics
from app.server.text import TextStream

log = logging.getLogger("gpt2serve.worker")


class Overloaded(Exception):
    """The model's slots and queue are full."""


class Unavailable(Exception):
    """The worker is not accepting requests (stopping, or its model failed)."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True
    speculative: bool = True  # may use speculative decoding (same tokens; off for timing-sensitive clients)
    top_n_tokens: int = 0  # most likely alternatives reported with each token
    raw_alternatives: bool = False  # their logprobs under the model (temperature 1), not as sampled


@dataclass(frozen=True)
class Token:
    index: int  # 0-based position among generated tokens
    id: int
    text: str  # text released by this token (may be empty: held back or a split character)
    logprob: float
    special: bool
    finish_reason: str | None = None  # set on a request's last token; its Done follows at once
    top: tuple[tuple[int, float], ...] = ()  # (id, logprob): the most likely alternatives (top_n_tokens)


@dataclass(frozen=True)
class Done:
    finish_reason: str  # length | eos_token | stop_sequence | cancelled
    generated_text: str
    token_ids: list[int]
    prompt_tokens: int
    seed: int | None  # the seed sampling used (None: cancelled before it started, with no seed given)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Failed:
    error_type: str  # generation (a step failed) | validation (the engine refused the request)
    message: str


Event = Token | Done | Failed


@dataclass(eq=False)
class RequestHandle:
    """The asyncio side of one request."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    enqueued_at: float = field(default_factory=time.monotonic)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client left: free the slot at the next step boundary (or never prefill)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def deliver(self, event: Event) -> None:
        """Called from the worker thread."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """Tokens, then exactly one Done or Failed."""
        while True:
            event = await self.queue.get()
            yield event
            if not isinstance(event, Token):
                return


@dataclass(eq=False)
class _Active:
    handle: RequestHandle
    seq: Entry
    text: TextStream
    last_token_at: float = 0.0


class ModelWorker:
    def __init__(self, name: str, model: LoadedModel, *, queue_size: int, metrics: Metrics | None = None):
        self.name = name
        self.model = model
        self.queue_size = queue_size
        self.metrics = metrics
        self.capacity = model.engine.slots + queue_size
        self._batcher = Batcher(model.engine, eos_id=model.encoder.eot_token)
        self._cond = threading.Condition()
        self._pending: deque[RequestHandle] = deque()
        self._live: dict[Entry, _Active] = {}
        self._in_flight = 0  # accepted and not yet answered with Done/Failed
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"worker-{name}", daemon=True)
        self.heartbeat = time.monotonic()  # last time the loop went round (health)
        self.busy_since: float | None = None  # start of the current compute call, None when idle
        self.last_error: str | None = None
        self.peak_active = 0  # most slots busy at once (shows that batching happens)
        self.step_hook: Callable[[], None] | None = None  # tests: a spy that may raise inside a step

    # ---- control (any thread) ----

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; the thread exits once every accepted request is answered."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._live)

    @property
    def prefilling(self) -> int:
        """Admitted requests whose prompt is not fully written yet (no token so far)."""
        return sum(1 for live in list(self._live.values()) if not live.seq.generated)

    def submit(
        self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestHandle:
        handle = RequestHandle(request, loop or asyncio.get_running_loop())
        with self._cond:
            if self._stopping:
                raise Unavailable(f"model {self.name} is shutting down")
            if not self._thread.is_alive():
                raise Unavailable(f"model {self.name} worker is not running")
            if self._in_flight >= self.capacity:
                raise Overloaded(
                    f"model {self.name} is overloaded: {self.model.engine.slots} slots and "
                    f"{self.queue_size} queue places are taken"
                )
            self._in_flight += 1
            self._pending.append(handle)
            self._cond.notify()
        self._gauge()
        return handle

    # ---- worker thread ----

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._live and not self._stopping:
                    self.heartbeat = time.monotonic()
                    self._cond.wait(timeout=1.0)
                if self._stopping and not self._pending and not self._live:
                    return
                admit = []
                while self._pending and len(self._live) + len(admit) < self.model.engine.slots:
                    admit.append(self._pending.popleft())
            self.heartbeat = time.monotonic()
            for handle in admit:
                self._admit(handle)
            self._drop_cancelled()
            if admit:
                self._gauge()  # before the step: a long step must not hide the admissions from the gauges
            if self._live:
                self._step()
            self._gauge()

    def _admit(self, handle: RequestHandle) -> None:
        """Give a queued request a slot; its prompt is prefilled by the next steps."""
        if handle.cancelled:  # left while queued: never prefilled
            self._count_cancel()
            self._answer(
                handle,
                Done("cancelled", "", [], len(handle.request.prompt_ids), handle.request.sampling.seed),
            )
            return
        req = handle.request
        try:
            seq = Entry(
                req.prompt_ids,
                req.max_new_tokens,
                req.sampling,
                stop_at_eos=req.stop_at_eos,
                speculate=req.speculative,
                top_n=req.top_n_tokens,
                raw_alternatives=req.raw_alternatives,
            )
            live = _Active(handle, seq, TextStream(self.model.encoder, req.stop))
        except ValueError as exc:
            self._answer(handle, Failed("validation", str(exc)))
            return
        self._batcher.admit(seq)
        if self.metrics:
            self.metrics.queue_wait.labels(self.name).observe(time.monotonic() - handle.enqueued_at)
            self.metrics.prompt_tokens.labels(self.name).inc(len(req.prompt_ids))
        self._live[seq] = live
        self.peak_active = max(self.peak_active, len(self._live))

    def _step(self) -> None:
        """One batcher round (a decode call and a prefill call); a failed call fails its requests."""
        try:
            self.busy_since = time.monotonic()
            if self.step_hook is not None:
                self.step_hook()
            events = self._batcher.step()
        except Exception as exc:  # noqa: BLE001 - fail this step's requests, keep serving
            events = [StepFailure([live.seq for live in self._live.values()], exc, "decode")]
            for seq in events[0].seqs:
                self._batcher.finish(seq, "error")
        finally:
            self.busy_since = None
        now = time.monotonic()
        self._observe_step(events)
        for event in events:
            if isinstance(event, StepFailure):
                self._fail(event)
                continue
            live = self._live[event.seq]
            if self.metrics:
                first = len(event.seq.generated) == 1
                hist = self.metrics.ttft if first else self.metrics.itl
                hist.labels(self.name).observe(
                    now - (live.handle.enqueued_at if first else live.last_token_at)
                )
            live.last_token_at = now
            self._on_token(live, event)

    def _observe_step(self, events: list) -> None:
        if not self.metrics:
            return
        times = self._batcher.times
        if times.decode_s:
            self.metrics.decode_seconds.labels(self.name).observe(times.decode_s)
        if times.prefill_s:
            self.metrics.prefill_seconds.labels(self.name).observe(times.prefill_s)
        self.metrics.batch_occupancy.labels(self.name).observe(sum(isinstance(e, TokenEvent) for e in events))

    def _fail(self, failure: StepFailure) -> None:
        exc = failure.error
        log.error("a step failed on model %s", self.name, exc_info=(type(exc), exc, exc.__traceback__))
        self.last_error = f"{failure.phase}: {exc.__class__.__name__}"
        for seq in failure.seqs:
            live = self._live.get(seq)
            if live is not None:
                self._finish(live, Failed("generation", f"generation failed: {exc.__class__.__name__}"))

    def _on_token(self, live: _Active, event: TokenEvent) -> None:
        seq = live.seq
        special = event.token_id == self.model.encoder.eot_token and event.finish_reason == "eos_token"
        text = live.text.push(event.token_id, special=special)
        if live.text.stopped_by is not None and not seq.finished:
            self._batcher.finish(seq, "stop_sequence")
        if seq.finished:
            text += live.text.finish()
        if self.metrics:
            self.metrics.generated_tokens.labels(self.name).inc()
        live.handle.deliver(
            Token(
                len(seq.generated) - 1,
                event.token_id,
                text,
                event.logprob,
                special,
                seq.finish_reason,
                event.top,
            )
        )
        if seq.finished:
            self._finish(
                live,
                Done(seq.finish_reason, live.text.text, list(seq.generated), len(seq.prompt_ids), seq.seed),
            )

    def _drop_cancelled(self) -> None:
        for live in [lv for lv in self._live.values() if lv.handle.cancelled]:
            self._batcher.finish(live.seq, "cancelled")
            self._count_cancel()
            self._finish(
                live,
                Done(
                    "cancelled",
                    live.text.text,
                    list(live.seq.generated),
                    len(live.seq.prompt_ids),
                    live.seq.seed,
                ),
            )

    def _finish(self, live: _Active, event: Event) -> None:
        self._live.pop(live.seq, None)
        self._answer(live.handle, event)

    def _answer(self, handle: RequestHandle, event: Event) -> None:
        handle.deliver(event)
        if self.metrics:
            self.metrics.request_seconds.labels(self.name).observe(time.monotonic() - handle.enqueued_at)
        with self._cond:
            self._in_flight -= 1

    def _count_cancel(self) -> None:
        if self.metrics:
            self.metrics.cancelled.labels(self.name).inc()

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.queue_length.labels(self.name).set(len(self._pending))
            self.metrics.active_slots.labels(self.name).set(len(self._live))
            self.metrics.max_active_slots.labels(self.name).set(self.peak_active)
