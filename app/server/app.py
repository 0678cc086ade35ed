"""The FastAPI application factory. ``main``-style: builds the app and nothing else.

Models load in the lifespan (in a background thread, so ``/health`` answers while they load),
never at import. On shutdown the server stops accepting, lets every accepted request finish
within ``drain_timeout``, then stops the workers. ``gpt2-serve serve`` drains on SIGTERM before
uvicorn's own shutdown closes the WebSockets (:mod:`app.server.shutdown`); the lifespan's
:func:`drain` then finds nothing left to wait for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.server import errors, openapi_doc
from app.server.metrics import Metrics
from app.server.middleware import ApiKeys, BodyLimit, RequestId, redact_credentials_in_logs
from app.server.registry import Registry
from app.server.routes import attention, openai, playground, system, tgi, ws
from app.server.settings import Settings
from app.server.shutdown import RefuseWhileDraining, begin_drain, remaining
from app.server.state import ServerState

if TYPE_CHECKING:
    from app.engine.programs import ProgramShelf

log = logging.getLogger("gpt2serve")

ROUTERS = (tgi.router, system.router, ws.router, openai.router, attention.router, playground.router)


def create_app(settings: Settings | None = None, *, shelf: ProgramShelf | None = None) -> FastAPI:
    """The server's app (models load when it starts); ``shelf``: programs shared across apps."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.cpu_devices > 1:
            from app.engine.devices import split_cpu

            split_cpu(settings.cpu_devices)  # must precede any TensorFlow op in this process
        metrics = Metrics()
        state = ServerState(settings, metrics, Registry(settings, metrics, shelf))
        app.state.server = state
        state.registry.start_loading()
        try:
            yield
        finally:
            await drain(state)

    app = FastAPI(
        title="gpt2-serve",
        version=__version__,
        lifespan=lifespan,
        description="GPT-2 text generation: TGI- and OpenAI-compatible routes and a WebSocket stream.",
    )
    errors.install(app)
    # Outermost last: request id wraps everything, then auth, then the drain refusal, then the body limit.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RefuseWhileDraining)  # 503 for new HTTP requests once draining
    redact_credentials_in_logs()  # the websockets library logs handshake headers at DEBUG
    if settings.api_keys:
        # Probes (health, readiness) stay open: they reveal only up/down and model states.
        # The playground's files are public too (no data in them: the page asks for the key).
        public = ("/health", "/ready", *playground.PUBLIC) + (
            () if settings.protect_metrics else ("/metrics",)
        )
        app.add_middleware(ApiKeys, keys=[k.get_secret_value() for k in settings.api_keys], public=public)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            allow_credentials="*" not in settings.cors_origins,
        )
    app.add_middleware(RequestId)
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = functools.partial(openapi_doc.document, app, settings)
    return app


async def drain(state: ServerState) -> None:
    """Refuse new work, let accepted requests finish within the drain timeout, stop the workers.

    Idempotent with :func:`app.server.shutdown.begin_drain`: when a drain began earlier (SIGTERM),
    this waits only for what is left of the same drain timeout."""
    begin_drain(state)
    finished = await asyncio.to_thread(state.registry.join, remaining(state))
    if not finished:
        log.warning("drain timeout (%.0f s) passed with requests still running", state.settings.drain_timeout)
    state.attention_pool.shutdown(wait=False, cancel_futures=True)
