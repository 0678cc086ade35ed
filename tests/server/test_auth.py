"""API keys, CORS and request ids against a real uvicorn server and the tiny real GPT-2.

* With ``api_keys``: a missing or wrong key is 401 in the route family's error shape (the
  ``openai`` SDK raises ``AuthenticationError``), a right key passes on every route, the
  WebSocket handshake is refused without one; ``/health`` and ``/ready`` stay public, ``/metrics``
  too unless ``protect_metrics``; keys never reach the logs.
* CORS headers only when ``cors_origins`` is set, and then only for those origins; ``"*"`` with
  API keys is refused by the settings.
* Every response carries ``x-request-id``: a sane client id is echoed, anything else replaced.
"""

from __future__ import annotations

import base64
import json
import logging
import re

import httpx
import openai
import pytest
from pydantic import ValidationError
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from app.server.settings import Settings
from tests.support.server_harness import running_server, tiny_settings

MODEL = "tiny-openai"
KEY = "sk-test-4f1c2a9e7b3d"
OTHER_KEY = "second-key-8d2e"
WRONG = "sk-test-wrong-0000"
ALLOWED = "https://app.example.com"
FOREIGN = "https://evil.example.net"
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def url(tiny_dirs, shelf):
    """API keys, no CORS, /metrics public (the defaults)."""
    settings = tiny_settings(tiny_dirs["openai"], api_keys=[KEY, OTHER_KEY], max_body_bytes=4096)
    with running_server(settings, shelf=shelf) as base:
        yield base


@pytest.fixture(scope="module")
def strict_url(tiny_dirs, shelf):
    """API keys, /metrics protected, CORS for one origin."""
    settings = tiny_settings(
        tiny_dirs["openai"], api_keys=[KEY], protect_metrics=True, cors_origins=[ALLOWED]
    )
    with running_server(settings, shelf=shelf) as base:
        yield base


@pytest.fixture(scope="module")
def open_url(tiny_dirs, shelf):
    """No keys, no CORS."""
    with running_server(tiny_settings(tiny_dirs["openai"]), shelf=shelf) as base:
        yield base


# (method, path, JSON body or None): every route but the public probes.
ROUTES = [
    ("POST", "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    ("POST", "/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    ("POST", "/", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    ("POST", "/", {"inputs": "Hi", "stream": True, "parameters": {"max_new_tokens": 2}}),
    ("POST", "/tokenize", {"inputs": "Hi"}),
    ("GET", "/info", None),
    ("GET", "/models", None),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "stream": True}),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
]
ROUTE_IDS = [f"{m} {p}{' stream' if b and b.get('stream') else ''}" for m, p, b in ROUTES]
BAD_AUTH = {
    "missing": {},
    "wrong key": bearer(WRONG),
    "bearer without a key": {"authorization": "Bearer"},
    "key without scheme": {"authorization": KEY},
    "basic scheme": {"authorization": f"Basic {KEY}"},
    "key with a suffix": bearer(KEY + "x"),
    "key prefix": bearer(KEY[:-1]),
}


def call(base: str, method: str, path: str, body: dict | None, headers: dict) -> httpx.Response:
    return httpx.request(method, base + path, json=body, headers=headers, timeout=60, trust_env=False)


@pytest.mark.parametrize("auth", list(BAD_AUTH))
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
def test_missing_or_wrong_key_is_401(url, method, path, body, auth):
    r = call(url, method, path, body, BAD_AUTH[auth])
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["content-type"].startswith("application/json")
    if path.startswith("/v1/"):
        assert r.json() == {
            "error": {
                "message": "missing or invalid API key",
                "type": "authentication_error",
                "param": None,
                "code": "unauthorized",
            }
        }
    else:
        assert r.json() == {"error": "missing or invalid API key", "error_type": "unauthorized"}
    assert KEY not in r.text and WRONG not in r.text


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
def test_right_key_passes(url, method, path, body, key):
    r = call(url, method, path, body, bearer(key))
    assert r.status_code == 200, r.text


def test_scheme_is_case_insensitive(url):
    r = call(url, "POST", "/tokenize", {"inputs": "Hi"}, {"authorization": f"bearer {KEY}"})
    assert r.status_code == 200, r.text


def test_a_key_in_the_query_string_is_not_a_key(url):
    r = httpx.post(
        f"{url}/tokenize", params={"api_key": KEY}, json={"inputs": "Hi"}, timeout=30, trust_env=False
    )
    assert r.status_code == 401


