"""Await a request's events while watching its client: a client that leaves cancels the request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request

from app.server.worker import Done, Event, Failed, RequestHandle, Token

DISCONNECT_POLL = 0.05  # seconds; well under one decode step of any real model


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def collect(request: Request, handle: RequestHandle) -> tuple[list[Token], Done | Failed]:
    """All of a request's events; cancels it (freeing its slot) if the client disconnects first."""
    tokens: list[Token] = []
    loop = asyncio.get_running_loop()
    checked = loop.time()
    try:
        while True:
            try:
                event = await asyncio.wait_for(handle.queue.get(), DISCONNECT_POLL)
            except TimeoutError:
                event = None
            # Also while tokens keep coming: a fast model never leaves DISCONNECT_POLL idle.
            if event is None or loop.time() - checked >= DISCONNECT_POLL:
                checked = loop.time()
                if await request.is_disconnected():
                    raise ClientGone from None
            if event is None:
                continue
            if isinstance(event, Token):
                tokens.append(event)
            else:
                return tokens, event
    except BaseException:
        handle.cancel()
        raise


async def guarded(handle: RequestHandle) -> AsyncIterator[Event]:
    """A request's events for a streaming response; if the response stops early (the client left,
    the server is closing), the request is cancelled."""
    finished = False
    try:
        async for event in handle.events():
            if not isinstance(event, Token):
                finished = True
            yield event
    finally:
        if not finished:
            handle.cancel()


def sse(payload: object) -> str:
    return f"data:{json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
