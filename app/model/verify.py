"""Check that a downloaded OpenAI release folder is whole and is the GPT-2 it claims to be.

``hparams.json`` against the expected hyperparameters, the two BPE files against their known
hashes, ``checkpoint`` naming ``model.ckpt``, and the checkpoint index's ``wte`` against the
expected size. Problems raise :class:`ModelFileError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

from app.errors import ModelFileError
from app.model.hparams import HParams
from app.tokenizer.bundled import ENCODER_JSON_SHA256, VOCAB_BPE_SHA256, sha256_of

# encoder.json and vocab.bpe are the same for every size.
BPE_SHA256 = {"encoder.json": ENCODER_JSON_SHA256, "vocab.bpe": VOCAB_BPE_SHA256}


def check_release_folder(folder: Path, expected: HParams, *, size: str = "expected") -> None:
    """Raise :class:`ModelFileError` unless ``folder`` is OpenAI's release of GPT-2 ``size``
    with hyperparameters ``expected``."""
    folder = Path(folder)
    hp = HParams.from_file(folder / "hparams.json")
    if hp != expected:
        raise ModelFileError(
            folder / "hparams.json", f"{hp} does not match the {size} hyperparameters {expected}"
        )
    for name, want in BPE_SHA256.items():
        digest = sha256_of(folder / name)
        if digest != want:
            raise ModelFileError(folder / name, f"sha256 {digest[:12]}... is not GPT-2's ({want[:12]}...)")
    checkpoint = (folder / "checkpoint").read_text(encoding="utf-8", errors="replace")
    if not re.search(r'^model_checkpoint_path:\s*"(?:.*/)?model\.ckpt"\s*$', checkpoint, re.M):
        raise ModelFileError(folder / "checkpoint", "does not name model.ckpt")

    from app.model.formats.openai_tf import scan_openai_model  # imports TensorFlow: seconds

    inventory = scan_openai_model(folder)
    wte = inventory.tensors.get("wte")
    want = (expected.n_vocab, expected.n_embd)
    if wte is None or wte.shape != want:
        found = f"model/wte has shape {list(wte.shape)}" if wte else "has no model/wte"
        raise ModelFileError(inventory.weights_file, f"{found}, expected {list(want)}")
