"""OpenAI-compatible routes: ``POST /v1/completions`` (JSON or SSE), ``GET /v1/models`` and
``GET /v1/models/{model}``, shaped so the official ``openai`` SDK works with
``base_url=http://host:port/v1`` unchanged.

Every prompt × ``n`` choice is its own generation request; all are submitted at once, so they
share the model's batch. Choice ``index`` runs over prompts, then over the ``n`` choices of each.
Errors are OpenAI error objects (``{"error": {"message", "type", "param", "code"}}``, see
:mod:`app.server.errors`); a failure after streaming began is sent as one ``data: {"error": ...}``
event followed by ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.server.errors import KINDS, APIError, cap
from app.server.registry import UnknownModel
from app.server.requests import build_request, check_text, ready_worker
from app.server.schemas import openai as oa
from app.server.state import ServerState, StateDep
from app.server.streaming import ClientGone, collect
from app.server.worker import Done, Failed, ModelWorker, Overloaded, RequestHandle, Token, Unavailable

router = APIRouter(prefix="/v1", tags=["OpenAI"])
ROUTE = "/v1/completions"
ENDOFTEXT = "<|endoftext|>"
ERRORS = {code: {"model": oa.ErrorResponse} for code in (400, 404, 424, 429, 503)}
FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
# build_request speaks TGI; name the OpenAI parameter in its messages instead.
RENAMED = {"inputs": "prompt", "max_new_tokens": "max_tokens"}


@dataclass(eq=False)
class Choice:
    index: int
    prompt_text: str  # what echo prepends
    handle: RequestHandle


def _finish(reason: str) -> str:
    return FINISH.get(reason, "stop")


def _renamed(err: APIError) -> APIError:
    new = RENAMED.get(err.param or "")
    if new is None:
        return err
    message = err.message.replace(err.param, new, 1) if err.message.startswith(err.param) else err.message
    return APIError(err.error_type, message, param=new, status=err.status)


def _encode_text(worker: ModelWorker, text: str) -> list[int]:
    """Text to ids; ``<|endoftext|>`` is the end-of-text token (as OpenAI reads prompts), and an
    empty prompt is that token alone: generation starts a new document."""
    enc = worker.model.encoder
    eot = enc.eot_token
    if eot is None:
        return enc.encode(text)
    if not text:
        return [eot]
    ids: list[int] = []
    for i, piece in enumerate(text.split(ENDOFTEXT)):
        if i:
            ids.append(eot)
        ids.extend(enc.encode(piece))
    return ids


def _prompt(worker: ModelWorker, prompt: str | list[int]) -> tuple[str, list[int]]:
    """(text echo prepends, token ids) of one prompt."""
    if isinstance(prompt, str):
        check_text(prompt, "prompt")
        return prompt, _encode_text(worker, prompt)
    if not prompt:
        raise APIError("validation", "prompt: a token-id prompt must not be empty", param="prompt")
    n_vocab = worker.model.hparams.n_vocab
    bad = next((i for i in prompt if not 0 <= i < n_vocab), None)
    if bad is not None:
        raise APIError("validation", f"prompt: token id {bad} is outside the vocabulary (0..{n_vocab - 1})",
                       param="prompt")  # fmt: skip
    return worker.model.encoder.decode(prompt), prompt


def submit(state: ServerState, body: oa.CompletionRequest) -> tuple[str, ModelWorker, list[Choice], int]:
    """Validate, then submit every choice. Returns (model name, worker, choices, prompt tokens)."""
    if state.draining:
        raise APIError("unavailable", "the server is shutting down")
    try:
        state.registry.get(body.model)
    except UnknownModel as exc:
        raise APIError("not_found", str(exc), param="model") from None
    entry, worker = ready_worker(state.registry, body.model)
    s = state.settings
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > s.max_new_tokens_limit:
        raise APIError("validation", f"max_tokens must be between 1 and {s.max_new_tokens_limit}, got {max_tokens}",
                       param="max_tokens")  # fmt: skip
    if body.echo and body.logprobs is not None:
        raise APIError("validation", "logprobs together with echo is not supported: this server does not "
                       "compute the prompt tokens' logprobs", param="logprobs")  # fmt: skip
    n = body.n or 1
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0:  # only the most likely token is left
        temperature, top_p = 0.0, 1.0
    prompts = [_prompt(worker, p) for p in body.prompts()]
    if len(prompts) * n > worker.capacity:
        raise APIError("validation", f"n: {len(prompts)} prompt(s) × n={n} asks for {len(prompts) * n} completions; "
                       f"this model takes at most {worker.capacity} at once", param="n")  # fmt: skip
    n_ctx = worker.model.hparams.n_ctx
    requests = []
    for text, ids in prompts:
        if len(ids) > n_ctx:
            raise APIError("validation", f"prompt: the prompt is {len(ids)} tokens but this model's context is "
                           f"{n_ctx} tokens", param="prompt")  # fmt: skip
        for j in range(n):
            seed = None if body.seed is None else (body.seed + j) % 2**64
            try:
                req = build_request(worker, s, inputs=text, prompt_ids=ids, max_new_tokens=max_tokens,
                                    temperature=temperature, top_p=top_p, seed=seed, stop=body.stops(),
                                    do_sample=temperature != 0)  # fmt: skip
            except APIError as err:
                raise _renamed(err) from None
            requests.append((text, req))
    choices: list[Choice] = []
    try:
        for i, (text, req) in enumerate(requests):
            choices.append(Choice(i, text, worker.submit(req)))
    except (Overloaded, Unavailable) as exc:
        for c in choices:
            c.handle.cancel()
        kind = "overloaded" if isinstance(exc, Overloaded) else "unavailable"
        state.metrics.rejected.labels(entry.name, kind).inc()
        raise APIError(kind, str(exc)) from None
    return entry.name, worker, choices, sum(len(ids) for _, ids in prompts)


def _logprobs(worker: ModelWorker, tokens: list[Token], start: int) -> oa.Logprobs:
    """Each token's own text (``decode([id])``, so ``<|endoftext|>`` for end of text) and its offset
    in the choice's text, counting from ``start``."""
    enc = worker.model.encoder
    texts = [enc.decode([t.id]) for t in tokens]
    offsets, pos = [], start
    for text in texts:
        offsets.append(pos)
        pos += len(text)
    return oa.Logprobs(tokens=texts, token_logprobs=[t.logprob for t in tokens], top_logprobs=None,
                       text_offset=offsets)  # fmt: skip


