"""What routes need from the running server, reached through one FastAPI dependency."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, WebSocket

from app.server.metrics import Metrics
from app.server.registry import Registry
from app.server.settings import Settings


@dataclass(eq=False)
class ServerState:
    settings: Settings
    metrics: Metrics
    registry: Registry
    draining: bool = False
    started: float = field(default_factory=time.time)
    # POST /attention's own thread (one map at a time), never the decode worker's.
    attention_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="attention")
    )
    websockets: int = 0  # open /stream connections (uvicorn does not count them)
    ws_requests: int = 0  # /stream requests submitted and not yet answered with their last message
    drain_deadline: float | None = None  # time.monotonic() by which the drain ends (app.server.shutdown)


def get_state(request: Request) -> ServerState:
    return request.app.state.server


def get_ws_state(websocket: WebSocket) -> ServerState:
    return websocket.app.state.server


StateDep = Annotated[ServerState, Depends(get_state)]
WsStateDep = Annotated[ServerState, Depends(get_ws_state)]
