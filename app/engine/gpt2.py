"""GPT-2 forward pass as plain functions over explicit state (TF2, no compat.v1).

Follows openai/gpt-2 ``src/model.py`` (``norm``, ``attn``, ``mlp``, ``block``, ``model``): the
weights are a mapping of canonical names (``wte``, ``h0/attn/c_attn/w``, ...) to tensors or
variables, and the key/value cache is passed in explicitly. Two entry points share the blocks:

* :func:`prefill` runs ``T`` prompt tokens of one slot, writing their keys/values into the cache
  at positions ``start .. start+T`` and attending over the first ``L`` cache positions.
* :func:`decode` runs one token for each of ``B`` slots, each at its own position.

Cache layout, per layer: one variable for keys and one for values, each ``[S, n_ctx, n_embd]``
(slots, positions, heads*head_dim). ``n_embd`` is the minor axis so a token's keys are one
contiguous row (a scatter writes ``B`` rows per step), and slicing ``[:, :L]`` costs nothing under
XLA, so attention cost follows the context in use (``L``), not ``n_ctx``. Variables are updated in
place by XLA (measured: writing one row into a 1 GB cache costs the same as into a 100 MB one).

Numerics follow Hugging Face's GPT2 (layer-norm epsilon 1e-5, tanh GELU); layer norm, softmax and
logits are computed in float32 whatever the weight dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import tensorflow as tf

from app.model.hparams import HParams

Weights = Mapping[str, tf.Variable | tf.Tensor]
LayerCache = tuple[tf.Variable, tf.Variable]  # (keys, values), each [S, n_ctx, n_embd]

_NEG = -1e30  # added to masked attention scores; exp() of it is exactly 0 in float32


def norm(x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, *, eps: float = 1e-5) -> tf.Tensor:
    """Layer norm over the last axis, computed in float32; returns x's dtype."""
    xf = tf.cast(x, tf.float32)
    u = tf.reduce_mean(xf, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(xf - u), axis=-1, keepdims=True)
    y = (xf - u) * tf.math.rsqrt(s + eps) * tf.cast(g, tf.float32) + tf.cast(b, tf.float32)
    return tf.cast(y, x.dtype)


def gelu(x: tf.Tensor) -> tf.Tensor:
    """GPT-2's tanh approximation of GELU (``gelu_new`` in transformers)."""
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


