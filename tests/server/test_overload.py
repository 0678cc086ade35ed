"""Overload and disconnects against a real uvicorn server and the tiny real GPT-2 (2 slots, 2 queue
places: capacity 4).

* ``capacity + k`` requests at once: exactly ``k`` are refused at once (HTTP 429
  ``overloaded``, WebSocket an ``overloaded`` error then close 1013), none with a 5xx, and the
  accepted ones answer exactly what they answer alone.
* A client that leaves (HTTP ``/generate`` through a client timeout, an SSE stream closed
  mid-way) frees its slot within a short time and counts as cancelled. (WebSocket close and
  ``cancel``, and OpenAI's routes, are covered in ``test_ws.py`` and ``test_openai.py``.)
* A request abandoned while queued is never prefilled, on every transport.

To make "in flight" certain without timing guesses, the worker's steps are held by a gate run at
the start of each real step (the batcher's ``step`` wrapped on the instance: tests/support/faults.py):
the loop goes round only to admit a waiting request into a free slot, so the first two requests
hold both slots and the next two wait in the queue until the test releases the gate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.server.worker import ModelWorker
from tests.support.faults import wrapped_step
from tests.support.server_harness import (
    LiveServer,
    live_server,
    sse_event,
    sse_events,
    tiny_settings,
    wait_for_metric,
    wait_until,
)

MODEL = "tiny-openai"
SLOTS, QUEUE = 2, 2
CAPACITY = SLOTS + QUEUE
LONG = 2000  # tokens: still generating when the test acts on it
FREED_WITHIN = (
    1.0  # seconds for a left request's slot to be free again (one 50 ms poll and a step, plus slack)
)


@pytest.fixture(scope="module")
def server(tiny_dirs, shelf):
    settings = tiny_settings(tiny_dirs["openai"], slots=SLOTS, queue_size=QUEUE)
    with live_server(settings, shelf=shelf) as live:
        # Compile every shape a long request meets (both context buckets, the sliding window),
        # so no XLA compilation pauses the worker while a test times a disconnect.
        via_generate(live.url, "Warm up", max_new_tokens=2 * 128)
        yield live


@pytest.fixture(autouse=True)
def idle(server):
    """Every test ends with an idle worker."""
    yield
    wait_for_metric(server.url, "gpt2_active_slots", 0.0, model=MODEL, timeout=30)
    wait_for_metric(server.url, "gpt2_queue_length", 0.0, model=MODEL, timeout=30)


class Gate:
    """A step hook holding every step until released; a step returns early only when a
    request waits and a slot is free, so the worker's loop goes round and admits it, or when an
    admitted request's prompt is still to be written (prefill happens inside steps)."""

    def __init__(self, worker: ModelWorker):
        self.worker = worker
        self.released = threading.Event()

    def __call__(self) -> None:
        w = self.worker
        while not self.released.wait(0.005):
            if (w.queued and w.active < w.model.engine.slots) or w.prefilling:
                return


@contextmanager
def held(server: LiveServer):
    gate = Gate(server.worker)
    with wrapped_step(server.worker, gate):
        try:
            yield gate
        finally:
            gate.released.set()


# ---- requests over each transport: (token ids or None, text) ----


def via_generate(url: str, inputs: str, **parameters) -> tuple[list[int], str]:
    r = httpx.post(
        f"{url}/generate",
        json={"inputs": inputs, "parameters": {**parameters, "details": True}},
        timeout=60,
        trust_env=False,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return [t["id"] for t in body["details"]["tokens"]], body["generated_text"]


def via_sse(url: str, inputs: str, **parameters) -> tuple[list[int], str]:
    ids, final = [], None
    with httpx.stream(
        "POST",
        f"{url}/generate_stream",
        json={"inputs": inputs, "parameters": parameters},
        timeout=60,
        trust_env=False,
    ) as r:
        assert r.status_code == 200, r.read()
        for event in sse_events(r.iter_lines()):
            assert "error" not in event, event
            ids.append(event["token"]["id"])
            final = event["generated_text"]
    return ids, final


def via_openai(url: str, inputs: str, **parameters) -> tuple[None, str]:
    body = {
        "model": MODEL,
        "prompt": inputs,
        "max_tokens": parameters["max_new_tokens"],
        "temperature": parameters.get("temperature", 0),
        "seed": parameters.get("seed"),
    }
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60, trust_env=False)
    assert r.status_code == 200, r.text
    return None, r.json()["choices"][0]["text"]


def via_ws(url: str, inputs: str, **parameters) -> tuple[list[int], str]:
    with connect(url.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"inputs": inputs, "parameters": parameters}))
        ids = []
        while (message := json.loads(ws.recv(timeout=60)))["type"] == "token":
            ids.append(message["id"])
    assert message["type"] == "done", message
    return ids, message["generated_text"]


