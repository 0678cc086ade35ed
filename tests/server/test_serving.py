"""The server under concurrent load, with real clients: TGI's own Python client, httpx (JSON and
SSE) and WebSockets, against a real uvicorn server and a tiny real model.

Every concurrent result must equal the same request run alone, and batching must be real.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from pathlib import Path

import httpx
import pytest
import websockets
from text_generation import Client

from app.engine import kernels
from app.engine.batcher import generate
from app.engine.sampling import SamplingParams
from app.engine.spec import GenerationSpec
from app.model.random_init import write_random_model
from app.runtime.load import load_model
from tests.support.server_harness import TINY, metric, running_server, serve_process, sse_event, tiny_settings

TINY_NAME = "tiny-openai"  # the folder name tests/conftest.py writes, which is the model's name
PROMPTS = [
    "Hello there",
    "The quick brown fox",
    "Once upon a time",
    "In 1984,",
    "def f(x):",
    "Здравствуй",
    "日本語のテキスト",
    "A B C D E F G",
]


@pytest.fixture(scope="module")
def base_url(tiny_dirs, shelf):
    settings = tiny_settings(tiny_dirs["openai"], slots=8, queue_size=40)
    with running_server(settings, shelf=shelf) as url:
        yield url


def case(i: int) -> dict:
    """The i-th request of the mix: its transport, prompt and parameters."""
    params: dict = {"max_new_tokens": 6 + i % 7, "seed": 1000 + i}
    if i % 4 == 0:
        params["do_sample"] = False  # greedy
    elif i % 4 == 1:
        params.update(temperature=0.8, top_k=20)
    elif i % 4 == 2:
        params.update(temperature=1.1, top_p=0.9)
    else:
        params.update(do_sample=True, repetition_penalty=1.3)
    transport = ("generate", "sse", "ws")[i % 3]
    return {"transport": transport, "inputs": PROMPTS[i % len(PROMPTS)], "parameters": params}


async def run_case(http: httpx.AsyncClient, ws_url: str, c: dict) -> tuple[list[int], str]:
    """Token ids and text of one request over its transport."""
    if c["transport"] == "generate":
        body = {"inputs": c["inputs"], "parameters": {**c["parameters"], "details": True}}
        r = await http.post("/generate", json=body)
        r.raise_for_status()
        out = r.json()
        return [t["id"] for t in out["details"]["tokens"]], out["generated_text"]
    if c["transport"] == "sse":
        ids, text, final = [], "", None
        async with http.stream(
            "POST", "/generate_stream", json={"inputs": c["inputs"], "parameters": c["parameters"]}
        ) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if (msg := sse_event(line)) is not None:
                    ids.append(msg["token"]["id"])
                    text += msg["token"]["text"]
                    if msg["generated_text"] is not None:
                        final = msg["generated_text"]
        assert final == text, "streamed token texts must add up to generated_text"
        return ids, final
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "generate", "inputs": c["inputs"], "parameters": c["parameters"]}))
        ids, text, indices = [], "", []
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "token":
                ids.append(msg["id"])
                indices.append(msg["index"])
                text += msg["text"]
            else:
                assert msg["type"] == "done", msg
                assert msg["generated_text"] == text
                break
        assert indices == list(range(len(ids)))
        return ids, text


async def run_all(base_url: str, cases: list[dict], concurrent: bool) -> list[tuple[list[int], str]]:
    ws_url = base_url.replace("http", "ws", 1) + "/stream"
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        if concurrent:
            return list(await asyncio.gather(*(run_case(http, ws_url, c) for c in cases)))
        return [await run_case(http, ws_url, c) for c in cases]


def test_32_concurrent_clients_each_get_what_they_would_get_alone(base_url):
    cases = [case(i) for i in range(32)]
    alone = asyncio.run(run_all(base_url, cases, concurrent=False))
    together = asyncio.run(run_all(base_url, cases, concurrent=True))
    for i, (a, t) in enumerate(zip(alone, together)):
        assert t == a, f"request {i} ({cases[i]['transport']}) differs when batched"
    assert all("\ufffd" not in text for _, text in together)
    # Batching was real: several slots were busy at once.
    assert metric(base_url, "gpt2_max_active_slots", model=TINY_NAME) > 1


def test_request_arriving_mid_generation_starts_before_the_others_finish(base_url):
    async def scenario():
        ws_url = base_url.replace("http", "ws", 1) + "/stream"
        order = []
        async with websockets.connect(ws_url) as long_ws, websockets.connect(ws_url) as short_ws:
            await long_ws.send(json.dumps({"inputs": "A long story", "parameters": {"max_new_tokens": 100}}))
            seen = 0
            while seen < 3:  # the long request is decoding
                if json.loads(await long_ws.recv())["type"] == "token":
                    seen += 1
            await short_ws.send(json.dumps({"inputs": "Short", "parameters": {"max_new_tokens": 2}}))

            async def drain(ws, name):
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg["type"] == "token" and msg["index"] == 0:
                        order.append(f"{name} first token")
                    if msg["type"] == "done":
                        order.append(f"{name} done")
                        return

            await asyncio.gather(drain(long_ws, "long"), drain(short_ws, "short"))
        return order

    order = asyncio.run(scenario())
    assert order.index("short first token") < order.index("long done")
    assert order.index("short done") < order.index("long done")


def test_tgi_python_client_works_unchanged(base_url):
    client = Client(base_url, timeout=60)
    resp = client.generate("Hello there", max_new_tokens=8, do_sample=False)
    direct = httpx.post(
        f"{base_url}/generate", json={"inputs": "Hello there", "parameters": {"max_new_tokens": 8}}
    ).json()
    assert resp.generated_text == direct["generated_text"]
    assert resp.details.finish_reason.value in ("length", "eos_token")
    assert len(resp.details.tokens) == resp.details.generated_tokens
    streamed = list(client.generate_stream("Hello there", max_new_tokens=8, do_sample=False))
    assert "".join(r.token.text for r in streamed) == resp.generated_text
    assert streamed[-1].generated_text == resp.generated_text and streamed[-1].details is not None
    assert all(r.details is None for r in streamed[:-1])
    sampled = client.generate(
        "Hello there", max_new_tokens=8, do_sample=True, seed=5, top_k=10, stop_sequences=["\n"]
    )
    again = client.generate(
        "Hello there", max_new_tokens=8, do_sample=True, seed=5, top_k=10, stop_sequences=["\n"]
    )
    assert sampled.generated_text == again.generated_text and sampled.details.seed == 5


def test_info_and_tokenize_match_tgi_shapes(base_url):
    info = httpx.get(f"{base_url}/info").json()
    assert info["model_id"] == TINY_NAME and info["max_input_tokens"] == TINY.n_ctx
    toks = httpx.post(f"{base_url}/tokenize", json={"inputs": "Hello world"}).json()
    assert [t["id"] for t in toks] == [15496, 995]
    assert [(t["start"], t["stop"]) for t in toks] == [(0, 5), (5, 11)]


def test_two_models_on_two_logical_devices_each_answer_for_themselves(tmp_path, tiny_dirs):
    """Two different models placed on CPU:0 and CPU:1 of one server process (the CPU split into
    logical devices must happen before TensorFlow starts, hence a separate process)."""
    write_random_model(tmp_path / "alpha", TINY, seed=21)
    write_random_model(tmp_path / "beta", TINY, seed=22, layout="hf")
    flags = [
        "--models-dir",
        str(tmp_path),
        "--placement",
        "alpha=CPU:0,beta=CPU:1",
        "--cpu-devices",
        "2",
        "--no-warmup",
        "--slots",
        "2",
    ]
    with serve_process("alpha,beta", *flags) as srv:
        base = srv.url
        models = {m["name"]: m for m in httpx.get(f"{base}/models").json()["models"]}
        assert models["alpha"]["device"] == "/CPU:0" and models["beta"]["device"] == "/CPU:1"
        assert models["alpha"]["state"] == models["beta"]["state"] == "ready"
        for name in ("alpha", "beta"):
            body = {
                "inputs": "Hello there",
                "parameters": {"max_new_tokens": 8, "model": name, "details": True},
            }
            got = [
                t["id"]
                for t in httpx.post(f"{base}/generate", json=body, timeout=60).json()["details"]["tokens"]
            ]
            local = load_model(tmp_path / name, slots=1)
            seq = GenerationSpec(local.encoder.encode("Hello there"), 8, SamplingParams(temperature=0))
            expected = generate(local.engine, [seq], eos_id=local.encoder.eot_token)[0].generated
            assert got == expected, f"model {name} answered with another model's tokens"
        unknown = httpx.post(f"{base}/generate", json={"inputs": "x", "parameters": {"model": "gamma"}})
        assert unknown.status_code == 422 and unknown.json()["error_type"] == "validation"
    assert srv.proc.returncode == 0  # stopped by SIGTERM: a clean exit


def test_the_start_up_heap_is_frozen_once_a_model_is_loaded(tiny_dirs, shelf):
    """A full garbage collection over TensorFlow's start-up objects stalled every stream for
    0.1-0.5 s at 124M; the registry moves them out of the collector's reach after loading."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with running_server(tiny_settings(tiny_dirs["openai"], slots=2, warmup=False), shelf=shelf) as url:
        assert httpx.get(f"{url}/ready", timeout=5.0).status_code == 200
        assert gc.get_freeze_count() > 10_000


