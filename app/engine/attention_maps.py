"""Attention maps: the softmax weights of every layer and head over one sequence.

The cache-free forward pass (:func:`app.engine.gpt2.block`, as :func:`app.engine.gpt2.forward_full`
runs it) over a serving engine's own weights (:meth:`app.engine.engine.Engine.weights`), with an
attention that keeps its weights (:func:`app.engine.gpt2.causal_weights`) as it mixes the values.
The result is ``[layers, heads, T, T]`` float32: query rows, key columns, each row summing to 1 and
zero above the diagonal, the layout of transformers' ``output_attentions`` and of bertviz's head view.

It runs eagerly and touches no KV cache, so it may run in another thread while the engine
generates (each call allocates its own activations; the weights are only read).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from app.engine import gpt2
from app.engine.engine import ServingWeights
from app.model.hparams import HParams


def attention_maps(
    weights: ServingWeights,
    ids: Sequence[int],
    *,
    hp: HParams,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> np.ndarray:
    """The attention weights of ``ids`` (1..n_ctx token ids): ``[len(layers), len(heads), T, T]``
    float32, layers and heads in the order given (default: all, so ``[n_layer, n_head, T, T]``).
    Only the blocks up to the last layer asked for run. ValueError for ids or indices out of range."""
    ids = _checked_ids(ids, hp)
    layers = _checked_indices(layers, hp.n_layer, "layer")
    heads = _checked_indices(heads, hp.n_head, "head")
    t_len = len(ids)
    kept: list[tf.Tensor] = []

    def attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
        probs = gpt2.causal_weights(q, k, hp=hp, n=1, t_len=t_len)  # [1, H, T, T] float32
        kept.append(probs[0])
        return gpt2.mix_values(probs, v, hp=hp, n=1, t_len=t_len)

    placement = tf.device(weights.device) if weights.device else contextlib.nullcontext()
    with placement:
        x = gpt2.embed(weights.wte, weights.wpe, tf.constant(ids, tf.int32), tf.range(t_len))  # [T, C]
        for lw in weights.layers[: max(layers) + 1]:
            x = gpt2.block(x, lw, attend)
    maps = np.stack([m.numpy() for m in kept])  # [last + 1, H, T, T]
    return np.ascontiguousarray(maps[np.ix_(layers, heads)], dtype=np.float32)


def _checked_ids(ids: Sequence[int], hp: HParams) -> list[int]:
    ids = [int(t) for t in ids]
    if not 1 <= len(ids) <= hp.n_ctx:
        raise ValueError(f"attention maps take 1..{hp.n_ctx} tokens, got {len(ids)}")
    hp.check_token_ids(ids)
    return ids


def _checked_indices(indices: Sequence[int] | None, count: int, what: str) -> list[int]:
    if indices is None:
        return list(range(count))
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"no {what} index given")
    bad = next((i for i in indices if not 0 <= i < count), None)
    if bad is not None:
        raise ValueError(f"{what} index {bad} is out of range (0..{count - 1})")
    return indices
