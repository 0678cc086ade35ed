"""From a validated API body to a :class:`GenerationRequest` for one model.

Every route family (TGI, OpenAI, WebSocket) names the same knobs slightly differently; this is the
one place that turns them into token ids, sampling parameters and stop rules, and applies the
server's limits. Problems raise :class:`APIError` ("validation") naming the parameter.
"""

from __future__ import annotations

from app.engine.sampling import SamplingParams
from app.server.errors import APIError
from app.server.registry import ModelEntry, Registry, UnknownModel
from app.server.settings import Settings
from app.server.worker import GenerationRequest, ModelWorker


def ready_worker(registry: Registry, name: str | None) -> tuple[ModelEntry, ModelWorker]:
    try:
        entry = registry.get(name)
    except UnknownModel as exc:
        raise APIError("validation", str(exc), param="model") from None
    if entry.state == "failed":
        # Not the reason itself: it names files on the server (GET /models shows it to operators).
        raise APIError("unavailable", f"model {entry.name} failed to load; GET /models gives the reason")
    if entry.state != "ready" or entry.worker is None:
        raise APIError("unavailable", f"model {entry.name} is {entry.state}")
    return entry, entry.worker


def check_text(text: str, param: str) -> None:
    """JSON may carry lone surrogates (``"\\ud800"``), which are no Unicode text: refuse them here
    instead of failing in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError("validation", f"{param}: not valid Unicode text (a lone surrogate)", param=param) from None


def build_request(
    worker: ModelWorker, settings: Settings, *, inputs: str, max_new_tokens: int | None,
    temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
    seed: int | None = None, stop: list[str] | None = None, do_sample: bool = False,
    repetition_penalty: float | None = None, truncate: int | None = None, stop_at_eos: bool = True,
    prompt_ids: list[int] | None = None, speculative: bool = True,
) -> GenerationRequest:  # fmt: skip
    """Sampling happens when ``do_sample`` is set or any sampling knob is given (TGI's rule);
    otherwise decoding is greedy. ``temperature == 0`` is greedy whatever else is set.

    ``prompt_ids`` (already token ids, e.g. an OpenAI token-id prompt) is used instead of encoding
    ``inputs``; every id must be in the vocabulary."""
    if prompt_ids is None and not inputs:
        raise APIError("validation", "inputs: must not be empty", param="inputs")
    check_text(inputs, "inputs")
    model = worker.model
    n_ctx = model.hparams.n_ctx
    limit = settings.max_new_tokens_limit
    n_new = settings.default_max_new_tokens if max_new_tokens is None else max_new_tokens
    if not 1 <= n_new <= limit:
        raise APIError("validation", f"max_new_tokens must be between 1 and {limit}, got {n_new}",
                       param="max_new_tokens")  # fmt: skip
    stop = list(stop or [])
    if len(stop) > settings.max_stop_sequences:
        raise APIError("validation", f"stop: at most {settings.max_stop_sequences} stop sequences, got {len(stop)}",
                       param="stop")  # fmt: skip
    for s in stop:
        if not s or len(s) > settings.max_stop_length:
            raise APIError("validation", f"stop: each stop sequence must have 1 to {settings.max_stop_length} characters",
                           param="stop")  # fmt: skip
        check_text(s, "stop")
    if prompt_ids is None:
        ids = model.encoder.encode(inputs)
    else:
        n_vocab = model.hparams.n_vocab
        if not prompt_ids:
            raise APIError("validation", "inputs: must not be empty", param="inputs")
        bad = next((i for i in prompt_ids if not 0 <= i < n_vocab), None)
        if bad is not None:
            raise APIError("validation", f"inputs: token id {bad} is outside the vocabulary (0..{n_vocab - 1})",
                           param="inputs")  # fmt: skip
        ids = list(prompt_ids)
    if truncate is not None:
        if not 1 <= truncate <= n_ctx:
            raise APIError("validation", f"truncate must be between 1 and {n_ctx}, got {truncate}", param="truncate")
        ids = ids[-truncate:]
    if len(ids) > n_ctx:
        raise APIError("validation",
                       f"inputs: the prompt is {len(ids)} tokens but the model's context is {n_ctx} tokens; "
                       "shorten it or set truncate to keep the last tokens", param="inputs")  # fmt: skip
    sampling = do_sample or any(v is not None for v in (temperature, top_k, top_p))
    try:
        params = SamplingParams(
            temperature=(1.0 if temperature is None else temperature) if sampling else 0.0,
            top_k=top_k or 0,
            top_p=1.0 if top_p is None else top_p,
            seed=seed,
            repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
        )
    except ValueError as exc:
        param = str(exc).split(" ", 1)[0]
        raise APIError("validation", str(exc), param=param) from None
    return GenerationRequest(ids, n_new, params, tuple(stop), stop_at_eos, speculative)