ACCEPTED: list[tuple[Callable, str, dict]] = [
    (via_generate, "The meaning of life is", {"max_new_tokens": 24}),
    (via_sse, "Once upon a time", {"max_new_tokens": 24, "do_sample": True, "seed": 7, "top_k": 40}),
    (via_openai, "Hello, world", {"max_new_tokens": 24, "temperature": 0.9, "seed": 3}),
    (via_ws, "In 1984,", {"max_new_tokens": 24, "do_sample": True, "seed": 11, "repetition_penalty": 1.2}),
]


# ---- the extra requests, each expected to be refused ----


def refused_generate(url: str) -> float:
    started = time.monotonic()
    r = httpx.post(
        f"{url}/generate",
        json={"inputs": "extra", "parameters": {"max_new_tokens": 2}},
        timeout=10,
        trust_env=False,
    )
    took = time.monotonic() - started
    assert r.status_code == 429, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == "overloaded", body
    return took


def refused_sse(url: str) -> float:
    started = time.monotonic()
    r = httpx.post(
        f"{url}/generate_stream",
        json={"inputs": "extra", "parameters": {"max_new_tokens": 2}},
        timeout=10,
        trust_env=False,
    )
    took = time.monotonic() - started
    assert r.status_code == 429 and r.headers["content-type"].startswith("application/json"), r.text
    assert r.json()["error_type"] == "overloaded"
    return took


def refused_openai(url: str) -> float:
    started = time.monotonic()
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL, "prompt": "extra", "max_tokens": 2},
        timeout=10,
        trust_env=False,
    )
    took = time.monotonic() - started
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "overloaded" and err["type"] == "rate_limit_error", err
    return took


def refused_ws(url: str) -> float:
    with connect(url.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10) as ws:
        started = time.monotonic()
        ws.send(json.dumps({"inputs": "extra", "id": "x", "parameters": {"max_new_tokens": 2}}))
        message = json.loads(ws.recv(timeout=10))
        took = time.monotonic() - started
        assert message["type"] == "error" and message["error_type"] == "overloaded", message
        assert message["request_id"] == "x"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1013
    return took


REFUSED = [refused_generate, refused_sse, refused_openai, refused_ws]


def test_capacity_plus_k_refuses_exactly_k(server):
    alone = [send(server.url, inputs, **p) for send, inputs, p in ACCEPTED]
    rejected_before = server.count("gpt2_rejected_requests_total", reason="overloaded")

    with held(server) as gate, ThreadPoolExecutor(len(ACCEPTED)) as pool:
        accepted = [pool.submit(send, server.url, inputs, **p) for send, inputs, p in ACCEPTED]
        wait_for_metric(server.url, "gpt2_active_slots", float(SLOTS), model=MODEL, timeout=30)
        wait_for_metric(server.url, "gpt2_queue_length", float(QUEUE), model=MODEL, timeout=30)
        assert server.worker.in_flight == CAPACITY

        # k more, every transport, while the first four are certainly in flight: refused at once.
        took = [refuse(server.url) for refuse in REFUSED]
        assert max(took) < 1.0, took
        assert not any(f.done() for f in accepted), "the accepted requests were held"
        assert server.count("gpt2_rejected_requests_total", reason="overloaded") == rejected_before + len(
            REFUSED
        )

        gate.released.set()
        together = [f.result(timeout=60) for f in accepted]

    for (send, _, _), a, t in zip(ACCEPTED, alone, together):
        assert t == a, f"{send.__name__} answered differently under overload"
    assert server.count("gpt2_max_active_slots") == SLOTS


# ---- disconnects ----


