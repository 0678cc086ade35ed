"""One generation as every layer carries it: :class:`GenerationSpec`, validated and frozen.

The server builds it once from a route's request (:mod:`app.server.validation`), the worker queues
it, and the batcher's :class:`~app.engine.batcher.Entry` holds it beside the sequence's mutable
state; offline callers (``generate``, the trainer's samples, benchmarks) build it directly. The
field names are the ones the API families use, so nothing is renamed on the way."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.sampling import SamplingParams
from app.errors import ParamError

MAX_TOP_N_TOKENS = 10  # alternatives per token (TGI's limit)


@dataclass(frozen=True)
class GenerationSpec:
    prompt_ids: tuple[int, ...]  # at least one token (``<|endoftext|>`` alone starts a document)
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()  # stop sequences (the server's text stream applies them)
    stop_at_eos: bool = True
    speculative: bool = True  # may use speculative decoding (same tokens; off for timing-sensitive clients)
    top_n_tokens: int = 0  # most likely alternatives reported with each token
    # The alternatives under the model itself (temperature 1, no repetition penalty), like each
    # token's own logprob (OpenAI's top_logprobs); by default under the distribution drawn from.
    raw_alternatives: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(int(i) for i in self.prompt_ids))
        object.__setattr__(self, "stop", tuple(self.stop))
        if not self.prompt_ids:
            raise ParamError("inputs", "needs at least one prompt token (<|endoftext|> for none)")
        if isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise ParamError("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.top_n_tokens <= MAX_TOP_N_TOKENS:
            raise ParamError(
                "top_n_tokens", f"must be between 0 and {MAX_TOP_N_TOKENS}, got {self.top_n_tokens}"
            )
