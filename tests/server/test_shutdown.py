"""Graceful shutdown and slow readers, against real servers and a tiny real GPT-2 (no mocks).

* SIGTERM to a real ``gpt2-serve serve`` process with two WebSocket streams and one SSE stream
  running and one ``/generate`` queued: readiness and new requests answer 503 / ``unavailable``
  at once, every accepted request finishes whole, and the process exits 0 within the drain timeout.
* :class:`GracefulServer` in this process (the test calls ``handle_exit`` as the signal would): a
  request still running at the drain timeout is cut (WebSocket close 1012) and the server stops
  soon after; a second signal stops it at once.
* A WebSocket client that stops reading is closed with 1008 once more than
  ``max_buffered_tokens`` token messages wait for it; its slot is freed and another client's
  stream completes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.model.random_init import write_random_model
from app.server.app import create_app
from app.server.shutdown import GracefulServer
from tests.support.server_harness import (
    TINY,
    live_server,
    metric,
    serve_process,
    sse_event,
    threaded_server,
    tiny_settings,
    wait_for_metric,
)

pytestmark = pytest.mark.system  # starts processes or trains

N = 100  # tokens per in-flight request: a couple of seconds on CPU, within the 128-token context
DRAIN_TIMEOUT = 30.0


async def ws_stream(ws, parameters: dict) -> tuple[list[dict], dict]:
    """Send one request on an open connection; its token messages and its terminal message."""
    await ws.send(
        json.dumps({"type": "generate", "inputs": "The meaning of life is", "parameters": parameters})
    )
    tokens = []
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if message["type"] != "token":
            return tokens, message
        tokens.append(message)


async def sse_stream(http: httpx.AsyncClient, parameters: dict) -> list[dict]:
    events = []
    async with http.stream(
        "POST", "/generate_stream", json={"inputs": "Once upon a time", "parameters": parameters}
    ) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if (event := sse_event(line)) is not None:
                events.append(event)
    return events


async def refused_ws(ws_url: str, ws=None) -> tuple[dict, int]:
    """The error message and close code a request gets on a draining server (on ``ws``, an
    already open connection, or on a new one)."""
    conn = ws or await websockets.connect(ws_url, proxy=None, open_timeout=10)
    try:
        with contextlib.suppress(ConnectionClosed):  # a new connection is refused before it sends anything
            await conn.send(json.dumps({"inputs": "Too late", "parameters": {"max_new_tokens": 2}}))
        message = json.loads(await asyncio.wait_for(conn.recv(), 10))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 10)
        return message, info.value.rcvd.code
    finally:
        await conn.close()


async def metric_async(base: str, name: str, value: float, timeout: float = 60.0) -> None:
    await asyncio.to_thread(wait_for_metric, base, name, value, timeout=timeout)


async def sigterm_scenario(proc: subprocess.Popen, base: str) -> None:
    ws_url = base.replace("http", "ws", 1) + "/stream"
    greedy = {"max_new_tokens": N}
    async with httpx.AsyncClient(base_url=base, timeout=60, trust_env=False) as http:
        ws_a = await websockets.connect(ws_url, proxy=None)
        ws_b = await websockets.connect(ws_url, proxy=None)
        idle = await websockets.connect(ws_url, proxy=None)  # open, no request yet
        streams = [
            asyncio.create_task(ws_stream(ws_a, greedy)),
            asyncio.create_task(ws_stream(ws_b, {**greedy, "do_sample": True, "seed": 5})),
        ]
        await metric_async(base, "gpt2_active_slots", 2.0)  # both slots taken by the WebSocket streams
        sse = asyncio.create_task(sse_stream(http, {**greedy, "do_sample": True, "seed": 6}))
        await metric_async(base, "gpt2_queue_length", 1.0)
        queued = asyncio.create_task(
            http.post("/generate", json={"inputs": "Queued", "parameters": {**greedy, "details": True}})
        )
        await metric_async(base, "gpt2_queue_length", 2.0)

        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        r = await http.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        assert time.monotonic() - signalled < 2.0, "readiness must go 503 at once"
        r = await http.post("/generate", json={"inputs": "New", "parameters": {"max_new_tokens": 2}})
        assert r.status_code == 503 and r.json()["error_type"] == "unavailable", r.text
        r = await http.post("/v1/completions", json={"model": "tiny", "prompt": "New", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        for conn in (None, idle):  # a new connection, and a new request on an open one
            message, code = await refused_ws(ws_url, conn)
            assert message["type"] == "error" and message["error_type"] == "unavailable", message
            assert code == 1012

        for tokens, end in await asyncio.gather(*streams):
            assert end["type"] == "done" and end["finish_reason"] == "length", end
            assert [t["index"] for t in tokens] == list(range(N))
            assert "".join(t["text"] for t in tokens) == end["generated_text"]
            assert end["usage"]["completion_tokens"] == N
        events = await sse
        assert len(events) == N and events[-1]["details"]["finish_reason"] == "length"
        assert events[-1]["details"]["generated_tokens"] == N and events[-1]["generated_text"] is not None
        r = await queued
        assert r.status_code == 200, r.text
        assert (
            r.json()["details"]["generated_tokens"] == N and r.json()["details"]["finish_reason"] == "length"
        )
        for ws in (ws_a, ws_b):
            with pytest.raises(ConnectionClosed) as info:  # closed by the server once drained
                await asyncio.wait_for(ws.recv(), 30)
            assert info.value.rcvd.code == 1012

    code = await asyncio.to_thread(proc.wait, DRAIN_TIMEOUT)
    assert code == 0
    assert time.monotonic() - signalled < DRAIN_TIMEOUT


def test_sigterm_drains_requests_in_flight_then_exits_0(tmp_path):
    model_dir = write_random_model(tmp_path / "tiny", TINY)
    flags = ["--no-warmup", "--slots", "2", "--queue-size", "4", "--drain-timeout", str(DRAIN_TIMEOUT)]
    with serve_process(model_dir, *flags, stop_timeout=5) as srv:  # killed after 5 s if a check failed
        # Compile the shapes the scenario uses first, so the drain times only generation.
        warm = httpx.post(
            f"{srv.url}/generate",
            json={"inputs": "Warm up", "parameters": {"max_new_tokens": N}},
            timeout=180,
            trust_env=False,
        )
        assert warm.status_code == 200, warm.text
        asyncio.run(sigterm_scenario(srv.proc, srv.url))


# ---- the drain timeout and a second signal (GracefulServer in this process) ----


@contextmanager
def graceful_server(settings) -> Iterator[tuple[str, GracefulServer, threading.Thread]]:
    """GracefulServer on a free port in a thread (no signal handlers there: the test calls
    ``handle_exit`` as the signal would); yields once ready."""
    app = create_app(settings)
    with threaded_server(
        app,
        server_class=lambda config: GracefulServer(config, app),
        graceful_timeout=settings.drain_timeout + 5,
    ) as live:
        try:
            yield live.url, live.server, live.thread
        finally:
            live.server.force_exit = True  # then the harness sets should_exit and joins


def long_stream(url: str, tokens: int = 2000):
    """A WebSocket request still running when the test acts, after its first token arrived."""
    conn = connect(url.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10, max_queue=None)
    conn.send(json.dumps({"inputs": "A long story", "parameters": {"max_new_tokens": tokens}}))
    assert json.loads(conn.recv(timeout=60))["type"] == "token"
    return conn


def closed_code(conn) -> int:
    """Read until the server closes; its close code."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            conn.recv(timeout=30)
    return info.value.rcvd.code


