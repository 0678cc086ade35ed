"""Cross-cutting HTTP/WebSocket guards, as one pure-ASGI middleware each.

* :class:`RequestId` gives every request an id (the client's ``x-request-id`` when it sends a sane
  one), echoes it in the response header and puts it in the access log line.
* :class:`ApiKeys` requires ``Authorization: Bearer <key>`` on every route except ``/health``
  (and ``/metrics`` unless configured), WebSocket handshakes included (a refused handshake is
  closed with 1008 before it is accepted). Keys are compared as SHA-256 digests with
  ``hmac.compare_digest`` against every configured key, so timing says nothing about them; they
  are never logged.
* :class:`BodyLimit` answers 413 for bodies over the limit, by ``Content-Length`` or while reading.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses and WebSockets pass untouched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.server.errors import APIError, error_body, is_openai

log = logging.getLogger("gpt2serve.access")

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


async def _json(send: Send, status: int, body: dict, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _error_body(path: str, message: str, error_type: str) -> dict:
    return error_body(APIError(error_type, message), openai=is_openai(path))[1]


class RequestId:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given = _header(scope, b"x-request-id")
        rid = given if given and _SANE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = time.monotonic()
        status = {"code": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                status["code"] = message.get("status", 101)
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if scope["type"] != "http" or status["code"]:
                raise
            # Answered here, inside this wrapper, so the 500 carries the request id too and the
            # connection stays usable (Starlette's outermost handler re-raises to uvicorn, which
            # then drops the keep-alive connection under the client).
            logging.getLogger("gpt2serve.errors").exception(
                "unhandled error on %s %s", scope.get("method"), scope["path"]
            )
            await _json(send_with_id, 500, _error_body(scope["path"], "internal server error", "internal"))
        finally:
            log.info(
                "%s %s %s %s %.1fms",
                rid,
                scope.get("method", "WS"),
                scope["path"],
                status["code"] or "-",
                (time.monotonic() - started) * 1e3,
            )


class RedactAuthorization(logging.Filter):
    """Drops credentials from third-party debug logs: the websockets library logs every handshake
    header at DEBUG (through uvicorn's ``uvicorn.error`` logger), ``Authorization`` included."""

    SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in self.SECRET_HEADERS:
            record.args = (args[0], "[redacted]")
        return True


def redact_credentials_in_logs(
    names: Iterable[str] = ("uvicorn.error", "uvicorn", "websockets.server"),
) -> None:
    """Install :class:`RedactAuthorization` on the loggers that log request headers (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactAuthorization) for f in logger.filters):
            logger.addFilter(RedactAuthorization())


KEY_PROTOCOL = "base64url.bearer."  # a WebSocket subprotocol carrying the key, as Kubernetes does


def _bearer(scope: Scope) -> str | None:
    """The API key a request presents: ``Authorization: Bearer KEY``, or (a browser's WebSocket,
    which cannot set headers) a subprotocol ``base64url.bearer.<KEY in unpadded base64url>``."""
    scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if scope["type"] != "websocket":
        return None
    for proto in scope.get("subprotocols", ()):
        if proto.startswith(KEY_PROTOCOL):
            encoded = proto[len(KEY_PROTOCOL) :]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return None
    return None


class ApiKeys:
    def __init__(self, app: ASGIApp, keys: Iterable[str], *, public: Iterable[str] = ("/health",)):
        self.app = app
        self._digests = [_digest(k) for k in keys]
        self._public = frozenset(public)

    def allowed(self, scope: Scope) -> bool:
        token = _bearer(scope)
        if not token:
            return False
        d = _digest(token)
        # Compare with every key (no early exit), so timing does not tell which or how many matched.
        return bool(sum(hmac.compare_digest(d, k) for k in self._digests))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self._public or self.allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "missing or invalid API key"})
            return
        body = _error_body(scope["path"], "missing or invalid API key", "unauthorized")
        await _json(send, 401, body, [(b"www-authenticate", b"Bearer")])


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body is larger than {self.max_bytes} bytes"
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _json(send, 413, _error_body(scope["path"], message, "too_large"))
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading as is (other errors become
                    # a 400), so the app's handler answers it in the route family's error shape.
                    raise HTTPException(413, message)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await _json(send, 413, _error_body(scope["path"], message, "too_large"))
