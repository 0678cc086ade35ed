"""OpenAI's legacy Completions and Models wire shapes (the ``openai`` SDK's ``types/completion*.py``,
``types/model.py`` and ``completion_create_params.py``).

Parameters OpenAI has and we do not implement (``best_of``, ``presence_penalty``,
``frequency_penalty``, ``logit_bias``, ``suffix``) are accepted at their neutral value and refused
with a clear message otherwise. Unknown fields are refused, as OpenAI does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.server.schemas.common import SEED_MAX, integral, is_neutral, neutral_only

OpenAIFinishReason = Literal["stop", "length"]
Prompt = str | list[str] | list[int] | list[list[int]]

# Unimplemented parameters and the values that mean "off".
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class StreamOptions(BaseModel):
    model_config = ConfigDict(
        extra="ignore", strict=True
    )  # e.g. include_obfuscation: nothing to obfuscate here

    include_usage: bool = False


class CompletionRequest(BaseModel):
    # Strict types (as the schema says: a boolean is no number, a string no integer); 4.0 is an integer.
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(description="a served model's name (GET /v1/models); empty: the default model")
    prompt: Prompt | None = Field(
        default=None,
        description="text, a list of texts, token ids, or a list of token-id lists; "
        "'<|endoftext|>' in text is the end-of-text token; null or '' starts a new document",
    )
    max_tokens: int | None = Field(default=16, ge=1, description="tokens to generate per choice (null: 16)")
    temperature: float | None = Field(default=1.0, ge=0, le=2, allow_inf_nan=False, description="0 = greedy")
    top_p: float | None = Field(default=1.0, ge=0, le=1, allow_inf_nan=False, description="0 = greedy")
    n: int | None = Field(default=1, ge=1, le=128, description="choices per prompt")
    stop: str | list[str] | None = Field(default=None, description="up to 4 stop sequences (not returned)")
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="choice j of each prompt uses seed + j"
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=5,
        description="include the sampled tokens' logprobs and this many most likely alternatives",
    )
    echo: bool | None = False
    user: str | None = None
    # Not implemented: accepted only at their neutral values.
    best_of: int | None = neutral_only(NEUTRAL["best_of"])
    presence_penalty: float | None = neutral_only(NEUTRAL["presence_penalty"])
    frequency_penalty: float | None = neutral_only(NEUTRAL["frequency_penalty"])
    logit_bias: dict[str, float] | None = neutral_only(NEUTRAL["logit_bias"])
    suffix: str | None = neutral_only(NEUTRAL["suffix"])

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: object) -> object:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            value = [[integral(i) for i in v] if isinstance(v, list) else integral(v) for v in value]
            if not value:
                raise ValueError("must not be an empty list")
            if all(isinstance(v, str) for v in value) or all(_is_int(v) for v in value):
                return value
            if all(isinstance(v, list) and all(_is_int(i) for i in v) for v in value):
                return value
        raise ValueError(
            "must be a string, a list of strings, a list of token ids or a list of token-id lists"
        )

    @field_validator(*NEUTRAL, mode="before")
    @classmethod
    def _unsupported(cls, value: object, info: ValidationInfo) -> object:
        if not is_neutral(value, NEUTRAL[info.field_name]):
            raise ValueError(f"{info.field_name} is not supported by this server")
        return integral(value)

    @field_validator("max_tokens", "n", "seed", "logprobs", mode="before")
    @classmethod
    def _json_integers(cls, value: object) -> object:
        return integral(value)

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids. ``None`` is one empty prompt."""
        p = self.prompt
        if p is None or isinstance(p, str):
            return [p or ""]
        if all(isinstance(v, int) for v in p):
            return [list(p)]
        return list(p)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Logprobs(BaseModel):
    """The sampled tokens' own text and log-probability, for each token the ``logprobs`` most
    likely tokens and the sampled one (``top_logprobs``, text -> logprob), and each token's
    character offset in the choice's ``text``. All log-probabilities are the model's own
    (temperature 1, before top-k/top-p), as vLLM reports them by default."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None = None
    finish_reason: OpenAIFinishReason | None = None  # null only on a streamed choice's non-final chunks


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gpt2-serve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
