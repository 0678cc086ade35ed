"""Shared fixtures: a tiny real GPT-2 (real 50257-token vocabulary) in both on-disk layouts."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from app.model.hparams import HParams  # noqa: E402
from app.model.random_init import random_params  # noqa: E402
from tests.server_harness import TINY  # noqa: E402


@pytest.fixture(scope="session")
def tiny_hp() -> HParams:
    return TINY


@pytest.fixture(scope="session")
def tiny_params() -> dict[str, np.ndarray]:
    # ln_noise: layer-norm gains/shifts and biases random too, so parity covers every weight.
    return random_params(TINY, seed=1, ln_noise=True)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_params) -> dict[str, object]:
    """The same tiny weights written as an OpenAI folder and as a Hugging Face folder."""
    from app.model.formats.hf import write_hf_model
    from app.model.formats.openai_tf import write_openai_model
    from app.tokenizer.bundled import bundled_bpe_files

    enc, bpe = bundled_bpe_files()
    root = tmp_path_factory.mktemp("models")
    return {
        "openai": write_openai_model(
            root / "tiny-openai", TINY, tiny_params, encoder_json=enc, vocab_bpe=bpe
        ),
        "hf": write_hf_model(root / "tiny-hf", TINY, tiny_params, encoder_json=enc, vocab_bpe=bpe),
    }
