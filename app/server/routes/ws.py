"""``ws /stream``: our own WebSocket protocol (messages in :mod:`app.server.schemas.ws`, JSON Schema
in ``docs/ws-protocol.schema.json``).

One connection carries requests one after another. Each connection has two coroutines:

* a reader that receives every client frame as soon as it arrives: it acts on ``cancel`` at once
  and on a disconnect at once (both cancel the streaming request, so the worker frees its slot at
  the next step boundary), and queues ``generate`` messages (parsed and validated) for
* the handler, which runs one request at a time: submits it to the model's worker and forwards the
  request's events (read on the event loop from :meth:`Generation.events`, never sent from the
  worker thread) as ``token`` messages and one ``done`` or ``error``. It puts them in an outbox
  that a sender task writes to the socket, so a client that stops reading (``send`` then waits
  for as long as the client does) blocks only its own sender: when more than
  ``max_buffered_tokens`` token messages wait in the outbox, the request is cancelled (its slot
  freed) and the connection closed with 1008 (the close frame goes out when the client reads
  again; after ``CLOSE_TIMEOUT`` the handler gives up waiting for that and leaves).

Refusals: a validation problem answers ``error`` and keeps the connection; an overloaded model
answers ``error`` "overloaded" and closes with 1013 (try again later); a draining server answers
``error`` "unavailable" and closes with 1012 (service restart). Connections beyond
``max_websockets`` are refused the same way as an overloaded model (uvicorn's
``--limit-concurrency`` does not count WebSockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from app.server.errors import APIError, cap
from app.server.generation import Generation, Result, StreamedToken, submit
from app.server.routes.tgi import keywords_output, top_tokens
from app.server.schemas import ws as proto
from app.server.state import ServerState, WsStateDep

log = logging.getLogger("gpt2serve.ws")

router = APIRouter(tags=["WebSocket"])

ROUTE = "/stream"
PROTOCOL = "gpt2-serve"  # the subprotocol a client may offer (browsers do, to carry an API key beside it)
MAX_AHEAD = 16  # generate messages a client may send ahead while one request streams
CLOSE_OVERLOADED = 1013  # "try again later"
CLOSE_RESTART = 1012  # "service restart"
CLOSE_POLICY = 1008  # policy violation: too many requests sent ahead, or a client too slow to read
CLOSE_TIMEOUT = 10.0  # seconds to wait for the close frame of a too-slow client to go out
# What sending or receiving raises once the connection is gone (Starlette: WebSocketDisconnect, or
# RuntimeError after a close; the server's transport: OSError).
CONNECTION_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)


class ConnectionGone(Exception):
    """The client disconnected, or the server closed the connection."""


class _Connection:
    def __init__(self, websocket: WebSocket, state: ServerState):
        self.ws = websocket
        self.state = state
        # Parsed generate messages, or errors to answer, in arrival order; None: the client left.
        self.inbox: asyncio.Queue[proto.GenerateMessage | proto.ErrorMessage | None] = asyncio.Queue()
        self.current: tuple[Generation, str | None] | None = None  # streaming now, and the client's id
        self.gone = False
        self.flooded = False

    # ---- the reader ----

    async def read(self) -> None:
        try:
            await self._receive_frames()
        except CONNECTION_ERRORS:
            pass
        except Exception:  # noqa: BLE001 - never leave the handler waiting on a dead reader
            log.exception("WebSocket reader failed")
        finally:
            if not self.flooded:
                self.gone = True
            self.cancel(None)
            self.inbox.put_nowait(None)

    async def _receive_frames(self) -> None:
        while True:
            frame = await self.ws.receive()
            if frame["type"] == "websocket.disconnect":
                return
            message = self.parse(frame)
            if isinstance(message, proto.CancelMessage):
                self.cancel(message.id)
            elif self.inbox.qsize() >= MAX_AHEAD:
                self.flooded = True  # stop reading; the handler closes once the current request ended
                return
            else:
                self.inbox.put_nowait(message)

    def cancel(self, request_id: str | None) -> None:
        if self.current is not None and request_id in (None, self.current[1]):
            self.current[0].cancel()

    def parse(self, frame: dict) -> proto.GenerateMessage | proto.CancelMessage | proto.ErrorMessage:
        text = frame.get("text")
        if text is None:
            return proto.ErrorMessage(
                error_type="validation", message="messages must be JSON objects in text frames"
            )
        limit = self.state.settings.max_body_bytes
        if len(text) > limit or len(text.encode()) > limit:
            return proto.ErrorMessage(error_type="too_large", message=f"message is larger than {limit} bytes")
        try:
            return proto.client_message.validate_json(text)
        except ValidationError as exc:
            return proto.ErrorMessage(error_type="validation", message=describe(exc), request_id=_id_of(text))

    # ---- the handler ----

    async def serve(self) -> None:
        reader = asyncio.create_task(self.read(), name="ws-reader")
        try:
            while True:
                message = await self.inbox.get()
                if self.gone:
                    return
                if self.flooded:
                    await self.refuse(
                        "validation", f"more than {MAX_AHEAD} requests sent ahead", None, CLOSE_POLICY
                    )
                    return
                if message is None:
                    return
                if isinstance(message, proto.ErrorMessage):
                    await self.send(message)
                elif not await self.run(message):
                    return
        except ConnectionGone:
            pass
        finally:
            self.cancel(None)
            reader.cancel()
            await asyncio.wait({reader})

    async def run(self, msg: proto.GenerateMessage) -> bool:
        """One request, start to end. False when the connection was closed (refused, or too slow)."""
        try:
            gen = submit(self.state, ROUTE, [msg.parameters.text_request(msg.inputs)])
        except APIError as err:
            return await self.refused(err, msg.id)
        self.current = (gen, msg.id)
        self.state.ws_requests += 1  # until its last message is sent (the drain waits for it)
        outbox: asyncio.Queue[proto.TokenMessage | proto.DoneMessage | proto.ErrorMessage | None] = (
            asyncio.Queue()
        )
        sender = asyncio.create_task(self.send_all(outbox), name="ws-sender")
        try:
            async with gen:
                slow = await self.forward(gen, msg, outbox, sender)
            if not slow:
                outbox.put_nowait(None)
                await sender  # every message sent; ConnectionGone if the client left
        finally:
            self.current = None
            sender.cancel()  # a no-op once it finished; stops a send blocked on a client that does not read
            await asyncio.wait({sender})
            if not sender.cancelled():
                sender.exception()  # retrieved: a ConnectionGone there was acted on above (or the handler is ending)
            self.state.ws_requests -= 1
        if slow:
            limit = self.state.settings.max_buffered_tokens
            log.warning("closing a WebSocket that does not read: more than %d token messages waiting", limit)
            self.gone = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    close(self.ws, CLOSE_POLICY, f"client too slow: more than {limit} messages waiting"),
                    CLOSE_TIMEOUT,
                )
            return False
        return True

    async def refused(self, err: APIError, rid: str | None) -> bool:
        """Answer a request that was not accepted; False when that closes the connection."""
        if err.error_type == "overloaded":
            await self.refuse("overloaded", err.message, rid, CLOSE_OVERLOADED)
            return False
        if err.error_type == "unavailable" and self.state.draining:
            await self.refuse("unavailable", err.message, rid, CLOSE_RESTART)
            return False
        await self.send(proto.ErrorMessage(error_type=err.error_type, message=err.message, request_id=rid))
        return True

    async def forward(
        self, gen: Generation, msg: proto.GenerateMessage, outbox: asyncio.Queue, sender: asyncio.Task
    ) -> bool:
        """Put the request's events in the outbox as messages. True when the client reads too slowly."""
        rid, limit = msg.id, self.state.settings.max_buffered_tokens
        async for _, event in gen.events():
            if sender.done():  # the connection is gone; awaiting the sender says so
                return False
            if isinstance(event, StreamedToken):
                outbox.put_nowait(
                    proto.TokenMessage(
                        index=event.index,
                        id=event.id,
                        text=event.text,
                        logprob=event.logprob,
                        special=event.special,
                        top_tokens=top_tokens(event),
                        request_id=rid,
                    )
                )
                if outbox.qsize() > limit:
                    gen.outcome = "slow_client"
                    return True
            elif isinstance(event, Result):
                outbox.put_nowait(
                    proto.DoneMessage(
                        finish_reason=event.finish_reason,
                        generated_text=event.text,
                        request_id=rid,
                        seed=event.seed,
                        usage=proto.Usage(
                            prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
                        ),
                        keywords_output=keywords_output(event),
                    )
                )
            else:
                outbox.put_nowait(
                    proto.ErrorMessage(
                        error_type=event.error_type, message=cap(event.message), request_id=rid
                    )
                )
        return False

    async def send_all(self, outbox: asyncio.Queue) -> None:
        """The sender task of one request: its messages in order, until ``None``."""
        while (message := await outbox.get()) is not None:
            await self.send(message)

    async def send(self, message: proto.TokenMessage | proto.DoneMessage | proto.ErrorMessage) -> None:
        if self.gone:
            raise ConnectionGone
        try:
            await self.ws.send_text(message.model_dump_json())
        except CONNECTION_ERRORS:
            self.gone = True
            raise ConnectionGone from None

    async def refuse(self, error_type: str, message: str, request_id: str | None, code: int) -> None:
        await self.send(
            proto.ErrorMessage(error_type=error_type, message=cap(message), request_id=request_id)
        )
        await close(self.ws, code, error_type)
        self.gone = True