def _usage(prompt_tokens: int, completion_tokens: int) -> oa.CompletionUsage:
    return oa.CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              total_tokens=prompt_tokens + completion_tokens)  # fmt: skip


def _raise_failed(event: Failed) -> None:
    raise APIError(event.error_type if event.error_type in KINDS else "generation", event.message)


async def _collect_all(request: Request, choices: list[Choice]) -> list[tuple[list[Token], Done | Failed]]:
    """Every choice's events, concurrently; if the client leaves (or this is cancelled), all are cancelled."""
    tasks = [asyncio.ensure_future(collect(request, c.handle)) for c in choices]
    done = False
    try:
        results = await asyncio.gather(*tasks)
        done = True
        return results
    finally:
        if not done:
            for t in tasks:
                t.cancel()
            for c in choices:
                c.handle.cancel()


async def complete(request: Request, state: ServerState, body: oa.CompletionRequest) -> oa.Completion | Response:
    model, worker, choices, prompt_tokens = submit(state, body)
    outcome = "cancelled"
    try:
        results = await _collect_all(request, choices)
        outcome = "ok"
        for _, end in results:
            if isinstance(end, Failed):
                outcome = "error"
                _raise_failed(end)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; the requests were cancelled
    finally:
        state.metrics.requests.labels(ROUTE, model, outcome).inc()
    out, completion_tokens = [], 0
    for c, (tokens, end) in zip(choices, results):
        prefix = c.prompt_text if body.echo else ""
        lp = _logprobs(worker, tokens, len(prefix)) if body.logprobs is not None else None
        out.append(oa.CompletionChoice(index=c.index, text=prefix + end.generated_text, logprobs=lp,
                                       finish_reason=_finish(end.finish_reason)))  # fmt: skip
        completion_tokens += end.completion_tokens
    return oa.Completion(id=_completion_id(), created=int(time.time()), model=model, choices=out,
                         usage=_usage(prompt_tokens, completion_tokens))  # fmt: skip


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def _sse(payload: object) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


DONE_EVENT = "data: [DONE]\n\n"


