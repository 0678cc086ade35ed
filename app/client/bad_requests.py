"""Requests the TGI-family routes and the WebSocket must refuse, each with what the refusal's
message must mention: the one list that the validation tests (tests/server/test_validation.py)
and the soak (bench/soak.py) send. Some depend on the server's context length and its
``max_new_tokens_limit``, so the list is made for a given server."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    id: str
    body: dict | bytes  # a JSON body, or raw bytes sent as they are
    needle: str  # what the message must mention
    tokenize: int = 422  # /tokenize's status: 200 where the rule is about generation only
    ws_needle: str | None = None  # when the WebSocket's message says it differently

    def raw(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def long_prompt(n_ctx: int) -> str:
    """A prompt of ``n_ctx + 72`` tokens (GPT-2's BPE: "hello" and each " hello" are one token)."""
    return "hello" + " hello" * (n_ctx + 71)


def params(**p) -> dict:
    return {"inputs": "Hello", "parameters": p}


# Refusals that hold on any server.
FIXED_CASES = (
    Case("unknown model", params(model="no-such-model"), "no-such-model"),
    Case("truncate 0", params(truncate=0), "truncate"),
    Case("max_new_tokens 0", params(max_new_tokens=0), "max_new_tokens", tokenize=200),
    Case("max_new_tokens negative", params(max_new_tokens=-3), "max_new_tokens", tokenize=200),
    Case("max_new_tokens huge", params(max_new_tokens=10**30), "max_new_tokens", tokenize=200),
    Case("temperature negative", params(temperature=-0.5), "temperature"),
    Case("temperature NaN", b'{"inputs": "Hello", "parameters": {"temperature": NaN}}', "temperature"),
    Case(
        "temperature Infinity",
        b'{"inputs": "Hello", "parameters": {"temperature": Infinity}}',
        "temperature",
    ),
    Case(
        "temperature -Infinity",
        b'{"inputs": "Hello", "parameters": {"temperature": -Infinity}}',
        "temperature",
    ),
    Case("temperature 1e999", b'{"inputs": "Hello", "parameters": {"temperature": 1e999}}', "temperature"),
    Case("top_p NaN", b'{"inputs": "Hello", "parameters": {"top_p": NaN}}', "top_p"),
    Case("top_p 0", params(top_p=0), "top_p"),
    Case("top_p over 1", params(top_p=1.5), "top_p"),
    Case("top_k negative", params(top_k=-1), "top_k"),
    Case("repetition_penalty 0", params(repetition_penalty=0), "repetition_penalty"),
    Case(
        "repetition_penalty Infinity",
        b'{"inputs": "Hello", "parameters": {"repetition_penalty": Infinity}}',
        "repetition_penalty",
    ),
    Case("seed negative", params(seed=-1), "seed"),
    Case("seed 2**64", params(seed=2**64), "seed"),
    Case("too many stop sequences", params(stop=["a", "b", "c", "d", "e"]), "at most 4", tokenize=200),
    Case("empty stop sequence", params(stop=[""]), "stop", tokenize=200),
    Case("stop sequence too long", params(stop=["x" * 257]), "stop", tokenize=200),
    Case("stop not a list", params(stop="x"), "stop"),
    Case("string for max_new_tokens", params(max_new_tokens="ten"), "max_new_tokens"),
    Case("float for max_new_tokens", params(max_new_tokens=2.5), "max_new_tokens"),
    Case("list for inputs", {"inputs": ["Hello"]}, "inputs"),
    Case("number for inputs", {"inputs": 5}, "inputs"),
    Case("inputs missing", {"parameters": {}}, "inputs"),
    Case("parameters not an object", {"inputs": "Hello", "parameters": "greedy"}, "parameters"),
    Case("unsupported parameter", params(best_of=2), "best_of"),
    Case("body not an object", b"[1, 2]", "body", ws_needle="object"),
    Case("invalid JSON", b'{"inputs": "Hello", ', "invalid JSON"),
    Case("empty body", b"", "body", ws_needle="invalid JSON"),
    Case("invalid UTF-8", b'{"inputs": "Hello \xff\xfe"}', "UTF-8", ws_needle="text frames"),
    # The WebSocket's JSON parser (pydantic's) already refuses lone surrogates as invalid JSON.
    Case("lone surrogate", b'{"inputs": "Hello \\ud800"}', "inputs", ws_needle="invalid JSON"),
    Case(
        "lone surrogate in a stop sequence",
        b'{"inputs": "Hello", "parameters": {"stop": ["\\udfff"]}}',
        "stop",
        tokenize=200,
        ws_needle="invalid JSON",
    ),
    # /tokenize ignores unknown fields (TokenizeRequest: extra="ignore"); the generation routes refuse them.
    Case("unknown top-level field", {"inputs": "Hello", "colour": "blue"}, "colour", tokenize=200),
)


def tgi_cases(n_ctx: int, max_new_tokens_limit: int) -> list[Case]:
    """Every refusal of a TGI-family request body (and of the same body over the WebSocket)."""
    prompt, limit = long_prompt(n_ctx), max_new_tokens_limit
    sized = [
        Case("empty prompt", {"inputs": ""}, "inputs", tokenize=200),
        Case("prompt longer than the context", {"inputs": prompt}, f"{n_ctx + 72} tokens", tokenize=200),
        Case(
            "truncate beyond the context",
            {"inputs": prompt, "parameters": {"truncate": n_ctx + 1}},
            "truncate",
            tokenize=200,
        ),
        Case(
            "max_new_tokens over the limit",
            params(max_new_tokens=limit + 1),
            f"between 1 and {limit}",
            tokenize=200,
        ),
    ]
    return sized + list(FIXED_CASES)
