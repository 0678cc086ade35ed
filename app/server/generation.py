"""The one generation path every route family goes through.

A family (TGI, OpenAI, the WebSocket) turns its body into :class:`TextRequest` objects and calls
:func:`submit`, which validates them once against the model and the server's limits (problems
raise :class:`APIError` naming the parameter in TGI's words: the family renames at the end),
submits them to the model's worker together and returns a :class:`Generation`. The family then
reads ``Generation.events()`` (streaming) or ``Generation.collect()`` (one answer) inside
``async with generation:``, which cancels whatever has not finished when the family stops early
(the client left, a send failed) and counts the request's outcome. Routes only translate in and
format out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from fastapi import Request

from app.engine.sampling import SamplingParams
from app.keywords.format import Parsed
from app.server import keywords
from app.server.errors import ERROR_KINDS, APIError
from app.server.registry import ModelEntry, Registry, UnknownModel
from app.server.request import TextRequest
from app.server.settings import Settings
from app.server.state import ServerState
from app.server.worker import (
    Done,
    Event,
    Failed,
    GenerationRequest,
    ModelWorker,
    Overloaded,
    RequestHandle,
    Token,
    Unavailable,
)
from app.tokenizer.bpe import ENDOFTEXT

DISCONNECT_POLL = 0.05  # seconds; well under one decode step of any real model


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


# ---- validation: TextRequest -> GenerationRequest ----


def ready_worker(registry: Registry, name: str | None) -> tuple[ModelEntry, ModelWorker]:
    try:
        entry = registry.get(name)
    except UnknownModel as exc:
        raise APIError("validation", str(exc), param="model") from None
    if entry.state == "failed":
        # Not the reason itself: it names files on the server (GET /models shows it to operators).
        raise APIError("unavailable", f"model {entry.name} failed to load; GET /models gives the reason")
    if entry.state != "ready" or entry.worker is None:
        raise APIError("unavailable", f"model {entry.name} is {entry.state}")
    return entry, entry.worker


def check_text(text: str, param: str) -> None:
    """JSON may carry lone surrogates (``"\\ud800"``), which are no Unicode text: refuse them here
    instead of failing in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(
            "validation", f"{param}: not valid Unicode text (a lone surrogate)", param=param
        ) from None


def validate(worker: ModelWorker, settings: Settings, req: TextRequest) -> GenerationRequest:
    """The one validation of a request against its model and the server's limits."""
    limit = settings.max_new_tokens_limit
    n_new = settings.default_max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
    if not 1 <= n_new <= limit:
        raise APIError(
            "validation", f"max_new_tokens must be between 1 and {limit}, got {n_new}", param="max_new_tokens"
        )
    stop = _checked_stops(settings, req.stop)
    if req.keyword_request:
        req, stop = _keyword_prompt(worker, settings, req), (*stop, ENDOFTEXT)
    ids = _prompt_ids(worker, req)
    return GenerationRequest(
        ids, n_new, _sampling(req), stop, True, req.speculative, req.top_n_tokens, req.raw_alternatives
    )


def _keyword_prompt(worker: ModelWorker, settings: Settings, req: TextRequest) -> TextRequest:
    """A keyword request as a token-id prompt: the end-of-text token (a document starts), then the
    document prefix built with the model's own delimiters, then ``inputs``."""
    param = "keywords" if req.keywords is not None else "category" if req.category is not None else "title"
    spec = keywords.model_spec(worker.model.keywords, worker.name, param)
    texts = [(req.prompt_text or "", "inputs"), (req.category or "", "category"), (req.title or "", "title")]
    for value, name in [*texts, *((k, "keywords") for k in req.keywords or ())]:
        check_text(value, name)
    text = keywords.keyword_prompt(
        settings, spec, req.keywords, req.category, req.title, req.prompt_text or ""
    )
    return replace(req, prompt=[worker.model.encoder.eot_token, *worker.model.encoder.encode(text)])


def _checked_stops(settings: Settings, stop: Sequence[str]) -> tuple[str, ...]:
    if len(stop) > settings.max_stop_sequences:
        raise APIError(
            "validation",
            f"stop: at most {settings.max_stop_sequences} stop sequences, got {len(stop)}",
            param="stop",
        )
    for s in stop:
        if not s or len(s) > settings.max_stop_length:
            raise APIError(
                "validation",
                f"stop: each stop sequence must have 1 to {settings.max_stop_length} characters",
                param="stop",
            )
        check_text(s, "stop")
    return tuple(stop)


def _prompt_ids(worker: ModelWorker, req: TextRequest) -> list[int]:
    """The prompt's token ids, checked against the vocabulary and the context (after ``truncate``)."""
    model = worker.model
    n_ctx, n_vocab = model.hparams.n_ctx, model.hparams.n_vocab
    if isinstance(req.prompt, str):
        check_text(req.prompt, "inputs")
        if not req.prompt and not req.special_text:
            raise APIError("validation", "inputs: must not be empty", param="inputs")
        ids = _encode(worker, req.prompt) if req.special_text else model.encoder.encode(req.prompt)
    else:
        ids = list(req.prompt)
        if not ids:
            raise APIError("validation", "inputs: a token-id prompt must not be empty", param="inputs")
        bad = next((i for i in ids if not 0 <= i < n_vocab), None)
        if bad is not None:
            raise APIError(
                "validation",
                f"inputs: token id {bad} is outside the vocabulary (0..{n_vocab - 1})",
                param="inputs",
            )
    ids = truncated(ids, req.truncate, n_ctx)
    if len(ids) > n_ctx:
        raise APIError(
            "validation",
            f"inputs: the prompt is {len(ids)} tokens but the model's context is {n_ctx} "
            "tokens; shorten it (or, where the API has it, set truncate to keep the last tokens)",
            param="inputs",
        )
    return ids


