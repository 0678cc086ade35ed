"""The two on-disk layouts GPT-2 weights come in, both read into one ``{canonical_name: array}``.

* :mod:`.openai_tf` — OpenAI's release folder (openai/gpt-2 ``download_model.py``): a TF1-style
  checkpoint bundle with variables ``model/h0/attn/c_attn/w`` of shape ``[1, nx, nf]``.
* :mod:`.hf` — a Hugging Face ``GPT2LMHeadModel`` folder (transformers ``modeling_gpt2.py``):
  ``config.json`` plus ``model.safetensors`` with keys ``h.0.attn.c_attn.weight`` of shape ``[nx, nf]``.

Each module offers ``read_*``/``write_*`` for whole folders and ``scan_*`` which returns an
:class:`Inventory`: the hyperparameters and every stored key and shape, read without loading any
tensor data, so :func:`app.model.loader.load_weights` can reject a bad folder before reading gigabytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from app.model.hparams import LAYER_PARAMS, HParams, param_shapes

Layout = Literal["openai", "hf"]  # the folder layouts: OpenAI's release, Hugging Face's
LAYOUTS: tuple[Layout, ...] = get_args(Layout)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as the file stores it: its key there and its shape there (e.g. ``[1, nx, nf]``)."""

    key: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Inventory:
    """A model folder's declared hyperparameters and tensor list, before any tensor is read."""

    hparams: HParams
    hparams_file: Path  # hparams.json / config.json: named when hyperparameters disagree with weights
    weights_file: Path  # model.ckpt.index / model.safetensors: named in missing-name and shape errors
    tensors: dict[str, StoredTensor]  # canonical name (any layer index found) -> stored key and shape
    unknown: tuple[str, ...]  # stored keys that are not GPT-2 weights at all


# Every GPT-2 weight name, for any layer index (leading zeros are not GPT-2's spelling).
_CANONICAL = re.compile(
    r"wte|wpe|ln_f/[gb]|h(?:0|[1-9][0-9]*)/(?:" + "|".join(map(re.escape, LAYER_PARAMS)) + ")"
)


def is_canonical(name: str) -> bool:
    """True for names like ``wte``, ``h11/mlp/c_fc/w`` or ``ln_f/b`` (see :func:`param_shapes`)."""
    return _CANONICAL.fullmatch(name) is not None


def require_params(hp: HParams, params: Mapping[str, np.ndarray]) -> None:
    """Refuse to write weights that do not match ``hp``: a writer must never produce a bad folder.

    Raises ``ValueError`` (a caller's mistake, not a bad file) listing what is wrong.
    """
    expected = param_shapes(hp)
    problems = [f"{n} is missing" for n in expected if n not in params]
    problems += [f"{n} is not a weight of this GPT-2" for n in params if n not in expected]
    problems += [
        f"{n} has shape {list(np.shape(params[n]))}, expected {list(s)}"
        for n, s in expected.items()
        if n in params and tuple(np.shape(params[n])) != s
    ]
    if problems:
        raise ValueError(f"params do not match {hp}: " + "; ".join(problems[:5]))