def test_openai_sdk(url):
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key=WRONG, max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as exc:
        wrong.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert exc.value.status_code == 401 and exc.value.body["code"] == "unauthorized"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)
    assert right.completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=0).choices
    assert [m.id for m in right.models.list().data] == [MODEL]


@pytest.mark.parametrize("headers", [{}, bearer(WRONG)], ids=["missing", "wrong"])
def test_websocket_handshake_without_the_key_is_refused(url, headers):
    # The middleware closes before accepting; uvicorn answers the handshake with HTTP 403, so the
    # client never opens a connection (it does not see a 1008 close).
    with pytest.raises(InvalidStatus) as exc:
        connect(
            url.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10, additional_headers=headers
        )
    assert exc.value.response.status_code == 403


def test_websocket_with_the_key_works(url):
    with connect(
        url.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10, additional_headers=bearer(KEY)
    ) as ws:
        ws.send(json.dumps({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}))
        while (message := json.loads(ws.recv(timeout=30)))["type"] == "token":
            pass
    assert message["type"] == "done"


def key_protocol(key: str) -> str:
    return "base64url.bearer." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def test_websocket_key_as_a_subprotocol_works_and_is_never_echoed(url):
    """Browsers cannot set headers on a WebSocket: the key may come as a subprotocol; the server
    answers with "gpt2-serve", never with the key."""
    with connect(
        url.replace("http", "ws", 1) + "/stream",
        proxy=None,
        open_timeout=10,
        subprotocols=["gpt2-serve", key_protocol(KEY)],
    ) as ws:
        assert ws.subprotocol == "gpt2-serve"
        ws.send(json.dumps({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}))
        while (message := json.loads(ws.recv(timeout=30)))["type"] == "token":
            pass
    assert message["type"] == "done"
    for protocols in (
        ["gpt2-serve", key_protocol(WRONG)],
        ["gpt2-serve", "base64url.bearer.%%%"],
        ["gpt2-serve"],
    ):
        with pytest.raises(InvalidStatus) as exc:
            connect(
                url.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10, subprotocols=protocols
            )
        assert exc.value.response.status_code == 403, protocols


@pytest.mark.parametrize("path", ["/playground", "/playground/playground.js", "/playground/attention.js"])
def test_the_playground_files_are_public(url, path):
    assert httpx.get(url + path, timeout=30, trust_env=False).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_and_metrics_are_public_by_default(url, path):
    assert httpx.get(url + path, timeout=30, trust_env=False).status_code == 200


def test_protect_metrics(strict_url):
    assert httpx.get(f"{strict_url}/metrics", timeout=30, trust_env=False).status_code == 401
    r = httpx.get(f"{strict_url}/metrics", headers=bearer(KEY), timeout=30, trust_env=False)
    assert r.status_code == 200 and "gpt2_active_slots" in r.text
    for path in ("/health", "/ready"):
        assert httpx.get(strict_url + path, timeout=30, trust_env=False).status_code == 200


def test_keys_never_reach_the_logs(url, caplog):
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # uvicorn's loggers do not propagate to the root that caplog listens on
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            for headers in (bearer(KEY), bearer(OTHER_KEY), bearer(WRONG), {"authorization": KEY}):
                for method, path, body in ROUTES[:8]:
                    call(url, method, path, body, {**headers, "x-request-id": "log-probe"})
            with connect(
                url.replace("http", "ws", 1) + "/stream",
                proxy=None,
                open_timeout=10,
                additional_headers=bearer(KEY),
            ) as ws:
                ws.send(json.dumps({"inputs": "Hi", "parameters": {"max_new_tokens": 1}}))
                while json.loads(ws.recv(timeout=30))["type"] == "token":
                    pass
            with pytest.raises(InvalidStatus):
                connect(
                    url.replace("http", "ws", 1) + "/stream",
                    proxy=None,
                    open_timeout=10,
                    additional_headers=bearer(WRONG),
                )
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(caplog.handler)
            lg.setLevel(level)
    assert any("log-probe" in r.getMessage() for r in caplog.records), "the access log was not captured"
    # The server's records (this process also runs the clients, whose own debug logs show what they send).
    client = ("websockets.client", "httpx", "httpcore", "openai", "hpack")
    server = [r for r in caplog.records if not r.name.startswith(client)]
    assert any(r.name == "uvicorn.error" and r.levelno == logging.DEBUG for r in server), (
        "no server debug log"
    )
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in server)
    for secret in (KEY, OTHER_KEY, WRONG):
        assert secret not in text


