"""Operations: ``GET /health``, ``GET /ready``, ``GET /models``, ``GET /metrics``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from app.server.registry import describe
from app.server.schemas import tgi
from app.server.state import ServerState, StateDep
from app.server.worker import ModelWorker

router = APIRouter(tags=["operations"])
READ_ERRORS = {code: {"model": tgi.ErrorResponse} for code in (401, 503)}


class Probe(BaseModel):
    """What /health and /ready answer (200 or 503)."""

    status: str
    error: str | None = None  # /health: what is wrong
    models: dict[str, str] | None = None  # /ready: each model's state


PROBE = {200: {"model": Probe}, 503: {"model": Probe}}


@router.get("/health", responses=PROBE)
async def health(state: StateDep):
    """200 while the process and every loaded worker are responsive and the last step of each went
    through; 503 names the first that is not."""
    for entry in state.registry.entries.values():
        if (problem := _worker_problem(entry.name, entry.worker, state)) is not None:
            return JSONResponse({"status": "error", "error": problem}, 503)
    return {"status": "ok"}


def _worker_problem(name: str, w: ModelWorker | None, state: ServerState) -> str | None:
    """What is wrong with a model's worker (dead, stuck, its last step failed), or None."""
    if w is None:
        return None
    if not w.alive and not state.draining:
        return f"worker of model {name} is dead"
    if (since := w.busy_since) is not None and time.monotonic() - since > state.settings.health_stuck_seconds:
        return f"worker of model {name} is stuck"
    if (error := w.step_error) is not None:
        return f"worker of model {name}: its last step failed ({error}); healthy again after a step succeeds"
    return None


@router.get("/ready", responses=PROBE)
async def ready(state: StateDep):
    """200 once every model is loaded and the server is not draining; 503 with each model's state."""
    states = {e.name: e.state for e in state.registry.entries.values()}
    if state.draining:
        return JSONResponse({"status": "draining", "models": states}, 503)
    if not state.registry.ready():
        return JSONResponse({"status": "not ready", "models": states}, 503)
    return {"status": "ready", "models": states}


@router.get("/models", responses=READ_ERRORS)
async def models(state: StateDep):
    """Every configured model: source, hparams, device, dtype, state (with the reason when failed),
    slots busy/total, queue length and memory plan."""
    return {"models": [describe(e) for e in state.registry.entries.values()]}


@router.get("/metrics", response_class=Response, responses=READ_ERRORS)
async def metrics(state: StateDep):
    """Prometheus text format."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
