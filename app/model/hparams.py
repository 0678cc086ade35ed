"""GPT-2 hyperparameters (``hparams.json`` of OpenAI's model folders) and the canonical weight names.

Names follow openai/gpt-2 ``src/model.py`` without the ``model/`` scope, so both checkpoint
formats map onto one dictionary ``{name: np.ndarray}``; the ``[1, nx, nf]`` conv weights of the
TF checkpoint are stored squeezed as ``[nx, nf]`` (the same layout as Hugging Face's Conv1D).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from app.errors import ModelFileError, ParamError


@dataclass(frozen=True)
class HParams:
    n_vocab: int = 50257  # vocabulary size; token 50256 is <|endoftext|>
    n_ctx: int = 1024  # learned positions, so the longest context the model can see
    n_embd: int = 768  # width of the residual stream
    n_head: int = 12  # attention heads; n_embd must divide evenly
    n_layer: int = 12  # transformer blocks

    def __post_init__(self) -> None:
        for field, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"hparams: {field} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"hparams: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    def check_token_ids(self, ids: Sequence[int], param: str = "inputs") -> None:
        """The one vocabulary check (requests, the engine's calls, attention maps)."""
        bad = next((i for i in ids if not 0 <= i < self.n_vocab), None)
        if bad is not None:
            raise ParamError(param, f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def n_params(self) -> int:
        return sum(int_prod(s) for s in param_shapes(self).values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> HParams:
        return cls.from_mapping(read_json_object(path), source=path)

    @classmethod
    def from_mapping(cls, raw: dict, *, source: Path | str = "hparams") -> HParams:
        try:
            return cls(**{k: raw[k] for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")})
        except KeyError as exc:
            raise ModelFileError(source, f"missing key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ModelFileError(source, str(exc)) from None


def read_json_object(path: Path | str) -> dict:
    """A model folder's JSON object file (``hparams.json``, ``config.json``), or ModelFileError."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(path, "file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ModelFileError(path, "expected a JSON object")
    return raw


def int_prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


# OpenAI's released sizes; 117M and 345M are the names they were first published under.
PRESETS: dict[str, HParams] = {
    "124M": HParams(n_embd=768, n_head=12, n_layer=12),
    "355M": HParams(n_embd=1024, n_head=16, n_layer=24),
    "774M": HParams(n_embd=1280, n_head=20, n_layer=36),
    "1558M": HParams(n_embd=1600, n_head=25, n_layer=48),
}
ALIASES = {"117M": "124M", "345M": "355M"}


def preset(name: str) -> HParams:
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise KeyError(f"unknown GPT-2 size {name!r}; known: {', '.join([*PRESETS, *ALIASES])}")
    return PRESETS[key]


LAYER_PARAMS = (
    "ln_1/g",
    "ln_1/b",
    "attn/c_attn/w",
    "attn/c_attn/b",
    "attn/c_proj/w",
    "attn/c_proj/b",
    "ln_2/g",
    "ln_2/b",
    "mlp/c_fc/w",
    "mlp/c_fc/b",
    "mlp/c_proj/w",
    "mlp/c_proj/b",
)


def param_shapes(hp: HParams) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for every weight of a GPT-2 with these hyperparameters."""
    e = hp.n_embd
    per_layer = {
        "ln_1/g": (e,),
        "ln_1/b": (e,),
        "attn/c_attn/w": (e, 3 * e),
        "attn/c_attn/b": (3 * e,),
        "attn/c_proj/w": (e, e),
        "attn/c_proj/b": (e,),
        "ln_2/g": (e,),
        "ln_2/b": (e,),
        "mlp/c_fc/w": (e, 4 * e),
        "mlp/c_fc/b": (4 * e,),
        "mlp/c_proj/w": (4 * e, e),
        "mlp/c_proj/b": (e,),
    }
    shapes: dict[str, tuple[int, ...]] = {"wte": (hp.n_vocab, e), "wpe": (hp.n_ctx, e)}
    for i in range(hp.n_layer):
        for name in LAYER_PARAMS:
            shapes[f"h{i}/{name}"] = per_layer[name]
    shapes["ln_f/g"] = (e,)
    shapes["ln_f/b"] = (e,)
    return shapes
