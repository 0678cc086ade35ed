"""Hyperparameters of a configured model without loading it, for ``plan`` and ``devices``.

A folder (in ``models_dir`` or a path) gives its own ``hparams``; OpenAI's size names give the
published shapes even before the files are downloaded, so a plan can be made before a download of
gigabytes; ``default`` is the demo model when present, else the small random model the server
would write (nothing is written here).
"""

from __future__ import annotations

from pathlib import Path

from app.model.default_model import DEFAULT_NAME, DEMO, RANDOM_HPARAMS
from app.model.hparams import ALIASES, PRESETS, HParams, preset
from app.model.loader import read_hparams, resolve_model_dir


def model_hparams(name: str, models_dir: Path | str) -> tuple[HParams, str]:
    """``(hparams, where they came from)``; FileNotFoundError when neither a folder nor a known size."""
    if name == DEFAULT_NAME:
        demo = Path(models_dir) / DEMO
        if demo.is_dir():
            return read_hparams(demo), str(demo)
        return RANDOM_HPARAMS, "random default model (written on first serve)"
    try:
        folder = resolve_model_dir(name, models_dir)
    except FileNotFoundError:
        if ALIASES.get(name, name) in PRESETS:
            return preset(name), f"GPT-2 {ALIASES.get(name, name)} shape (not downloaded)"
        raise
    return read_hparams(folder), str(folder)
