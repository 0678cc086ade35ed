"""The model `make run` uses when none is named: the trained demo if present, else a random one.

``model_store/demo`` is the small GPT-2 trained by ``make demo-model``. Until it exists, a small
randomly initialised GPT-2 with the real vocabulary is written to ``model_store/random-default``
on first use (its text is random tokens; the message passed to ``notify`` says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from app.model.hparams import HParams

DEFAULT_NAME = "default"
DEMO = "demo"
RANDOM = "random-default"
RANDOM_HPARAMS = HParams(n_ctx=256, n_embd=128, n_head=4, n_layer=2)

log = logging.getLogger(__name__)


def resolve_default(models_dir: Path | str, *, notify: Callable[[str], None] = log.warning) -> Path:
    """The default model's folder, writing the random one on first use and telling ``notify``
    (by default this module's logger; the CLI prints it)."""
    models_dir = Path(models_dir)
    demo = models_dir / DEMO
    if demo.is_dir():
        return demo
    target = models_dir / RANDOM
    if not target.is_dir():
        from app.model.random_init import write_random_model

        models_dir.mkdir(parents=True, exist_ok=True)
        write_random_model(target, RANDOM_HPARAMS, seed=0)
        notify(
            f"no trained default model yet; wrote a randomly initialised GPT-2 "
            f"({RANDOM_HPARAMS.n_layer} layers, width {RANDOM_HPARAMS.n_embd}) to {target}. "
            "Its output is random tokens."
        )
    return target
