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

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.server.errors import APIError, error_body
from app.server.generation import ClientGone, Generation, Result, StreamedToken, failure, submit
from app.server.request import TextRequest
from app.server.schemas import openai as oa
from app.server.sse import DONE, sse, sse_response
from app.server.state import ServerState, StateDep

router = APIRouter(prefix="/v1", tags=["OpenAI"])
ROUTE = "/v1/completions"
ERRORS = {code: {"model": oa.ErrorResponse} for code in (400, 401, 404, 413, 424, 429, 503)}
READ_ERRORS = {code: {"model": oa.ErrorResponse} for code in (401, 503)}
FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
# Validation names parameters as TextRequest does; OpenAI's names for those it calls otherwise.
OPENAI_NAMES = {"inputs": "prompt", "max_new_tokens": "max_tokens"}


def _finish(reason: str) -> str:
    return FINISH.get(reason, "stop")


def _in_openai_words(err: APIError) -> APIError:
    """A validation error with OpenAI's names: its parameters, and 404 for an unknown model."""
    if err.param == "model" and err.error_type == "validation":  # the only one: an unknown model
        return APIError("not_found", err.message, param="model")
    return err.renamed(OPENAI_NAMES)


def text_requests(body: oa.CompletionRequest) -> list[TextRequest]:
    """Every prompt x ``n`` choice as one request; choice j of a prompt samples with ``seed + j``."""
    if body.echo and body.logprobs is not None:
        raise APIError(
            "validation",
            "logprobs together with echo is not supported: this server does not "
            "compute the prompt tokens' logprobs",
            param="logprobs",
        )
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0:  # only the most likely token is left
        temperature, top_p = 0.0, 1.0
    n = body.n or 1
    return [
        TextRequest(
            prompt,
            model=body.model,
            max_new_tokens=16 if body.max_tokens is None else body.max_tokens,
            temperature=temperature,
            top_p=top_p,
            do_sample=temperature != 0,
            stop=body.stops(),
            seed=None if body.seed is None else (body.seed + j) % 2**64,
            special_text=True,
            top_n_tokens=body.logprobs or 0,
            raw_alternatives=True,
            return_full_text=bool(body.echo),
        )
        for prompt in body.prompts()
        for j in range(n)
    ]


def _submit(state: ServerState, body: oa.CompletionRequest) -> Generation:
    try:
        return submit(state, ROUTE, text_requests(body))
    except APIError as err:
        raise _in_openai_words(err) from None


def _echo(gen: Generation, body: oa.CompletionRequest, i: int) -> str:
    """What ``echo`` prepends to choice ``i``: its prompt as text."""
    return gen.prompt_text(i) if body.echo else ""


def _prompt_tokens(gen: Generation, body: oa.CompletionRequest) -> int:
    return sum(len(spec.prompt_ids) for spec in gen.specs[:: body.n or 1])


def _top_logprobs(t: StreamedToken) -> dict[str, float]:
    """OpenAI's ``top_logprobs`` entry of one token: the ``logprobs`` most likely tokens by their
    text, and the sampled token's own (so up to ``logprobs + 1`` entries, as OpenAI documents).
    Two ids with the same text (bytes of a split character) keep the likelier one."""
    top: dict[str, float] = {}
    for alt in t.alternatives or ():
        top.setdefault(alt.text, alt.logprob)
    top.setdefault(t.own_text, t.logprob)
    return top


