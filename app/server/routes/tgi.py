"""Text Generation Inference's routes: ``POST /generate``, ``POST /generate_stream`` (SSE),
``POST /`` (either, by ``stream``), ``GET /info`` and ``POST /tokenize``, shaped so TGI's own
``text-generation`` Python client works unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app import __version__
from app.server.errors import APIError, error_body
from app.server.generation import ClientGone, Generation, Result, StreamedToken, failure, submit
from app.server.schemas import tgi
from app.server.sse import sse, sse_response
from app.server.state import ServerState, StateDep
from app.server.validation import check_text, ready_worker

router = APIRouter(tags=["TGI"])
# Every status a route can answer besides 200 (401: API keys are on; 413: the body limit; 503:
# loading, draining; 424: generation failed; 429: slots and queue full).
ERRORS = {code: {"model": tgi.ErrorResponse} for code in (401, 413, 422, 424, 429, 503)}
READ_ERRORS = {code: {"model": tgi.ErrorResponse} for code in (401, 503)}


def api_token(t: StreamedToken) -> tgi.Token:
    """A token as TGI's details list it: its own text, whatever was released around it."""
    return tgi.Token(id=t.id, text="" if t.special else t.own_text, logprob=t.logprob, special=t.special)


def top_tokens(t: StreamedToken) -> list[tgi.Token] | None:
    if t.alternatives is None:
        return None
    return [tgi.Token(id=a.id, text=a.text, logprob=a.logprob, special=a.special) for a in t.alternatives]


def keywords_output(result: Result) -> tgi.KeywordsOutput | None:
    """A keyword request's title and body (None for other requests)."""
    doc = result.document
    return tgi.KeywordsOutput(title=doc.title, body=doc.body) if doc else None


def details(
    gen: Generation, body: tgi.GenerateRequest, tokens: list[StreamedToken], result: Result
) -> tgi.Details:
    enc = gen.worker.model.encoder
    prefill = []
    if body.parameters.decoder_input_details:
        prefill = [tgi.InputToken(id=i, text=enc.decode([i]), logprob=None) for i in result.prompt_ids]
    return tgi.Details(
        finish_reason=result.finish_reason,
        generated_tokens=result.completion_tokens,
        seed=result.seed,
        prefill=prefill,
        tokens=[api_token(t) for t in tokens],
        top_tokens=[top_tokens(t) or [] for t in tokens] if body.parameters.top_n_tokens else None,
    )


async def run_to_end(
    request: Request, state: ServerState, body: tgi.GenerateRequest, route: str
) -> tgi.GenerateResponse:
    async with submit(state, route, [body.parameters.text_request(body.inputs)]) as gen:
        try:
            [(tokens, end)] = await gen.collect(request)
        except ClientGone:
            raise APIError("cancelled", "client closed the request") from None
    if not isinstance(end, Result):
        raise failure(end)
    info = details(gen, body, tokens, end) if body.parameters.details else None
    return tgi.GenerateResponse(generated_text=end.text, details=info, keywords_output=keywords_output(end))


def stream(state: ServerState, body: tgi.GenerateRequest, route: str) -> StreamingResponse:
    gen = submit(state, route, [body.parameters.text_request(body.inputs)])  # errors here are plain JSON

    async def events():
        last: StreamedToken | None = None
        async with gen:
            async for _, event in gen.events(max_waiting=state.settings.max_buffered_tokens):
                if isinstance(event, StreamedToken):
                    last = event
                    if event.finish_reason is None:
                        yield sse_event(
                            tgi.StreamResponse(
                                index=event.index, token=_stream_token(event), top_tokens=top_tokens(event)
                            )
                        )
                elif isinstance(event, Result):
                    end = tgi.StreamDetails(
                        finish_reason=event.finish_reason,
                        generated_tokens=event.completion_tokens,
                        seed=event.seed,
                        input_length=event.prompt_tokens,
                    )
                    yield sse_event(
                        tgi.StreamResponse(
                            index=last.index,
                            token=_stream_token(last),
                            top_tokens=top_tokens(last),
                            details=end,
                            generated_text=event.text,
                            keywords_output=keywords_output(event),
                        )
                    )
                else:
                    yield sse(error_body(failure(event), openai=False)[1])

    return sse_response(events())


def sse_event(event: tgi.StreamResponse) -> str:
    """One SSE event as TGI sends it."""
    return sse(event.model_dump())


def _stream_token(t: StreamedToken) -> tgi.Token:
    """A streamed token: the text it released (which may hold back or add a split character)."""
    return tgi.Token(id=t.id, text=t.text, logprob=t.logprob, special=t.special)


@router.post(
    "/generate", response_model=tgi.GenerateResponse, response_model_exclude_none=True, responses=ERRORS
)
async def generate(request: Request, body: tgi.GenerateRequest, state: StateDep):
    """Generate text for one prompt (TGI). ``details`` adds tokens, logprobs and the finish reason."""
    return await run_to_end(request, state, body, "/generate")


@router.post("/generate_stream", responses={200: {"content": {"text/event-stream": {}}}, **ERRORS})
async def generate_stream(body: tgi.GenerateRequest, state: StateDep):
    """Server-sent events, one per token; the last carries ``generated_text`` and ``details``."""
    return stream(state, body, "/generate_stream")


@router.post(
    "/",
    response_model=list[tgi.GenerateResponse],
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
)
async def compat_generate(request: Request, body: tgi.GenerateRequest, state: StateDep):
    """TGI's compatibility route (used by its Python client): a one-element list, or SSE when ``stream``."""
    if body.stream:
        return stream(state, body, "/")
    result = await run_to_end(request, state, body, "/")
    return [result.model_dump(exclude_none=True)]


@router.get("/info", response_model=tgi.Info, responses=READ_ERRORS)
async def info(state: StateDep):
    """The default model and the server's limits, as TGI's ``/info`` gives them."""
    s = state.settings
    entry = state.registry.default
    n_ctx = entry.model.hparams.n_ctx if entry.model else 1024
    capacity = sum(e.worker.capacity for e in state.registry.entries.values() if e.worker)
    return tgi.Info(
        model_id=entry.name,
        model_dtype=entry.model.engine.config.dtype if entry.model else s.dtype,
        model_device_type=entry.device.split(":")[0].strip("/").lower(),
        max_concurrent_requests=capacity,
        max_stop_sequences=s.max_stop_sequences,
        max_input_tokens=n_ctx,
        max_input_length=n_ctx,
        max_total_tokens=n_ctx + s.max_new_tokens_limit,
        version=__version__,
        models=list(state.registry.entries),
    )


@router.post(
    "/tokenize",
    response_model=list[tgi.SimpleToken],
    responses={code: {"model": tgi.ErrorResponse} for code in (401, 413, 422, 503)},
)
async def tokenize(body: tgi.TokenizeRequest, state: StateDep):
    """Token ids of ``inputs`` with each token's text and character offsets."""
    _, worker = ready_worker(state.registry, body.parameters.model if body.parameters else None)
    check_text(body.inputs, "inputs")
    enc = worker.model.encoder
    out, pos = [], 0
    for i in enc.encode(body.inputs):
        text = enc.decode([i])
        out.append(tgi.SimpleToken(id=i, text=text, start=pos, stop=pos + len(text)))
        pos += len(text)
    return out
