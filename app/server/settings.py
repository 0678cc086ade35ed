"""All server settings in one object, read once at start-up from ``GPT2_*`` variables and CLI flags.

Lists are comma-separated in the environment (``GPT2_MODELS=124M,355M``); placement is
``name=device`` pairs (``GPT2_PLACEMENT=124M=GPU:0,355M=GPU:1``). CLI flags of ``gpt2-serve serve``
override the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value: object) -> object:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPT2_", extra="forbid")

    # What to serve and where.
    models: Annotated[list[str], NoDecode] = Field(
        default=["default"], description="model names in models_dir, or model folder paths"
    )
    models_dir: Path = Field(default=Path("model_store"), description="folder that holds the model folders")
    placement: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="model=device pairs; default: model i on GPU i, else CPU"
    )
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = Field(
        default="float32",
        description=(
            "weights and KV cache precision; half precision halves both (see `gpt2-serve plan`), rows"
            " stay float32. auto: bfloat16 where the CPU multiplies it natively (AVX512-BF16/AMX) and"
            " the start-up timing found it faster, else float32"
        ),
    )
    slots: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=("concurrent sequences per model; default: sized from free memory, at most 32"),
    )
    queue_size: int = Field(default=64, ge=0, description="requests waiting for a slot, per model")
    prefill_chunk: int = Field(default=256, ge=16, le=4096, description="longest prompt piece per call")
    slide_chunk: int = Field(
        default=64,
        ge=16,
        le=4096,
        description=(
            "prefill tokens a round computes while streams decode: a slid window's chunk, and"
            " the padded first pieces of new prompts packed together (the oldest always goes)"
        ),
    )
    warmup: bool = Field(
        default=True,
        description=(
            "compile every shape a request can reach before reporting ready (a progress line per shape)"
        ),
    )
    layers_per_call: int = Field(
        default=1,
        ge=1,
        le=48,
        description=(
            "transformer blocks per compiled program (a divisor of the model's layers): 1 compiles fastest; "
            "12 (124M) runs ~12% faster at 32 rows and compiles ~4x longer"
        ),
    )
    whole_model_rows: int = Field(
        default=1,
        ge=0,
        le=1024,
        description=(
            "decode calls of up to this many rows run every block as one XLA program: a lone stream"
            " ~5-11% faster for ~3x the compile of its shapes (kept by the XLA cache); 0 = never"
        ),
    )
    kernels: Literal["auto", "xla", "onednn"] = Field(
        default="auto",
        description=(
            "matmul kernels on the CPU: auto times XLA's and oneDNN's for each row count at the first"
            " start on a machine and keeps the faster (remembered in cache_dir); xla or onednn forces one"
        ),
    )
    cache_dir: Path | None = Field(
        default=None,
        description=(
            "where start-up measurements and compiled programs are kept across restarts; default: a"
            " .gpt2-serve folder in each model's folder (measurements) and in models_dir (XLA programs)"
        ),
    )
    xla_cache: bool = Field(
        default=True,
        description=(
            "keep XLA's compiled programs across restarts (per TensorFlow version and CPU; files a"
            " finished warm-up did not check are deleted, never read)"
        ),
    )
    batch_invariant: bool = Field(
        default=False,
        description=(
            "a seeded request's tokens and logprobs bit-identical alone and in any batch: no decode call"
            " runs one row alone, every block runs under XLA, prompts are prefilled alone, no speculation"
        ),
    )
    speculative: Literal["off", "ngram"] = Field(
        default="off",
        description=(
            "ngram: a lone stream drafts tokens by prompt lookup and verifies them in one call (same tokens)"
        ),
    )
    speculative_tokens: int = Field(
        default=4, ge=1, le=15, description="draft length with --speculative ngram"
    )
    cpu_devices: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "split the CPU into this many logical devices (CPU:0..N-1) to place models apart without GPUs"
        ),
    )

    # Network.
    host: str = Field(default="127.0.0.1", description="address to listen on (0.0.0.0 in containers)")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS; none: CORS closed"
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="comma-separated bearer keys; none: no authentication"
    )
    protect_metrics: bool = Field(default=False, description="require an API key for /metrics too")

    # Request limits.
    default_max_new_tokens: int = Field(
        default=100, ge=1, description="max_new_tokens of a request that sets none"
    )
    max_new_tokens_limit: int = Field(
        default=2048, ge=1, description="largest max_new_tokens a request may ask"
    )
    max_stop_sequences: int = Field(default=4, ge=0, description="most stop sequences in one request")
    max_stop_length: int = Field(default=256, ge=1, description="longest stop sequence, in characters")
    max_keywords: int = Field(
        default=8, ge=1, description="most keywords in one request to a keyword-conditioned model"
    )
    max_keyword_length: int = Field(default=50, ge=1, description="longest keyword, in characters")
    max_title_length: int = Field(
        default=200, ge=1, description="longest title or category of a keyword request, in characters"
    )
    max_body_bytes: int = Field(default=2 * 2**20, ge=1024, description="largest request body; more is 413")
    max_websockets: int = Field(
        default=256, ge=1, description="open WebSocket connections; more are closed 1013"
    )
    max_buffered_tokens: int = Field(
        default=256,
        ge=1,
        description=(
            "token events that may wait to be sent to one streaming client (WebSocket or SSE); more"
            " cancels its request: the WebSocket is closed 1008, an SSE stream ends with a slow_client error"
        ),
    )
    attention_max_tokens: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="longest prompt POST /attention maps, in tokens (the model's context caps it too)",
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description=("seconds to let accepted requests finish after SIGTERM before closing"),
    )
    health_stuck_seconds: float = Field(
        default=120.0,
        gt=0,
        description=(
            "one compute call (prefill or decode step) longer than this makes /health answer 503 'stuck'"
        ),
    )

    @field_validator("models", "cors_origins", "api_keys", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value)

    @field_validator("placement", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, str):
            out = {}
            for pair in _split(value):
                name, sep, device = pair.partition("=")
                if not sep or not name.strip() or not device.strip():
                    raise ValueError(f"placement entry {pair!r} is not of the form model=DEVICE")
                out[name.strip()] = device.strip()
            return out
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: object) -> object:
        if "GPT2_WS_MAX_BUFFERED_TOKENS" in os.environ:  # pydantic-settings ignores unknown variables
            raise ValueError(
                "GPT2_WS_MAX_BUFFERED_TOKENS was renamed GPT2_MAX_BUFFERED_TOKENS (it bounds SSE streams too)"
            )
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.models:
            raise ValueError("at least one model must be configured")
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError("default_max_new_tokens exceeds max_new_tokens_limit")
        unknown = set(self.placement) - set(self.model_names)
        if unknown:
            raise ValueError(f"placement names models that are not served: {', '.join(sorted(unknown))}")
        if "*" in self.cors_origins and self.api_keys:
            # Browsers would send credentials to any site; refuse rather than guess.
            raise ValueError("cors_origins '*' cannot be combined with api_keys")
        return self

    @property
    def model_names(self) -> list[str]:
        """Public name of each configured model: the folder name for paths."""
        return [Path(m).name if ("/" in m or m.startswith(".")) else m for m in self.models]
