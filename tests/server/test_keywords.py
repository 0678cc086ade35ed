"""Keyword requests against a real server: the tiny real GPT-2 marked keyword-conditioned (a
``keywords.json`` in its folder) served next to the same weights without it."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
from websockets.sync.client import connect

from app.keywords.format import parse, prefix
from app.keywords.model_spec import write_model_spec
from tests.support.server_harness import check_message, live_server, sse_events, tiny_settings

SPEC = {"delimiters": {}, "max_keywords": 3, "language": "en"}
CUSTOM = {"section": "|", "keywords": "#", "title": "=", "body": ">"}  # its own delimiters


@pytest.fixture(scope="module")
def models(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("kwmodels")
    kw, plain, custom = root / "kw", root / "plain", root / "custom"
    for folder in (kw, plain, custom):
        shutil.copytree(tiny_dirs["openai"], folder)
    write_model_spec(kw, SPEC)
    write_model_spec(custom, {**SPEC, "delimiters": CUSTOM})
    return kw, plain, custom


@pytest.fixture(scope="module")
def server(models, shelf):
    kw, plain, custom = models
    with live_server(
        tiny_settings(kw, models=[str(kw), str(plain), str(custom)], max_keywords=4), shelf=shelf
    ) as srv:
        yield srv


def post(server, params: dict, inputs: str = "", path: str = "/generate") -> httpx.Response:
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 6, **params}}
    return httpx.post(f"{server.url}{path}", json=body, timeout=60, trust_env=False)


def test_models_lists_the_keyword_format(server):
    listed = {m["name"]: m for m in httpx.get(f"{server.url}/models", timeout=10).json()["models"]}
    assert listed["plain"]["keywords"] is None
    kw = listed["kw"]["keywords"]
    assert kw["delimiters"]["section"] == "~" and kw["delimiters"]["body"] == "}" and kw["max_keywords"] == 3


def test_the_prompt_is_the_document_prefix(server):
    r = post(
        server,
        {
            "keywords": ["Dark castle", "king"],
            "category": "tales",
            "decoder_input_details": True,
            "details": True,
        },
    )
    assert r.status_code == 200, r.text
    prefill = "".join(t["text"] for t in r.json()["details"]["prefill"])
    assert prefill == "<|endoftext|>" + prefix(["dark castle", "king"], "tales")
    out = r.json()["keywords_output"]
    generated = r.json()["generated_text"]
    # No title given: the model writes one, up to "~}" (a random tiny model rarely gets there).
    if "~}" in generated:
        title, body = generated.split("~}", 1)
        assert out == {"title": title.strip(), "body": body.split("<|endoftext|>")[0].strip()}
    else:
        assert out == {"title": generated.split("<|endoftext|>")[0].strip(), "body": ""}


def test_a_model_with_its_own_delimiters(server):
    params = {
        "keywords": ["king"],
        "title": "T",
        "model": "custom",
        "decoder_input_details": True,
        "details": True,
    }
    r = post(server, params)
    assert r.status_code == 200, r.text
    prefill = "".join(t["text"] for t in r.json()["details"]["prefill"])
    assert prefill == "<|endoftext|><|startoftext|>|`|#king|=T|>"
    assert r.json()["keywords_output"]["title"] == "T"
    # Its delimiters are refused in its keywords, "~" is not; the document forbids both models' own.
    refused = post(server, {**params, "keywords": ["a#b"]})
    assert refused.status_code == 422 and "none of | ` # = >" in refused.json()["error"]
    assert post(server, {**params, "keywords": ["a~b"]}).status_code == 200
    doc = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    pattern = doc["components"]["schemas"]["Parameters"]["properties"]["keywords"]["anyOf"][0]["items"][
        "pattern"
    ]
    assert "#" in pattern and "~" in pattern and "=" in pattern


def test_a_given_title_and_inputs_start_the_body(server):
    r = post(
        server, {"keywords": [], "title": "The Ride", "decoder_input_details": True, "details": True}, "Once"
    )
    assert r.status_code == 200, r.text
    prefill = "".join(t["text"] for t in r.json()["details"]["prefill"])
    assert prefill == "<|endoftext|><|startoftext|>~`~^~@The Ride~}Once"
    out = r.json()["keywords_output"]
    assert out["title"] == "The Ride"
    assert out["body"] == ("Once" + r.json()["generated_text"]).split("<|endoftext|>")[0].strip()


def test_plain_requests_have_no_keywords_output(server):
    r = post(server, {}, "The king")
    assert r.status_code == 200 and "keywords_output" not in r.json()


@pytest.mark.parametrize(
    ("params", "param", "fragment"),
    [
        ({"keywords": ["a"], "model": "plain"}, "keywords", "not keyword-conditioned"),
        ({"category": "x", "model": "plain"}, "category", "not keyword-conditioned"),
        ({"title": "", "model": "plain"}, "title", "not keyword-conditioned"),
        ({"keywords": ["a", "b", "c", "d", "e"]}, "keywords", "at most 4 keywords"),
        ({"keywords": ["a~b"]}, "keywords", "delimiters"),
        ({"keywords": ["^"]}, "keywords", "delimiters"),
        ({"keywords": ["  "]}, "keywords", "not all spaces"),
        ({"keywords": ["x" * 51]}, "keywords", "1 to 50 characters"),
        ({"title": "a~b"}, "title", "none of them"),
        ({"category": "~"}, "category", "none of them"),
        ({"title": "x" * 201}, "title", "at most 200 characters"),
    ],
)
def test_invalid_keyword_requests_are_422(server, params, param, fragment):
    r = post(server, params)
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    check_message(message)
    assert message.startswith(param + ":") and fragment in message


def test_inputs_may_not_be_empty_without_keywords(server):
    assert post(server, {}).status_code == 422


def test_stream_ends_with_keywords_output(server):
    r = post(server, {"keywords": ["king"], "title": "T"}, path="/generate_stream")
    assert r.status_code == 200
    events = sse_events(r.text)
    assert all("keywords_output" not in e for e in events[:-1])
    last = events[-1]
    assert last["keywords_output"]["title"] == "T"
    assert last["keywords_output"]["body"] == last["generated_text"].split("<|endoftext|>")[0].strip()


def ws_answer(ws, message: dict) -> list[dict]:
    """Every message of one WebSocket request, its ``done`` or ``error`` last."""
    ws.send(json.dumps(message))
    out: list[dict] = []
    while not out or out[-1]["type"] not in ("done", "error"):
        out.append(json.loads(ws.recv(timeout=60)))
    return out


def test_websocket_takes_keyword_parameters(server):
    params = {"keywords": ["king"], "category": "tales", "max_new_tokens": 5, "seed": 3, "do_sample": True}
    with connect(server.ws_url, proxy=None, open_timeout=10, close_timeout=5) as ws:
        *tokens, done = ws_answer(ws, {"inputs": "", "parameters": params})
        assert done["type"] == "done"
        # The model writes the title (no title asked): the done message parses the document the
        # tokens spell, exactly as /generate does for the same seeded request.
        text = "".join(t["text"] for t in tokens)
        assert done["generated_text"] == text
        expected = parse(prefix(["king"], "tales") + text)
        assert done["keywords_output"] == {"title": expected.title, "body": expected.body}
        assert post(server, params).json()["keywords_output"] == done["keywords_output"]
        *_, plain_done = ws_answer(ws, {"inputs": "Once", "parameters": {"max_new_tokens": 2}})
        assert plain_done["type"] == "done" and "keywords_output" not in plain_done
        ws.send(json.dumps({"inputs": "", "parameters": {"keywords": ["king"], "model": "plain"}}))
        error = json.loads(ws.recv(timeout=60))
        assert error["type"] == "error" and "not keyword-conditioned" in error["message"]


def test_openapi_declares_the_limits(server):
    doc = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    params = doc["components"]["schemas"]["Parameters"]
    keywords = params["properties"]["keywords"]["anyOf"][0]
    assert (
        keywords["maxItems"] == 4
        and keywords["items"]["maxLength"] == 50
        and "~" in keywords["items"]["pattern"]
    )
    # The plain model refuses keyword fields: the schema says so (the default model is "kw").
    assert params["not"]["allOf"][1] == {"properties": {"model": {"enum": ["plain"]}}, "required": ["model"]}


def test_openapi_of_a_server_without_keyword_models(models, shelf):
    _, plain, _ = models
    with live_server(tiny_settings(plain), shelf=shelf) as srv:
        doc = httpx.get(f"{srv.url}/openapi.json", timeout=10).json()
        r = post(srv, {"keywords": ["a"]})
    fields = doc["components"]["schemas"]["Parameters"]["properties"]
    assert all(fields[f]["type"] == "null" for f in ("keywords", "category", "title"))
    assert r.status_code == 422 and "not keyword-conditioned" in r.json()["error"]
