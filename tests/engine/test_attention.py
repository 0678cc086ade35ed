"""``POST /attention`` and :mod:`app.engine.attention_maps` on the tiny real GPT-2 (both checkpoint
layouts), against transformers' ``output_attentions`` (eager attention) built from the same weights.

* The engine function: equal to transformers within 1e-5 (float32) for models loaded from either
  layout, rows sum to 1, zero above the diagonal, the layers/heads selection.
* The route: the same numbers through a real server (each model by ``model``), the token texts,
  every validation error (422 in TGI's shape, naming the field), 503 for a model that is not ready,
  API keys, and generation that keeps running while attention maps are computed (or wait).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from app.engine.attention_maps import attention_maps
from app.runtime.load import load_model
from app.server.registry import Status
from app.server.settings import Settings
from tests.support.hf_reference import hf_model
from tests.support.server_harness import (
    STORY,
    TINY,
    LiveServer,
    check_message,
    live_server,
    metric,
    running_server,
    tiny_settings,
)

MODELS = {"openai": "tiny-openai", "hf": "tiny-hf"}  # layout -> the served name (its folder's)
BROKEN = "broken"
MAX_TOKENS = 16  # the servers' attention_max_tokens
TEXT = "The king rode out at dawn with his knights."
KEY = "sk-attention-test-5c1e"
TOL = 1e-5


@pytest.fixture(scope="module")
def reference(tiny_params):
    return hf_model(TINY, tiny_params)


def hf_attentions(model, ids: list[int]) -> np.ndarray:
    """transformers' ``output_attentions`` of ``ids``: ``[n_layer, n_head, T, T]``."""
    import torch  # here, not at the top: see tests/support/hf_reference.py

    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])


@pytest.fixture(scope="module")
def engines(tiny_dirs):
    """Each layout's folder loaded as the server loads it."""
    return {layout: load_model(tiny_dirs[layout], slots=1) for layout in MODELS}


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory, shelf):
    """Both layouts served (tiny-openai is the default), and a model that failed to load."""
    broken = tmp_path_factory.mktemp("attention") / BROKEN
    shutil.copytree(tiny_dirs["openai"], broken)
    with open(broken / "model.ckpt.data-00000-of-00001", "r+b") as f:
        f.truncate(1000)
    models = [str(tiny_dirs["openai"]), str(tiny_dirs["hf"]), str(broken)]
    settings = tiny_settings(tiny_dirs["openai"], models=models, attention_max_tokens=MAX_TOKENS)
    with live_server(settings, ready=none_loading, shelf=shelf) as live:
        yield live


def none_loading(client: httpx.Client) -> bool | str:
    """Ready once no model is still loading (the broken one keeps ``/ready`` at 503)."""
    states = [m["state"] for m in client.get("/models").json()["models"]]
    return "loading" not in states or f"models still loading: {states}"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
        yield client


def maps_of(body: dict) -> np.ndarray:
    return np.asarray(body["attention"], np.float64)


def check_stochastic_and_causal(maps: np.ndarray) -> None:
    t_len = maps.shape[-1]
    assert maps.shape[-2] == t_len
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert (maps >= 0).all()
    assert (maps[..., np.triu(np.ones((t_len, t_len), bool), k=1)] == 0).all()


# ---- the engine function ----


@pytest.mark.parametrize("layout", list(MODELS))
def test_maps_equal_transformers_output_attentions(engines, reference, layout):
    model = engines[layout]
    for text in (TEXT, STORY):
        ids = model.encoder.encode(text)[: TINY.n_ctx]  # STORY: the whole context
        maps = attention_maps(model.engine.weights(), ids, hp=TINY)
        assert maps.dtype == np.float32
        assert maps.shape == (TINY.n_layer, TINY.n_head, len(ids), len(ids))
        np.testing.assert_allclose(maps, hf_attentions(reference, ids), atol=TOL, rtol=0)
        check_stochastic_and_causal(maps)


