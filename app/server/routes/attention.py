"""``POST /attention``: the attention maps of a prompt, ``[layer][head][query][key]``.

The request is checked on the event loop (:func:`app.server.validation.attention_input`: the same
prompt rules as a generation's); the maps are computed by
:func:`app.engine.attention_maps.attention_maps` over the weights the model generates with, off the
decode worker's thread: one ``attention`` thread of its own (one map at a time, the others wait
for it) runs the cache-free forward pass and writes the JSON body, so
neither the worker's step loop nor the event loop (which sends the streams' tokens) waits for it.
The body is written a matrix row at a time: a large map (124M, 256 tokens: 9.4 million numbers)
never holds the interpreter for long.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence

import numpy as np
from fastapi import APIRouter, Response

from app.engine.attention_maps import attention_maps
from app.runtime.load import LoadedModel
from app.server.schemas import tgi
from app.server.schemas.attention import AttentionRequest, AttentionResponse
from app.server.state import StateDep
from app.server.validation import AttentionInput, attention_input, ready_worker

router = APIRouter(tags=["attention"])
ROUTE = "/attention"
# 401: API keys are on; 413: the body limit; 422: a bad request; 503: loading, draining.
ERRORS = {code: {"model": tgi.ErrorResponse} for code in (401, 413, 422, 503)}
DECIMALS = 7  # of each weight in the body (well inside float32's precision at 1)


@router.post(ROUTE, response_model=AttentionResponse, responses=ERRORS)
async def attention(body: AttentionRequest, state: StateDep):
    """Attention maps of ``inputs`` (at most ``GPT2_ATTENTION_MAX_TOKENS`` tokens) for the chosen
    ``layers`` and ``heads`` (default: all): ``attention[i][j]`` is layer ``layers[i]``, head
    ``heads[j]``, a ``[query][key]`` matrix whose rows sum to 1, as bertviz's head view reads it."""
    entry, worker = ready_worker(state.registry, body.model)
    checked = attention_input(worker, state.settings, body.inputs, body.layers, body.heads)
    job = functools.partial(_answer, worker.model, checked)
    labels = {"route": ROUTE, "model": entry.name}  # counted with the generation routes
    try:
        content = await asyncio.get_running_loop().run_in_executor(state.attention_pool, job)
    except asyncio.CancelledError:
        state.metrics.requests.labels(**labels, outcome="cancelled").inc()
        raise
    except Exception:
        state.metrics.requests.labels(**labels, outcome="error").inc()
        raise
    state.metrics.requests.labels(**labels, outcome="ok").inc()
    return Response(content, media_type="application/json")


def _answer(model: LoadedModel, checked: AttentionInput) -> bytes:
    """Runs in the attention thread: compute, write the body."""
    ids, layers, heads = checked.ids, checked.layers, checked.heads
    maps = attention_maps(model.engine.weights(), ids, hp=model.hparams, layers=layers, heads=heads)
    head = {
        "tokens": [{"id": i, "text": model.encoder.decode([i])} for i in ids],
        "n_layer": model.hparams.n_layer,
        "n_head": model.hparams.n_head,
        "layers": layers,
        "heads": heads,
    }
    return (json.dumps(head)[:-1] + ', "attention": ' + _nested_json(maps) + "}").encode()


def _nested_json(a: np.ndarray) -> str:
    """A float array as nested JSON lists, one ``json.dumps`` per last-axis row."""
    if a.ndim == 1:
        return json.dumps(_rounded(a))
    return "[" + ",".join(_nested_json(sub) for sub in a) + "]"


def _rounded(row: Sequence[float] | np.ndarray) -> list[float]:
    return np.round(np.asarray(row, np.float64), DECIMALS).tolist()