def test_generate_client_timeout_frees_the_slot(server):
    cancelled = server.count("gpt2_cancelled_requests_total")
    outcome = server.count("gpt2_requests_total", route="/generate", outcome="cancelled")
    generated = server.count("gpt2_generated_tokens_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.url}/generate",
            json={"inputs": "Leave early", "parameters": {"max_new_tokens": LONG}},
            timeout=httpx.Timeout(10, read=1.0),
            trust_env=False,
        )
    left = time.monotonic()
    assert server.count("gpt2_generated_tokens_total") > generated + 1  # it was decoding when the client left
    wait_for_metric(server.url, "gpt2_active_slots", 0.0, model=MODEL, timeout=FREED_WITHIN)
    assert time.monotonic() - left < FREED_WITHIN
    assert server.count("gpt2_cancelled_requests_total") == cancelled + 1
    assert server.count("gpt2_requests_total", route="/generate", outcome="cancelled") == outcome + 1
    assert 0 < server.count("gpt2_generated_tokens_total") - generated < LONG  # it ran, and stopped early


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/generate_stream", {}), ("/", {"stream": True})],
    ids=["generate_stream", "compat-stream"],
)
def test_sse_closed_midway_frees_the_slot(server, path, extra):
    cancelled = server.count("gpt2_cancelled_requests_total")
    outcome = server.count("gpt2_requests_total", route=path, outcome="cancelled")
    body = {"inputs": "Leave early", "parameters": {"max_new_tokens": LONG}, **extra}
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=30, trust_env=False) as r:
        assert r.status_code == 200
        events = []
        for line in r.iter_lines():
            if (event := sse_event(line)) is not None:
                events.append(event)
                if len(events) == 3:
                    # Checked before leaving the loop: dropping the line iterator closes the stream.
                    assert server.count("gpt2_active_slots") == 1
                    break
        assert [e["index"] for e in events] == [0, 1, 2]
    left = time.monotonic()
    wait_for_metric(server.url, "gpt2_active_slots", 0.0, model=MODEL, timeout=FREED_WITHIN)
    assert time.monotonic() - left < FREED_WITHIN
    assert server.count("gpt2_cancelled_requests_total") == cancelled + 1
    wait_for_metric(
        server.url, "gpt2_requests_total", outcome + 1, model=MODEL, route=path, outcome="cancelled"
    )


# ---- abandoned while queued ----


def abandon_generate(server: LiveServer) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.url}/generate",
            json={"inputs": "Never mind", "parameters": {"max_new_tokens": 8}},
            timeout=httpx.Timeout(10, read=0.5),
            trust_env=False,
        )


def abandon_sse(server: LiveServer) -> None:
    body = {"inputs": "Never mind", "parameters": {"max_new_tokens": 8}}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=30, trust_env=False) as r:
        assert r.status_code == 200  # headers are sent before the first token
        wait_for_metric(server.url, "gpt2_queue_length", 1.0, model=MODEL)


def abandon_ws(server: LiveServer) -> None:
    with connect(server.ws_url, proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"inputs": "Never mind", "parameters": {"max_new_tokens": 8}}))
        wait_for_metric(server.url, "gpt2_queue_length", 1.0, model=MODEL)


@pytest.mark.parametrize(
    ("abandon", "route"),
    [(abandon_generate, "/generate"), (abandon_sse, "/generate_stream"), (abandon_ws, "/stream")],
    ids=["generate", "sse", "websocket"],
)
def test_request_abandoned_in_the_queue_is_never_prefilled(server, abandon, route):
    with held(server) as gate, ThreadPoolExecutor(SLOTS) as pool:
        holders = [
            pool.submit(via_generate, server.url, f"Holder {i}", max_new_tokens=8) for i in range(SLOTS)
        ]
        wait_for_metric(server.url, "gpt2_active_slots", float(SLOTS), model=MODEL, timeout=30)
        wait_until(lambda: server.worker.prefilling == 0)
        # Both holders are prefilled; from here on, nothing else may be.
        before = {
            name: server.count(name)
            for name in (
                "gpt2_prompt_tokens_total",
                "gpt2_prefill_seconds_count",
                "gpt2_queue_wait_seconds_count",
                "gpt2_cancelled_requests_total",
            )
        }
        outcome = server.count("gpt2_requests_total", route=route, outcome="cancelled")

        abandon(server)
        # The route noticed that its client left and cancelled the request, still queued behind
        # the held slots. (Read from the worker's queue: nothing public shows a cancelled request
        # before the worker answers it.)
        wait_until(lambda: [h.cancelled for h in list(server.worker._pending)] == [True])

        gate.released.set()
        for h in holders:
            h.result(timeout=60)
    wait_for_metric(
        server.url, "gpt2_requests_total", outcome + 1, model=MODEL, route=route, outcome="cancelled"
    )
    wait_for_metric(server.url, "gpt2_queue_length", 0.0, model=MODEL)
    wait_for_metric(server.url, "gpt2_active_slots", 0.0, model=MODEL)
    after = {name: server.count(name) for name in before}
    assert after["gpt2_prompt_tokens_total"] == before["gpt2_prompt_tokens_total"], "its prompt was prefilled"
    assert after["gpt2_prefill_seconds_count"] == before["gpt2_prefill_seconds_count"]
    assert after["gpt2_queue_wait_seconds_count"] == before["gpt2_queue_wait_seconds_count"]
    assert after["gpt2_cancelled_requests_total"] == before["gpt2_cancelled_requests_total"] + 1
