"""``POST /attention``: a prompt's attention maps, in the layout bertviz's head view reads."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.server.schemas.common import integral

Index = Annotated[int, Field(ge=0)]  # the upper bound is the model's (validation)


class AttentionRequest(BaseModel):
    # Strict: a boolean is no index (JSON's integral floats are, see _json_integers).
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: str = Field(  # "must not be empty": enforced by validation, as a generation's
        description="the text whose attention maps to return", json_schema_extra={"minLength": 1}
    )
    model: str | None = Field(default=None, description="which loaded model (default: the first)")
    layers: list[Index] | None = Field(
        default=None, min_length=1, description="layer indices to return, in this order (default: all)"
    )
    heads: list[Index] | None = Field(
        default=None, min_length=1, description="head indices to return, in this order (default: all)"
    )

    @field_validator("layers", "heads", mode="before")
    @classmethod
    def _json_integers(cls, value: object) -> object:
        return [integral(v) for v in value] if isinstance(value, list) else value


class AttentionToken(BaseModel):
    id: int
    text: str  # the token's own text (a piece of a UTF-8 character shows as U+FFFD)


class AttentionResponse(BaseModel):
    tokens: list[AttentionToken]
    n_layer: int
    n_head: int
    layers: list[int] = Field(description="the layer of each entry of attention")
    heads: list[int] = Field(description="the head of each entry of attention[layer]")
    attention: list[list[list[list[float]]]] = Field(
        description="[layer][head][query][key]: softmax weights, each query row sums to 1, zero above the diagonal"
    )


def bound_request(schema: dict[str, Any], names: list[str], *, n_layer: int, n_head: int) -> None:
    """What the OpenAPI document says of a request once the models are loaded (so that a
    schema-valid body is one the server accepts): the model names ("" and null: the default
    model) and the largest layer and head indices (of the smallest model)."""
    fields = schema["properties"]
    fields["model"]["enum"] = ["", *names, None]
    for name, count in (("layers", n_layer), ("heads", n_head)):
        for branch in fields[name]["anyOf"]:
            if branch.get("type") == "array":
                branch["items"]["maximum"] = count - 1