def stream(state: ServerState, body: oa.CompletionRequest) -> StreamingResponse:
    model, worker, choices, prompt_tokens = submit(state, body)  # errors here are plain JSON responses
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    want_logprobs = body.logprobs is not None
    enc = worker.model.encoder
    cid, created = _completion_id(), int(time.time())

    def chunk(index: int, text: str, finish: str | None, logprobs: oa.Logprobs | None = None) -> str:
        c = oa.Completion(id=cid, created=created, model=model,
                          choices=[oa.CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                       finish_reason=finish)])  # fmt: skip
        payload = c.model_dump()
        if not include_usage:
            del payload["usage"]  # with include_usage, every chunk but the last has "usage": null
        return _sse(payload)

    async def events() -> AsyncIterator[str]:
        merged: asyncio.Queue[tuple[int, Token | Done | Failed]] = asyncio.Queue()

        async def pump(i: int, handle: RequestHandle) -> None:
            async for event in handle.events():
                merged.put_nowait((i, event))

        pumps = [asyncio.ensure_future(pump(i, c.handle)) for i, c in enumerate(choices)]
        offsets = [len(c.prompt_text) if body.echo else 0 for c in choices]
        finished = [False] * len(choices)
        remaining, completion_tokens, outcome = len(choices), 0, "cancelled"
        try:
            if body.echo:
                for c in choices:
                    yield chunk(c.index, c.prompt_text, None)
            while remaining:
                i, event = await merged.get()
                c = choices[i]
                if isinstance(event, Token):
                    lp = None
                    if want_logprobs:
                        own = enc.decode([event.id])
                        lp = oa.Logprobs(tokens=[own], token_logprobs=[event.logprob], text_offset=[offsets[i]])
                        offsets[i] += len(own)
                    if event.finish_reason is not None:
                        finished[i] = True
                        yield chunk(c.index, event.text, _finish(event.finish_reason), lp)
                    elif event.text or lp is not None:
                        yield chunk(c.index, event.text, None, lp)
                elif isinstance(event, Done):
                    remaining -= 1
                    completion_tokens += event.completion_tokens
                    if not finished[i]:  # ended without a final token (not expected; keep the shape)
                        finished[i] = True
                        yield chunk(c.index, "", _finish(event.finish_reason))
                else:
                    outcome = "error"
                    kind = event.error_type if event.error_type in KINDS else "generation"
                    yield _sse({"error": {"message": cap(event.message), "type": KINDS[kind][1], "param": None,
                                          "code": kind}})  # fmt: skip
                    yield DONE_EVENT
                    return
            if include_usage:
                usage = _usage(prompt_tokens, completion_tokens).model_dump()
                yield _sse({"id": cid, "object": "text_completion", "created": created, "model": model,
                            "choices": [], "usage": usage})  # fmt: skip
            yield DONE_EVENT
            outcome = "ok"
        finally:
            for p in pumps:
                p.cancel()
            if outcome != "ok":  # the client left, or one choice failed: free every slot
                for c in choices:
                    c.handle.cancel()
            state.metrics.requests.labels(ROUTE, model, outcome).inc()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


@router.post("/completions", response_model=oa.Completion, responses={200: {"content": {"text/event-stream": {}}}, **ERRORS})
async def completions(request: Request, body: oa.CompletionRequest, state: StateDep):
    """OpenAI Completions: every prompt × ``n`` choice generated in one batch. ``stream`` answers
    server-sent events, one Completion chunk per piece of text, ending with ``data: [DONE]``."""
    if body.stream:
        return stream(state, body)
    return await complete(request, state, body)


def _model(state: ServerState, name: str) -> oa.Model:
    entry = state.registry.entries[name]
    return oa.Model(id=entry.name, created=entry.created)


@router.get("/models", response_model=oa.ModelList)
async def list_models(state: StateDep):
    """Every configured model (also while it loads; ``GET /models`` tells each one's state)."""
    return oa.ModelList(data=[_model(state, name) for name in state.registry.entries])


@router.get("/models/{model:path}", response_model=oa.Model, responses={404: {"model": oa.ErrorResponse}})
async def retrieve_model(model: str, state: StateDep):
    """One configured model."""
    if model not in state.registry.entries:
        raise APIError("not_found", f"unknown model {model!r}; served: {', '.join(state.registry.entries)}",
                       param="model")  # fmt: skip
    return _model(state, model)
