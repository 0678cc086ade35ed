"""``top_n_tokens``: each generated token with the most likely alternatives at its position and
their log-probabilities under the distribution it was drawn from (after temperature and
repetition penalty, before top-k/top-p), from the pure function to the WebSocket and TGI routes."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from app.engine.batcher import Batcher, Entry
from app.engine.engine import Engine, EngineConfig
from app.engine.sampling import SamplingParams, alternatives, penalize_repetition
from app.engine.spec import GenerationSpec
from app.model.random_init import random_params
from tests.support.server_harness import TINY, live_server, tiny_settings


def brute_force(logits: np.ndarray, n: int, temperature: float) -> list[tuple[int, float]]:
    """Independent reference: float64 softmax of logits / T, a full stable sort (ties: lower id)."""
    t = temperature if temperature > 0 else 1.0
    z = logits.astype(np.float64) / t
    logp = z - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))[:n]
    return [(i, float(logp[i])) for i in order]


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 1.7])
def test_alternatives_equal_a_full_softmax_and_sort(temperature):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=500).astype(np.float32)
    logits[[7, 40, 41, 300]] = 4.0  # ties at the top: the lower id first
    got = alternatives(logits, 6, temperature)
    want = brute_force(logits, 6, temperature)
    assert [i for i, _ in got] == [i for i, _ in want] == [7, 40, 41, 300, *[i for i, _ in want][4:]]
    np.testing.assert_allclose([lp for _, lp in got], [lp for _, lp in want], rtol=0, atol=1e-9)
    ranked = np.argsort(-logits, kind="stable")  # what the engine's top_k returns
    assert alternatives(logits, 6, temperature, top_ids=ranked) == got


def test_alternatives_tie_at_the_edge_keeps_the_lower_id():
    logits = np.zeros(10, np.float32)
    logits[9] = 1.0
    assert [i for i, _ in alternatives(logits, 3, 1.0)] == [9, 0, 1]


@pytest.fixture(scope="module")
def engine(shelf):
    return Engine(TINY, random_params(TINY, seed=5, ln_noise=True), EngineConfig(slots=2), shelf=shelf)


def run(engine: Engine, specs: list[GenerationSpec]) -> list[tuple[Entry, list[tuple]]]:
    """Each sequence and its alternatives, token by token (from the batcher's events)."""
    batcher = Batcher(engine, eos_id=None)
    seqs = [batcher.admit(s) for s in specs]
    tops: dict[int, list[tuple]] = {id(s): [] for s in seqs}
    while batcher.active:
        for event in batcher.step():
            tops[id(event.seq)].append(event.top)
    return [(s, tops[id(s)]) for s in seqs]


@pytest.mark.slow
def test_batcher_reports_alternatives_from_the_sampled_distribution(engine, shelf):
    greedy = GenerationSpec([1, 2, 3], 6, SamplingParams(temperature=0), stop_at_eos=False, top_n_tokens=4)
    penalised = GenerationSpec(
        [1, 2, 3], 6, SamplingParams(temperature=0.7, top_k=5, seed=9, repetition_penalty=1.3), top_n_tokens=3
    )
    (greedy, greedy_tops), (penalised, penalised_tops) = run(engine, [greedy, penalised])
    [(plain, _)] = run(
        engine, [GenerationSpec([1, 2, 3], 6, SamplingParams(temperature=0), stop_at_eos=False)]
    )
    assert greedy.generated == plain.generated  # asking for alternatives changes nothing
    # Replay each position alone and compare with an independent computation (one replay engine:
    # each sequence's prefill replaces what its slot held).
    replay = Engine(TINY, random_params(TINY, seed=5, ln_noise=True), EngineConfig(slots=1), shelf=shelf)
    for seq, tops, temperature in ((greedy, greedy_tops, 0.0), (penalised, penalised_tops, 0.7)):
        context = list(seq.spec.prompt_ids)
        logits = replay.prefill(0, context)
        assert len(tops) == len(seq.generated) == 6
        for token, top in zip(seq.generated, tops):
            row = penalize_repetition(logits, context, seq.spec.sampling.repetition_penalty)
            want = brute_force(row, seq.spec.top_n_tokens, temperature)
            assert [i for i, _ in top] == [i for i, _ in want]
            np.testing.assert_allclose([lp for _, lp in top], [lp for _, lp in want], atol=1e-5)
            if temperature == 0:
                assert token == top[0][0]  # greedy takes the most likely
            context.append(token)
            logits = replay.step({0: token})[0]
    [(_, tops)] = run(engine, [GenerationSpec([1, 2], 3, SamplingParams())])
    assert tops and all(top == () for top in tops)


@pytest.fixture(scope="module")
def server(tiny_dirs, shelf):
    with live_server(tiny_settings(tiny_dirs["openai"], slots=2, queue_size=2), shelf=shelf) as live:
        yield live


def ws_tokens(server, **parameters) -> tuple[list[dict], dict]:
    with connect(server.ws_url, proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"inputs": "Hello world", "parameters": parameters}))
        tokens = []
        while (msg := json.loads(ws.recv(timeout=60)))["type"] == "token":
            tokens.append(msg)
    return tokens, msg


def test_websocket_tokens_carry_their_alternatives(server):
    tokens, done = ws_tokens(server, max_new_tokens=5, top_n_tokens=3)
    assert done["type"] == "done" and len(tokens) == 5
    for t in tokens:
        top = t["top_tokens"]
        assert len(top) == 3 and [a["logprob"] for a in top] == sorted(
            (a["logprob"] for a in top), reverse=True
        )
        assert top[0]["id"] == t["id"]  # greedy: the token is the most likely one
        assert abs(top[0]["logprob"] - t["logprob"]) < 1e-5  # temperature 1 for greedy: the model's logprob
        assert all(set(a) == {"id", "text", "logprob", "special"} for a in top)
    plain, _ = ws_tokens(server, max_new_tokens=5)
    assert [t["id"] for t in plain] == [t["id"] for t in tokens]
    assert all(t["top_tokens"] is None for t in plain)


def test_websocket_refuses_more_than_ten(server):
    with connect(server.ws_url, proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"inputs": "Hello", "parameters": {"top_n_tokens": 11}}))
        msg = json.loads(ws.recv(timeout=30))
    assert msg["type"] == "error" and msg["error_type"] == "validation" and "top_n_tokens" in msg["message"]


def test_tgi_details_and_stream_list_top_tokens(server):
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 4, "top_n_tokens": 2, "details": True}}
    r = httpx.post(f"{server.url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    details = r.json()["details"]
    assert len(details["top_tokens"]) == len(details["tokens"]) == 4
    assert all(
        len(top) == 2 and top[0]["id"] == tok["id"]
        for top, tok in zip(details["top_tokens"], details["tokens"])
    )
    tokens, _ = ws_tokens(server, max_new_tokens=4, top_n_tokens=2)
    assert [[a["id"] for a in t["top_tokens"]] for t in tokens] == [
        [a["id"] for a in top] for top in details["top_tokens"]
    ]
