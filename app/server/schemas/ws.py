"""Messages of ``ws /stream``, our own WebSocket protocol (one JSON object per text frame).

Client → server:

* ``generate``: ``{"type": "generate", "inputs": str, "parameters": {...}, "id": str?}``. The
  parameters are TGI's (:class:`app.server.schemas.tgi.Parameters`); ``details`` and
  ``decoder_input_details`` change nothing here (every token message carries its details anyway).
  A message without ``type`` is a generate request.
* ``cancel``: ``{"type": "cancel", "id": str?}`` ends the request that is streaming now (a
  ``done`` with ``finish_reason`` "cancelled" follows); with nothing streaming, or another ``id``
  streaming, it is ignored.

Server → client, per request: ``token`` messages with ``index`` 0, 1, 2, ..., then exactly one
``done`` or one ``error``. ``request_id`` echoes the client's ``id`` (the name ``id`` is taken by
the token id, as in TGI's tokens). ``docs/ws-protocol.schema.json`` is generated from these models
(``python -m app.server.schemas.ws > docs/ws-protocol.schema.json``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from app.server.schemas.tgi import KeywordsField, Parameters, Token

WsFinishReason = Literal["length", "eos_token", "stop_sequence", "cancelled"]
WsErrorType = Literal["validation", "too_large", "overloaded", "unavailable", "generation", "internal"]

RequestId = Annotated[
    str, Field(max_length=256, description="the client's own id for the request, echoed back")
]


# ---- client → server ----


class GenerateMessage(BaseModel):
    """Start one generation. The next request is read once this one has ended."""

    model_config = ConfigDict(extra="forbid", title="generate")

    type: Literal["generate"] = "generate"
    inputs: str = Field(description="the prompt; must not be empty")
    parameters: Parameters = Field(default_factory=Parameters)
    id: RequestId | None = None


class CancelMessage(BaseModel):
    """Stop the request that is streaming now; its slot is freed at the next decode step. With
    ``id``, only a request of that id is stopped (so a late cancel cannot hit the next request)."""

    model_config = ConfigDict(extra="forbid", title="cancel")

    type: Literal["cancel"]
    id: RequestId | None = None


def _client_kind(value: Any) -> str:
    kind = value.get("type", "generate") if isinstance(value, dict) else getattr(value, "type", "generate")
    return kind if kind in ("generate", "cancel") else "generate"  # an unknown type fails as "generate"


ClientMessage = Annotated[
    Annotated[GenerateMessage, Tag("generate")] | Annotated[CancelMessage, Tag("cancel")],
    Discriminator(_client_kind),
]
client_message = TypeAdapter(ClientMessage)


# ---- server → client ----


class TokenMessage(BaseModel):
    """One generated token. ``text`` is what this token released (possibly empty: text that may
    start a stop sequence is held back, and a UTF-8 character is never split); the concatenated
    ``text`` of a request's tokens equals its ``done.generated_text``."""

    model_config = ConfigDict(title="token")

    type: Literal["token"] = "token"
    index: int = Field(ge=0, description="0, 1, 2, ... within one request")
    id: int = Field(description="token id")
    text: str
    logprob: float | None = Field(description="log-probability under the model (temperature 1)")
    special: bool = Field(description="true for <|endoftext|>, whose text is empty")
    top_tokens: list[Token] | None = Field(
        default=None,
        description=(
            "with parameters.top_n_tokens: the most likely tokens at this position, most likely first, each "
            "with its own text and its log-probability under the distribution this token was drawn from "
            "(after temperature, 1 for greedy, and repetition penalty; before top-k/top-p truncation)"
        ),
    )
    request_id: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class DoneMessage(BaseModel):
    """The request ended; exactly one per request that did not fail."""

    model_config = ConfigDict(title="done")

    type: Literal["done"] = "done"
    finish_reason: WsFinishReason
    generated_text: str = Field(description="the generated text (prompt first if return_full_text)")
    usage: Usage
    seed: int | None = Field(description="the seed used, for sampled requests; null when greedy")
    request_id: str | None = None
    keywords_output: KeywordsField


class ErrorMessage(BaseModel):
    """The request failed or was refused. ``validation``, ``too_large`` and ``generation`` errors
    leave the connection open; ``overloaded`` closes it with 1013, a draining server
    (``unavailable``) with 1012, and more than 16 requests sent ahead of the streaming one with 1008."""

    model_config = ConfigDict(title="error")

    type: Literal["error"] = "error"
    error_type: WsErrorType
    message: str
    request_id: str | None = None


ServerMessage = Annotated[TokenMessage | DoneMessage | ErrorMessage, Field(discriminator="type")]


def protocol_schema() -> dict:
    """One JSON Schema (draft 2020-12) with both directions' messages under ``$defs``."""
    client = TypeAdapter(ClientMessage).json_schema(ref_template="#/$defs/{model}")
    server = TypeAdapter(ServerMessage).json_schema(ref_template="#/$defs/{model}", mode="serialization")
    defs = {**client.pop("$defs", {}), **server.pop("$defs", {})}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gpt2-serve ws /stream protocol",
        "description": "One JSON object per WebSocket text frame. ClientMessage: what the client sends; "
        "ServerMessage: what the server answers.",
        "oneOf": [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}],
        "$defs": {"ClientMessage": client, "ServerMessage": server, **defs},
    }


def protocol_schema_text() -> str:
    return json.dumps(protocol_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(protocol_schema_text(), end="")
