"""Text Generation Inference's wire shapes (its ``docs/openapi.json`` and the ``text-generation``
client's ``types.py``), plus ``model`` to pick one of several loaded models.

Parameters TGI has and we do not implement are accepted at their neutral value (the official
client always sends them, mostly null) and refused with a clear message otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from app.server.request import TextRequest
from app.server.schemas.common import SEED_MAX, integral, is_neutral, neutral_only

FinishReason = Literal["length", "eos_token", "stop_sequence"]


# TGI parameters not implemented, and the values that mean "off" (the first is the default).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "typical_p": (None, 1.0),
    "watermark": (False,),
    "grammar": (None,),
    "frequency_penalty": (None, 0.0),
    "adapter_id": (None,),
}


class Parameters(BaseModel):
    # Strict types: a boolean is not a number nor a number a boolean (the schema's types, which the
    # contract test checks); integers are still accepted for float fields.
    model_config = ConfigDict(extra="ignore", strict=True)

    max_new_tokens: int | None = Field(
        default=None, description="default: the server's default_max_new_tokens"
    )
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="0 = greedy")
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    stop: list[str] = Field(default_factory=list)
    do_sample: bool = False
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool = False
    repetition_penalty: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    truncate: int | None = Field(default=None, ge=1)
    model: str | None = Field(default=None, description="which loaded model (default: the first)")
    speculative: StrictBool = Field(
        default=True,
        description=(
            "our extension: false turns speculative decoding off for this request (GPT2_SPECULATIVE)"
        ),
    )
    top_n_tokens: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description=(
            "each token also lists this many most likely tokens (top_tokens), with log-probabilities under the "
            "distribution it was drawn from: after temperature (1 for greedy) and repetition penalty, before "
            "top-k/top-p truncation"
        ),
    )
    # Our extension for keyword-conditioned models (README "Keywords"); refused (422) by other models.
    keywords: list[str] | None = Field(
        default=None,
        description=(
            "keyword-conditioned models: write a document about these keywords (0 to max_keywords, each without "
            "the delimiters ~ ` ^ @ }); the prompt becomes the document prefix, then inputs (which may be empty: "
            "the start of the title, or of the body when title is given)"
        ),
    )
    category: str | None = Field(
        default=None, description="keyword-conditioned models: the document's category"
    )
    title: str | None = Field(
        default=None,
        description="keyword-conditioned models: the title (omit it to have the model write one)",
    )
    # TGI features not implemented: accepted only at their neutral values.
    best_of: int | None = neutral_only(NEUTRAL["best_of"])
    typical_p: float | None = neutral_only(NEUTRAL["typical_p"])
    watermark: bool = neutral_only(NEUTRAL["watermark"])
    grammar: Any = neutral_only(NEUTRAL["grammar"])
    frequency_penalty: float | None = neutral_only(NEUTRAL["frequency_penalty"])
    adapter_id: str | None = neutral_only(NEUTRAL["adapter_id"])

    @field_validator("max_new_tokens", "top_k", "seed", "truncate", "best_of", "top_n_tokens", mode="before")
    @classmethod
    def _json_integers(cls, value: object) -> object:
        return integral(value)

    @model_validator(mode="after")
    def _unsupported(self) -> Parameters:
        for name, values in NEUTRAL.items():
            if not is_neutral(getattr(self, name), values):
                raise ValueError(f"{name} is not supported by this server")
        return self

    def text_request(self, inputs: str) -> TextRequest:
        """A TGI body (or a WebSocket ``generate`` message) as the server's one request type."""
        return TextRequest(
            inputs,
            model=self.model,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            stop=self.stop,
            do_sample=self.do_sample,
            repetition_penalty=self.repetition_penalty,
            truncate=self.truncate,
            speculative=self.speculative,
            top_n_tokens=self.top_n_tokens or 0,
            return_full_text=self.return_full_text,
            keywords=self.keywords,
            category=self.category,
            title=self.title,
        )


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str = Field(json_schema_extra={"minLength": 1})  # enforced by validation ("must not be empty")
    parameters: Parameters = Field(default_factory=Parameters)
    stream: StrictBool = False  # only meaningful on POST /


class InputToken(BaseModel):
    id: int
    text: str
    logprob: float | None = None


class Token(BaseModel):
    id: int
    text: str
    logprob: float | None = None
    special: bool


class Details(BaseModel):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    prefill: list[InputToken] = Field(default_factory=list)
    tokens: list[Token] = Field(default_factory=list)
    top_tokens: list[list[Token]] | None = None
    best_of_sequences: None = None


class KeywordsOutput(BaseModel):
    """A keyword request's document: its title (the one asked for, or the one the model wrote) and body."""

    title: str
    body: str


def _is_none(value: object) -> bool:
    return value is None


# Only in the answers to keyword requests: absent (not null) elsewhere, so TGI's shapes stay TGI's.
KeywordsField = Annotated[
    KeywordsOutput | None,
    Field(
        default=None,
        exclude_if=_is_none,
        description='keyword requests only (README "Keywords"): the document\'s title and body',
    ),
]


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None
    keywords_output: KeywordsField


class StreamDetails(BaseModel):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    input_length: int


class StreamResponse(BaseModel):
    index: int
    token: Token
    top_tokens: list[Token] | None = None
    generated_text: str | None = None
    details: StreamDetails | None = None
    keywords_output: KeywordsField  # on the last event


class TokenizeParameters(Parameters):
    """TGI's parameters as /tokenize takes them: checked for their types, ``model`` read, and the
    generation limits (max_new_tokens, truncate, stop) not applied: its own schema says so."""


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: TokenizeParameters | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    start: int
    stop: int


class Info(BaseModel):
    model_id: str
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str = "text-generation"
    max_concurrent_requests: int
    max_best_of: int = 1
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    max_input_length: int
    validation_workers: int = 1
    router: str = "gpt2-serve"
    version: str
    models: list[str]


class ErrorResponse(BaseModel):
    error: str
    error_type: str
