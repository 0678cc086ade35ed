"""The one validation of what a route family asks for, against its model and the server's limits.

:func:`generation_spec` turns a :class:`TextRequest` into the :class:`GenerationSpec` every later
layer carries; :func:`attention_input` checks a ``/attention`` body the same way (the same prompt
rules, its own token limit). A problem raises :class:`APIError` carrying the parameter's name
apart from what was wrong (``APIError.invalid``); a family that calls the parameter otherwise
renames it (:meth:`APIError.renamed`), never by editing the message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from app.engine.sampling import SamplingParams
from app.engine.spec import GenerationSpec
from app.errors import ParamError
from app.server import keywords
from app.server.errors import APIError
from app.server.registry import ModelEntry, Registry, UnknownModel
from app.server.request import TextRequest
from app.server.settings import Settings
from app.server.worker import ModelWorker
from app.tokenizer.bpe import ENDOFTEXT


def ready_worker(registry: Registry, name: str | None) -> tuple[ModelEntry, ModelWorker]:
    """The named (or default) model's worker, when it is ready to take requests."""
    try:
        entry = registry.get(name)
    except UnknownModel as exc:
        raise APIError("validation", str(exc), param="model") from None
    status = entry.status  # once: the loader thread may replace it meanwhile
    if status.state == "failed":
        # Not the reason itself: it names files on the server (GET /models shows it to operators).
        raise APIError("unavailable", f"model {entry.name} failed to load; GET /models gives the reason")
    if status.state != "ready" or status.worker is None:
        raise APIError("unavailable", f"model {entry.name} is {status.state}")
    return entry, status.worker


def check_text(text: str, param: str) -> None:
    """JSON may carry lone surrogates (``"\\ud800"``), which are no Unicode text: refuse them here
    instead of failing in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError.invalid(param, "not valid Unicode text (a lone surrogate)") from None


def generation_spec(worker: ModelWorker, settings: Settings, req: TextRequest) -> GenerationSpec:
    """The one validation of a generation request."""
    limit = settings.max_new_tokens_limit
    n_new = settings.default_max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
    if not 1 <= n_new <= limit:
        raise APIError.invalid("max_new_tokens", f"must be between 1 and {limit}, got {n_new}")
    stop = _checked_stops(settings, req.stop)
    if req.keyword_request:
        req, stop = _keyword_prompt(worker, settings, req), (*stop, ENDOFTEXT)
    ids = prompt_ids(worker, req.prompt, special_text=req.special_text)
    ids = truncated(ids, req.truncate, worker.model.hparams.n_ctx)
    _check_length(
        ids,
        worker.model.hparams.n_ctx,
        "the model's context is {limit} tokens; shorten it (or, "
        "where the API has it, set truncate to keep the last tokens)",
    )
    try:
        return GenerationSpec(
            tuple(ids),
            n_new,
            _sampling(req),
            stop=stop,
            speculative=req.speculative,
            top_n_tokens=req.top_n_tokens,
            raw_alternatives=req.raw_alternatives,
        )
    except ParamError as exc:
        raise APIError.of(exc) from None


@dataclass(frozen=True)
class AttentionInput:
    """A checked ``/attention`` request: the prompt's tokens and which maps to return."""

    ids: list[int]
    layers: list[int]
    heads: list[int]


def attention_input(
    worker: ModelWorker, settings: Settings, text: str, layers: list[int] | None, heads: list[int] | None
) -> AttentionInput:
    """The one validation of an ``/attention`` request: the prompt as a generation's, at most ``attention_max_tokens`` tokens, and layer and head indices of this model."""
    hp = worker.model.hparams
    ids = prompt_ids(worker, text)
    limit = min(settings.attention_max_tokens, hp.n_ctx)
    _check_length(
        ids,
        limit,
        "attention maps take at most {limit} tokens (GPT2_ATTENTION_MAX_TOKENS, and the model's context)",
    )
    return AttentionInput(ids, _indices(layers, hp.n_layer, "layers"), _indices(heads, hp.n_head, "heads"))