def _logprobs(tokens: list[StreamedToken], start: int) -> oa.Logprobs:
    """Each token's own text (so ``<|endoftext|>`` for end of text), its logprob, the most likely
    alternatives and its offset in the choice's text, counting from ``start``."""
    offsets, pos = [], start
    for t in tokens:
        offsets.append(pos)
        pos += len(t.own_text)
    return oa.Logprobs(
        tokens=[t.own_text for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[_top_logprobs(t) for t in tokens],
        text_offset=offsets,
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> oa.CompletionUsage:
    return oa.CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


async def complete(
    request: Request, state: ServerState, body: oa.CompletionRequest
) -> oa.Completion | Response:
    async with _submit(state, body) as gen:
        try:
            results = await gen.collect(request)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the requests were cancelled
    failed = next((end for _, end in results if not isinstance(end, Result)), None)
    if failed is not None:
        raise failure(failed)
    out = []
    for i, (tokens, end) in enumerate(results):
        lp = _logprobs(tokens, len(_echo(gen, body, i))) if body.logprobs is not None else None
        out.append(
            oa.CompletionChoice(
                index=i,
                text=end.text,
                logprobs=lp,
                finish_reason=_finish(end.finish_reason),
            )
        )
    usage = _usage(_prompt_tokens(gen, body), sum(end.completion_tokens for _, end in results))
    return oa.Completion(
        id=_completion_id(), created=int(time.time()), model=gen.model, choices=out, usage=usage
    )


class _Chunks:
    """The SSE events of one streamed completion (OpenAI's chunk shapes)."""

    def __init__(self, gen: Generation, body: oa.CompletionRequest):
        self.gen, self.body = gen, body
        self.cid, self.created = _completion_id(), int(time.time())
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.offsets = [len(_echo(gen, body, i)) for i in range(len(gen.handles))]  # logprobs' text_offset

    def chunk(self, index: int, text: str, finish: str | None, logprobs: oa.Logprobs | None = None) -> str:
        c = oa.Completion(
            id=self.cid,
            created=self.created,
            model=self.gen.model,
            choices=[oa.CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)],
        )
        payload = c.model_dump()
        if not self.include_usage:
            del payload["usage"]  # with include_usage, every chunk but the last has "usage": null
        return sse(payload)

    def token(self, i: int, t: StreamedToken) -> str | None:
        lp = None
        if self.body.logprobs is not None:
            lp = _logprobs([t], self.offsets[i])
            self.offsets[i] += len(lp.tokens[0])
        if t.finish_reason is not None:
            return self.chunk(i, t.text, _finish(t.finish_reason), lp)
        return self.chunk(i, t.text, None, lp) if t.text or lp is not None else None

    def usage(self, completion_tokens: int) -> str:
        usage = _usage(_prompt_tokens(self.gen, self.body), completion_tokens).model_dump()
        return sse(
            {
                "id": self.cid,
                "object": "text_completion",
                "created": self.created,
                "model": self.gen.model,
                "choices": [],
                "usage": usage,
            }
        )


def stream(state: ServerState, body: oa.CompletionRequest) -> StreamingResponse:
    gen = _submit(state, body)  # errors here are plain JSON responses
    out = _Chunks(gen, body)

    async def events() -> AsyncIterator[str]:
        completion_tokens = 0
        async with gen:
            for i in range(len(gen.handles) if body.echo else 0):
                yield out.chunk(i, _echo(gen, body, i), None)
            async for i, event in gen.events(max_waiting=state.settings.max_buffered_tokens):
                if isinstance(event, StreamedToken):
                    if (text := out.token(i, event)) is not None:
                        yield text
                elif isinstance(event, Result):
                    completion_tokens += event.completion_tokens
                else:  # one choice failed: say so, end the stream (leaving cancels the others)
                    yield sse(error_body(failure(event), openai=True)[1])
                    break
            else:
                if out.include_usage:
                    yield out.usage(completion_tokens)
        yield DONE

    return sse_response(events())


@router.post(
    "/completions",
    response_model=oa.Completion,
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
)
async def completions(request: Request, body: oa.CompletionRequest, state: StateDep):
    """OpenAI Completions: every prompt × ``n`` choice generated in one batch. ``stream`` answers
    server-sent events, one Completion chunk per piece of text, ending with ``data: [DONE]``."""
    if body.stream:
        return stream(state, body)
    return await complete(request, state, body)


def _model(state: ServerState, name: str) -> oa.Model:
    entry = state.registry.entries[name]
    return oa.Model(id=entry.name, created=entry.created)


@router.get("/models", response_model=oa.ModelList, responses=READ_ERRORS)
async def list_models(state: StateDep):
    """Every configured model (also while it loads; ``GET /models`` tells each one's state)."""
    return oa.ModelList(data=[_model(state, name) for name in state.registry.entries])


@router.get(
    "/models/{model:path}",
    response_model=oa.Model,
    responses={404: {"model": oa.ErrorResponse}, **READ_ERRORS},
)
async def retrieve_model(model: str, state: StateDep):
    """One configured model."""
    if model not in state.registry.entries:
        raise APIError(
            "not_found",
            f"unknown model {model!r}; served: {', '.join(state.registry.entries)}",
            param="model",
        )
    return _model(state, model)