def test_models_and_the_log_say_which_kernels_and_dtype_were_chosen_and_why(
    tiny_dirs, tmp_path, caplog, shelf
):
    """kernels=auto is timed at the first start and read back at the next (issue 18 §3); dtype=auto
    keeps float32 on a CPU without native bfloat16 and says so (§4)."""
    settings = tiny_settings(
        tiny_dirs["openai"], slots=2, prefill_chunk=32, warmup=True, kernels="auto", cache_dir=tmp_path
    )
    reasons = []
    for _ in range(2):
        with (
            caplog.at_level(logging.INFO, logger="gpt2serve.registry"),
            running_server(settings, shelf=shelf) as url,
        ):
            (model,) = httpx.get(f"{url}/models", timeout=5.0).json()["models"]
        plan = model["kernels"]
        assert plan["fixed"] is None and set(plan["decode"]) == {"1", "2"}
        assert all(v in ("xla", "onednn") for v in [*plan["decode"].values(), *plan["prefill"].values()])
        assert f"kernels: decode 1:{plan['decode']['1']}" in caplog.text
        reasons.append(plan["reason"])
        caplog.clear()
    assert reasons[0].startswith("measured at this start") and "earlier start" in reasons[1]
    assert list(tmp_path.iterdir()) == [tmp_path / Path(tiny_dirs["openai"]).name]

    settings = tiny_settings(tiny_dirs["openai"], slots=2, dtype="auto", cache_dir=tmp_path)
    with running_server(settings, shelf=shelf) as url:
        (model,) = httpx.get(f"{url}/models", timeout=5.0).json()["models"]
        assert httpx.get(f"{url}/info", timeout=5.0).json()["model_dtype"] == model["dtype"]  # not "auto"
    if kernels.bf16_native(kernels.cpu_info()[1]):
        assert model["dtype_reason"].startswith("auto: bfloat16 measured")
    else:
        assert model["dtype"] == "float32" and "neither AVX512-BF16 nor AMX-BF16" in model["dtype_reason"]
