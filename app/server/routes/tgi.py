"""Text Generation Inference's routes: ``POST /generate``, ``POST /generate_stream`` (SSE),
``POST /`` (either, by ``stream``), ``GET /info`` and ``POST /tokenize``, shaped so TGI's own
``text-generation`` Python client works unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app import __version__
from app.server.errors import APIError
from app.server.requests import build_request, check_text, ready_worker
from app.server.schemas import tgi
from app.server.state import ServerState, StateDep
from app.server.streaming import ClientGone, collect, guarded, sse
from app.server.worker import Done, Failed, ModelWorker, Overloaded, RequestHandle, Token, Unavailable

router = APIRouter(tags=["TGI"])
ERRORS = {422: {"model": tgi.ErrorResponse}, 424: {"model": tgi.ErrorResponse},
          429: {"model": tgi.ErrorResponse}, 503: {"model": tgi.ErrorResponse}}  # fmt: skip


def submit(state: ServerState, body: tgi.GenerateRequest, route: str) -> tuple[ModelWorker, RequestHandle]:
    p = body.parameters
    if state.draining:
        raise APIError("unavailable", "the server is shutting down")
    entry, worker = ready_worker(state.registry, p.model)
    req = build_request(worker, state.settings, inputs=body.inputs, max_new_tokens=p.max_new_tokens,
                        temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, seed=p.seed, stop=p.stop,
                        do_sample=p.do_sample, repetition_penalty=p.repetition_penalty, truncate=p.truncate,
                        speculative=p.speculative)  # fmt: skip
    try:
        return worker, worker.submit(req)
    except Overloaded as exc:
        state.metrics.rejected.labels(entry.name, "overloaded").inc()
        raise APIError("overloaded", str(exc)) from None
    except Unavailable as exc:
        state.metrics.rejected.labels(entry.name, "unavailable").inc()
        raise APIError("unavailable", str(exc)) from None


def api_token(worker: ModelWorker, t: Token) -> tgi.Token:
    """A token as TGI's details list it: its own text, whatever was released around it."""
    return tgi.Token(id=t.id, text="" if t.special else worker.model.encoder.decode([t.id]),
                     logprob=t.logprob, special=t.special)  # fmt: skip


def _sampled(handle: RequestHandle) -> bool:
    return not handle.request.sampling.greedy


def details(worker: ModelWorker, handle: RequestHandle, body: tgi.GenerateRequest, tokens: list[Token],
            done: Done) -> tgi.Details:  # fmt: skip
    enc = worker.model.encoder
    prefill = []
    if body.parameters.decoder_input_details:
        prefill = [tgi.InputToken(id=i, text=enc.decode([i]), logprob=None) for i in handle.request.prompt_ids]
    return tgi.Details(finish_reason=done.finish_reason, generated_tokens=done.completion_tokens,
                       seed=done.seed if _sampled(handle) else None, prefill=prefill,
                       tokens=[api_token(worker, t) for t in tokens])  # fmt: skip


def raise_failed(event: Failed) -> None:
    raise APIError("generation" if event.error_type == "generation" else event.error_type, event.message)


async def run_to_end(request: Request, state: ServerState, body: tgi.GenerateRequest,
                     route: str) -> tgi.GenerateResponse:  # fmt: skip
    worker, handle = submit(state, body, route)
    try:
        tokens, end = await collect(request, handle)
    except ClientGone:
        state.metrics.requests.labels(route, worker.name, "cancelled").inc()
        raise APIError("cancelled", "client closed the request") from None
    state.metrics.requests.labels(route, worker.name, "ok" if isinstance(end, Done) else "error").inc()
    if isinstance(end, Failed):
        raise_failed(end)
    text = body.inputs + end.generated_text if body.parameters.return_full_text else end.generated_text
    info = details(worker, handle, body, tokens, end) if body.parameters.details else None
    return tgi.GenerateResponse(generated_text=text, details=info)


def stream(state: ServerState, body: tgi.GenerateRequest, route: str) -> StreamingResponse:
    worker, handle = submit(state, body, route)  # errors here are plain JSON responses

    async def events():
        tokens: list[Token] = []
        outcome = "cancelled"
        try:
            async for event in guarded(handle):
                if isinstance(event, Token):
                    tokens.append(event)
                    if event.finish_reason is None:
                        tok = tgi.Token(id=event.id, text=event.text, logprob=event.logprob, special=event.special)
                        yield sse(tgi.StreamResponse(index=event.index, token=tok).model_dump())
                elif isinstance(event, Done):
                    outcome = "ok"
                    last = tokens[-1]
                    text = body.inputs + event.generated_text if body.parameters.return_full_text else event.generated_text
                    tok = tgi.Token(id=last.id, text=last.text, logprob=last.logprob, special=last.special)
                    end = tgi.StreamDetails(finish_reason=event.finish_reason, generated_tokens=event.completion_tokens,
                                            seed=event.seed if _sampled(handle) else None,
                                            input_length=event.prompt_tokens)  # fmt: skip
                    yield sse(tgi.StreamResponse(index=last.index, token=tok, generated_text=text,
                                                 details=end).model_dump())  # fmt: skip
                else:
                    outcome = "error"
                    yield sse({"error": event.message, "error_type": event.error_type})
        finally:
            state.metrics.requests.labels(route, worker.name, outcome).inc()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


@router.post("/generate", response_model=tgi.GenerateResponse, response_model_exclude_none=True, responses=ERRORS)
async def generate(request: Request, body: tgi.GenerateRequest, state: StateDep):
    """Generate text for one prompt (TGI). ``details`` adds tokens, logprobs and the finish reason."""
    return await run_to_end(request, state, body, "/generate")


@router.post("/generate_stream", responses={200: {"content": {"text/event-stream": {}}}, **ERRORS})
async def generate_stream(body: tgi.GenerateRequest, state: StateDep):
    """Server-sent events, one per token; the last carries ``generated_text`` and ``details``."""
    return stream(state, body, "/generate_stream")


@router.post("/", response_model=list[tgi.GenerateResponse], responses={200: {"content": {"text/event-stream": {}}}, **ERRORS})
async def compat_generate(request: Request, body: tgi.GenerateRequest, state: StateDep):
    """TGI's compatibility route (used by its Python client): a one-element list, or SSE when ``stream``."""
    if body.stream:
        return stream(state, body, "/")
    result = await run_to_end(request, state, body, "/")
    return [result.model_dump(exclude_none=True)]


@router.get("/info", response_model=tgi.Info)
async def info(state: StateDep):
    """The default model and the server's limits, as TGI's ``/info`` gives them."""
    s = state.settings
    entry = state.registry.default
    n_ctx = entry.model.hparams.n_ctx if entry.model else 1024
    capacity = sum(e.worker.capacity for e in state.registry.entries.values() if e.worker)
    return tgi.Info(model_id=entry.name, model_dtype=s.dtype, model_device_type=entry.device.split(":")[0].strip("/").lower(),
                    max_concurrent_requests=capacity, max_stop_sequences=s.max_stop_sequences,
                    max_input_tokens=n_ctx, max_input_length=n_ctx, max_total_tokens=n_ctx + s.max_new_tokens_limit,
                    version=__version__, models=list(state.registry.entries))  # fmt: skip


@router.post("/tokenize", response_model=list[tgi.SimpleToken],
             responses={422: {"model": tgi.ErrorResponse}, 503: {"model": tgi.ErrorResponse}})
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
