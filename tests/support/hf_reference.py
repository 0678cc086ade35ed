"""Hugging Face transformers' GPT2LMHeadModel (PyTorch, CPU) built from our weights: the
independent reference for numerics (as minGPT's tests/test_huggingface_import.py uses it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from app.model.formats.hf import hf_key
from app.model.hparams import HParams

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

# torch and transformers (~6 s to import) are imported by the functions that use them, so a test
# process that runs none of them does not pay for them at collection.


def hf_model(hp: HParams, params: dict[str, np.ndarray]) -> GPT2LMHeadModel:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=hp.n_vocab,
        n_positions=hp.n_ctx,
        n_embd=hp.n_embd,
        n_layer=hp.n_layer,
        n_head=hp.n_head,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config).eval()
    state = {
        f"transformer.{hf_key(name)}": torch.from_numpy(np.ascontiguousarray(a)) for name, a in params.items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(
        k == "lm_head.weight" or k.endswith(".attn.bias") or k.endswith("masked_bias") for k in missing
    ), missing
    return model


def hf_logits(model: GPT2LMHeadModel, ids: list[int]) -> np.ndarray:
    """Logits ``[T, V]`` of a full forward pass over ``ids``."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(model: GPT2LMHeadModel, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=50256,
            eos_token_id=None,
        )
    return out[0, len(ids) :].tolist()
