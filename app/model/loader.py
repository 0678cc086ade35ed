"""Find a model folder, tell its layout, and load its weights only after checking every name and shape.

A folder is either OpenAI's release layout (openai/gpt-2 ``download_model.py``, read by
:mod:`app.model.formats.openai_tf`) or a Hugging Face ``GPT2LMHeadModel`` folder (transformers
``modeling_gpt2.py``, read by :mod:`app.model.formats.hf`). Whatever is wrong with a folder ends as
one :class:`ModelFileError` naming the file and the problem, never a TensorFlow traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from app.errors import ModelFileError
from app.model.formats import Inventory, Layout, StoredTensor
from app.model.hparams import ALIASES, PRESETS, HParams, param_shapes

OPENAI_FILES = (
    "checkpoint",
    "hparams.json",
    "model.ckpt.index",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.meta",
    "encoder.json",
    "vocab.bpe",
)
HF_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")

_MAX_LISTED = 5  # problems spelled out in one error message


def detect_layout(model_dir: Path | str) -> Layout:
    """``"openai"`` or ``"hf"`` from the files present; ModelFileError naming the folder otherwise.

    The weights file decides (``*.ckpt.index`` vs ``model.safetensors``); without one, the
    hyperparameters file does, so that the error about the missing weights comes from the right reader.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFileError(model_dir, "folder does not exist")
    openai_weights = (model_dir / "checkpoint").is_file() or any(model_dir.glob("*.ckpt.index"))
    hf_weights = (model_dir / "model.safetensors").is_file()
    if openai_weights and hf_weights:
        raise ModelFileError(
            model_dir, "holds both an OpenAI checkpoint and model.safetensors; keep one layout per folder"
        )
    if openai_weights or (not hf_weights and (model_dir / "hparams.json").is_file()):
        return "openai"
    if hf_weights or (model_dir / "config.json").is_file():
        return "hf"
    found = sorted(p.name for p in model_dir.iterdir())
    raise ModelFileError(
        model_dir,
        "not a GPT-2 model folder: expected OpenAI's files ("
        + ", ".join(OPENAI_FILES)
        + ") or Hugging Face's ("
        + ", ".join(HF_FILES)
        + "); found "
        + (", ".join(found[:10]) if found else "an empty folder")
        + (" ..." if len(found) > 10 else ""),
    )


class Format(NamedTuple):
    """How one layout is read: its scanner, its stored spelling of a weight, and its reader."""

    scan: Callable[[Path | str], Inventory]  # hyperparameters and tensor list, no tensor data
    stored_tensor: Callable[[str, tuple[int, ...]], StoredTensor]  # canonical name, shape -> key, shape
    read: Callable[..., tuple[HParams, dict[str, np.ndarray]]]  # (folder, *, dtype) -> hparams, weights


def _format_module(model_dir: Path) -> Format:
    # Imported here so that finding and describing folders does not pull in TensorFlow.
    if detect_layout(model_dir) == "openai":
        from app.model.formats import openai_tf

        return Format(openai_tf.scan_openai_model, openai_tf.stored_tensor, openai_tf.read_openai_model)
    from app.model.formats import hf

    return Format(hf.scan_hf_model, hf.stored_tensor, hf.read_hf_model)


def read_hparams(model_dir: Path | str) -> HParams:
    """The folder's hyperparameters, checked against its tensor list, without reading tensor data.

    Lets a memory plan be made (and refused) before gigabytes are read.
    """
    fmt = _format_module(Path(model_dir))
    inv = fmt.scan(model_dir)
    check_inventory(inv, fmt.stored_tensor)
    return inv.hparams


def load_weights(
    model_dir: Path | str, *, dtype: npt.DTypeLike = np.float32
) -> tuple[HParams, dict[str, np.ndarray]]:
    """Hyperparameters and ``{canonical_name: array}`` (names and shapes of ``param_shapes(hp)``).

    The folder's tensor list is checked against its hyperparameters before any tensor data is read.
    """
    fmt = _format_module(Path(model_dir))
    check_inventory(fmt.scan(model_dir), fmt.stored_tensor)
    return fmt.read(model_dir, dtype=dtype)


def check_inventory(inv: Inventory, stored_tensor: Callable[[str, tuple[int, ...]], StoredTensor]) -> None:
    """Raise ModelFileError unless ``inv`` holds exactly the tensors ``param_shapes(inv.hparams)`` needs.

    Hyperparameters that contradict the weights (layer count, wte/wpe sizes) are blamed on the
    hyperparameters file; missing, unexpected or misshapen tensors on the weights file.
    ``stored_tensor(name, shape)`` gives the key and shape the layout would store a weight under.
    """
    hp, tensors, weights = inv.hparams, inv.tensors, inv.weights_file.name
    disagreements: dict[str, str] = {}  # hparams field -> what the weights say instead
    layers = {int(m[1]) for m in map(re.compile(r"h([0-9]+)/").match, tensors) if m}
    if layers and layers == set(range(len(layers))) and len(layers) != hp.n_layer:
        disagreements["n_layer"] = f"{weights} holds {len(layers)} blocks (h0..h{len(layers) - 1})"
    for name, fields in (("wte", ("n_vocab", "n_embd")), ("wpe", ("n_ctx", "n_embd"))):
        shape = tensors[name].shape if name in tensors else ()
        for field, size in zip(fields, shape, strict=True) if len(shape) == 2 else ():
            if size != getattr(hp, field):
                disagreements.setdefault(field, f"{tensors[name].key} in {weights} has shape {list(shape)}")
    if disagreements:
        raise ModelFileError(
            inv.hparams_file,
            "; ".join(f"{field} is {getattr(hp, field)} but {why}" for field, why in disagreements.items()),
        )

    expected = param_shapes(hp)
    problems = []
    for name, shape in expected.items():
        want = stored_tensor(name, shape)
        if name not in tensors:
            problems.append(f"{want.key} is missing")
        elif tensors[name].shape != want.shape:
            problems.append(
                f"{tensors[name].key} has shape {list(tensors[name].shape)}, expected {list(want.shape)} "
                f"from {inv.hparams_file.name}"
            )
    problems += [f"{tensors[n].key} is not a weight of this model" for n in tensors if n not in expected]
    problems += [f"{key} is not a GPT-2 weight" for key in inv.unknown]
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ModelFileError(
            inv.weights_file, (f"{len(problems)} problems: " if len(problems) > 1 else "") + listed + more
        )


def resolve_model_dir(name_or_path: Path | str, models_dir: Path | str) -> Path:
    """An existing folder as given, else ``models_dir/name`` (OpenAI's old names 117M/345M accepted).

    Raises FileNotFoundError saying where it looked and, for OpenAI's sizes, how to download one.
    """
    given = Path(name_or_path).expanduser()
    if given.is_dir():
        return given
    name = str(name_or_path)
    canonical = ALIASES.get(name, name)
    candidates = list(dict.fromkeys([Path(models_dir) / canonical, Path(models_dir) / name]))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = [str(p) for p in dict.fromkeys([given.absolute(), *candidates])]
    where = ", ".join(looked[:-1]) + f" or {looked[-1]}" if len(looked) > 1 else looked[0]
    hint = f"; run `gpt2-serve download {canonical}` to fetch it" if canonical in PRESETS else ""
    raise FileNotFoundError(f"no model {name!r}: found no folder at {where}{hint}")
