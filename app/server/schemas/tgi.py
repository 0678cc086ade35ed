"""Text Generation Inference's wire shapes (its ``docs/openapi.json`` and the ``text-generation``
client's ``types.py``), plus ``model`` to pick one of several loaded models.

Parameters TGI has and we do not implement are accepted at their neutral value (the official
client always sends them, mostly null) and refused with a clear message otherwise.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from app.server.generation import TextRequest

FinishReason = Literal["length", "eos_token", "stop_sequence"]


class Parameters(BaseModel):
    # Strict types: a boolean is not a number nor a number a boolean (the schema's types, which the
    # contract test checks); integers are still accepted for float fields.
    model_config = ConfigDict(extra="ignore", strict=True)

    max_new_tokens: int | None = Field(default=None, description="default: the server's default_max_new_tokens")
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="0 = greedy")
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    stop: list[str] = Field(default_factory=list)
    do_sample: bool = False
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool = False
    repetition_penalty: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    truncate: int | None = Field(default=None, ge=1)
    model: str | None = Field(default=None, description="which loaded model (default: the first)")
    speculative: StrictBool = Field(default=True, description=(
        "our extension: false turns speculative decoding off for this request (GPT2_SPECULATIVE)"))
    # TGI features not implemented: accepted only at their neutral values.
    best_of: int | None = None
    typical_p: float | None = None
    watermark: bool = False
    top_n_tokens: int | None = None
    grammar: Any = None
    frequency_penalty: float | None = None
    adapter_id: str | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> Parameters:
        for name, neutral in (("best_of", (None, 1)), ("typical_p", (None, 1.0)), ("watermark", (False,)),
                              ("top_n_tokens", (None, 0)), ("grammar", (None,)),
                              ("frequency_penalty", (None, 0.0)), ("adapter_id", (None,))):  # fmt: skip
            if getattr(self, name) not in neutral:
                raise ValueError(f"{name} is not supported by this server")
        return self

    def text_request(self, inputs: str) -> TextRequest:
        """A TGI body (or a WebSocket ``generate`` message) as the server's one request type."""
        return TextRequest(inputs, model=self.model, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                           top_k=self.top_k, top_p=self.top_p, seed=self.seed, stop=self.stop, do_sample=self.do_sample,
                           repetition_penalty=self.repetition_penalty, truncate=self.truncate,
                           speculative=self.speculative)  # fmt: skip


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False  # only meaningful on POST /


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


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


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


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: Parameters | None = None


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