def prompt_ids(worker: ModelWorker, prompt: str | Sequence[int], *, special_text: bool = False) -> list[int]:
    """A prompt's token ids: text (Unicode; ``special_text``: ``<|endoftext|>`` in it is the
    end-of-text token and an empty text is that token alone), or token ids in the vocabulary."""
    model = worker.model
    if isinstance(prompt, str):
        check_text(prompt, "inputs")
        if not prompt and not special_text:
            raise APIError.invalid("inputs", "must not be empty")
        if not special_text:
            return model.encoder.encode(prompt)
        if not prompt and model.encoder.eot_token is not None:
            return [model.encoder.eot_token]  # a new document
        return model.encoder.encode(prompt, allowed_special={ENDOFTEXT})
    ids = list(prompt)
    if not ids:
        raise APIError.invalid("inputs", "a token-id prompt must not be empty")
    try:
        model.hparams.check_token_ids(ids)
    except ParamError as exc:
        raise APIError.of(exc) from None
    return ids


def truncated(ids: list, truncate: int | None, n_ctx: int) -> list:
    """The last ``truncate`` of ``ids`` (all of them when None); ``truncate`` may not exceed the context."""
    if truncate is None:
        return ids
    if not 1 <= truncate <= n_ctx:
        raise APIError.invalid("truncate", f"must be between 1 and {n_ctx}, got {truncate}")
    return ids[-truncate:]


def _check_length(ids: list[int], limit: int, why: str) -> None:
    if len(ids) > limit:
        raise APIError.invalid("inputs", f"the prompt is {len(ids)} tokens but " + why.format(limit=limit))


def _indices(given: list[int] | None, count: int, param: str) -> list[int]:
    if given is None:
        return list(range(count))
    bad = next((i for i in given if not 0 <= i < count), None)
    if bad is not None:
        raise APIError.invalid(
            param, f"index {bad} is out of range; this model has {count} {param} (0..{count - 1})"
        )
    return list(given)


def _keyword_prompt(worker: ModelWorker, settings: Settings, req: TextRequest) -> TextRequest:
    """A keyword request as a token-id prompt: the end-of-text token (a document starts), then the
    document prefix built with the model's own delimiters, then ``inputs``."""
    param = "keywords" if req.keywords is not None else "category" if req.category is not None else "title"
    spec = keywords.model_spec(worker.model.keywords, worker.name, param)
    texts = [(req.prompt_text or "", "inputs"), (req.category or "", "category"), (req.title or "", "title")]
    for value, name in [*texts, *((k, "keywords") for k in req.keywords or ())]:
        check_text(value, name)
    text = keywords.keyword_prompt(
        settings, spec, req.keywords, req.category, req.title, req.prompt_text or ""
    )
    return replace(req, prompt=[worker.model.encoder.eot_token, *worker.model.encoder.encode(text)])


def _checked_stops(settings: Settings, stop: Sequence[str]) -> tuple[str, ...]:
    if len(stop) > settings.max_stop_sequences:
        raise APIError.invalid(
            "stop", f"at most {settings.max_stop_sequences} stop sequences, got {len(stop)}"
        )
    for s in stop:
        if not s or len(s) > settings.max_stop_length:
            raise APIError.invalid(
                "stop", f"each stop sequence must have 1 to {settings.max_stop_length} characters"
            )
        check_text(s, "stop")
    return tuple(stop)


def _sampling(req: TextRequest) -> SamplingParams:
    sampling = req.do_sample or any(v is not None for v in (req.temperature, req.top_k, req.top_p))
    try:
        return SamplingParams(
            temperature=(1.0 if req.temperature is None else req.temperature) if sampling else 0.0,
            top_k=req.top_k or 0,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        )
    except ParamError as exc:
        raise APIError.of(exc) from None
