"""Every validation rule on every route, as tables, against a real uvicorn server and the tiny real
GPT-2 (n_ctx 128). Each refusal must have the route family's status and one JSON shape, and a
short message that names the problem without a traceback, a file path or a memory address.

TGI-family routes (``/generate``, ``/generate_stream``, ``/`` with ``stream`` false and true,
``/tokenize``): 422 ``{"error", "error_type"}``. OpenAI routes (``/v1/...``): 400
``{"error": {"message", "type", "param", "code"}}``. Too large: 413 in the family's shape. The
WebSocket ``/stream`` answers an ``error`` message and keeps the connection open.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from websockets.sync.client import connect

from app.client.bad_requests import Case, long_prompt, tgi_cases
from app.server.app import create_app
from tests.support.server_harness import check_message, running_server, sse_events, tiny_settings

MODEL = "tiny-openai"  # the folder name of tiny_dirs["openai"]
N_CTX = 128
LIMIT = 16  # max_new_tokens_limit of the test server
MAX_BODY = 4096
LONG_PROMPT = long_prompt(N_CTX)  # 200 tokens: longer than the context


@pytest.fixture(scope="module")
def server(tiny_dirs, shelf):
    settings = tiny_settings(
        tiny_dirs["openai"], max_body_bytes=MAX_BODY, max_new_tokens_limit=LIMIT, default_max_new_tokens=4
    )
    app = create_app(settings, shelf=shelf)
    add_failing_routes(app)
    with running_server(settings, app=app) as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60, trust_env=False) as client:
        yield client


def add_failing_routes(app: FastAPI) -> None:
    """Routes whose handler raises an unexpected exception (not the model: the app's catch-all
    handler is what is under test), with a message that would leak if it were shown."""

    async def boom():
        raise RuntimeError(f'File "/work/main/app/x.py", line 1: object at {hex(id(app))} broke')

    app.add_api_route("/test-only/boom", boom, methods=["GET", "POST"])
    app.add_api_route("/v1/test-only/boom", boom, methods=["GET", "POST"])


def check_tgi_error(r: httpx.Response, status: int, error_type: str, needle: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] == error_type, body
    check_message(body["error"])
    assert needle.lower() in body["error"].lower(), (needle, body)
    return body


def check_openai_error(
    r: httpx.Response, status: int, code: str, needle: str = "", param: object = ...
) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert err["code"] == code, body
    assert (
        err["type"]
        == {
            "validation": "invalid_request_error",
            "not_found": "invalid_request_error",
            "too_large": "invalid_request_error",
            "internal": "server_error",
        }[code]
    )
    check_message(err["message"])
    assert needle.lower() in err["message"].lower(), (needle, body)
    if param is not ...:
        assert err["param"] == param, body
    return err


# ---- the TGI family and the WebSocket ----


TGI_CASES = tgi_cases(N_CTX, LIMIT)

HTTP_ROUTES = {  # name: (path, extra top-level fields)
    "generate": ("/generate", {}),
    "generate_stream": ("/generate_stream", {}),
    "compat": ("/", {"stream": False}),
    "compat_stream": ("/", {"stream": True}),
    "tokenize": ("/tokenize", {}),
}


def body_for(case: Case, extra: dict) -> bytes:
    """The case's body with the route's extra fields (spliced into a raw object body too; a raw
    body that is no object fails before any field is looked at)."""
    if not extra:
        return case.raw()
    if isinstance(case.body, bytes):
        if not case.body.startswith(b"{"):
            return case.body
        return b"{" + json.dumps(extra)[1:-1].encode() + b", " + case.body[1:]
    return json.dumps({**case.body, **extra}).encode()


@pytest.mark.parametrize("route", list(HTTP_ROUTES))
@pytest.mark.parametrize("case", TGI_CASES, ids=lambda c: c.id)
def test_tgi_route_refuses(http, route, case):
    path, extra = HTTP_ROUTES[route]
    r = http.post(path, content=body_for(case, extra), headers={"content-type": "application/json"})
    if route == "tokenize" and case.tokenize == 200:
        assert r.status_code == 200, r.text  # a rule about generation, not tokenizing
        assert isinstance(r.json(), list)
        return
    check_tgi_error(r, 422, "validation", case.needle)


@pytest.mark.parametrize("route", ["generate", "generate_stream", "compat", "compat_stream"])
def test_truncate_keeps_the_last_tokens(http, route):
    path, extra = HTTP_ROUTES[route]
    ids = [t["id"] for t in http.post("/tokenize", json={"inputs": LONG_PROMPT}).json()]
    assert len(ids) == 200
    body = {
        "inputs": LONG_PROMPT,
        "parameters": {"truncate": 100, "max_new_tokens": 3, "details": True},
        **extra,
    }
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    # The same as the last 100 tokens given as the prompt.
    tail = "".join(t["text"] for t in http.post("/tokenize", json={"inputs": LONG_PROMPT}).json()[-100:])
    alone = http.post("/generate", json={"inputs": tail, "parameters": {"max_new_tokens": 3}}).json()
    if path == "/generate_stream" or extra.get("stream"):
        events = sse_events(r.text)
        assert events[-1]["details"]["input_length"] == 100
        assert events[-1]["generated_text"] == alone["generated_text"]
    else:
        out = r.json()[0] if isinstance(r.json(), list) else r.json()
        assert out["generated_text"] == alone["generated_text"]


@pytest.mark.parametrize(
    "case",
    [c for c in TGI_CASES if c.id != "invalid UTF-8"]
    + [
        Case("binary frame", b'{"inputs": "Hello"}', "text frames"),
        Case("too large", {"inputs": "x" * (MAX_BODY + 10)}, f"larger than {MAX_BODY}"),
    ],
    ids=lambda c: c.id,
)
def test_websocket_refuses_and_stays_open(server, case):
    with connect(server.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10) as ws:
        if case.id == "binary frame":
            ws.send(case.body)
        elif isinstance(case.body, bytes):
            ws.send(case.body.decode("utf-8"))
        else:
            ws.send(json.dumps({"type": "generate", **case.body, "id": "bad"}))
        message = json.loads(ws.recv(timeout=30))
        assert set(message) == {"type", "error_type", "message", "request_id"}, message
        assert message["type"] == "error"
        assert message["error_type"] == ("too_large" if case.id == "too large" else "validation"), message
        check_message(message["message"])
        assert (case.ws_needle or case.needle).lower() in message["message"].lower(), message
        # The connection stays open and serves the next request.
        ws.send(
            json.dumps(
                {"type": "generate", "inputs": "Hello", "parameters": {"max_new_tokens": 1}, "id": "ok"}
            )
        )
        while (message := json.loads(ws.recv(timeout=30)))["type"] == "token":
            pass
        assert message["type"] == "done" and message["request_id"] == "ok", message


def test_websocket_truncate_keeps_the_last_tokens(server):
    with connect(server.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"inputs": LONG_PROMPT, "parameters": {"truncate": 100, "max_new_tokens": 2}}))
        while (message := json.loads(ws.recv(timeout=30)))["type"] == "token":
            pass
    assert message["type"] == "done" and message["usage"]["prompt_tokens"] == 100, message


# ---- OpenAI ----


def oa(**fields) -> dict:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 2, **fields}


@dataclass(frozen=True)
class OACase:
    id: str
    body: dict | bytes
    param: str | None
    needle: str
    status: int = 400
    code: str = "validation"


OPENAI_CASES = [
    OACase("unknown model", oa(model="no-such-model"), "model", "no-such-model", 404, "not_found"),
    OACase("model missing", {"prompt": "Hello"}, "model", "model"),
    OACase("empty token-id prompt", oa(prompt=[]), "prompt", "prompt"),
    OACase("empty token-id prompt in a list", oa(prompt=[[1, 2], []]), "prompt", "prompt"),
    OACase("prompt longer than the context", oa(prompt=LONG_PROMPT), "prompt", "200 tokens"),
    OACase("token id outside the vocabulary", oa(prompt=[1, 50257]), "prompt", "vocabulary"),
    OACase("max_tokens 0", oa(max_tokens=0), "max_tokens", "max_tokens"),
    OACase("max_tokens over the limit", oa(max_tokens=LIMIT + 1), "max_tokens", f"between 1 and {LIMIT}"),
    OACase("temperature negative", oa(temperature=-0.5), "temperature", "temperature"),
    OACase("temperature over 2", oa(temperature=2.5), "temperature", "temperature"),
    OACase(
        "temperature NaN",
        b'{"model": "tiny-openai", "prompt": "Hello", "temperature": NaN}',
        "temperature",
        "temperature",
    ),
    OACase(
        "temperature Infinity",
        b'{"model": "tiny-openai", "prompt": "Hello", "temperature": Infinity}',
        "temperature",
        "temperature",
    ),
    OACase(
        "temperature 1e999",
        b'{"model": "tiny-openai", "prompt": "Hello", "temperature": 1e999}',
        "temperature",
        "temperature",
    ),
    OACase("top_p negative", oa(top_p=-0.1), "top_p", "top_p"),
    OACase("top_p over 1", oa(top_p=1.5), "top_p", "top_p"),
    OACase("top_k is not an OpenAI parameter", oa(top_k=5), "top_k", "top_k"),
    OACase("n 0", oa(n=0), "n", "n"),
    OACase("logprobs over 5", oa(logprobs=6), "logprobs", "logprobs"),
    OACase("too many stop sequences", oa(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    OACase("empty stop sequence", oa(stop=[""]), "stop", "stop"),
    OACase("string for max_tokens", oa(max_tokens="ten"), "max_tokens", "max_tokens"),
    OACase("object for prompt", oa(prompt={"text": "Hello"}), "prompt", "prompt"),
    OACase("unsupported parameter", oa(presence_penalty=1.0), "presence_penalty", "not supported"),
    OACase("unknown top-level field", oa(colour="blue"), "colour", "colour"),
    OACase("body not an object", b"[1, 2]", None, "body"),
    OACase("invalid JSON", b'{"model": "tiny-openai", ', None, "invalid JSON"),
    OACase("invalid UTF-8", b'{"model": "tiny-openai", "prompt": "Hello \xff"}', None, "UTF-8"),
    OACase(
        "lone surrogate",
        b'{"model": "tiny-openai", "prompt": "Hello \\ud800", "max_tokens": 2}',
        "prompt",
        "prompt",
    ),
    OACase(
        "lone surrogate in a stop sequence",
        b'{"model": "tiny-openai", "prompt": "Hello", "stop": "\\ud800"}',
        "stop",
        "stop",
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("case", OPENAI_CASES, ids=lambda c: c.id)
def test_openai_route_refuses(http, case, stream):
    if isinstance(case.body, bytes):
        content = body_for(Case(case.id, case.body, case.needle), {"stream": True} if stream else {})
    else:
        content = json.dumps({**case.body, "stream": stream}).encode()
    r = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    check_openai_error(r, case.status, case.code, case.needle, case.param)


def test_openai_top_p_0_is_greedy_not_an_error(http):
    r = http.post("/v1/completions", json=oa(top_p=0, max_tokens=3))
    greedy = http.post("/v1/completions", json=oa(temperature=0, max_tokens=3))
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


# ---- body size ----

LARGE_ROUTES = ["/generate", "/generate_stream", "/", "/tokenize", "/v1/completions"]


def raw_http(url: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send a whole request in one write and read one response (status, headers, body)."""
    host, port = url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
    return status, headers, body[:length]