def test_one_token_attends_to_itself(engines):
    maps = attention_maps(engines["openai"].engine.weights(), [464], hp=TINY)
    assert maps.shape == (TINY.n_layer, TINY.n_head, 1, 1) and (maps == 1).all()


def test_layers_and_heads_are_selected_in_the_order_given(engines):
    weights, ids = engines["openai"].engine.weights(), engines["openai"].encoder.encode(TEXT)
    full = attention_maps(weights, ids, hp=TINY)
    some = attention_maps(weights, ids, hp=TINY, layers=[1, 0], heads=[3, 1])
    assert some.shape == (2, 2, len(ids), len(ids))
    np.testing.assert_array_equal(some, full[[1, 0]][:, [3, 1]])
    first = attention_maps(weights, ids, hp=TINY, layers=[0])  # runs only the first block
    np.testing.assert_array_equal(first, full[:1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_engines_give_float32_maps_close_to_float32(tiny_dirs, engines, dtype):
    half = load_model(tiny_dirs["openai"], slots=1, dtype=dtype)
    ids = half.encoder.encode(TEXT)
    maps = attention_maps(half.engine.weights(), ids, hp=TINY)
    assert maps.dtype == np.float32
    check_stochastic_and_causal(maps)
    full = attention_maps(engines["openai"].engine.weights(), ids, hp=TINY)
    np.testing.assert_allclose(maps, full, atol=0.05)


@pytest.mark.parametrize(
    ("ids", "options", "message"),
    [
        ([], {}, "1..128 tokens, got 0"),
        (list(range(129)), {}, "1..128 tokens, got 129"),
        ([50257], {}, "token id 50257 is outside"),
        ([1, 2], {"layers": [2]}, "layer index 2 is out of range (0..1)"),
        ([1, 2], {"heads": [-1]}, "head index -1 is out of range (0..3)"),
        ([1, 2], {"heads": []}, "no head index"),
    ],
)
def test_engine_function_refuses_bad_input(engines, ids, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        attention_maps(engines["openai"].engine.weights(), ids, hp=TINY, **options)


# ---- the route ----


@pytest.mark.parametrize("layout", list(MODELS))
def test_route_equals_transformers_for_each_model(http, engines, reference, layout):
    r = http.post("/attention", json={"inputs": TEXT, "model": MODELS[layout]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    ids = [t["id"] for t in body["tokens"]]
    assert ids == engines[layout].encoder.encode(TEXT)
    assert body["n_layer"] == TINY.n_layer and body["n_head"] == TINY.n_head
    assert body["layers"] == list(range(TINY.n_layer)) and body["heads"] == list(range(TINY.n_head))
    maps = maps_of(body)
    assert maps.shape == (TINY.n_layer, TINY.n_head, len(ids), len(ids))
    np.testing.assert_allclose(maps, hf_attentions(reference, ids), atol=TOL, rtol=0)
    check_stochastic_and_causal(maps)


def test_answers_are_counted_with_the_generation_requests(server: LiveServer, http):
    labels = {"route": "/attention", "model": MODELS["hf"], "outcome": "ok"}
    before = metric(server.url, "gpt2_requests_total", **labels) or 0.0
    assert http.post("/attention", json={"inputs": TEXT, "model": MODELS["hf"]}).status_code == 200
    assert metric(server.url, "gpt2_requests_total", **labels) == before + 1
    # Refused for its own input (too long): not counted, as a refused generation is not.
    refused = http.post("/attention", json={"inputs": TEXT * 5, "model": MODELS["hf"]})
    assert refused.status_code == 422
    assert metric(server.url, "gpt2_requests_total", **labels) == before + 1
    assert not metric(server.url, "gpt2_requests_total", **{**labels, "outcome": "error"})


def test_default_model_is_the_first(http):
    default = http.post("/attention", json={"inputs": TEXT})
    named = http.post("/attention", json={"inputs": TEXT, "model": MODELS["openai"], "layers": None})
    assert default.status_code == named.status_code == 200
    assert default.json() == named.json()


def test_route_selects_layers_and_heads(http):
    full = http.post("/attention", json={"inputs": TEXT}).json()
    r = http.post("/attention", json={"inputs": TEXT, "layers": [1], "heads": [2, 0, 2]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layers"] == [1] and body["heads"] == [2, 0, 2]
    assert body["n_layer"] == TINY.n_layer and body["n_head"] == TINY.n_head  # of the model
    assert body["attention"] == [[full["attention"][1][h] for h in (2, 0, 2)]]
    integral = http.post("/attention", json={"inputs": TEXT, "layers": [1.0], "heads": [2.0]})
    assert integral.status_code == 200 and integral.json()["attention"] == [[full["attention"][1][2]]]


def test_token_texts_are_each_tokens_own_text(http):
    text = "Café 🙂 naïve\n\tend"  # the emoji is several byte tokens, none a whole character
    r = http.post("/attention", json={"inputs": text, "layers": [0], "heads": [0]})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    expected = http.post("/tokenize", json={"inputs": text}).json()
    assert tokens == [{"id": t["id"], "text": t["text"]} for t in expected]
    ascii_tokens = http.post("/attention", json={"inputs": TEXT}).json()["tokens"]
    assert "".join(t["text"] for t in ascii_tokens) == TEXT
    assert len(r.json()["attention"][0][0]) == len(tokens)


def test_longest_prompt_is_accepted(http, engines):
    ids = engines["openai"].encoder.encode(STORY)[:MAX_TOKENS]
    text = engines["openai"].encoder.decode(ids)
    assert len(engines["openai"].encoder.encode(text)) == MAX_TOKENS
    r = http.post("/attention", json={"inputs": text})
    assert r.status_code == 200, r.text
    assert len(r.json()["tokens"]) == MAX_TOKENS


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"inputs": ""}, "inputs", "must not be empty"),  # as POST /generate says it (one validation)
        ({}, "inputs", "required"),
        ({"inputs": 5}, "inputs", "string"),
        ({"inputs": "\ud800"}, "inputs", "a lone surrogate"),
        ({"inputs": STORY}, "inputs", f"at most {MAX_TOKENS} tokens"),
        (
            {"inputs": TEXT, "layers": [2]},
            "layers",
            "index 2 is out of range; this model has 2 layers (0..1)",
        ),
        (
            {"inputs": TEXT, "heads": [0, 4]},
            "heads",
            "index 4 is out of range; this model has 4 heads (0..3)",
        ),
        ({"inputs": TEXT, "layers": [-1]}, "layers.0", "greater than or equal to 0"),
        ({"inputs": TEXT, "heads": []}, "heads", "at least 1 item"),
        ({"inputs": TEXT, "layers": [True]}, "layers.0", "integer"),
        ({"inputs": TEXT, "heads": [0.5]}, "heads.0", "integer"),
        ({"inputs": TEXT, "heads": "0"}, "heads", "list"),
        ({"inputs": TEXT, "model": "nope"}, "model", "unknown model"),
        ({"inputs": TEXT, "parameters": {}}, "parameters", "not permitted"),
    ],
)
def test_validation_errors_in_the_tgi_shape(http, body, field, needle):
    raw = json.dumps(body)  # "\ud800" stays an escape: a lone surrogate, which JSON allows
    r = http.post("/attention", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()
    assert set(error) == {"error", "error_type"} and error["error_type"] == "validation", error
    check_message(error["error"])
    assert error["error"].startswith(f"{field}: ") or (field == "model" and "model" in error["error"]), error
    assert needle in error["error"], error


def test_a_model_that_is_not_ready_is_503(server, http):
    r = http.post("/attention", json={"inputs": TEXT, "model": BROKEN})
    assert r.status_code == 503, r.text
    assert r.json() == {
        "error": f"model {BROKEN} failed to load; GET /models gives the reason",
        "error_type": "unavailable",
    }
    entry = server.state.registry.entries[MODELS["hf"]]
    ready = entry.status
    entry.status = Status("loading")  # as while its weights are read (the registry's own word for it)
    try:
        r = http.post("/attention", json={"inputs": TEXT, "model": MODELS["hf"]})
    finally:
        entry.status = ready
    assert r.status_code == 503 and r.json() == {
        "error": "model tiny-hf is loading",
        "error_type": "unavailable",
    }


def test_generation_runs_while_attention_waits(server: LiveServer, http):
    """The attention thread held up: a /generate and a WebSocket stream run to the end meanwhile."""
    release = threading.Event()
    blocker = server.state.attention_pool.submit(release.wait, 60)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(http.post, "/attention", json={"inputs": TEXT})
            time.sleep(0.2)
            generated = http.post("/generate", json={"inputs": TEXT, "parameters": {"max_new_tokens": 12}})
            assert generated.status_code == 200, generated.text
            assert len(stream_tokens(server, 12)) == 12
            assert not pending.done(), "the attention request did not wait for its thread"
            release.set()
            answer = pending.result(60)
    finally:
        release.set()
        blocker.result(60)
    assert answer.status_code == 200 and len(answer.json()["attention"]) == TINY.n_layer


def test_streams_and_attention_requests_together(server: LiveServer, http):
    n_new = 40
    with ThreadPoolExecutor(4) as pool:
        stream = pool.submit(stream_tokens, server, n_new)
        maps = [pool.submit(http.post, "/attention", json={"inputs": STORY[: 40 + 5 * i]}) for i in range(6)]
        answers = [m.result(60) for m in maps]
        assert len(stream.result(60)) == n_new
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    for a in answers:
        check_stochastic_and_causal(maps_of(a.json()))


def stream_tokens(server: LiveServer, n_new: int) -> list[dict]:
    with connect(server.ws_url, proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"inputs": "Once upon a time", "parameters": {"max_new_tokens": n_new}}))
        tokens = []
        while (msg := json.loads(ws.recv(timeout=60)))["type"] == "token":
            tokens.append(msg)
        assert msg["type"] == "done" and msg["finish_reason"] == "length", msg
        return tokens


def test_api_keys_guard_the_route(tiny_dirs, shelf):
    settings = tiny_settings(tiny_dirs["openai"], api_keys=[KEY])
    with (
        running_server(settings, shelf=shelf) as url,
        httpx.Client(base_url=url, timeout=60, trust_env=False) as client,
    ):
        r = client.post("/attention", json={"inputs": TEXT})
        assert r.status_code == 401, r.text
        assert r.json() == {"error": r.json()["error"], "error_type": "unauthorized"}
        r = client.post("/attention", json={"inputs": TEXT}, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401, r.text
        key = {"authorization": f"Bearer {KEY}"}
        r = client.post("/attention", json={"inputs": TEXT}, headers=key)
        assert r.status_code == 200, r.text
        assert len(r.json()["tokens"]) == len(
            client.post("/tokenize", json={"inputs": TEXT}, headers=key).json()
        )


def test_the_limit_is_a_setting(monkeypatch):
    assert Settings(models=["x"]).attention_max_tokens == 256
    monkeypatch.setenv("GPT2_ATTENTION_MAX_TOKENS", "32")
    assert Settings(models=["x"]).attention_max_tokens == 32


def test_openapi_declares_the_route(http):
    doc = http.get("/openapi.json").json()
    op = doc["paths"]["/attention"]["post"]
    assert set(op["responses"]) == {"200", "401", "413", "422", "503"}
    for status in ("401", "413", "422", "503"):
        ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("__tgi__ErrorResponse")
    request = doc["components"]["schemas"]["AttentionRequest"]["properties"]
    assert request["inputs"]["minLength"] == 1
    assert request["model"]["enum"] == ["", MODELS["openai"], MODELS["hf"], BROKEN, None]
    layers = next(b for b in request["layers"]["anyOf"] if b.get("type") == "array")
    heads = next(b for b in request["heads"]["anyOf"] if b.get("type") == "array")
    assert layers["minItems"] == 1 and layers["items"]["minimum"] == 0
    assert layers["items"]["maximum"] == TINY.n_layer - 1 and heads["items"]["maximum"] == TINY.n_head - 1