def truncated(ids: list, truncate: int | None, n_ctx: int) -> list:
    """The last ``truncate`` of ``ids`` (all of them when None); ``truncate`` may not exceed the context."""
    if truncate is None:
        return ids
    if not 1 <= truncate <= n_ctx:
        raise APIError(
            "validation", f"truncate must be between 1 and {n_ctx}, got {truncate}", param="truncate"
        )
    return ids[-truncate:]


def _encode(worker: ModelWorker, text: str) -> list[int]:
    """``<|endoftext|>`` is the end-of-text token (as OpenAI reads prompts), and an empty prompt is
    that token alone: generation starts a new document."""
    enc = worker.model.encoder
    if not text and enc.eot_token is not None:
        return [enc.eot_token]
    return enc.encode(text, allowed_special={ENDOFTEXT})


def _sampling(req: TextRequest) -> SamplingParams:
    sampling = req.do_sample or any(v is not None for v in (req.temperature, req.top_k, req.top_p))
    try:
        return SamplingParams(
            temperature=(1.0 if req.temperature is None else req.temperature) if sampling else 0.0,
            top_k=req.top_k or 0,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        )
    except ValueError as exc:
        raise APIError("validation", str(exc), param=str(exc).split(" ", 1)[0]) from None


# ---- submission and the event stream ----


def submit(state: ServerState, route: str, requests: Sequence[TextRequest]) -> Generation:
    """Validate every request (all for one model), then submit them together: either all are
    accepted or none is (those already accepted are cancelled)."""
    if state.draining:
        raise APIError("unavailable", "the server is shutting down")
    entry, worker = ready_worker(state.registry, requests[0].model)
    if len(requests) > worker.capacity:  # only OpenAI's n (times its prompts) asks for several
        raise APIError(
            "validation",
            f"n: {len(requests)} completions asked for at once; this model takes at most "
            f"{worker.capacity} at once",
            param="n",
        )
    validated = [validate(worker, state.settings, r) for r in requests]
    handles: list[RequestHandle] = []
    try:
        for req in validated:
            handles.append(worker.submit(req))
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

    @property
    def requests(self) -> list[GenerationRequest]:
        return [h.request for h in self.handles]

    def alternatives(self, t: Token) -> list[dict] | None:
        """A token's ``top_n_tokens`` alternatives as TGI lists tokens (None when none were asked)."""
        if not t.top:
            return None
        enc = self.worker.model.encoder
        return [
            {"id": i, "text": enc.decode([i]), "logprob": lp, "special": i == enc.eot_token}
            for i, lp in t.top
        ]

    def document(self, index: int, done: Done) -> Parsed | None:
        """A keyword request's title and body, parsed from its prefix, ``inputs`` and the generated
        text (None for other requests)."""
        req, spec = self.asked[index], self.worker.model.keywords
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
        self.state.metrics.requests.labels(self.route, self.model, self.outcome).inc()

    async def events(self, client: Request | None = None) -> AsyncIterator[tuple[int, Event]]:
        """Every request's tokens then its ``Done`` or ``Failed``, merged in arrival order. With
        ``client`` (an HTTP request answered at the end), a disconnect raises :class:`ClientGone`.
        Read it once, inside ``async with`` (which stops the readers however the loop ends)."""
        merged: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self._pumps = [asyncio.ensure_future(_pump(i, h, merged)) for i, h in enumerate(self.handles)]
        watch = _Watch(client) if client is not None else None
        while len(self._ended) < len(self.handles):
            i, event = await (merged.get() if watch is None else watch.next(merged))
            if not isinstance(event, Token):
                self._end(event)
            yield i, event

    async def collect(self, client: Request) -> list[tuple[list[Token], Done | Failed]]:
        """Each request's tokens and end, once all have ended."""
        tokens: list[list[Token]] = [[] for _ in self.handles]
        ends: list[Done | Failed | None] = [None] * len(self.handles)
        async for i, event in self.events(client):
            if isinstance(event, Token):
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


async def _pump(i: int, handle: RequestHandle, merged: asyncio.Queue) -> None:
    async for event in handle.events():
        merged.put_nowait((i, event))


class _Watch:
    """Reads events while checking, every ``DISCONNECT_POLL``, that the client is still there (also
    while events keep coming: a fast model never leaves the queue idle that long)."""

    def __init__(self, client: Request):
        self.client = client
        self.checked = asyncio.get_running_loop().time()

    async def next(self, merged: asyncio.Queue) -> tuple[int, Event]:
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
