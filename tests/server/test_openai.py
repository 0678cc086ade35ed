"""OpenAI-compatible routes through the official ``openai`` SDK against a real uvicorn server on a
loopback port, serving the tiny real GPT-2 (nothing mocked)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from app.server.app import create_app
from app.server.settings import Settings
from tests.support.faults import raising, wrapped_step
from tests.support.server_harness import metric, running_server, sse_frames

PROMPT = "The quick brown fox"
OTHER = "Hello, world"
N_TOKENS = 8


@pytest.fixture(scope="module")
def server(tiny_dirs, shelf):
    settings = Settings(models=[str(tiny_dirs["openai"])], warmup=False, slots=4)
    app = create_app(settings, shelf=shelf)  # kept to reach the model's worker
    with running_server(settings, app=app) as url:
        yield url, app


@pytest.fixture(scope="module")
def url(server) -> str:
    return server[0]


@pytest.fixture(scope="module")
def worker(server):
    return next(iter(server[1].state.server.registry.entries.values())).worker


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(tiny_dirs) -> str:
    return tiny_dirs["openai"].name


def generate(url: str, inputs: str, max_new_tokens: int = N_TOKENS) -> dict:
    """Our TGI route, greedy: the reference text."""
    r = httpx.post(
        f"{url}/generate",
        json={"inputs": inputs, "parameters": {"max_new_tokens": max_new_tokens, "details": True}},
        timeout=60,
    )
    r.raise_for_status()
    return r.json()


def token_ids(url: str, text: str) -> list[int]:
    r = httpx.post(f"{url}/tokenize", json={"inputs": text}, timeout=30)
    r.raise_for_status()
    return [t["id"] for t in r.json()]


@pytest.fixture(scope="module")
def greedy(url) -> str:
    return generate(url, PROMPT)["generated_text"]


def test_greedy_matches_generate(client, url, model, greedy):
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0)
    assert out.object == "text_completion" and out.id.startswith("cmpl-") and out.model == model
    assert isinstance(out.created, int)
    [choice] = out.choices
    assert choice.index == 0 and choice.text == greedy and choice.logprobs is None
    details = generate(url, PROMPT)["details"]
    assert choice.finish_reason == {"length": "length"}.get(details["finish_reason"], "stop")
    assert out.usage.prompt_tokens == len(token_ids(url, PROMPT))
    assert out.usage.completion_tokens == details["generated_tokens"]
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_default_max_tokens_is_16(client, model):
    out = client.completions.create(model=model, prompt=PROMPT, temperature=0)
    assert out.usage.completion_tokens == 16 or out.choices[0].finish_reason == "stop"


def test_stream_concatenates_to_the_same_text(client, model, greedy):
    chunks = list(
        client.completions.create(model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, stream=True)
    )
    assert chunks and all(c.object == "text_completion" and c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks) == greedy
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stream_include_usage(client, model, greedy):
    chunks = list(
        client.completions.create(
            model=model,
            prompt=PROMPT,
            max_tokens=N_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *text_chunks, last = chunks
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in text_chunks)
    assert "".join(c.choices[0].text for c in text_chunks) == greedy


def test_stream_sse_wire_format(url, model):
    with httpx.stream(
        "POST",
        f"{url}/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "stream": True},
        timeout=60,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    assert body.endswith("data: [DONE]\n\n")
    events = sse_frames(body, done=True)  # every other event "data: {...}"
    assert events and all(e["object"] == "text_completion" for e in events), events


def test_n_choices_with_seed_are_reproducible(client, model):
    kw = dict(model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=1.0, n=3, seed=1234)
    first = client.completions.create(**kw)
    second = client.completions.create(**kw)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in second.choices]
    assert len(set(texts)) > 1  # different seeds per choice
    # Choice j uses seed + j: the same as asking for it alone.
    alone = client.completions.create(**{**kw, "n": 1, "seed": 1234 + 2})
    assert alone.choices[0].text == texts[2]
    assert first.usage.completion_tokens == 3 * N_TOKENS or any(
        c.finish_reason == "stop" for c in first.choices
    )


def test_n_choices_streamed(client, model):
    kw = dict(model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=1.0, n=2, seed=7)
    whole = client.completions.create(**kw)
    texts = {0: "", 1: ""}
    finish = {}
    for chunk in client.completions.create(**kw, stream=True):
        [choice] = chunk.choices
        assert choice.index not in finish  # nothing after a choice's final chunk
        texts[choice.index] += choice.text
        if choice.finish_reason is not None:
            finish[choice.index] = choice.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}


def test_stop_sequence(client, url, model):
    reference = generate(url, PROMPT, 12)["generated_text"]
    assert len(reference) >= 6
    stop = reference[len(reference) // 2 : len(reference) // 2 + 2]
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0, stop=stop)
    assert out.choices[0].text == reference[: reference.find(stop)]
    assert out.choices[0].finish_reason == "stop"
    listed = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=12, temperature=0, stop=["\x00never", stop]
    )
    assert listed.choices[0].text == out.choices[0].text


def test_echo(client, model, greedy):
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, echo=True)
    assert out.choices[0].text == PROMPT + greedy
    chunks = list(
        client.completions.create(
            model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, echo=True, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == PROMPT + greedy


def test_logprobs(client, url, model, greedy):
    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, logprobs=1
    )
    choice = out.choices[0]
    lp = choice.logprobs
    n = out.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == n
    assert all(isinstance(v, float) and v < 0 for v in lp.token_logprobs)
    assert [list(top) for top in lp.top_logprobs] == [[t] for t in lp.tokens]  # greedy: its own is the top 1
    assert lp.text_offset[0] == 0
    assert all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens))
    if choice.finish_reason == "length":
        assert "".join(lp.tokens) == greedy
    # The same logprobs as our TGI details.
    tgi = generate(url, PROMPT)["details"]["tokens"]
    assert lp.token_logprobs == pytest.approx([t["logprob"] for t in tgi], abs=1e-5)
    # Streamed: one token per chunk, same values.
    chunks = list(
        client.completions.create(
            model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, logprobs=0, stream=True
        )
    )
    streamed = [v for c in chunks for v in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert [o for c in chunks for o in c.choices[0].logprobs.text_offset] == lp.text_offset


def test_top_logprobs(client, url, model):
    """``logprobs=N``: each token's N most likely tokens and its own, all the model's own
    log-probabilities; streamed chunks carry the same."""
    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, logprobs=3
    )
    lp = out.choices[0].logprobs
    assert len(lp.top_logprobs) == len(lp.tokens)
    # The TGI route's alternatives of the same greedy tokens (greedy: under the model itself).
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": N_TOKENS, "details": True, "top_n_tokens": 3}}
    tgi = httpx.post(f"{url}/generate", json=body, timeout=60).json()["details"]["top_tokens"]
    for own, own_lp, top, alts in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, tgi, strict=True):
        expected = {}
        for a in alts:
            expected.setdefault(a["text"], a["logprob"])
        assert top == pytest.approx(expected, abs=1e-6)
        assert max(top, key=top.get) == own and top[own] == pytest.approx(own_lp, abs=1e-5)

    # Sampling at temperature 0.5: the values are still the model's own, so the sampled token's
    # entry is its token_logprob, and they do not depend on the temperature.
    sampled = (
        client.completions.create(
            model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0.5, seed=7, logprobs=5
        )
        .choices[0]
        .logprobs
    )
    for own, own_lp, top in zip(sampled.tokens, sampled.token_logprobs, sampled.top_logprobs, strict=True):
        assert 5 <= len(top) <= 6 and top[own] == pytest.approx(own_lp, abs=1e-5)
    first = sampled.top_logprobs[0]
    assert all(first[k] == pytest.approx(v, abs=1e-6) for k, v in lp.top_logprobs[0].items())

    chunks = list(
        client.completions.create(
            model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, logprobs=3, stream=True
        )
    )
    streamed = [top for c in chunks for top in c.choices[0].logprobs.top_logprobs]
    assert streamed == [pytest.approx(top, abs=1e-6) for top in lp.top_logprobs]


def test_list_of_prompts(client, url, model, greedy):
    out = client.completions.create(model=model, prompt=[PROMPT, OTHER], max_tokens=N_TOKENS, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    assert [c.text for c in out.choices] == [greedy, generate(url, OTHER)["generated_text"]]
    assert out.usage.prompt_tokens == len(token_ids(url, PROMPT)) + len(token_ids(url, OTHER))
    # n per prompt: choices run over prompts, then over n.
    two = client.completions.create(model=model, prompt=[PROMPT, OTHER], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert two.choices[0].text == two.choices[1].text == greedy[: len(two.choices[0].text)]


def test_token_id_prompts(client, url, model, greedy):
    ids = token_ids(url, PROMPT)
    out = client.completions.create(model=model, prompt=ids, max_tokens=N_TOKENS, temperature=0, echo=True)
    assert out.choices[0].text == PROMPT + greedy
    other = token_ids(url, OTHER)
    both = client.completions.create(model=model, prompt=[ids, other], max_tokens=N_TOKENS, temperature=0)
    assert [c.text for c in both.choices] == [greedy, generate(url, OTHER)["generated_text"]]
    assert both.usage.prompt_tokens == len(ids) + len(other)


def test_empty_prompt_starts_a_new_document(client, model):
    out = client.completions.create(model=model, prompt="", max_tokens=4, temperature=0)
    same = client.completions.create(model=model, prompt=[50256], max_tokens=4, temperature=0)
    special = client.completions.create(model=model, prompt="<|endoftext|>", max_tokens=4, temperature=0)
    assert out.choices[0].text == same.choices[0].text == special.choices[0].text
    assert out.usage.prompt_tokens == special.usage.prompt_tokens == 1


def test_models_list_and_retrieve(client, model):
    listed = client.models.list()
    assert [m.id for m in listed.data] == [model]
    m = listed.data[0]
    assert m.object == "model" and m.owned_by == "gpt2-serve" and isinstance(m.created, int)
    got = client.models.retrieve(model)
    assert got.id == model and got.object == "model"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert "unknown model" in exc.value.body["message"]


def test_models_raw_shape(url, model):
    body = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert body["object"] == "list"
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by"}


def test_unknown_model(client):
    with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as exc:
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    err = exc.value.body
    assert "unknown model 'no-such-model'" in err["message"] and err["param"] == "model"


def _refused(client, model, param: str, **kw) -> dict:
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(**{"model": model, "prompt": PROMPT, "max_tokens": 2, **kw})
    assert exc.value.status_code == 400
    err = exc.value.body
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    return err


def test_max_tokens_zero_is_a_bad_request(client, model):
    err = _refused(client, model, "max_tokens", max_tokens=0)
    assert err["message"].startswith("max_tokens")
    assert "max_tokens" in _refused(client, model, "max_tokens", max_tokens=10**6)["message"]


def test_refusals(client, model):
    assert "not supported" in _refused(client, model, "presence_penalty", presence_penalty=0.5)["message"]
    _refused(client, model, "best_of", best_of=3)
    _refused(client, model, "logit_bias", logit_bias={"50256": -100})
    _refused(client, model, "suffix", suffix="the end")
    _refused(client, model, "temperature", temperature=2.5)
    _refused(client, model, "logprobs", logprobs=6)
    _refused(client, model, "logprobs", logprobs=1, echo=True)
    _refused(client, model, "stop", stop=["a", "b", "c", "d", "e"])
    assert "vocabulary" in _refused(client, model, "prompt", prompt=[1, 2, 50257])["message"]
    _refused(client, model, "prompt", prompt=[[1, 2], []])
    _refused(client, model, "prompt", prompt=[])
    _refused(client, model, "prompt", prompt="word " * 200)  # longer than the 128-token context
    _refused(client, model, "n", n=200)
    _refused(client, model, "n", prompt=[PROMPT] * 20, n=4)  # 80 completions > 4 slots + 64 queued


def test_neutral_values_of_unsupported_parameters_are_accepted(client, model):
    out = client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=2,
        temperature=0,
        best_of=1,
        presence_penalty=0,
        frequency_penalty=0.0,
        logit_bias={},
        user="me",
    )
    assert len(out.choices) == 1


def test_failure_mid_stream_is_an_error_event(client, model, worker):
    with wrapped_step(worker, raising(RuntimeError("injected"))), pytest.raises(openai.APIError) as exc:
        for _ in client.completions.create(
            model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, stream=True
        ):
            pass
    assert "generation failed" in exc.value.message
    assert exc.value.body["code"] == "generation"
    # The server serves on.
    assert client.completions.create(model=model, prompt=PROMPT, max_tokens=2, temperature=0).choices


def test_failure_without_stream_is_an_error_object(client, model, worker):
    with wrapped_step(worker, raising(RuntimeError("injected"))), pytest.raises(openai.APIStatusError) as exc:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, n=2)
    assert exc.value.status_code == 424 and exc.value.body["type"] == "server_error"


def _cancelled(url: str, model: str) -> float:
    return metric(url, "gpt2_cancelled_requests_total", model=model) or 0.0


def test_client_leaving_a_stream_frees_its_slots(url, model, worker):
    before = _cancelled(url, model)
    body = {"model": model, "prompt": PROMPT, "max_tokens": 2000, "temperature": 1, "n": 2, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    deadline = time.monotonic() + 10
    while worker.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.in_flight == 0
    assert _cancelled(url, model) == before + 2  # both choices stopped early, not run to 2000 tokens


def test_metrics_count_requests(url, model, client):
    before = metric(url, "gpt2_requests_total", route="/v1/completions", model=model, outcome="ok") or 0.0
    client.completions.create(model=model, prompt=PROMPT, max_tokens=2, temperature=0)
    assert (
        metric(url, "gpt2_requests_total", route="/v1/completions", model=model, outcome="ok") == before + 1
    )


def test_client_leaving_before_the_answer_cancels_every_choice(url, model, worker):
    before = _cancelled(url, model)
    body = {"model": model, "prompt": PROMPT, "max_tokens": 2000, "temperature": 1, "n": 2}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
    deadline = time.monotonic() + 10
    while worker.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.in_flight == 0
    assert _cancelled(url, model) == before + 2