def check_too_large(path: str, status: int, headers: dict, body: bytes) -> None:
    assert status == 413, body
    assert headers["content-type"].startswith("application/json")
    payload = json.loads(body)
    if path.startswith("/v1/"):
        assert set(payload) == {"error"} and payload["error"]["code"] == "too_large", payload
        message = payload["error"]["message"]
    else:
        assert set(payload) == {"error", "error_type"} and payload["error_type"] == "too_large", payload
        message = payload["error"]
    check_message(message)
    assert str(MAX_BODY) in message


@pytest.mark.parametrize("path", LARGE_ROUTES)
def test_body_over_the_limit_by_content_length(server, path):
    # Refused from the header alone: no body byte is sent (nor read).
    request = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10 * 2**20}\r\n\r\n"
    ).encode()
    check_too_large(path, *raw_http(server, request))


@pytest.mark.parametrize("path", LARGE_ROUTES)
def test_body_over_the_limit_chunked(server, path):
    # No Content-Length: the limit is enforced while the body is read.
    pieces = [b'{"inputs": "', b"a" * 2500, b"b" * 2500, b'"}']
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + chunked
    check_too_large(path, *raw_http(server, request))


def test_body_at_the_limit_is_read(http):
    body = json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 1, "stop": ["x"]}}).encode()
    body = body[:-1] + b" " * (MAX_BODY - len(body)) + b"}"
    assert len(body) == MAX_BODY
    r = http.post("/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


# ---- unexpected exceptions ----


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unexpected_exception_is_a_json_500(http, method):
    r = http.request(method, "/test-only/boom", headers={"x-request-id": "boom-1"})
    check_tgi_error(r, 500, "internal")
    assert r.headers["x-request-id"] == "boom-1"
    r = http.request(method, "/v1/test-only/boom")
    check_openai_error(r, 500, "internal", param=None)
    assert r.headers["x-request-id"]
    # The connection stays usable after a 500 (the client above reuses it).
    assert http.get("/health").status_code == 200


def test_unknown_route_and_method(http):
    check_tgi_error(http.get("/no-such-route"), 404, "not_found")
    check_openai_error(http.get("/v1/no-such-route"), 404, "not_found")
    r = http.get("/generate")
    assert r.status_code == 405 and set(r.json()) == {"error", "error_type"}, r.text
    check_message(r.json()["error"])