def test_drain_timeout_ends_what_is_still_running(tiny_dirs):
    settings = tiny_settings(tiny_dirs["openai"], slots=2, drain_timeout=2.0)
    with graceful_server(settings) as (url, server, thread):
        conn = long_stream(url)
        signalled = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        assert httpx.get(f"{url}/ready", timeout=5, trust_env=False).status_code == 503
        assert not server.should_exit  # draining, not exiting yet
        assert closed_code(conn) == 1012  # cut at the drain timeout: uvicorn closes the WebSocket
        thread.join(timeout=30)
        assert not thread.is_alive()
        elapsed = time.monotonic() - signalled
        assert settings.drain_timeout <= elapsed < settings.drain_timeout + 10, elapsed


def test_second_signal_exits_at_once(tiny_dirs):
    settings = tiny_settings(tiny_dirs["openai"], slots=2, drain_timeout=60.0)
    with graceful_server(settings) as (url, server, thread):
        conn = long_stream(url)
        server.handle_exit(signal.SIGTERM, None)
        assert httpx.get(f"{url}/ready", timeout=5, trust_env=False).status_code == 503
        signalled = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit and server.force_exit
        assert closed_code(conn) == 1012
        thread.join(timeout=30)
        assert not thread.is_alive() and time.monotonic() - signalled < 15


