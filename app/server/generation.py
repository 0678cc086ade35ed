"""The one generation path every route family goes through.

A family (TGI, OpenAI, the WebSocket) turns its body into :class:`TextRequest` objects and calls
:func:`submit`, which validates them once (:mod:`app.server.validation`: problems raise
:class:`APIError` naming the parameter, which a family may rename), submits their specs to the
model's worker together and returns a :class:`Generation`. The family then reads
``Generation.events()`` (streaming) or ``Generation.collect()`` (one answer) inside ``async with
generation:``, which cancels whatever has not finished when the family stops early (the client
left, a send failed) and counts the request's outcome.

What it reads is protocol-neutral: a :class:`StreamedToken` per token (its released text, its own
text, its alternatives) and one :class:`Result` (the text to return, the seed used or None for
greedy decoding, a keyword request's parsed document) or :class:`Failed` per request. Routes only
translate in and format out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from fastapi import Request

from app.engine.spec import GenerationSpec
from app.keywords.format import Parsed
from app.server import keywords
from app.server.errors import ERROR_KINDS, APIError
from app.server.request import TextRequest
from app.server.state import ServerState
from app.server.validation import generation_spec, ready_worker
from app.server.worker import Done, Failed, ModelWorker, Overloaded, RequestHandle, Token, Unavailable
from app.server.worker import Event as WorkerEvent

DISCONNECT_POLL = 0.05  # seconds; well under one decode step of any real model


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


@dataclass(frozen=True)
class Alternative:
    """One of the most likely tokens at a position (``top_n_tokens``)."""

    id: int
    text: str  # the token's own text
    logprob: float
    special: bool


@dataclass(frozen=True)
class StreamedToken:
    index: int  # 0, 1, 2, ... within its request
    id: int
    text: str  # what this token released (may be empty: held back, or a split character)
    own_text: str  # the token's own text (``<|endoftext|>`` for the end-of-text token)
    logprob: float  # under the model (temperature 1)
    special: bool  # the end-of-text token that ended the request
    finish_reason: str | None  # on a request's last token
    alternatives: tuple[Alternative, ...] | None  # None: none were asked for


@dataclass(frozen=True)
class Result:
    """How one request ended (every family formats this)."""

    finish_reason: str  # length | eos_token | stop_sequence | cancelled
    generated_text: str
    text: str  # what to return: the generated text, after the prompt's text when return_full_text
    prompt_text: str  # the prompt as text (a token-id prompt decoded)
    prompt_ids: tuple[int, ...]
    token_ids: list[int]
    seed: int | None  # the seed sampling used; None for greedy decoding
    document: Parsed | None  # a keyword request's title and body

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


Event = StreamedToken | Result | Failed


# ---- submission and the event stream ----


def submit(state: ServerState, route: str, requests: Sequence[TextRequest]) -> Generation:
    """Validate every request (all for one model), then submit them together: either all are
    accepted or none is (those already accepted are cancelled)."""
    if state.draining:
        raise APIError("unavailable", "the server is shutting down")
    entry, worker = ready_worker(state.registry, requests[0].model)
    if len(requests) > worker.capacity:  # only OpenAI's n (times its prompts) asks for several
        raise APIError.invalid(
            "n",
            f"{len(requests)} completions asked for at once; this model takes at most {worker.capacity} at once",
        )
    specs = [generation_spec(worker, state.settings, r) for r in requests]
    handles: list[RequestHandle] = []
    try:
        for spec in specs:
            handles.append(worker.submit(spec))
    except (Overloaded, Unavailable) as exc:
        for h in handles:
            h.cancel()
        kind = "overloaded" if isinstance(exc, Overloaded) else "unavailable"
        state.metrics.rejected.labels(entry.name, kind).inc()
        raise APIError(kind, str(exc)) from None
    return Generation(state, route, entry.name, worker, handles, list(requests))


class Generation:
    """The accepted requests of one API call, read as one stream of ``(index, event)``."""

    def __init__(
        self,
        state: ServerState,
        route: str,
        model: str,
        worker: ModelWorker,
        handles: list[RequestHandle],
        asked: list[TextRequest],
    ):
        self.state, self.route, self.model, self.worker, self.handles = state, route, model, worker, handles
        self.asked = asked  # the requests as the family gave them, in the order of `handles`
        self.outcome = (
            "cancelled"  # what the request counts as unless every request ends (or the family says)
        )
        self._ended: list[Done | Failed] = []
        self._pumps: list[asyncio.Future] = []
        self._too_slow = False  # more events waited than the stream may hold: every request cancelled
        self._counted = False  # the outcome went to the requests metric

    @property
    def specs(self) -> list[GenerationSpec]:
        return [h.spec for h in self.handles]

    def prompt_text(self, index: int) -> str:
        """Request ``index``'s prompt as text: as given, or a token-id prompt decoded."""
        prompt = self.asked[index].prompt
        return prompt if isinstance(prompt, str) else self.worker.model.encoder.decode(list(prompt))

    def _token(self, index: int, t: Token) -> StreamedToken:
        enc = self.worker.model.encoder
        alternatives = None
        if self.handles[index].spec.top_n_tokens:
            alternatives = tuple(Alternative(i, enc.decode([i]), lp, i == enc.eot_token) for i, lp in t.top)
        return StreamedToken(
            t.index, t.id, t.text, enc.decode([t.id]), t.logprob, t.special, t.finish_reason, alternatives
        )

    def _result(self, index: int, done: Done) -> Result:
        req, spec = self.asked[index], self.handles[index].spec
        prompt_text = self.prompt_text(index)
        return Result(
            finish_reason=done.finish_reason,
            generated_text=done.generated_text,
            text=prompt_text + done.generated_text if req.return_full_text else done.generated_text,
            prompt_text=prompt_text,
            prompt_ids=spec.prompt_ids,
            token_ids=done.token_ids,
            seed=None if spec.sampling.greedy else done.seed,
            document=self._document(req, done),
        )

    def _document(self, req: TextRequest, done: Done) -> Parsed | None:
        """A keyword request's title and body, parsed from its prefix, ``inputs`` and the generated
        text (None for other requests)."""
        spec = self.worker.model.keywords
        if not req.keyword_request or spec is None:  # validation refuses keywords for other models
            return None
        text = (req.prompt_text or "") + done.generated_text
        return keywords.parsed_output(spec, req.keywords, req.category, req.title, text)

    async def __aenter__(self) -> Generation:
        return self

    def cancel(self) -> None:
        """Free the slots of every request that has not ended (a no-op for those that have)."""
        for h in self.handles:
            h.cancel()

    async def __aexit__(self, *exc: object) -> None:
        """Cancel what has not ended and count the outcome."""
        for p in self._pumps:
            p.cancel()
        self.cancel()
        self._count()

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            self.state.metrics.requests.labels(self.route, self.model, self.outcome).inc()

    async def events(
        self, client: Request | None = None, *, max_waiting: int | None = None
    ) -> AsyncIterator[tuple[int, Event]]:
        """Every request's tokens then its ``Result`` or ``Failed``, merged in arrival order. With
        ``client`` (an HTTP request answered at the end), a disconnect raises :class:`ClientGone`.
        Read it once, inside ``async with`` (which stops the readers however the loop ends).

        ``max_waiting``: for a stream whose sends block while its client does not read (SSE). Once
        more events wait to be read than that, every request is cancelled at once (its slot freed
        at the next step, while the reader may still be blocked in a send) and the stream ends with
        one ``Failed("slow_client")`` for the client to find if it reads again."""
        merged: asyncio.Queue[tuple[int, WorkerEvent]] = asyncio.Queue()

        def check_backlog() -> None:
            if max_waiting is not None and merged.qsize() > max_waiting and not self._too_slow:
                self._too_slow, self.outcome = True, "slow_client"
                self.cancel()
                self._count()  # now: the reader may stay blocked in a send for long

        self._pumps = [
            asyncio.ensure_future(_pump(i, h, merged, check_backlog)) for i, h in enumerate(self.handles)
        ]
        watch = _Watch(client) if client is not None else None
        while len(self._ended) < len(self.handles):
            if self._too_slow:
                message = f"client too slow: more than {max_waiting} events waited to be sent; the request was cancelled"
                yield 0, Failed("slow_client", message)
                return
            i, event = await (merged.get() if watch is None else watch.next(merged))
            if isinstance(event, Token):
                yield i, self._token(i, event)
                continue
            self._end(event)
            yield i, self._result(i, event) if isinstance(event, Done) else event

    async def collect(self, client: Request) -> list[tuple[list[StreamedToken], Result | Failed]]:
        """Each request's tokens and end, once all have ended."""
        tokens: list[list[StreamedToken]] = [[] for _ in self.handles]
        ends: list[Result | Failed | None] = [None] * len(self.handles)
        async for i, event in self.events(client):
            if isinstance(event, StreamedToken):
                tokens[i].append(event)
            else:
                ends[i] = event
        return list(zip(tokens, ends))  # type: ignore[arg-type]

    def _end(self, event: Done | Failed) -> None:
        self._ended.append(event)
        if isinstance(event, Failed):
            self.outcome = "error"
        elif len(self._ended) == len(self.handles) and self.outcome != "error":
            cancelled = any(isinstance(e, Done) and e.finish_reason == "cancelled" for e in self._ended)
            self.outcome = "cancelled" if cancelled else "ok"


async def _pump(i: int, handle: RequestHandle, merged: asyncio.Queue, check: Callable[[], None]) -> None:
    async for event in handle.events():
        merged.put_nowait((i, event))
        check()


class _Watch:
    """Reads events while checking, every ``DISCONNECT_POLL``, that the client is still there (also
    while events keep coming: a fast model never leaves the queue idle that long)."""

    def __init__(self, client: Request):
        self.client = client
        self.checked = asyncio.get_running_loop().time()

    async def next(self, merged: asyncio.Queue) -> tuple[int, WorkerEvent]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                item = await asyncio.wait_for(merged.get(), DISCONNECT_POLL)
            except TimeoutError:
                item = None
            if item is None or loop.time() - self.checked >= DISCONNECT_POLL:
                self.checked = loop.time()
                if await self.client.is_disconnected():
                    raise ClientGone
            if item is not None:
                return item


def failure(event: Failed) -> APIError:
    """A request's failure as the error its family answers with."""
    return APIError(event.error_type if event.error_type in ERROR_KINDS else "generation", event.message)
