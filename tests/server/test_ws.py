"""``ws /stream`` against a real uvicorn server and the tiny real GPT-2, with the ``websockets``
package as the client (its synchronous API: one blocking call per frame keeps the tests linear)."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from pydantic import TypeAdapter
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.server.schemas import ws as proto
from tests.support.faults import raising, wrapped_step
from tests.support.server_harness import (
    LiveServer,
    live_server,
    metric,
    tiny_settings,
    wait_for_metric,
)

MODEL = "tiny-openai"  # the folder name of tiny_dirs["openai"]
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "ws-protocol.schema.json"
LONG = 2000  # tokens: a request that is still running when the test acts on it
server_message = TypeAdapter(proto.ServerMessage)


@pytest.fixture(scope="module")
def server(tiny_dirs, shelf):
    settings = tiny_settings(
        tiny_dirs["openai"], slots=4, queue_size=2, max_websockets=8, max_body_bytes=4096
    )
    with live_server(settings, shelf=shelf) as live:
        yield live


@pytest.fixture
def ws(server):
    with open_ws(server) as conn:
        yield conn


def open_ws(server: LiveServer, **options) -> ClientConnection:
    """A client connection; ``max_queue=None`` for one the test does not read from (otherwise the
    client stops reading the socket once 16 messages wait, and its close handshake stalls)."""
    return connect(server.ws_url, proxy=None, open_timeout=10, close_timeout=5, **options)


def send(
    conn: ClientConnection, inputs: str = "Hello world", request_id: str | None = None, **parameters
) -> None:
    message: dict = {"type": "generate", "inputs": inputs, "parameters": parameters}
    if request_id is not None:
        message["id"] = request_id
    conn.send(json.dumps(message))


def receive(conn: ClientConnection, timeout: float = 60.0) -> dict:
    """One server message, checked against the protocol's models."""
    raw = conn.recv(timeout=timeout)
    assert isinstance(raw, str), "the server sends text frames"
    message = json.loads(raw)
    server_message.validate_python(message)
    return message


def collect(conn: ClientConnection, *received: dict) -> tuple[list[dict], dict]:
    """A request's token messages (after those already ``received``) and its one terminal message."""
    tokens = list(received)
    while True:
        message = receive(conn)
        if message["type"] != "token":
            assert [t["index"] for t in tokens] == list(range(len(tokens))), "indices contiguous from 0"
            return tokens, message
        tokens.append(message)


