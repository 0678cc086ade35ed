"""SSE streams are bounded like the WebSocket's outbox (issue 21 §2): a client that stops reading
falls more than ``max_buffered_tokens`` events behind, its request is cancelled and its slot freed
while it is still not reading, the other streams go on, and the server's memory stays bounded. If it
reads again it finds what was sent and one ``slow_client`` error event, then the end of the stream.

The stalled clients are raw sockets with a 4 KiB receive buffer (and the server's accepted sockets a
4 KiB send buffer), so the kernel's buffers fill after a few dozen events instead of megabytes."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from app.client.sse import sse_event, sse_events, sse_payloads
from tests.support.server_harness import live_server, metric, tiny_settings, wait_for_metric

BUFFERED = 8  # max_buffered_tokens of the test server
STALLED = 20
STALL_SECONDS = 15.0  # how long the stalled clients stay stalled after their requests were cancelled
ROUTES = ("/generate_stream", "/v1/completions")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def stalled_stream(port: int, route: str, max_new_tokens: int) -> socket.socket:
    """POST a streaming request, read the response's status line, then stop reading."""
    body = (
        {"inputs": "Never read", "parameters": {"max_new_tokens": max_new_tokens, "do_sample": False}}
        if route == "/generate_stream"
        else {
            "model": "tiny-openai",
            "prompt": "Never read",
            "max_tokens": max_new_tokens,
            "stream": True,
            "temperature": 0,
        }
    )
    data = json.dumps(body).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    head = (
        f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    sock.settimeout(30)
    first = sock.recv(64)
    assert first.startswith(b"HTTP/1.1 200"), first
    return sock


def read_rest(sock: socket.socket) -> bytes:
    """Read on until the server ends the chunked response (its zero-length last chunk)."""
    received = b""
    sock.settimeout(20)
    while not received.endswith(b"0\r\n\r\n"):
        part = sock.recv(65536)
        if not part:
            break
        received += part
    return received


def test_stalled_sse_readers_are_cancelled_and_the_others_stream_on(tiny_dirs, shelf):
    model = Path(tiny_dirs["openai"]).name
    settings = tiny_settings(
        tiny_dirs["openai"], slots=STALLED + 2, queue_size=4, max_buffered_tokens=BUFFERED
    )
    limit = settings.max_new_tokens_limit
    with live_server(settings, send_buffer=4096, shelf=shelf) as live:
        url, port = live.url, int(live.url.rsplit(":", 1)[1])
        warm = httpx.post(
            f"{url}/generate", json={"inputs": "Warm", "parameters": {"max_new_tokens": 64}}, timeout=120
        )
        assert warm.status_code == 200, warm.text

        stalled = [stalled_stream(port, ROUTES[i % 2], limit) for i in range(STALLED)]
        try:
            check(url, model, limit, stalled)
        finally:
            for sock in stalled:
                sock.close()


def check(url: str, model: str, limit: int, stalled: list[socket.socket]) -> None:
    gaps: list[float] = []
    count = 0

    def stream_normally() -> None:
        nonlocal count
        body = {"inputs": "Read everything", "parameters": {"max_new_tokens": 400, "do_sample": False}}
        with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=120, trust_env=False) as r:
            last = time.monotonic()
            for line in r.iter_lines():
                if (event := sse_event(line)) is None:
                    continue
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                count += 1
                assert "error" not in event, event

    reader = threading.Thread(target=stream_normally)
    reader.start()
    # Every stalled request is cancelled, its slot freed, while its client still reads nothing.
    for route in ROUTES:
        wait_for_metric(
            url,
            "gpt2_requests_total",
            STALLED / 2,
            timeout=60,
            route=route,
            model=model,
            outcome="slow_client",
        )
    started, rss_cancelled = time.monotonic(), rss_bytes()
    reader.join(timeout=120)
    assert not reader.is_alive() and count == 400
    assert metric(url, "gpt2_active_slots", model=model) == 0
    time.sleep(max(0.0, STALL_SECONDS - (time.monotonic() - started)))
    # While they stay stalled nothing of theirs grows (what was sent waits in the sockets' buffers).
    rss_growth = rss_bytes() - rss_cancelled
    assert rss_growth < 16 * 2**20, rss_growth
    # Its inter-token gaps (timing is the soak's to judge, bench/soak.py): shown, not asserted.
    print(
        f"other stream: {count} tokens, gap median {np.median(gaps[1:]) * 1e3:.1f} ms, max {max(gaps[1:]) * 1e3:.1f} ms"
    )

    # A stalled client that reads again: contiguous tokens, then the slow_client error, then the end.
    text = read_rest(stalled[0]).decode(errors="replace")
    *tokens, last = sse_events(text)
    assert [e["index"] for e in tokens] == list(range(len(tokens))) and len(tokens) < limit
    assert last["error_type"] == "slow_client" and "too slow" in last["error"], last
    openai_text = read_rest(stalled[1]).decode(errors="replace")
    *_, error, done = sse_payloads(openai_text)
    assert json.loads(error)["error"]["code"] == "slow_client" and done == "[DONE]", openai_text[-300:]
