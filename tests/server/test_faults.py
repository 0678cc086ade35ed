"""Faults against a real uvicorn server and the tiny real GPT-2, injected from outside the worker
(its batcher's step or its engine's calls wrapped on the instance: tests/support/faults.py;
nothing is mocked):

* an exception inside one decode step fails exactly the requests of that step, each on its own
  transport (HTTP 424 ``generation``, an SSE error event, a WebSocket ``error``), and the worker
  serves on: later requests succeed; ``/health`` answers 503 naming the model and the failed
  step until a step succeeds, then 200;
* NaN or an infinity in one row's scores fails that row's request alone; the requests of the same
  engine call go on and get exactly the tokens they get alone;
* a step that takes longer than ``health_stuck_seconds`` makes ``/health`` 503 naming the model,
  and 200 again once it finishes;
* a model whose folder is deleted after it loaded serves on, and ``GET /models`` still describes it;
* a model that fails to load (a truncated checkpoint) leaves the server up for the other model:
  ``/ready`` 503, ``GET /models`` says ``failed`` with a one-line reason naming the file, and
  requests for it are answered 503 ``unavailable``.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect

from app.server.settings import Settings
from app.server.worker import ModelWorker
from tests.support.faults import raising, wrapped, wrapped_step
from tests.support.server_harness import (
    LEAKS,
    check_message,
    live_server,
    running_server,
    sse_events,
    tiny_settings,
    wait_until,
)

MODEL = "tiny-openai"
STUCK = 0.5  # health_stuck_seconds of the test server
FAILED = "generation failed: RuntimeError"  # what a client is told of INJECTED
UNHEALTHY = (  # what /health says after a step failed with INJECTED
    f"worker of model {MODEL}: its last step failed (decode: RuntimeError); "
    "healthy again after a step succeeds"
)
INJECTED = 'injected: File "/work/main/app/engine/secret.py", line 1, object at 0xdeadbeef00'


@pytest.fixture(scope="module")
def server(tiny_dirs, shelf):
    settings = tiny_settings(tiny_dirs["openai"], slots=4, queue_size=4, health_stuck_seconds=STUCK)
    with live_server(settings, shelf=shelf) as live:
        generate(live.url, "Warm up", 4)  # compile before anything is timed
        yield live


def generate(url: str, inputs: str, n: int, **parameters) -> httpx.Response:
    return httpx.post(
        f"{url}/generate",
        json={"inputs": inputs, "parameters": {"max_new_tokens": n, **parameters}},
        timeout=60,
        trust_env=False,
    )


def stream(url: str, inputs: str, n: int) -> list[dict]:
    with httpx.stream(
        "POST",
        f"{url}/generate_stream",
        json={"inputs": inputs, "parameters": {"max_new_tokens": n}},
        timeout=60,
        trust_env=False,
    ) as r:
        assert r.status_code == 200
        return sse_events(r.iter_lines())


def ws_messages(url: str, inputs: str, n: int) -> list[dict]:
    with connect(url.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"inputs": inputs, "id": "f", "parameters": {"max_new_tokens": n}}))
        messages = []
        while True:
            messages.append(json.loads(ws.recv(timeout=60)))
            if messages[-1]["type"] != "token":
                break
        # The connection stays open after a generation error.
        ws.send(json.dumps({"inputs": "After", "parameters": {"max_new_tokens": 2}}))
        while (after := json.loads(ws.recv(timeout=60)))["type"] == "token":
            pass
        messages.append(after)
    return messages


class FailOnce:
    """Raises once, inside the second step in which ``batch`` requests are live (the first writes
    their prompts and gives each its first token). Until then a step returns at once while a
    request waits (so the worker's loop admits it) and otherwise waits. With ``hold``, the full
    step waits for ``go`` before raising (``full`` tells the test)."""

    def __init__(self, worker: ModelWorker, batch: int, *, hold: bool = False):
        self.worker = worker
        self.batch = batch
        self.fired = threading.Event()
        self.full = threading.Event()
        self.go = threading.Event()
        self.full_steps = 0
        if not hold:
            self.go.set()

    def __call__(self) -> None:
        if self.fired.is_set():
            return
        deadline = time.monotonic() + 30
        while self.worker.active < self.batch and time.monotonic() < deadline:
            if self.worker.queued:
                return
            time.sleep(0.005)
        self.full_steps += 1
        if self.full_steps == 1:
            return
        self.full.set()
        self.go.wait(30)
        self.fired.set()
        raise RuntimeError(INJECTED)


def test_exception_in_a_step_fails_that_steps_requests_only(server):
    errors_before = {
        route: server.count("gpt2_requests_total", route=route, outcome="error")
        for route in ("/generate", "/generate_stream", "/stream")
    }
    hook = FailOnce(server.worker, batch=3)
    with wrapped_step(server.worker, hook), ThreadPoolExecutor(3) as pool:
        http = pool.submit(generate, server.url, "Break one", 20)
        sse = pool.submit(stream, server.url, "Break two", 20)
        ws = pool.submit(ws_messages, server.url, "Break three", 20)
        http, sse, ws = http.result(60), sse.result(60), ws.result(60)
    assert hook.fired.is_set()

    # HTTP: 424 with the TGI error shape.
    assert http.status_code == 424, http.text
    body = http.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == "generation"
    check_message(body["error"], FAILED)
    # SSE: the tokens before the failed step, then one error event, then the end of the stream.
    *tokens, last = sse
    assert tokens and [t["index"] for t in tokens] == list(range(len(tokens)))
    assert all(t["generated_text"] is None for t in tokens)
    assert set(last) == {"error", "error_type"} and last["error_type"] == "generation", last
    check_message(last["error"], FAILED)
    # WebSocket: tokens, one error message (the connection stays open: the next request is done).
    *ws_tokens, ws_error, after = ws
    assert all(m["type"] == "token" for m in ws_tokens)
    assert ws_error == {"type": "error", "error_type": "generation", "request_id": "f", "message": FAILED}
    assert after["type"] == "done"

    for route, before in errors_before.items():
        assert server.count("gpt2_requests_total", route=route, outcome="error") == before + 1, route

    # The worker serves on, on every transport, and is healthy again (the WebSocket's next request
    # already went through).
    assert server.worker.alive
    assert generate(server.url, "Later", 5).status_code == 200
    *later, final = stream(server.url, "Later", 5)
    assert final["details"]["finish_reason"] in ("length", "eos_token")
    assert httpx.get(f"{server.url}/health", timeout=10, trust_env=False).json() == {"status": "ok"}


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health", timeout=10, trust_env=False)


def test_a_failed_step_makes_health_503_until_a_step_succeeds(server):
    assert health(server.url).json() == {"status": "ok"}
    with wrapped_step(server.worker, raising(RuntimeError(INJECTED))):
        failed = generate(server.url, "Break", 5)
    assert failed.status_code == 424 and failed.json()["error"] == FAILED

    # The worker is idle now: no step has gone through since, and /health says so, every time.
    for _ in range(3):
        r = health(server.url)
        assert r.status_code == 503, r.text
        assert r.json() == {"status": "error", "error": UNHEALTHY}
        time.sleep(0.05)
    check_message(r.json()["error"])

    assert generate(server.url, "Mended", 3).status_code == 200
    r = health(server.url)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_requests_not_in_the_failed_step_are_untouched(server):
    """A request queued behind the failing step (no free slot) is admitted afterwards and succeeds."""
    reference = generate(server.url, "Queued", 6).json()["generated_text"]
    hook = FailOnce(server.worker, batch=4, hold=True)  # all four slots
    with wrapped_step(server.worker, hook), ThreadPoolExecutor(5) as pool:
        failing = [pool.submit(generate, server.url, f"Fill {i}", 20) for i in range(4)]
        assert hook.full.wait(30), "the four requests did not fill the slots"
        queued = pool.submit(generate, server.url, "Queued", 6)
        deadline = time.monotonic() + 30
        while server.worker.queued != 1:
            assert time.monotonic() < deadline, "the fifth request was not queued"
            time.sleep(0.005)
        hook.go.set()
        results = [f.result(60) for f in failing]
        late = queued.result(60)
    assert hook.fired.is_set()
    assert [r.status_code for r in results] == [424] * 4
    assert late.status_code == 200 and late.json()["generated_text"] == reference


# ---- NaN or an infinity in one row's scores ----

NON_FINITE = "generation failed: the model produced non-finite scores"
POISONED = "Poison this one"
BESIDE = [  # (prompt, parameters): requests of the same engine calls as the poisoned one
    ("The meaning of life is", {"do_sample": True, "seed": 5, "top_k": 40}),
    ("Once upon a time", {}),  # greedy
]
ROWS_OF = {  # an engine call's argument -> the slot of each row of its scores
    "step_scores": lambda tokens: list(tokens),
    "prefill_batch": lambda pieces: [p.slot for p in pieces],
}


class Poison:
    """Wraps one engine call (``step_scores``: decode, ``prefill_batch``: prefill) to write ``value``
    into one logit of the poisoned request's row, as a model whose numbers overflowed would give
    it (its log-sum-exp too); ``rows`` records how many rows each poisoned call had."""

    def __init__(self, worker: ModelWorker, method: str, value: float):
        self.worker, self.method, self.value = worker, method, value
        self.victim = tuple(worker.model.encoder.encode(POISONED))
        self.rows: list[int] = []

    def __call__(self, call):
        def poisoned(arg):
            out = call(arg)  # the engine's arrays may be read-only: copies
            scores = out._replace(logits=out.logits.copy(), lse=out.lse.copy())
            seqs = {s.slot: s for s in self.worker.batcher.active}
            for row, slot in enumerate(ROWS_OF[self.method](arg)):
                if seqs[slot].spec.prompt_ids == self.victim:
                    scores.logits[row, 0] = scores.lse[row] = self.value
                    self.rows.append(len(scores.lse))
            return scores

        return poisoned


def first_step_held(worker: ModelWorker, queued: int):
    """A step hook holding the first step until ``queued`` requests wait behind it: the worker's
    loop then admits them together, so they share their prefill call and their decode calls."""
    held = threading.Event()

    def hook() -> None:
        deadline = time.monotonic() + 30
        while not held.is_set() and worker.queued < queued and time.monotonic() < deadline:
            time.sleep(0.005)
        held.set()

    return hook


def token_ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["details"]["tokens"]]


@pytest.mark.parametrize(
    ("method", "value", "rows"),
    [("step_scores", float("nan"), 3), ("prefill_batch", float("inf"), 2)],
    ids=["decode-nan", "prefill-inf"],
)
def test_non_finite_scores_fail_that_row_alone(server, method, value, rows):
    """The first request's prompt is written alone; the poisoned one and the second are admitted
    together behind it: their prefill call has two rows, the decode calls three."""
    alone = [token_ids(generate(server.url, p, 12, details=True, **kw)) for p, kw in BESIDE]
    poison = Poison(server.worker, method, value)
    (first, first_kw), (second, second_kw) = BESIDE
    with (
        wrapped_step(server.worker, first_step_held(server.worker, queued=2)),
        wrapped(server.worker.model.engine, method, poison),
        ThreadPoolExecutor(3) as pool,
    ):
        beside = [pool.submit(generate, server.url, first, 12, details=True, **first_kw)]
        wait_until(lambda: server.worker.active == 1)
        victim = pool.submit(generate, server.url, POISONED, 12, details=True)
        beside.append(pool.submit(generate, server.url, second, 12, details=True, **second_kw))
        victim, beside = victim.result(60), [f.result(60) for f in beside]
    assert victim.status_code == 424, victim.text
    assert victim.json() == {"error": NON_FINITE, "error_type": "generation"}
    assert poison.rows == [rows], "the poisoned row did not share its call with the others"
    assert [token_ids(r) for r in beside] == alone
    assert health(server.url).json() == {"status": "ok"}  # the others' later steps went through


def test_a_stuck_step_makes_health_503_until_it_ends(server):
    blocked, release = threading.Event(), threading.Event()

    def block_once():
        if not blocked.is_set():
            blocked.set()
            release.wait(30)  # far longer than health_stuck_seconds, until the test lets go

    assert httpx.get(f"{server.url}/health", timeout=10, trust_env=False).status_code == 200
    with wrapped_step(server.worker, block_once), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(generate, server.url, "Stuck", 4)
        started = time.monotonic()
        while (r := httpx.get(f"{server.url}/health", timeout=10, trust_env=False)).status_code == 200:
            assert time.monotonic() - started < 10, "health never reported the stuck worker"
            time.sleep(0.05)
        assert time.monotonic() - started >= STUCK * 0.9
        assert r.status_code == 503
        assert r.json() == {"status": "error", "error": f"worker of model {MODEL} is stuck"}
        release.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/health", timeout=10, trust_env=False).status_code != 200:
            assert time.monotonic() < deadline, "health stayed 503 after the step finished"
            time.sleep(0.05)
        done = pending.result(60)
    assert done.status_code == 200 and done.json()["generated_text"]


# ---- a model whose folder is deleted after it loaded ----


def test_a_model_whose_folder_is_deleted_serves_on(tiny_dirs, tmp_path, shelf):
    """Nothing reads the folder after loading: requests, ``GET /models``, the tokenizer, the
    OpenAPI document and the probes answer as before, and the model stays ready."""
    folder = tmp_path / "vanishing"
    shutil.copytree(tiny_dirs["openai"], folder)
    reads = [
        ("GET", "/models", None),
        ("GET", "/info", None),
        ("GET", "/v1/models", None),
        ("POST", "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 6, "details": True}}),
        ("POST", "/v1/completions", {"model": "vanishing", "prompt": "Hi", "max_tokens": 6}),
        ("POST", "/tokenize", {"inputs": "Hello world"}),
        ("POST", "/attention", {"inputs": "The cat sat"}),
    ]
    with (
        running_server(tiny_settings(folder, slots=4, queue_size=4), shelf=shelf) as url,
        httpx.Client(base_url=url, timeout=60, trust_env=False) as http,
    ):
        before = [http.request(method, path, json=body) for method, path, body in reads]
        shutil.rmtree(folder)
        after = [http.request(method, path, json=body) for method, path, body in reads]
        for (_, path, _), b, a in zip(reads, before, after):
            assert b.status_code == a.status_code == 200, (path, a.text)
            if path != "/v1/completions":  # its id and creation time differ
                assert a.json() == b.json(), path
        assert after[0].json()["models"][0]["state"] == "ready"
        assert stream(url, "Hi", 4)[-1]["details"]["finish_reason"] in ("length", "eos_token")
        assert http.get("/openapi.json").status_code == 200
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").status_code == 200


# ---- a model that fails to load ----

BROKEN = "broken"
BROKEN_FILE = "model.ckpt.data-00000-of-00001"


def none_loading(client: httpx.Client) -> bool | str:
    """Ready once no model is still loading (``/ready`` stays 503 here by design)."""
    states = [m["state"] for m in client.get("/models").json()["models"]]
    return "loading" not in states or f"models still loading: {states}"


@pytest.fixture(scope="module")
def half_broken(tiny_dirs, tmp_path_factory, shelf):
    broken = tmp_path_factory.mktemp("faults") / BROKEN
    shutil.copytree(tiny_dirs["openai"], broken)
    with open(broken / BROKEN_FILE, "r+b") as f:
        f.truncate(1000)  # a download cut short
    settings = Settings(models=[str(tiny_dirs["openai"]), str(broken)], warmup=False, slots=2, queue_size=2)
    with running_server(settings, ready=none_loading, shelf=shelf) as url:
        yield url


def test_failed_model_leaves_the_server_up(half_broken):
    url = half_broken
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        assert http.get("/health").status_code == 200
        ready = http.get("/ready")
        assert ready.status_code == 503
        assert ready.json() == {"status": "not ready", "models": {MODEL: "ready", BROKEN: "failed"}}

        models = {m["name"]: m for m in http.get("/models").json()["models"]}
        assert models[MODEL]["state"] == "ready"
        failed = models[BROKEN]
        assert failed["state"] == "failed"
        reason = failed["reason"]
        assert BROKEN_FILE in reason and "\n" not in reason and len(reason) < 500, reason
        assert "Traceback" not in reason and not re.search(r"0x[0-9a-f]{6,}", reason)

        # The good model serves (it is the default, and by name).
        assert (
            http.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}).status_code
            == 200
        )
        ok = http.post(
            "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3, "model": MODEL}}
        )
        assert ok.status_code == 200, ok.text

        # The failed one is unavailable, in each family's shape, without the server's paths.
        r = http.post(
            "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3, "model": BROKEN}}
        )
        assert r.status_code == 503, r.text
        body = r.json()
        assert set(body) == {"error", "error_type"} and body["error_type"] == "unavailable"
        assert BROKEN in body["error"] and not LEAKS.search(body["error"]), body
        r = http.post("/v1/completions", json={"model": BROKEN, "prompt": "Hi", "max_tokens": 3})
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "unavailable" and err["type"] == "service_unavailable"
        assert BROKEN in err["message"] and not LEAKS.search(err["message"]), err
        r = http.post("/tokenize", json={"inputs": "Hi", "parameters": {"model": BROKEN}})
        assert r.status_code == 503 and r.json()["error_type"] == "unavailable"

    with connect(url.replace("http", "ws", 1) + "/stream", proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"inputs": "Hi", "parameters": {"max_new_tokens": 2, "model": BROKEN}}))
        message = json.loads(ws.recv(timeout=30))
        assert message["type"] == "error" and message["error_type"] == "unavailable", message
        assert not LEAKS.search(message["message"])
        ws.send(json.dumps({"inputs": "Hi", "parameters": {"max_new_tokens": 2, "model": MODEL}}))
        while (message := json.loads(ws.recv(timeout=30)))["type"] == "token":
            pass
        assert message["type"] == "done"
