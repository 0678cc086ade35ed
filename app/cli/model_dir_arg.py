"""The ``--model`` argument of the commands that read a model folder: a name, a folder, or ``default``."""

from __future__ import annotations

import sys
from pathlib import Path

from app.model.default_model import DEFAULT_NAME, resolve_default
from app.model.loader import resolve_model_dir


def model_dir_arg(name: str, models_dir: Path | str) -> Path:
    """The folder ``--model`` names; ``default`` is the demo or the random model (written on first
    use, which is said on stderr)."""
    if name == DEFAULT_NAME:
        return resolve_default(
            models_dir, notify=lambda message: print(f"gpt2-serve: {message}", file=sys.stderr)
        )
    return resolve_model_dir(name, models_dir)