def assert_nothing_pending(conn: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        conn.recv(timeout=0.3)


def closed_with(conn: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as info:
        conn.recv(timeout=10)
    return info.value.rcvd.code


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def counter(server: LiveServer, name: str, **labels: str) -> float:
    return metric(server.url, name, **labels) or 0.0


# ---- streaming ----


def test_greedy_stream_equals_generate(server, ws):
    send(ws, "The meaning of life is", request_id="g1", max_new_tokens=12)
    tokens, done = collect(ws)
    assert_nothing_pending(ws)  # exactly one terminal message

    assert done["type"] == "done" and done["request_id"] == "g1"
    assert all(t["request_id"] == "g1" for t in tokens)
    assert done["finish_reason"] in ("length", "eos_token")
    assert done["seed"] is None  # greedy
    assert done["usage"]["completion_tokens"] == len(tokens)
    assert "".join(t["text"] for t in tokens) == done["generated_text"]

    r = httpx.post(
        f"{server.url}/generate",
        timeout=60,
        trust_env=False,
        json={"inputs": "The meaning of life is", "parameters": {"max_new_tokens": 12, "details": True}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generated_text"] == done["generated_text"]
    assert [t["id"] for t in body["details"]["tokens"]] == [t["id"] for t in tokens]
    assert done["usage"]["prompt_tokens"] == len(
        httpx.post(
            f"{server.url}/tokenize", trust_env=False, json={"inputs": "The meaning of life is"}
        ).json()
    )


def test_seeded_sampling_repeats_across_connections(server):
    runs = []
    for _ in range(2):
        with open_ws(server) as conn:
            send(
                conn,
                "Once upon a time",
                do_sample=True,
                temperature=1.0,
                top_k=50,
                seed=1234,
                max_new_tokens=16,
            )
            tokens, done = collect(conn)
        assert done["type"] == "done" and done["seed"] == 1234
        assert "".join(t["text"] for t in tokens) == done["generated_text"]
        runs.append([t["id"] for t in tokens])
    assert runs[0] == runs[1]
    assert len(runs[0]) >= 1


def test_requests_in_turn_and_sent_ahead(ws):
    send(ws, "First", request_id="a", max_new_tokens=4)
    tokens_a, done_a = collect(ws)
    send(ws, "Second", request_id="b", max_new_tokens=3)
    tokens_b, done_b = collect(ws)
    assert (done_a["request_id"], done_b["request_id"]) == ("a", "b")
    assert len(tokens_a) <= 4 and len(tokens_b) <= 3

    # Sent ahead: read after the previous one ended, answered in order, indices restart at 0.
    for rid in ("c", "d", "e"):
        send(ws, "Ahead", request_id=rid, max_new_tokens=3)
    for rid in ("c", "d", "e"):
        tokens, done = collect(ws)
        assert done["type"] == "done" and done["request_id"] == rid
        assert {t["request_id"] for t in tokens} <= {rid}
    assert_nothing_pending(ws)


def test_message_without_type_is_a_generate_request(ws):
    ws.send(json.dumps({"inputs": "No type", "parameters": {"max_new_tokens": 2}}))
    tokens, done = collect(ws)
    assert done["type"] == "done" and 1 <= len(tokens) <= 2


def test_stop_sequence_ends_before_it(ws):
    params = dict(do_sample=True, seed=7, max_new_tokens=24)
    send(ws, "It was a dark and stormy night", **params)
    _, full = collect(ws)
    text = full["generated_text"]
    start = len(text) // 2
    stop = text[start : start + 3]
    cut = text.find(stop)
    assert len(stop) == 3 and cut > 0, f"pick a stop sequence from {text!r}"

    send(ws, "It was a dark and stormy night", stop=[stop], **params)
    tokens, done = collect(ws)
    assert done["finish_reason"] == "stop_sequence"
    assert done["generated_text"] == text[:cut]
    assert "".join(t["text"] for t in tokens) == text[:cut]
    assert stop not in done["generated_text"]


def test_return_full_text_prefixes_the_prompt(ws):
    send(ws, "Prompt here", max_new_tokens=3, return_full_text=True)
    tokens, done = collect(ws)
    assert done["generated_text"] == "Prompt here" + "".join(t["text"] for t in tokens)


# ---- cancellation and disconnects ----


def test_cancel_mid_stream(server, ws):
    cancelled_before = counter(
        server, "gpt2_requests_total", route="/stream", model=MODEL, outcome="cancelled"
    )
    send(ws, "Cancel me", request_id="long", max_new_tokens=LONG)
    first = receive(ws)
    assert first["type"] == "token" and first["index"] == 0
    ws.send(json.dumps({"type": "cancel", "id": "someone-else"}))  # another id: ignored
    ws.send(json.dumps({"type": "cancel"}))
    tokens, done = collect(ws, first)
    assert done["type"] == "done" and done["finish_reason"] == "cancelled" and done["request_id"] == "long"
    assert done["usage"]["completion_tokens"] == len(tokens) < LONG
    assert "".join(t["text"] for t in tokens) == done["generated_text"]
    wait_for_metric(server.url, "gpt2_active_slots", 0.0, model=MODEL)
    assert (
        counter(server, "gpt2_requests_total", route="/stream", model=MODEL, outcome="cancelled")
        == cancelled_before + 1
    )

    # A cancel with nothing streaming is ignored, and the connection goes on working.
    ws.send(json.dumps({"type": "cancel"}))
    send(ws, "Still here", request_id="after", max_new_tokens=2)
    tokens, done = collect(ws)
    assert done["type"] == "done" and done["request_id"] == "after" and done["finish_reason"] != "cancelled"


def test_closing_the_socket_frees_the_slot(server):
    cancelled_before = counter(server, "gpt2_cancelled_requests_total", model=MODEL)
    with open_ws(server) as conn:
        send(conn, "Leave early", max_new_tokens=LONG)
        assert receive(conn)["type"] == "token"
        wait_for_metric(server.url, "gpt2_active_slots", 1.0, model=MODEL)
    wait_for_metric(server.url, "gpt2_active_slots", 0.0, model=MODEL, timeout=10)
    assert counter(server, "gpt2_cancelled_requests_total", model=MODEL) == cancelled_before + 1
    wait_until(lambda: server.state.websockets == 0, what="the connection count to return to 0")


# ---- errors ----

BAD_MESSAGES = [
    ({"inputs": "", "parameters": {"max_new_tokens": 2}}, "validation", "inputs"),
    ({"inputs": "x", "parameters": {"model": "no-such-model"}}, "validation", "no-such-model"),
    ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "validation", "max_new_tokens"),
    ({"inputs": "x", "parameters": {"max_new_tokens": 100000}}, "validation", "max_new_tokens"),
    ({"inputs": "x", "parameters": {"max_new_tokens": "ten"}}, "validation", "parameters.max_new_tokens"),
    ({"inputs": "x", "parameters": {"top_p": 2}}, "validation", "parameters.top_p"),
    ({"inputs": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "validation", "stop"),
    ({"inputs": 5}, "validation", "inputs"),
    ({"parameters": {}}, "validation", "inputs"),
    ({"inputs": "x", "colour": "blue"}, "validation", "colour"),
    ({"type": "shout", "inputs": "x"}, "validation", "type"),
    ({"type": "cancel", "now": True}, "validation", "now"),
    ([1, 2], "validation", "object"),
    ({"inputs": "x" * 5000}, "too_large", "4096"),
]


def test_validation_errors_keep_the_connection(ws):
    for body, error_type, needle in BAD_MESSAGES:
        ws.send(json.dumps(body))
        message = receive(ws)
        assert message["type"] == "error", body
        assert message["error_type"] == error_type, (body, message)
        assert needle in message["message"], (body, message)
        assert len(message["message"]) <= 300
    for raw, needle in (("not json {", "invalid JSON"), (b'{"inputs": "x"}', "text frames")):
        ws.send(raw)
        message = receive(ws)
        assert message["error_type"] == "validation" and needle in message["message"]
    assert_nothing_pending(ws)

    send(ws, "After the errors", request_id="ok", max_new_tokens=2)
    _, done = collect(ws)
    assert done["type"] == "done" and done["request_id"] == "ok"


def test_error_echoes_the_request_id(ws):
    send(ws, "", request_id="empty")
    message = receive(ws)
    assert message == {
        "type": "error",
        "error_type": "validation",
        "message": "inputs: must not be empty",
        "request_id": "empty",
    }


def test_generation_failure_is_an_error_message(server, ws):
    worker = server.state.registry.get(MODEL).worker
    with wrapped_step(worker, raising(None, RuntimeError("injected"))):  # the first step writes the prompt
        send(ws, "Break a step", request_id="f", max_new_tokens=5)
        tokens, end = collect(ws)
    assert end == {
        "type": "error",
        "error_type": "generation",
        "message": "generation failed: RuntimeError",
        "request_id": "f",
    }
    assert len(tokens) == 1  # the prefill's token; the first decode step failed
    send(ws, "And again", max_new_tokens=2)
    assert collect(ws)[1]["type"] == "done"


def test_overloaded_model_closes_with_1013(server):
    capacity = 4 + 2  # slots + queue places
    with ExitStack() as stack:
        conns = [stack.enter_context(open_ws(server, max_queue=None)) for _ in range(capacity)]
        for conn in conns:
            send(conn, "Busy", max_new_tokens=LONG)
        wait_for_metric(server.url, "gpt2_queue_length", 2.0, model=MODEL, timeout=30)
        with open_ws(server) as extra:
            send(extra, "One too many", request_id="x", max_new_tokens=2)
            message = receive(extra)
            assert message["type"] == "error" and message["error_type"] == "overloaded"
            assert message["request_id"] == "x"
            assert closed_with(extra) == 1013
    wait_for_metric(server.url, "gpt2_active_slots", 0.0, model=MODEL)
    wait_for_metric(server.url, "gpt2_queue_length", 0.0, model=MODEL)


def test_connection_limit(server):
    wait_until(lambda: server.state.websockets == 0, what="earlier connections to close")
    limit = server.state.settings.max_websockets
    with ExitStack() as stack:
        conns = [stack.enter_context(open_ws(server)) for _ in range(limit)]
        wait_until(lambda: server.state.websockets == limit, what="all connections to register")
        with open_ws(server) as extra:
            message = receive(extra)
            assert message["type"] == "error" and message["error_type"] == "overloaded"
            assert closed_with(extra) == 1013
        send(conns[-1], "Within the limit", max_new_tokens=2)
        assert collect(conns[-1])[1]["type"] == "done"
    wait_until(lambda: server.state.websockets == 0, what="the connections to close")


def test_too_many_requests_sent_ahead_closes_with_1008(server):
    with open_ws(server, max_queue=None) as conn:
        send(conn, "Long", max_new_tokens=LONG)
        for _ in range(17):  # one more than the server holds while a request streams
            send(conn, "Ahead", max_new_tokens=2)
        messages = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                messages.append(receive(conn))
        assert info.value.rcvd.code == 1008
    last = messages[-1]
    assert last["type"] == "error" and "sent ahead" in last["message"]
    done = [m for m in messages if m["type"] == "done"]
    assert (
        all(m["finish_reason"] == "cancelled" for m in done) and len(done) <= 1
    )  # the long one, if it started
    wait_for_metric(server.url, "gpt2_active_slots", 0.0, model=MODEL)


def test_draining_server_closes_with_1012(server, ws):
    state = server.state
    state.draining = True  # what the lifespan's drain sets first (the workers stay up here)
    try:
        send(ws, "Too late", max_new_tokens=2)
        message = receive(ws)
        assert message["type"] == "error" and message["error_type"] == "unavailable"
        assert closed_with(ws) == 1012
        with open_ws(server) as late:
            assert receive(late)["error_type"] == "unavailable"
            assert closed_with(late) == 1012
    finally:
        state.draining = False


# ---- the protocol document ----


def test_schema_file_matches_the_models():
    assert SCHEMA_FILE.read_text() == proto.protocol_schema_text(), (
        "docs/ws-protocol.schema.json is stale: python -m app.server.schemas.ws > docs/ws-protocol.schema.json"
    )


def test_client_messages_parse_as_documented():
    parse = proto.client_message.validate_python
    assert isinstance(parse({"inputs": "x"}), proto.GenerateMessage)
    assert isinstance(parse({"type": "generate", "inputs": "x", "id": "1"}), proto.GenerateMessage)
    assert isinstance(parse({"type": "cancel"}), proto.CancelMessage)
    assert parse({"type": "cancel", "id": "1"}).id == "1"
