"""Operations: ``GET /health``, ``GET /ready``, ``GET /models``, ``GET /metrics``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from app.server.registry import describe
from app.server.schemas import tgi
from app.server.state import StateDep

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
    """200 while the process and every loaded worker are responsive; 503 names the first that is not."""
    now = time.monotonic()
    for entry in state.registry.entries.values():
        w = entry.worker
        if w is None:
            continue
        if not w.alive and not state.draining:
            return JSONResponse({"status": "error", "error": f"worker of model {entry.name} is dead"}, 503)
        if w.busy_since is not None and now - w.busy_since > state.settings.health_stuck_seconds:
            return JSONResponse({"status": "error", "error": f"worker of model {entry.name} is stuck"}, 503)
    return {"status": "ok"}


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