# ---- slow readers ----

BUFFERED = 8  # max_buffered_tokens in the test server


def not_reading_client(ws_url: str, port: int):
    """A client that does not read: a tiny socket receive buffer, no compression, and the client's
    own queue stops reading the socket after 4 messages; no keep-alive pings (it would not read the
    pongs either)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return connect(
        ws_url, sock=sock, max_queue=4, compression=None, ping_interval=None, open_timeout=10, close_timeout=5
    )


def test_websocket_client_that_stops_reading_is_closed_with_1008(tiny_dirs, shelf):
    settings = tiny_settings(tiny_dirs["openai"], slots=2, queue_size=2, max_buffered_tokens=BUFFERED)
    with live_server(settings, send_buffer=4096, shelf=shelf) as live:  # the slow client backs up in ~100 KB
        url, ws_url, app = live.url, live.ws_url, live.app
        port = int(url.rsplit(":", 1)[1])
        model = Path(tiny_dirs["openai"]).name
        warm = httpx.post(
            f"{url}/generate",
            json={"inputs": "Warm up", "parameters": {"max_new_tokens": 200}},
            timeout=180,
            trust_env=False,
        )
        assert warm.status_code == 200, warm.text

        slow = not_reading_client(ws_url, port)
        limit = settings.max_new_tokens_limit
        slow.send(json.dumps({"inputs": "Never read", "parameters": {"max_new_tokens": limit}}))
        wait_for_metric(url, "gpt2_active_slots", 1.0, model=model)

        # Another client streams normally meanwhile.
        started = time.monotonic()
        with connect(ws_url, proxy=None, open_timeout=10) as normal:
            normal.send(json.dumps({"inputs": "Read everything", "parameters": {"max_new_tokens": 300}}))
            count = 0
            while (message := json.loads(normal.recv(timeout=60)))["type"] == "token":
                assert message["index"] == count
                count += 1
        assert message["type"] == "done" and message["finish_reason"] == "length" and count == 300
        assert time.monotonic() - started < 120

        # The slow client's request is cancelled and its slot freed without it reading anything.
        wait_for_metric(
            url, "gpt2_requests_total", 1.0, timeout=120, route="/stream", model=model, outcome="slow_client"
        )
        wait_for_metric(url, "gpt2_active_slots", 0.0, model=model)
        assert app.state.server.ws_requests == 0

        # When it reads again: what was already sent, then the close frame with 1008.
        received = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                received.append(json.loads(slow.recv(timeout=20)))
        assert info.value.rcvd.code == 1008, info.value
        assert "too slow" in info.value.rcvd.reason
        assert all(m["type"] == "token" for m in received)  # cut off: no done
        assert [m["index"] for m in received] == list(range(len(received)))
        assert len(received) < limit
        slow.close()
        deadline = time.monotonic() + 10
        while app.state.server.websockets:
            assert time.monotonic() < deadline, "the slow connection is still counted"
            time.sleep(0.05)
        assert metric(url, "gpt2_cancelled_requests_total", model=model) >= 1
