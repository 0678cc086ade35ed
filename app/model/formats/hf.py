"""A Hugging Face GPT-2 folder: ``config.json`` + ``model.safetensors`` (+ ``vocab.json``, ``merges.txt``,
or a sentencepiece ``sp.model``).

Keys follow transformers' ``modeling_gpt2.py`` (``GPT2Model``): ``wte.weight`` ``[n_vocab, n_embd]``,
``wpe.weight`` ``[n_ctx, n_embd]``, ``h.{i}.ln_1.weight``/``.bias``, ``h.{i}.attn.c_attn.weight``
``[nx, 3nx]`` (``Conv1D`` stores ``[in, out]``, exactly OpenAI's squeezed layout), ``h.{i}.attn.c_proj.*``,
``h.{i}.ln_2.*``, ``h.{i}.mlp.c_fc.*``, ``h.{i}.mlp.c_proj.*``, ``ln_f.weight``/``.bias``. So the
mapping is a renaming only: ``h0/attn/c_attn/w`` <-> ``h.0.attn.c_attn.weight``, ``ln_1/g`` <-> ``ln_1.weight``.

``GPT2LMHeadModel.save_pretrained`` prefixes every key with ``transformer.`` and the hub's ``gpt2``
folder carries the causal-mask buffers ``h.{i}.attn.bias``/``masked_bias``; reading accepts both.
A ``lm_head.weight`` is accepted only if it equals ``wte`` (GPT-2 ties its output head to ``wte``).
Stored float16/bfloat16 tensors are converted to the requested dtype.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from app.errors import ModelFileError
from app.model.formats import Inventory, StoredTensor, is_canonical, require_params
from app.model.hparams import HParams, param_shapes, read_json_object
from app.tokenizer.load import TokenizerFiles

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PREFIX = "transformer."
LM_HEAD = "lm_head.weight"

# Non-persistent causal-mask buffers older transformers versions saved; not weights.
_BUFFER = re.compile(r"h\.[0-9]+\.attn\.(?:bias|masked_bias)")
_LAYER_KEY = re.compile(r"h\.([0-9]+)\.(.+)\.(weight|bias)")

# config.json key -> HParams field; older configs also carry n_ctx (== n_positions).
_CONFIG_KEYS = {
    "vocab_size": "n_vocab",
    "n_positions": "n_ctx",
    "n_embd": "n_embd",
    "n_head": "n_head",
    "n_layer": "n_layer",
}

# Settings that would make a different network than GPT-2, with GPT-2's values (the engine implements only GPT-2).
_GPT2_SETTINGS: Mapping[str, tuple[Any, ...]] = {
    "model_type": ("gpt2",),
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
}


def hf_key(name: str) -> str:
    """``h0/attn/c_attn/w`` -> ``h.0.attn.c_attn.weight``; ``wte`` -> ``wte.weight``."""
    *scopes, leaf = name.split("/")
    if not scopes:
        return f"{leaf}.weight"
    if re.fullmatch(r"h[0-9]+", scopes[0]):
        scopes = ["h", scopes[0][1:], *scopes[1:]]
    return ".".join([*scopes, "bias" if leaf == "b" else "weight"])


def canonical_name(key: str) -> str | None:
    """The canonical name of a safetensors key (with or without ``transformer.``), or None."""
    key = key.removeprefix(PREFIX)
    if key in ("wte.weight", "wpe.weight"):
        return key.split(".")[0]
    layer = _LAYER_KEY.fullmatch(key)
    scope, kind = (
        (f"h{layer[1]}/{layer[2].replace('.', '/')}", layer[3]) if layer else key.rpartition(".")[::2]
    )
    if kind == "bias":
        leaf = "b"
    elif kind == "weight":
        leaf = "g" if scope.rpartition("/")[2].startswith("ln_") else "w"
    else:
        return None
    name = f"{scope}/{leaf}"
    return name if is_canonical(name) else None


def stored_tensor(name: str, shape: tuple[int, ...]) -> StoredTensor:
    """The safetensors key and shape of canonical ``name`` (shapes are the same in both)."""
    return StoredTensor(hf_key(name), tuple(shape))


def hparams_from_config(path: Path) -> HParams:
    """GPT-2 hyperparameters from a ``GPT2Config`` ``config.json``; refuses other architectures."""
    raw = read_json_object(path)
    for key, allowed in _GPT2_SETTINGS.items():
        if key in raw and raw[key] not in allowed:
            raise ModelFileError(
                path, f"{key} is {raw[key]!r}; GPT-2 has {allowed[0]!r}, the only network served"
            )
    if raw.get("n_inner") not in (None, 4 * raw.get("n_embd", 0)):
        raise ModelFileError(path, f"n_inner is {raw['n_inner']!r}; GPT-2's MLP is 4 * n_embd wide")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float))
        or not math.isclose(eps, 1e-5, rel_tol=1e-3)
    ):
        raise ModelFileError(path, f"layer_norm_epsilon is {raw['layer_norm_epsilon']!r}; GPT-2 uses 1e-05")
    if "n_positions" not in raw and "n_ctx" in raw:
        raw = {**raw, "n_positions": raw["n_ctx"]}
    missing = [key for key in _CONFIG_KEYS if key not in raw]
    if missing:
        raise ModelFileError(path, f"missing key {missing[0]!r}")
    try:
        return HParams(**{field: raw[key] for key, field in _CONFIG_KEYS.items()})
    except ValueError as exc:
        raise ModelFileError(path, str(exc)) from None


def gpt2_config(hp: HParams, eot_token: int | None = 50256) -> dict[str, Any]:
    """``config.json`` as transformers' ``GPT2Config(...).save_pretrained`` writes it for ``hp``, the
    tokenizer's end-of-text id as ``bos_token_id`` and ``eos_token_id`` (GPT-2's 50256)."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": eot_token,
        "embd_pdrop": 0.1,
        "eos_token_id": eot_token,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": hp.n_ctx,
        "n_embd": hp.n_embd,
        "n_head": hp.n_head,
        "n_inner": None,
        "n_layer": hp.n_layer,
        "n_positions": hp.n_ctx,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": hp.n_vocab,
    }