async def refuse_connection(websocket: WebSocket, error_type: str, message: str, code: int) -> None:
    try:
        await websocket.send_text(
            proto.ErrorMessage(error_type=error_type, message=message).model_dump_json()
        )
    except CONNECTION_ERRORS:
        return
    await close(websocket, code, error_type)


async def close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(*CONNECTION_ERRORS):
        await websocket.close(code=code, reason=reason)


def describe(exc: ValidationError) -> str:
    """First problem as ``"<field>: <what>"`` (pydantic's message, never the input value)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return "invalid JSON"
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] in ("generate", "cancel"):  # the union's tag, not a field
        loc = loc[1:]
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return cap(f"{'.'.join(loc) or 'message'}: {first['msg']}{more}")


def _id_of(text: str) -> str | None:
    """The client's ``id`` of a message that failed validation, to echo with the error."""
    try:
        value = json.loads(text).get("id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and len(value) <= 256 else None


@router.websocket(ROUTE)
async def stream(websocket: WebSocket, state: WsStateDep):
    """Generate over a WebSocket: send ``generate`` messages, receive ``token`` messages and one
    ``done`` (or ``error``) per request; ``cancel`` stops the streaming request."""
    # A browser offers "gpt2-serve" (and its key, see middleware.KEY_PROTOCOL): a WebSocket must
    # answer with one of the subprotocols offered, never with the key.
    await websocket.accept(
        subprotocol=PROTOCOL if PROTOCOL in websocket.scope.get("subprotocols", ()) else None
    )
    limit = state.settings.max_websockets
    if state.draining:
        await refuse_connection(websocket, "unavailable", "the server is shutting down", CLOSE_RESTART)
        return
    if state.websockets >= limit:
        log.warning("refusing a WebSocket: %d connections open (limit %d)", state.websockets, limit)
        await refuse_connection(
            websocket, "overloaded", f"too many WebSocket connections (limit {limit})", CLOSE_OVERLOADED
        )
        return
    state.websockets += 1
    try:
        await _Connection(websocket, state).serve()
    finally:
        state.websockets -= 1
