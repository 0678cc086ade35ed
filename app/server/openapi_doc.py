"""The OpenAPI document, saying what the server enforces: FastAPI's document from the schemas,
plus the limits that come from settings (so a schema-valid body is one the server accepts)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.keywords.format import DEFAULT, keyword_chars, keyword_pattern, text_pattern
from app.server.registry import ModelEntry
from app.server.schemas import attention
from app.server.schemas.common import SEED_MAX
from app.server.settings import Settings


def document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """Built once every model has loaded (``truncate`` is bounded by the smallest context), and
    kept from then on; before that, built on each request."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc["components"]["schemas"]
    for model, tokens_field in (("Parameters", "max_new_tokens"), ("CompletionRequest", "max_tokens")):
        fields = schemas[model]["properties"]
        fields[tokens_field].update(minimum=1, maximum=settings.max_new_tokens_limit)
        _limit_stops(fields["stop"], settings)
        for branch in fields["seed"]["anyOf"]:  # pydantic writes 2**64 - 1 as a float (2**64): exact integers
            if branch.get("type") == "integer":
                branch.update(minimum=0, maximum=SEED_MAX)
    # echo with logprobs is refused (the prompt's logprobs are not computed)
    schemas["CompletionRequest"]["not"] = {
        "required": ["echo", "logprobs"],
        "properties": {"echo": {"const": True}, "logprobs": {"type": "integer"}},
    }
    for branch in schemas["CompletionRequest"]["properties"]["prompt"][
        "anyOf"
    ]:  # no empty list, at any depth
        if branch.get("type") == "array":
            branch["minItems"] = 1
            if branch["items"].get("type") == "array":
                branch["items"]["minItems"] = 1
    loaded = _loaded(app)
    if loaded:
        schemas["Parameters"]["properties"]["truncate"]["maximum"] = min(
            e.model.hparams.n_ctx for e in loaded
        )
        schemas["CompletionRequest"]["properties"]["n"]["maximum"] = min(e.worker.capacity for e in loaded)
        n_vocab = min(e.model.hparams.n_vocab for e in loaded)
        _bound_token_ids(schemas["CompletionRequest"]["properties"]["prompt"], n_vocab)
        names = list(app.state.server.registry.entries)  # "" and null: the default model
        for params in ("Parameters", "TokenizeParameters"):
            schemas[params]["properties"]["model"]["enum"] = ["", *names, None]
        schemas["CompletionRequest"]["properties"]["model"]["enum"] = ["", *names]
        n_layer, n_head = (min(getattr(e.model.hparams, f) for e in loaded) for f in ("n_layer", "n_head"))
        attention.bound_request(schemas["AttentionRequest"], names, n_layer=n_layer, n_head=n_head)
    _keyword_fields(schemas, settings, loaded, app)
    if loaded is not None:
        app.openapi_schema = doc
    return doc


def _loaded(app: FastAPI) -> list[ModelEntry] | None:
    """The models that loaded; None while some model is still loading."""
    state = getattr(app.state, "server", None)
    if state is None:
        return None
    entries = list(state.registry.entries.values())
    if any(e.state == "loading" for e in entries):
        return None
    return [e for e in entries if e.state == "ready" and e.model is not None and e.worker is not None]


def _limit_stops(field: dict[str, Any], settings: Settings) -> None:
    """Stop sequences: at most ``max_stop_sequences``, each 1..``max_stop_length`` characters (a
    field that is a list, or a string or a list, as OpenAI's ``stop``)."""
    text = {"minLength": 1, "maxLength": settings.max_stop_length}
    for branch in field.get("anyOf", [field]):
        if branch.get("type") == "array":
            branch["maxItems"] = settings.max_stop_sequences
            branch["items"].update(text)
        elif branch.get("type") == "string":
            branch.update(text)


def _bound_token_ids(prompt: dict[str, Any], n_vocab: int) -> None:
    """Token ids (a list of them, or a list of such lists) are in the vocabulary."""
    for branch in prompt["anyOf"]:
        if branch.get("type") != "array":
            continue
        items = branch["items"]["items"] if branch["items"].get("type") == "array" else branch["items"]
        if items.get("type") == "integer":
            items.update(minimum=0, maximum=n_vocab - 1)


KEYWORD_FIELDS = ("keywords", "category", "title")
KEYWORDS_GIVEN = {  # a keyword request: some keyword field is not null
    "anyOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in KEYWORD_FIELDS]
}


def _keyword_fields(
    schemas: dict[str, Any], settings: Settings, loaded: list[ModelEntry] | None, app: FastAPI
) -> None:
    """``keywords``, ``category`` and ``title`` as validation takes them; only null where no loaded
    model is keyword-conditioned, and refused by schema for the models that are not (when some are).
    A keyword request's ``inputs`` may be empty (the prefix is the prompt)."""
    params = schemas["Parameters"]
    fields = params["properties"]
    plain = [e for e in loaded or [] if e.model.keywords is None]
    if loaded and len(plain) == len(loaded):  # no keyword model: the fields can only be null
        for name in KEYWORD_FIELDS:
            fields[name] = {"type": "null", "description": fields[name].get("description", "")}
        return
    # The characters the loaded keyword models' own delimiters forbid (the default ones before load).
    formats = [e.model.keywords.delimiters for e in loaded or [] if e.model.keywords] or [DEFAULT]
    text = {
        "type": "string",
        "maxLength": settings.max_title_length,
        "pattern": text_pattern("".join(d.section for d in formats)),
    }
    fields["category"]["anyOf"] = fields["title"]["anyOf"] = [text, {"type": "null"}]
    item = {
        "type": "string",
        "maxLength": settings.max_keyword_length,
        "pattern": keyword_pattern("".join(keyword_chars(d) for d in formats)),
    }
    fields["keywords"]["anyOf"] = [
        {"type": "array", "maxItems": settings.max_keywords, "items": item},
        {"type": "null"},
    ]
    if plain:
        params["not"] = _asked_of(plain, app.state.server.registry.default)
    request = schemas["GenerateRequest"]
    request["properties"]["inputs"].pop("minLength", None)
    request["anyOf"] = [
        {"properties": {"inputs": {"minLength": 1}}},
        {"required": ["parameters"], "properties": {"parameters": KEYWORDS_GIVEN}},
    ]


def _asked_of(plain: list[ModelEntry], default: ModelEntry) -> dict[str, Any]:
    """A body that gives a keyword field and names (or defaults to) a model that is not keyword-conditioned."""
    names = [e.name for e in plain]
    model: dict[str, Any] = {"properties": {"model": {"enum": names}}, "required": ["model"]}
    if default in plain:  # also "", null or no model at all
        model = {"properties": {"model": {"enum": ["", None, *names]}}}
    return {"allOf": [KEYWORDS_GIVEN, model]}
