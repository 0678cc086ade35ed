"""Randomly initialised GPT-2 weights, for tests and for a model to run before any is downloaded.

The initialisation is GPT-2's: openai/gpt-2 ``src/model.py`` draws ``wte`` with std 0.02, ``wpe``
with std 0.01 and every conv weight with std 0.02; the paper (and transformers' ``GPT2PreTrainedModel
._init_weights``) scales the residual projections ``c_proj`` by ``1/sqrt(2 * n_layer)``. Biases are 0,
layer-norm gains 1 and shifts 0.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.model.formats import LAYOUTS, Layout
from app.model.hparams import HParams, param_shapes
from app.tokenizer.load import TokenizerFiles, gpt2_tokenizer_files


def random_params(
    hp: HParams, *, seed: int, dtype: npt.DTypeLike = np.float32, ln_noise: bool = False
) -> dict[str, np.ndarray]:
    """``{canonical_name: array}`` with the shapes of ``param_shapes(hp)``, drawn from ``default_rng(seed)``.

    ``ln_noise=True`` also randomises layer-norm gains (1 + N(0, 0.1)) and shifts and all biases
    (N(0, 0.1) and N(0, 0.02)), so parity tests exercise every parameter rather than ones and zeros.
    """
    rng = np.random.default_rng(seed)
    proj_std = 0.02 / math.sqrt(2 * hp.n_layer)

    def normal(std: float, shape: tuple[int, ...]) -> np.ndarray:
        # float32 draws: half the memory of float64 for the 1558M model's 80M-entry wte.
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(hp).items():
        leaf = name.rpartition("/")[2]
        is_norm = "/ln_" in f"/{name}"
        if name == "wte":
            array = normal(0.02, shape)
        elif name == "wpe":
            array = normal(0.01, shape)
        elif leaf == "w":
            array = normal(proj_std if name.endswith("c_proj/w") else 0.02, shape)
        elif leaf == "g":
            array = 1.0 + normal(0.1, shape) if ln_noise else np.ones(shape)
        elif ln_noise:  # a bias or a layer-norm shift
            array = normal(0.1 if is_norm else 0.02, shape)
        else:
            array = np.zeros(shape)
        params[name] = array.astype(dtype, copy=False)
    return params


def write_random_model(
    dest_dir: Path | str,
    hp: HParams,
    *,
    seed: int = 0,
    layout: Layout = "openai",
    tokenizer: TokenizerFiles | None = None,
) -> Path:
    """Write a random GPT-2 to ``dest_dir`` in ``layout``, with ``tokenizer``'s files (default:
    GPT-2's own, 50257 tokens); ``hp.n_vocab`` must be the tokenizer's vocabulary size.

    The folder appears whole or not at all (written beside it, then renamed), so a reader or an
    interrupted run never sees half a model. ``dest_dir`` must not exist or be empty.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected {' or '.join(map(repr, LAYOUTS))}")
    if tokenizer is None:
        tokenizer, n_vocab, whose = gpt2_tokenizer_files(), 50257, "GPT-2's BPE vocabulary"
    else:
        n_vocab, whose = tokenizer.load().n_vocab, f"the tokenizer's vocabulary ({tokenizer.paths[0].parent})"
    if hp.n_vocab != n_vocab:
        raise ValueError(f"n_vocab must be {n_vocab} to match {whose}, got {hp.n_vocab}")
    dest = Path(dest_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} already exists and is not an empty folder")
    # Imported here so that the layout not written does not cost its import (TensorFlow, safetensors).
    if layout == "openai":
        from app.model.formats.openai_tf import write_openai_model as write
    else:
        from app.model.formats.hf import write_hf_model as write
    params = random_params(hp, seed=seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        write(staging, hp, params, tokenizer=tokenizer)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