def conv1d(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Affine map of the last axis: ``x [..., nx] @ w [nx, nf] + b [nf]``."""
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, w.shape[0]]), w) + b
    return tf.reshape(y, tf.concat([shape[:-1], [w.shape[1]]], axis=0))


def mlp(x: tf.Tensor, w: Weights, prefix: str) -> tf.Tensor:
    h = gelu(conv1d(x, w[f"{prefix}/mlp/c_fc/w"], w[f"{prefix}/mlp/c_fc/b"]))
    return conv1d(h, w[f"{prefix}/mlp/c_proj/w"], w[f"{prefix}/mlp/c_proj/b"])


def _softmax_f32(scores: tf.Tensor, visible: tf.Tensor, *, axis: int = -1) -> tf.Tensor:
    """Softmax over ``axis`` in float32 with invisible positions given zero weight."""
    scores = tf.where(visible, tf.cast(scores, tf.float32), _NEG)
    return tf.nn.softmax(scores, axis=axis)


def attn_prefill(
    x: tf.Tensor, w: Weights, prefix: str, cache: LayerCache, *, hp: HParams,
    slot: tf.Tensor, start: tf.Tensor, n_valid: tf.Tensor, ctx_len: int,
) -> tf.Tensor:  # fmt: skip
    """Self-attention for ``x [T, C]`` of one slot whose first token sits at position ``start``.

    Writes the first ``n_valid`` keys/values into the cache (padding rows go to the scratch row
    ``n_ctx``, which is never read), then attends over cache positions ``[0, ctx_len)`` with a
    causal mask (query t sees positions <= start + t).
    """
    t_len, c = x.shape[0], hp.n_embd
    h, d = hp.n_head, hp.head_dim
    qkv = conv1d(x, w[f"{prefix}/attn/c_attn/w"], w[f"{prefix}/attn/c_attn/b"])  # [T, 3C]
    q, k, v = tf.split(qkv, 3, axis=-1)  # each [T, C]
    t_idx = tf.range(t_len)
    write_pos = tf.where(t_idx < n_valid, start + t_idx, hp.n_ctx)
    rows = tf.stack([tf.fill([t_len], slot), write_pos], axis=1)  # [T, 2]
    cache[0].scatter_nd_update(rows, k)
    cache[1].scatter_nd_update(rows, v)
    # gather, not cache[slot]: XLA would take a sliced index as a compile-time constant and
    # compile one program per slot.
    keys = tf.reshape(tf.gather(cache[0][:, :ctx_len], slot), [ctx_len, h, d])  # [L, H, D]
    vals = tf.reshape(tf.gather(cache[1][:, :ctx_len], slot), [ctx_len, h, d])
    q = tf.reshape(q, [t_len, h, d])  # [T, H, D]
    scores = tf.einsum("thd,lhd->htl", q, keys) * (1.0 / math.sqrt(d))  # [H, T, L]
    qpos = start + tf.range(t_len)  # [T]
    visible = tf.range(ctx_len)[None, :] <= qpos[:, None]  # [T, L]
    probs = tf.cast(_softmax_f32(scores, visible[None]), x.dtype)
    out = tf.reshape(tf.einsum("htl,lhd->thd", probs, vals), [t_len, c])
    return conv1d(out, w[f"{prefix}/attn/c_proj/w"], w[f"{prefix}/attn/c_proj/b"])


def attn_decode(
    x: tf.Tensor, w: Weights, prefix: str, cache: LayerCache, *, hp: HParams, pos: tf.Tensor, ctx_len: int,
) -> tf.Tensor:  # fmt: skip
    """Self-attention for one new token per slot: row b of ``x [B, C]`` is slot b, at ``pos[b]``.

    Rows are slots ``0..B-1`` so the cache is read as one contiguous slice ``[:B, :ctx_len]`` (a
    gather of scattered slots would copy it). Slots with nothing to do this step get
    ``pos == n_ctx``: they write to the scratch row and their output is ignored. Each row attends
    over its own positions ``[0, pos[b]]``; the rest is masked, so a row's result does not depend
    on the other rows' values.
    """
    bsz, c = x.shape[0], hp.n_embd
    h, d = hp.n_head, hp.head_dim
    qkv = conv1d(x, w[f"{prefix}/attn/c_attn/w"], w[f"{prefix}/attn/c_attn/b"])  # [B, 3C]
    q, k, v = tf.split(qkv, 3, axis=-1)  # each [B, C]
    rows = tf.stack([tf.range(bsz), pos], axis=1)  # [B, 2]
    cache[0].scatter_nd_update(rows, k)
    cache[1].scatter_nd_update(rows, v)
    keys = tf.reshape(cache[0][:bsz, :ctx_len], [bsz, ctx_len, h, d])  # [B, L, H, D]
    vals = tf.reshape(cache[1][:bsz, :ctx_len], [bsz, ctx_len, h, d])
    # Multiply-and-reduce instead of einsum: XLA fuses it into one pass over the cache, where its
    # batched dot for these shapes is ~4x slower on CPU (measured at B=32, L=256).
    q = tf.reshape(q, [bsz, 1, h, d])
    scores = tf.reduce_sum(q * keys, axis=-1) * (1.0 / math.sqrt(d))  # [B, L, H]
    visible = tf.range(ctx_len)[None, :] <= pos[:, None]  # [B, L]
    probs = tf.cast(_softmax_f32(scores, visible[:, :, None], axis=1), x.dtype)  # [B, L, H]
    out = tf.reshape(tf.reduce_sum(probs[..., None] * vals, axis=1), [bsz, c])  # [B, H, D] -> [B, C]
    return conv1d(out, w[f"{prefix}/attn/c_proj/w"], w[f"{prefix}/attn/c_proj/b"])


def logits_of(x: tf.Tensor, w: Weights) -> tf.Tensor:
    """Final layer norm and the tied output projection: ``[N, C] -> [N, n_vocab]`` float32."""
    h = norm(x, w["ln_f/g"], w["ln_f/b"])
    return tf.cast(tf.matmul(h, w["wte"], transpose_b=True), tf.float32)


def prefill(
    w: Weights, cache: Sequence[LayerCache], tokens: tf.Tensor, *, hp: HParams,
    slot: tf.Tensor, start: tf.Tensor, n_valid: tf.Tensor, ctx_len: int,
) -> tf.Tensor:  # fmt: skip
    """Run ``tokens [T]`` (the first ``n_valid`` real, the rest padding) of one slot from ``start``.

    Returns float32 logits ``[n_vocab]`` at the last real token. Padding positions write garbage
    keys/values past the real ones; they are never visible, because attention only sees positions
    up to each query, and decode overwrites them in order.
    """
    t_len = tokens.shape[0]
    positions = tf.minimum(start + tf.range(t_len), hp.n_ctx - 1)
    x = tf.gather(w["wte"], tokens) + tf.gather(w["wpe"], positions)  # [T, C]
    for i in range(hp.n_layer):
        p = f"h{i}"
        a = attn_prefill(norm(x, w[f"{p}/ln_1/g"], w[f"{p}/ln_1/b"]), w, p, cache[i], hp=hp,
                         slot=slot, start=start, n_valid=n_valid, ctx_len=ctx_len)  # fmt: skip
        x = x + a
        x = x + mlp(norm(x, w[f"{p}/ln_2/g"], w[f"{p}/ln_2/b"]), w, p)
    last = tf.gather(x, n_valid - 1)[None]  # [1, C]
    return logits_of(last, w)[0]


def decode(
    w: Weights, cache: Sequence[LayerCache], tokens: tf.Tensor, *, hp: HParams, pos: tf.Tensor, ctx_len: int,
) -> tf.Tensor:  # fmt: skip
    """One decode step for slots ``0..B-1``: ``tokens [B]`` at positions ``pos [B]`` -> logits ``[B, V]``.

    ``pos[b] == n_ctx`` marks a slot with nothing to do (its row is computed and ignored).
    """
    x = tf.gather(w["wte"], tokens) + tf.gather(w["wpe"], tf.minimum(pos, hp.n_ctx - 1))  # [B, C]
    for i in range(hp.n_layer):
        p = f"h{i}"
        a = attn_decode(norm(x, w[f"{p}/ln_1/g"], w[f"{p}/ln_1/b"]), w, p, cache[i], hp=hp,
                        pos=pos, ctx_len=ctx_len)  # fmt: skip
        x = x + a
        x = x + mlp(norm(x, w[f"{p}/ln_2/g"], w[f"{p}/ln_2/b"]), w, p)
    return logits_of(x, w)


def forward_full(w: Weights, tokens: tf.Tensor, *, hp: HParams) -> tf.Tensor:
    """Cache-free forward of ``tokens [N, T]`` -> logits ``[N, T, V]``: the reference path.

    Used by tests and by the sliding-window reference; it shares ``norm``/``mlp``/``logits_of``
    with the serving path but computes attention directly.
    """
    n, t_len = tokens.shape
    h, d = hp.n_head, hp.head_dim
    x = tf.gather(w["wte"], tokens) + tf.gather(w["wpe"], tf.range(t_len))[None]  # [N, T, C]
    causal = tf.range(t_len)[None, :] <= tf.range(t_len)[:, None]  # [T, T]
    for i in range(hp.n_layer):
        p = f"h{i}"
        a_in = norm(x, w[f"{p}/ln_1/g"], w[f"{p}/ln_1/b"])
        qkv = conv1d(a_in, w[f"{p}/attn/c_attn/w"], w[f"{p}/attn/c_attn/b"])
        q, k, v = (tf.reshape(z, [n, t_len, h, d]) for z in tf.split(qkv, 3, axis=-1))
        scores = tf.einsum("nthd,nshd->nhts", q, k) * (1.0 / math.sqrt(d))
        probs = tf.cast(_softmax_f32(scores, causal[None, None]), x.dtype)
        out = tf.reshape(tf.einsum("nhts,nshd->nthd", probs, v), [n, t_len, hp.n_embd])
        x = x + conv1d(out, w[f"{p}/attn/c_proj/w"], w[f"{p}/attn/c_proj/b"])
        x = x + mlp(norm(x, w[f"{p}/ln_2/g"], w[f"{p}/ln_2/b"]), w, p)
    return tf.reshape(logits_of(tf.reshape(x, [n * t_len, hp.n_embd]), w), [n, t_len, hp.n_vocab])
