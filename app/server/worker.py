"""One model's worker: a thread that runs continuous batching and hands tokens to asyncio.

The event loop never calls TensorFlow. The server validates a request into a
:class:`~app.engine.spec.GenerationSpec`, calls :meth:`ModelWorker.submit` (which refuses at once
when the worker is full or stopping) and reads events from the returned :class:`RequestHandle`. The worker thread admits queued requests into free
slots at step boundaries, advances all active ones by one token per step, and delivers each event
with ``loop.call_soon_threadsafe`` into the request's own asyncio queue.

A request ends at EOS, a stop sequence, its token limit, cancellation (the client left: its slot
is freed before the next step; if it was still queued it is never prefilled) or an error. An
exception in a step fails the requests of that step only (a row whose scores are not finite fails
its own request only); the worker goes on serving, and :attr:`ModelWorker.step_error` says why its
last step failed until a step goes through (``/health`` reports it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from app.engine.batcher import Batcher, Entry, NonFiniteScores, StepFailure, TokenEvent
from app.engine.spec import GenerationSpec
from app.runtime.load import LoadedModel
from app.server.metrics import Metrics
from app.server.text_stream import TextStream

log = logging.getLogger("gpt2serve.worker")


class Overloaded(Exception):
    """The model's slots and queue are full."""


class Unavailable(Exception):
    """The worker is not accepting requests (stopping, or its model failed)."""


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
    """One submitted request: its spec, its asyncio queue of events (read on the event loop) and,
    once the worker admitted it, its batcher entry and text stream (used by the worker thread)."""

    spec: GenerationSpec
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    enqueued_at: float = field(default_factory=time.monotonic)
    seq: Entry | None = None  # the batcher's sequence, from admission
    text: TextStream | None = None  # its released text (stop sequences, whole characters)
    last_token_at: float = 0.0
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
        self._live: dict[Entry, RequestHandle] = {}
        self._in_flight = 0  # accepted and not yet answered with Done/Failed
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"worker-{name}", daemon=True)
        self.heartbeat = time.monotonic()  # last time the loop went round (health)
        self.busy_since: float | None = None  # start of the current compute call, None when idle
        # Why the last step failed ("decode: RuntimeError"), None once a step goes through (health).
        self.step_error: str | None = None
        self.peak_active = 0  # most slots busy at once (shows that batching happens)

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
    def batcher(self) -> Batcher:
        """Its batcher, stepped by the worker thread alone."""
        return self._batcher

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
        return sum(1 for seq in list(self._live) if not seq.generated)

    def submit(self, spec: GenerationSpec, loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        handle = RequestHandle(spec, loop or asyncio.get_running_loop())
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
        spec = handle.spec
        if handle.cancelled:  # left while queued: never prefilled
            self._count_cancel()
            self._answer(handle, Done("cancelled", "", [], len(spec.prompt_ids), spec.sampling.seed))
            return
        handle.text = TextStream(self.model.encoder, spec.stop)
        handle.seq = self._batcher.admit(spec)
        if self.metrics:
            self.metrics.queue_wait.labels(self.name).observe(time.monotonic() - handle.enqueued_at)
            self.metrics.prompt_tokens.labels(self.name).inc(len(spec.prompt_ids))
        self._live[handle.seq] = handle
        self.peak_active = max(self.peak_active, len(self._live))

    def _step(self) -> None:
        """One batcher round (a decode call and a prefill call); a failed call fails its requests."""
        try:
            self.busy_since = time.monotonic()
            events = self._batcher.step()
        except Exception as exc:  # noqa: BLE001 - fail this step's requests, keep serving
            events = [StepFailure(list(self._live), exc, "decode")]
            for seq in events[0].seqs:
                self._batcher.finish(seq, "error")
        finally:
            self.busy_since = None
        now = time.monotonic()
        failed = next((e for e in events if isinstance(e, StepFailure)), None)
        self.step_error = f"{failed.phase}: {failed.error.__class__.__name__}" if failed else None
        self._observe_step(events)
        for event in events:
            if isinstance(event, StepFailure):
                self._fail(event)
                continue
            handle = self._live[event.seq]
            if self.metrics:
                first = len(event.seq.generated) == 1
                hist = self.metrics.ttft if first else self.metrics.itl
                hist.labels(self.name).observe(now - (handle.enqueued_at if first else handle.last_token_at))
            handle.last_token_at = now
            self._on_token(handle, event)

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
        # Our own error's message; another's class only (its message may name files or addresses).
        what = str(exc) if isinstance(exc, NonFiniteScores) else exc.__class__.__name__
        for seq in failure.seqs:
            handle = self._live.get(seq)
            if handle is not None:
                self._finish(handle, Failed("generation", f"generation failed: {what}"))

    def _on_token(self, handle: RequestHandle, event: TokenEvent) -> None:
        seq, stream = handle.seq, handle.text
        special = event.token_id == self.model.encoder.eot_token and event.finish_reason == "eos_token"
        text = stream.push(event.token_id, special=special)
        if stream.stopped_by is not None and not seq.finished:
            self._batcher.finish(seq, "stop_sequence")
        if seq.finished:
            text += stream.finish()
        if self.metrics:
            self.metrics.generated_tokens.labels(self.name).inc()
        handle.deliver(
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
            self._finish(handle, self._done(handle, seq.finish_reason))

    def _done(self, handle: RequestHandle, reason: str) -> Done:
        seq = handle.seq
        return Done(reason, handle.text.text, list(seq.generated), len(seq.spec.prompt_ids), seq.seed)

    def _drop_cancelled(self) -> None:
        for handle in [h for h in self._live.values() if h.cancelled]:
            self._batcher.finish(handle.seq, "cancelled")
            self._count_cancel()
            self._finish(handle, self._done(handle, "cancelled"))

    def _finish(self, handle: RequestHandle, event: Event) -> None:
        self._live.pop(handle.seq, None)
        self._answer(handle, event)

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