# ---- CORS ----


def test_no_cors_headers_unless_configured(url, open_url):
    for base, headers in ((url, bearer(KEY)), (open_url, {})):
        r = httpx.post(
            f"{base}/tokenize",
            json={"inputs": "Hi"},
            headers={**headers, "origin": ALLOWED},
            timeout=30,
            trust_env=False,
        )
        assert r.status_code == 200
        assert not any(h.startswith("access-control-") for h in r.headers), r.headers
        pre = httpx.options(
            f"{base}/generate",
            headers={"origin": ALLOWED, "access-control-request-method": "POST"},
            timeout=30,
            trust_env=False,
        )
        assert not any(h.startswith("access-control-") for h in pre.headers), pre.headers


def preflight(base: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{base}/generate",
        timeout=30,
        trust_env=False,
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )


def test_cors_preflight_from_an_allowed_origin(strict_url):
    r = preflight(strict_url, ALLOWED)
    assert r.status_code == 200, r.text  # answered before the key check: browsers send no key in preflights
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


def test_cors_preflight_from_another_origin(strict_url):
    r = preflight(strict_url, FOREIGN)
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers


def test_cors_simple_requests(strict_url):
    ok = httpx.post(
        f"{strict_url}/tokenize",
        json={"inputs": "Hi"},
        headers={**bearer(KEY), "origin": ALLOWED},
        timeout=30,
        trust_env=False,
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ALLOWED
    other = httpx.post(
        f"{strict_url}/tokenize",
        json={"inputs": "Hi"},
        headers={**bearer(KEY), "origin": FOREIGN},
        timeout=30,
        trust_env=False,
    )
    assert "access-control-allow-origin" not in other.headers


def test_settings_refuse_any_origin_with_api_keys():
    with pytest.raises(ValidationError, match="cannot be combined with api_keys"):
        Settings(models=["x"], cors_origins=["*"], api_keys=[KEY])
    with pytest.raises(ValidationError, match="cannot be combined with api_keys"):
        Settings(models=["x"], cors_origins=[ALLOWED, "*"], api_keys=[KEY])
    assert Settings(models=["x"], cors_origins=["*"]).cors_origins == ["*"]  # without keys: allowed


def test_api_keys_are_secret_in_settings():
    s = Settings(models=["x"], api_keys=[KEY])
    assert KEY not in repr(s) and KEY not in str(s.model_dump())


# ---- request ids ----

RESPONSES = [  # (method, path, body or raw bytes, headers, expected status)
    ("POST", "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, bearer(KEY), 200),
    ("POST", "/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, bearer(KEY), 200),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2}, bearer(KEY), 200),
    ("POST", "/generate", {"inputs": ""}, bearer(KEY), 422),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": []}, bearer(KEY), 400),
    ("POST", "/generate", {"inputs": "Hi"}, {}, 401),
    ("GET", "/nowhere", None, bearer(KEY), 404),
    ("POST", "/generate", b"x" * 5000, bearer(KEY), 413),
    ("GET", "/health", None, {}, 200),
    ("GET", "/metrics", None, {}, 200),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    RESPONSES,
    ids=[f"{m} {p} {s}" for m, p, _, _, s in RESPONSES],
)
def test_every_response_carries_a_request_id(url, method, path, body, headers, status):
    def send(extra: dict) -> httpx.Response:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        return httpx.request(
            method, url + path, headers={**headers, **extra}, timeout=60, trust_env=False, **kwargs
        )

    r = send({})
    assert r.status_code == status, r.text
    assert HEX_ID.match(r.headers["x-request-id"]), r.headers
    # Two requests get two ids.
    assert send({}).headers["x-request-id"] != r.headers["x-request-id"]
    # A sane client id is echoed.
    assert send({"x-request-id": "client-42_a.b:c"}).headers["x-request-id"] == "client-42_a.b:c"
    # Anything else is replaced by a fresh id.
    for absurd in ("x" * 129, "has space", "semi;colon", "new\tline", b"\xe9-accent", "{json}", ""):
        got = send({"x-request-id": absurd}).headers["x-request-id"]
        assert HEX_ID.match(got), (absurd, got)


def test_websocket_handshake_carries_a_request_id(url):
    with connect(
        url.replace("http", "ws", 1) + "/stream",
        proxy=None,
        open_timeout=10,
        additional_headers={**bearer(KEY), "x-request-id": "ws-7"},
    ) as ws:
        assert ws.response.headers["x-request-id"] == "ws-7"
