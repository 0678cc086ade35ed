"""Graceful shutdown: drain every accepted request before uvicorn starts its own shutdown.

uvicorn's shutdown closes every open WebSocket with 1012 at once, before the app's lifespan
shutdown runs, so draining there would cut streams short. :class:`GracefulServer` therefore
handles the first SIGTERM/SIGINT itself:

1. :func:`begin_drain` at once: ``/ready`` answers 503, every new HTTP request 503
   ``unavailable`` (an OpenAI error object under ``/v1``; see :class:`RefuseWhileDraining`), every
   new WebSocket request an ``unavailable`` error and close 1012, and the workers stop accepting.
2. Requests already accepted (streaming, queued, WebSocket streams, SSE streams) go on until
   :func:`drained` (no worker has a request in flight and no WebSocket request is still sending)
   or ``settings.drain_timeout`` has passed since step 1.
3. Only then ``should_exit`` is set and uvicorn's own shutdown runs: it closes the idle
   connections (WebSockets with 1012), lets HTTP responses finish sending, and runs the lifespan
   shutdown (:func:`app.server.app.drain`, which finds nothing left to wait for).

A second signal exits at once. Tests running uvicorn in a thread (where it installs no signal
handlers) call :meth:`GracefulServer.request_drain` instead of sending a signal.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.server.errors import APIError, error_response
from app.server.state import ServerState

log = logging.getLogger("gpt2serve.shutdown")

# Routes that still answer while draining: liveness, readiness (503 "draining"), metrics, model states.
OPEN_WHILE_DRAINING = frozenset({"/health", "/ready", "/metrics", "/models"})
AFTER_DRAIN_GRACE = 2.0  # seconds uvicorn gets to finish sending responses once the drain ended
SHUTTING_DOWN = "the server is shutting down"


def begin_drain(state: ServerState) -> bool:
    """Refuse new work from now on and start the drain clock. Idempotent; True the first time.

    Safe to call from a signal handler or another thread: it sets flags and takes each worker's
    lock only briefly."""
    first = state.drain_deadline is None
    if first:
        state.drain_deadline = time.monotonic() + state.settings.drain_timeout
    state.draining = True
    state.registry.stop_accepting()
    return first


def drained(state: ServerState) -> bool:
    """Nothing accepted is still running: no worker has a request in flight and every WebSocket
    request has sent its last message (HTTP responses that are still being written are uvicorn's
    to finish: its shutdown waits for them)."""
    if state.ws_requests:
        return False
    return all(e.worker is None or e.worker.in_flight == 0 for e in state.registry.entries.values())


def remaining(state: ServerState) -> float:
    """Seconds left until the drain deadline (the whole drain timeout if no drain has begun)."""
    if state.drain_deadline is None:
        return state.settings.drain_timeout
    return max(0.0, state.drain_deadline - time.monotonic())


class RefuseWhileDraining:
    """Pure-ASGI middleware: while draining, every new HTTP request but the operations routes gets
    503 ``unavailable`` in its route family's error shape (the WebSocket route refuses by itself,
    with an error message and close 1012)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_WHILE_DRAINING:
            app = scope.get("app")
            state: ServerState | None = getattr(getattr(app, "state", None), "server", None)
            if state is not None and state.draining:
                response = error_response(Request(scope), APIError("unavailable", SHUTTING_DOWN))
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class GracefulServer(uvicorn.Server):
    """``uvicorn.Server`` that drains the app (created by :func:`app.server.app.create_app`)
    before its own shutdown begins. See the module docstring."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.app = app
        self._draining = False
        self._announced = False

    @property
    def state(self) -> ServerState | None:
        """The app's state, once its lifespan started."""
        return getattr(self.app.state, "server", None)

    def request_drain(self) -> bool:
        """Begin draining (any thread); uvicorn exits once drained. False when there is nothing to
        drain (the lifespan has not started) or a drain already began."""
        state = self.state
        if state is None or self._draining:
            return False
        self._draining = True
        begin_drain(state)
        return True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self._draining and not self.should_exit and self.request_drain():
            # Let uvicorn record the signal (it raises it again after shutdown: with serve's no-op
            # SIGTERM handler the process then exits 0), but not exit yet: on_tick does, once drained.
            super().handle_exit(sig, frame)
            self.should_exit = False
            return
        super().handle_exit(sig, frame)  # a second signal (or no app state): exit now
        if self._draining:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        state = self.state
        if self._draining and state is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                log.info(
                    "draining: new requests are refused; waiting up to %.0f s for %s",
                    state.settings.drain_timeout,
                    _in_flight(state),
                )
            if drained(state):
                log.info("drained: every accepted request has finished")
                self._exit(AFTER_DRAIN_GRACE)
            elif remaining(state) <= 0:
                log.warning(
                    "drain timeout (%.0f s) passed with %s; closing",
                    state.settings.drain_timeout,
                    _in_flight(state),
                )
                self._exit(AFTER_DRAIN_GRACE)
        return await super().on_tick(counter)

    def _exit(self, grace: float) -> None:
        # uvicorn waits this long for open connections (responses still being written) before it
        # cancels their tasks; the drain has already used the drain timeout.
        self.config.timeout_graceful_shutdown = grace
        self.should_exit = True


def _in_flight(state: ServerState) -> str:
    n = sum(e.worker.in_flight for e in state.registry.entries.values() if e.worker is not None)
    return f"{n} request(s) in flight"
