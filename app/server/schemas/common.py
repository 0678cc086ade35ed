"""What the wire schemas share: JSON's one number type, seeds, and parameters accepted only at
their neutral values (TGI's and OpenAI's features this server does not implement)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

SEED_MAX = 2**64 - 1  # seeds are unsigned 64-bit integers


def integral(value: object) -> object:
    """JSON has one number type: ``4.0`` is the integer 4 (as JSON Schema's ``integer`` says)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def is_neutral(value: object, values: tuple[Any, ...]) -> bool:
    """``value`` is one of ``values`` as JSON sees it: ``false`` is not ``0``."""
    return value in values and (not isinstance(value, bool) or any(v is value for v in values))


def neutral_only(values: tuple[Any, ...]) -> Any:
    """A field accepted only at its neutral values, which the OpenAPI document lists (``enum``)."""
    unique = [v for i, v in enumerate(values) if v not in values[:i]]  # 0 and 0.0 are one JSON value
    return Field(default=values[0], json_schema_extra={"enum": unique})
