"""Property tests (Hypothesis) of request parsing through the real app and the tiny real GPT-2:
arbitrary parameter dicts (in range, out of range, wrong types, NaN/±Inf, unknown keys) are
answered 200 or with the route family's validation error, never a 5xx; and ``validate``
raises nothing but :class:`APIError` for values the schema accepts."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.engine.spec import GenerationSpec
from app.server.app import create_app
from app.server.errors import APIError
from app.server.schemas import openai as oa
from app.server.schemas import tgi
from app.server.validation import generation_spec
from tests.support.server_harness import check_message, sse_frames, tiny_settings, wait_ready

MODEL = "tiny-openai"
LIMIT = 8  # max_new_tokens_limit: valid requests stay short
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def client(tiny_dirs):
    app = create_app(
        tiny_settings(
            tiny_dirs["openai"],
            max_new_tokens_limit=LIMIT,
            default_max_new_tokens=2,
            max_body_bytes=64 * 1024,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as c:  # the lifespan loads the model
        wait_ready(c, timeout=120)
        yield c


@pytest.fixture(scope="module")
def worker(client):
    return client.app.state.server.registry.default.worker


# ---- strategies ----

big_ints = st.one_of(st.integers(-3, LIMIT + 3), st.integers(), st.integers(2**63, 2**65))
any_floats = st.one_of(
    st.floats(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1e-310, 1e308, math.nan, math.inf, -math.inf]),
)
texts = st.one_of(
    st.text(max_size=12), st.sampled_from(["", "\n", "\ud800", "a\udfffb", "<|endoftext|>", "x" * 300])
)
wrong = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def either(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, wrong)


PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": either(big_ints),
        "temperature": either(any_floats),
        "top_k": either(big_ints),
        "top_p": either(any_floats),
        "seed": either(big_ints),
        "stop": either(st.lists(texts, max_size=6)),
        "do_sample": either(st.booleans()),
        "details": either(st.booleans()),
        "decoder_input_details": either(st.booleans()),
        "return_full_text": either(st.booleans()),
        "repetition_penalty": either(any_floats),
        "truncate": either(big_ints),
        "model": either(st.sampled_from([MODEL, "", "no-such-model"])),
        "best_of": either(big_ints),
        "typical_p": either(any_floats),
        "watermark": either(st.booleans()),
        "top_n_tokens": either(big_ints),
        "grammar": wrong,
        "frequency_penalty": either(any_floats),
        "adapter_id": either(texts),
        "unknown_knob": wrong,
    },
)

# Values the schema accepts, edges included (huge integers, tiny and huge floats): what reaches
# validate.
IN_SCHEMA = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": big_ints,
        "temperature": st.floats(min_value=0, allow_infinity=False),
        "top_k": st.integers(min_value=0),
        "top_p": st.floats(min_value=0, max_value=1, exclude_min=True),
        "seed": st.integers(0, 2**64 - 1),
        "stop": st.lists(texts, max_size=6),
        "do_sample": st.booleans(),
        "repetition_penalty": st.floats(min_value=0, exclude_min=True, allow_infinity=False),
        "truncate": st.integers(min_value=1),
        "best_of": st.sampled_from([None, 1]),
        "typical_p": st.sampled_from([None, 1.0]),
    },
)

# Requests that should mostly succeed, so success bodies and streams are checked too.
GOOD = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.integers(1, LIMIT),
        "temperature": st.floats(0, 2),
        "top_k": st.integers(0, 60),
        "top_p": st.floats(0.05, 1),
        "seed": st.integers(0, 2**64 - 1),
        "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4),
        "do_sample": st.booleans(),
        "details": st.booleans(),
        "decoder_input_details": st.booleans(),
        "return_full_text": st.booleans(),
        "repetition_penalty": st.floats(0.5, 2),
        "truncate": st.integers(1, 200),
        "model": st.sampled_from([MODEL, ""]),
    },
)
good_text = st.text(min_size=1, max_size=20)

TGI_BODIES = st.one_of(
    st.fixed_dictionaries({"inputs": good_text, "parameters": GOOD}, optional={"stream": st.booleans()}),
    st.fixed_dictionaries(
        {"inputs": either(texts)},
        optional={"parameters": either(PARAMETERS), "stream": either(st.booleans())},
    ),
)

OPENAI_GOOD = st.fixed_dictionaries(
    {"model": st.just(MODEL)},
    optional={
        "prompt": st.one_of(
            good_text,
            st.lists(good_text, min_size=1, max_size=2),
            st.lists(st.integers(0, 50256), min_size=1, max_size=3),
        ),
        "max_tokens": st.integers(1, LIMIT),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "n": st.integers(1, 2),
        "stop": st.one_of(
            st.text(min_size=1, max_size=3), st.lists(st.text(min_size=1, max_size=3), max_size=4)
        ),
        "seed": st.integers(0, 2**64 - 1),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "logprobs": st.integers(0, 5),
    },
)
OPENAI_ANY = st.fixed_dictionaries(
    {"model": either(st.sampled_from([MODEL, "", "no-such-model"]))},
    optional={
        "prompt": st.one_of(
            texts,
            st.lists(texts, max_size=3),
            st.lists(big_ints, max_size=3),
            st.lists(st.lists(st.integers(-1, 50300), max_size=3), max_size=2),
            wrong,
        ),
        "max_tokens": either(big_ints),
        "temperature": either(any_floats),
        "top_p": either(any_floats),
        "n": either(st.integers(-1, 10)),
        "stop": either(st.one_of(texts, st.lists(texts, max_size=6))),
        "seed": either(big_ints),
        "stream": either(st.booleans()),
        "stream_options": either(
            st.fixed_dictionaries({}, optional={"include_usage": either(st.booleans())})
        ),
        "logprobs": either(st.integers(-1, 7)),
        "echo": either(st.booleans()),
        "presence_penalty": either(any_floats),
        "logit_bias": either(st.dictionaries(st.text(max_size=3), any_floats, max_size=2)),
        "suffix": either(texts),
    },
)
OPENAI_BODIES = st.one_of(OPENAI_GOOD, OPENAI_ANY)


# ---- checks ----


def post(client: TestClient, path: str, body: object):
    """JSON as Python writes it: NaN and Infinity as bare words, lone surrogates as escapes."""
    return client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def check_tgi(r, path: str) -> None:
    assert r.status_code in (200, 422), (r.status_code, r.text)
    if r.status_code == 422:
        body = r.json()
        assert set(body) == {"error", "error_type"} and body["error_type"] == "validation", body
        check_message(body["error"])
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = sse_frames(r.text)  # every event a "data: {...}" line
        assert events and not any("error" in event for event in events), r.text
    elif path == "/tokenize":
        assert isinstance(r.json(), list)
    else:
        body = r.json()
        out = body[0] if isinstance(body, list) else body
        assert isinstance(out["generated_text"], str), body


# ---- properties ----


@pytest.mark.slow
@PROPERTY
@given(body=TGI_BODIES, path=st.sampled_from(["/generate", "/generate_stream", "/", "/tokenize"]))
def test_tgi_bodies_are_answered_200_or_422(client, body, path):
    check_tgi(post(client, path, body), path)


@pytest.mark.slow
@PROPERTY
@given(body=OPENAI_BODIES)
def test_openai_bodies_are_answered_200_or_an_openai_error(client, body):
    r = post(client, "/v1/completions", body)
    assert r.status_code in (200, 400, 404), (r.status_code, r.text)
    if r.status_code != 200:
        payload = r.json()
        assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "param", "code"}, (
            payload
        )
        assert payload["error"]["code"] == ("not_found" if r.status_code == 404 else "validation")
        check_message(payload["error"]["message"])
    elif body.get("stream"):
        assert r.text.endswith("data: [DONE]\n\n") and '"error"' not in r.text, r.text
        assert all(e["object"] == "text_completion" for e in sse_frames(r.text, done=True)), r.text
    else:
        assert r.json()["object"] == "text_completion"


@PROPERTY
@given(inputs=texts, raw=st.one_of(IN_SCHEMA, PARAMETERS))
def test_validation_raises_only_api_errors(client, worker, inputs, raw):
    try:
        p = tgi.Parameters.model_validate(raw)
    except ValidationError:
        assume(False)  # out of schema: the route answers 422 before validate
    state = client.app.state.server
    try:
        req = generation_spec(worker, state.settings, p.text_request(inputs))
    except APIError as exc:
        assert exc.error_type == "validation" and exc.status == 422
        check_message(exc.message)
        return
    assert isinstance(req, GenerationSpec)
    assert 1 <= req.max_new_tokens <= LIMIT
    assert 1 <= len(req.prompt_ids) <= worker.model.hparams.n_ctx


@PROPERTY
@given(body=OPENAI_BODIES)
def test_openai_schema_accepts_or_names_the_field(body):
    """Parsing alone: a pydantic error, never another exception."""
    try:
        oa.CompletionRequest.model_validate(body)
    except ValidationError as exc:
        assert exc.errors()