def _weights_file(model_dir: Path) -> Path:
    path = model_dir / WEIGHTS
    if path.is_file():
        return path
    if (model_dir / f"{WEIGHTS}.index.json").is_file():
        raise ModelFileError(
            path, "file is missing; sharded safetensors (model.safetensors.index.json) are not supported"
        )
    if (model_dir / "pytorch_model.bin").is_file():
        raise ModelFileError(
            path,
            "file is missing; pytorch_model.bin is a pickle and is not read: re-save with save_pretrained()",
        )
    raise ModelFileError(path, "file is missing")


def _corrupt(path: Path, exc: BaseException) -> ModelFileError:
    return ModelFileError(path, f"truncated or corrupt ({exc})")


def scan_hf_model(model_dir: Path | str) -> Inventory:
    """Read ``config.json`` and the safetensors header (keys and shapes), not the tensor data."""
    model_dir = Path(model_dir)
    config = model_dir / CONFIG
    hp = hparams_from_config(config)
    path = _weights_file(model_dir)
    tensors: dict[str, StoredTensor] = {}
    unknown: list[str] = []
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in sorted(f.keys()):
                name = canonical_name(key)
                if name is not None and name not in tensors:
                    tensors[name] = StoredTensor(key, tuple(f.get_slice(key).get_shape()))
                elif key.removeprefix(PREFIX) != LM_HEAD and not _BUFFER.fullmatch(key.removeprefix(PREFIX)):
                    unknown.append(key)
    except (SafetensorError, OSError) as exc:
        raise _corrupt(path, exc) from None
    return Inventory(hp, config, path, tensors, tuple(unknown))


def read_hf_model(
    model_dir: Path | str, *, dtype: npt.DTypeLike = np.float32
) -> tuple[HParams, dict[str, np.ndarray]]:
    """All GPT-2 weights of a Hugging Face folder as ``{canonical_name: array}`` in ``dtype``.

    Names and shapes are not checked against ``config.json`` here; :func:`app.model.loader.load_weights`
    does that first. An untied ``lm_head.weight`` raises ModelFileError.
    """
    inventory = scan_hf_model(model_dir)
    path = inventory.weights_file
    params: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            stored = {name: f.get_tensor(t.key) for name, t in inventory.tensors.items()}
            for key in filter(lambda k: k.removeprefix(PREFIX) == LM_HEAD, f.keys()):
                head, wte = f.get_tensor(key), stored.get("wte")
                if wte is None or head.shape != wte.shape or not np.array_equal(head, wte):
                    raise ModelFileError(
                        path, f"{key} differs from wte.weight: an untied output head is not GPT-2"
                    )
    except (SafetensorError, OSError) as exc:
        raise _corrupt(path, exc) from None
    for name, array in stored.items():
        params[name] = array.astype(dtype, copy=False)
    return inventory.hparams, params


def write_hf_model(
    dest_dir: Path | str,
    hp: HParams,
    params: Mapping[str, np.ndarray],
    *,
    tokenizer: TokenizerFiles,
) -> Path:
    """Write ``config.json``, ``generation_config.json``, ``model.safetensors``, ``vocab.json`` and
    ``merges.txt`` (a sentencepiece tokenizer: ``sp.model``) so that
    ``GPT2LMHeadModel.from_pretrained(dest_dir)`` loads it; returns ``dest_dir``.

    Keys are written without the ``transformer.`` prefix, as the hub's ``gpt2`` folder has them; the
    tied ``lm_head`` is not stored. Tensors keep ``params``' dtype (float32, float16 or bfloat16).
    """
    require_params(hp, params)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    tensors = {hf_key(name): np.ascontiguousarray(params[name]) for name in param_shapes(hp)}
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt"})
    eot = tokenizer.eot_token()
    (dest / CONFIG).write_text(json.dumps(gpt2_config(hp, eot), indent=2) + "\n", encoding="utf-8")
    generation = {"_from_model_config": True, "bos_token_id": eot, "eos_token_id": eot}
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    tokenizer.copy_to(dest, "hf")
    return dest
