"""Turn a training run into a servable model folder (OpenAI's layout), and write its model card.

The card is written once, by :func:`write_model_card`, after the folder exists (so its samples can
come from the exported folder itself).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.keywords.model_spec import write_model_spec
from app.model.formats.openai_tf import write_openai_model
from app.model.hparams import HParams, param_shapes
from app.tokenizer.load import (
    TokenizerFiles,
    describe_tokenizer,
    find_tokenizer_files,
    gpt2_tokenizer_files,
    load_tokenizer,
)
from app.train.losslog import last_losses
from app.train.trainer import Weights


def read_run(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"no training run at {run_dir} (expected {path.name})")
    return json.loads(path.read_text())


def export_weights(run_dir: Path | str, name: str, models_dir: Path | str = "model_store") -> Path:
    """Write the run's latest weights to ``models_dir/name`` (OpenAI layout); returns the folder.

    The folder has no model card yet: :func:`write_model_card` adds it.
    """
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    hp = HParams(**info["hparams"])
    latest = tf.train.latest_checkpoint(str(run_dir))
    if latest is None:
        raise FileNotFoundError(f"run {run_dir} has no checkpoint yet")
    weights = Weights({k: np.zeros(s, np.float32) for k, s in param_shapes(hp).items()})
    tf.train.Checkpoint(weights=weights).restore(latest).expect_partial().assert_existing_objects_matched()
    params = {k: v.numpy() for k, v in weights.v.items()}
    dest = Path(models_dir) / name
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} already exists; choose another --name or remove it")
    write_openai_model(dest, hp, params, tokenizer=run_tokenizer(run_dir))
    if info.get("keywords") is not None:  # trained on a keyword-encoded dataset
        write_model_spec(dest, info["keywords"])
    return dest


def run_tokenizer(run_dir: Path) -> TokenizerFiles:
    """The tokenizer files the run kept from its source model (a BPE pair or an ``sp.model``);
    GPT-2's own for a run that kept none (runs made before the trainer kept them, which all started
    from GPT-2's vocabulary)."""
    return find_tokenizer_files(run_dir) or gpt2_tokenizer_files()


def write_model_card(dest: Path, run_dir: Path, name: str, samples: list[str] | None = None) -> Path:
    """Write ``dest/MODEL_CARD.md`` describing run ``run_dir`` (and showing ``samples``); returns its path."""
    info = read_run(run_dir)
    steps, loss, val = last_losses(run_dir)
    path = dest / "MODEL_CARD.md"
    tokenizer = describe_tokenizer(load_tokenizer(dest))
    path.write_text(
        model_card(name, info, HParams(**info["hparams"]), steps, loss, val, samples or [], tokenizer)
    )
    return path


def model_card(
    name: str,
    info: dict,
    hp: HParams,
    steps: int,
    loss: float | None,
    val: float | None,
    samples: list[str],
    tokenizer: dict,
) -> str:
    """``tokenizer``: :func:`app.tokenizer.load.describe_tokenizer` of the model's tokenizer."""
    cfg = info["config"]
    lines = [
        f"# {name}",
        "",
        f"GPT-2 trained with gpt2-serve's trainer ({datetime.now(timezone.utc).date().isoformat()}), starting from the model below.",
        "",
        f"- Trained on: `{info['dataset']}`",
        f"- Started from: `{info['source_model']}`",
        f"- Size: {hp.n_layer} layers, width {hp.n_embd}, {hp.n_head} heads, context {hp.n_ctx}, "
        f"vocabulary {hp.n_vocab}; {hp.n_params():,} parameters",
        f"- Tokenizer: {tokenizer['kind']}, {tokenizer['n_vocab']} tokens (the source model's)",
        f"- Steps: {steps} (batch {cfg['batch_size']} x {cfg['accumulate_gradients']} accumulated, "
        f"windows of {cfg['context'] or hp.n_ctx} tokens, {cfg['optimizer']} at learning rate {cfg['learning_rate']})",
        f"- Final training loss: {loss:.4f}" if loss is not None else "- Final training loss: n/a",
        f"- Validation loss: {val:.4f}" if val is not None else "- Validation loss: not measured",
    ]
    if samples:
        lines += ["", "## Samples", ""]
        for i, text in enumerate(samples, 1):
            lines += [f"### Sample {i}", "", "```", text.strip(), "```", ""]
    return "\n".join(lines) + "\n"
