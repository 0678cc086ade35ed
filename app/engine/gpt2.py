"""GPT-2 forward pass as plain functions over explicit state (TF2, no compat.v1).

Follows openai/gpt-2 ``src/model.py`` (``norm``, ``attn``, ``mlp``, ``block``, ``model``): one
:func:`block` serves every path, and only the attention differs between them (a callable passed in):

* :func:`prefill_layer` runs ``N`` prompt pieces of ``T`` tokens, each in its own slot, writing
  their keys/values into the cache and attending causally over the cache;
* :func:`decode_layer` runs one new token for each of slots ``0..B-1``, each at its own position;
* :func:`forward_full` is the cache-free reference path (tests, training), and
  :mod:`app.engine.attention_maps` runs the same path keeping :func:`causal_weights`.

The serving engine compiles :func:`prefill_layer` / :func:`decode_layer` once per shape and calls
the same compiled program for every layer (weights are arguments), so compile time does not grow
with the depth of the model; see :mod:`app.engine.engine`.

Weight layout. Serving weights (:class:`Layer`) keep every linear map transposed, ``w_t [out,
in]``, and multiply with ``x @ w_t^T``: XLA's CPU kernels run that 20-40 % faster than ``x @ w``
for the row counts of decoding (``make bench-roofline`` measures both). The checkpoint layout
``[in, out]`` (GPT-2's Conv1D) is what :func:`layer_weights` transposes from.

Cache layout, per layer: one tensor for keys and one for values, ``[S, n_ctx + 1, n_embd]``
(slot rows, positions, heads*head_dim), allocated by :class:`app.engine.engine.Engine` as
``[batch_buckets[-1], n_ctx + 1, n_embd]``: ``S`` is the largest decode batch bucket, which is the
slot count (the buckets end at it), so a decode bucket ``B <= S`` reads rows ``[:B]``. Position
``n_ctx`` (the ``+ 1``) is a scratch row, not a position: prompt padding and idle decode rows write
there and it is never read. ``n_embd`` is the minor axis so a token's keys are one contiguous
row, and slicing ``[:, :L]`` costs nothing under XLA, so attention cost follows the context in use
(``L``), not ``n_ctx``. XLA updates the cache variables in place.

Numerics follow Hugging Face's GPT2 (layer-norm epsilon 1e-5, tanh GELU); layer norm, softmax and
logits are computed in float32 whatever the weight dtype. The serving engine keeps its rows (the
residual stream) in float32 too: half-precision weights (bfloat16, float16) are multiplied in their
own dtype by :func:`dense` and the KV cache stores keys and values in it, read back as float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import tensorflow as tf

from app.model.hparams import HParams

Weights = Mapping[str, tf.Variable | tf.Tensor]
# (keys, values), each [S, n_ctx + 1, n_embd]: S = the engine's slots, row n_ctx = scratch
LayerCache = tuple[tf.Variable, tf.Variable]
Attend = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]  # q, k, v [N, C] -> [N, C]

_NEG = -1e30  # added to masked attention scores; exp() of it is exactly 0 in float32


class Layer(NamedTuple):
    """One block's weights, linear maps transposed to ``[out, in]`` (see the module docstring)."""

    ln_1_g: tf.Tensor  # [C]
    ln_1_b: tf.Tensor  # [C]
    attn_w: tf.Tensor  # [3C, C]  (attn/c_attn/w transposed)
    attn_b: tf.Tensor  # [3C]
    attn_proj_w: tf.Tensor  # [C, C]  (attn/c_proj/w transposed)
    attn_proj_b: tf.Tensor  # [C]
    ln_2_g: tf.Tensor  # [C]
    ln_2_b: tf.Tensor  # [C]
    fc_w: tf.Tensor  # [4C, C]  (mlp/c_fc/w transposed)
    fc_b: tf.Tensor  # [4C]
    mlp_proj_w: tf.Tensor  # [C, 4C]  (mlp/c_proj/w transposed)
    mlp_proj_b: tf.Tensor  # [C]


# Layer field -> canonical checkpoint name under h{i}/ (and whether it is stored transposed).
LAYER_NAMES: dict[str, tuple[str, bool]] = {
    "ln_1_g": ("ln_1/g", False),
    "ln_1_b": ("ln_1/b", False),
    "attn_w": ("attn/c_attn/w", True),
    "attn_b": ("attn/c_attn/b", False),
    "attn_proj_w": ("attn/c_proj/w", True),
    "attn_proj_b": ("attn/c_proj/b", False),
    "ln_2_g": ("ln_2/g", False),
    "ln_2_b": ("ln_2/b", False),
    "fc_w": ("mlp/c_fc/w", True),
    "fc_b": ("mlp/c_fc/b", False),
    "mlp_proj_w": ("mlp/c_proj/w", True),
    "mlp_proj_b": ("mlp/c_proj/b", False),
}


def layer_weights(w: Weights, i: int, *, transpose: Callable = tf.transpose) -> Layer:
    """Layer ``i`` of checkpoint-layout weights ``w``, linear maps passed through ``transpose``."""
    return Layer(
        **{
            field: transpose(w[f"h{i}/{name}"]) if transposed else w[f"h{i}/{name}"]
            for field, (name, transposed) in LAYER_NAMES.items()
        }
    )


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


def dense(x: tf.Tensor, w_t: tf.Tensor, b: tf.Tensor | None = None) -> tf.Tensor:
    """Affine map of rows: ``x [N, in] @ w_t [out, in]^T + b [out]`` -> ``[N, out]`` in x's dtype.

    Weights in a narrower dtype than ``x`` (the engine's bfloat16 / float16: float32 rows, half
    weights) multiply in the weights' dtype, ``x`` cast to it; the product comes back in x's dtype.
    """
    y = tf.matmul(tf.cast(x, w_t.dtype), w_t, transpose_b=True)
    y = tf.cast(y, x.dtype)
    return y if b is None else y + tf.cast(b, x.dtype)


def block(x: tf.Tensor, lw: Layer, attend: Attend) -> tf.Tensor:
    """One transformer block over rows ``x [N, C]``; ``attend(q, k, v)`` mixes the rows' tokens."""
    q, k, v = tf.split(dense(norm(x, lw.ln_1_g, lw.ln_1_b), lw.attn_w, lw.attn_b), 3, axis=-1)
    x = x + dense(attend(q, k, v), lw.attn_proj_w, lw.attn_proj_b)
    h = gelu(dense(norm(x, lw.ln_2_g, lw.ln_2_b), lw.fc_w, lw.fc_b))
    return x + dense(h, lw.mlp_proj_w, lw.mlp_proj_b)


def _softmax_f32(scores: tf.Tensor, visible: tf.Tensor, *, axis: int = -1) -> tf.Tensor:
    """Softmax over ``axis`` in float32 with invisible positions given zero weight."""
    scores = tf.where(visible, tf.cast(scores, tf.float32), _NEG)
    return tf.nn.softmax(scores, axis=axis)


def prefill_attention(
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    cache: LayerCache,
    *,
    hp: HParams,
    slots: tf.Tensor,
    start: tf.Tensor,
    n_valid: tf.Tensor,
    ctx_len: int,
) -> tf.Tensor:
    """Attention for ``N`` pieces of ``T`` tokens (rows ``n*T + t`` of ``q, k, v [N*T, C]``).

    Piece ``n`` belongs to slot ``slots[n]``, its first token sits at position ``start[n]`` and its
    first ``n_valid[n]`` tokens are real. Their keys/values are written into the cache
    (``[S, n_ctx + 1, C]``; padding goes to the scratch row ``n_ctx``), then every query attends
    over its slot's positions ``[0, ctx_len)`` (``ctx_len <= n_ctx``, so never the scratch row)
    with a causal mask (token t sees positions <= start + t).
    """
    n, t_len = slots.shape[0], q.shape[0] // slots.shape[0]
    h, d = hp.n_head, hp.head_dim
    t_idx = tf.range(t_len)[None, :]  # [1, T]
    write_pos = tf.where(t_idx < n_valid[:, None], start[:, None] + t_idx, hp.n_ctx)  # [N, T]
    rows = tf.stack([tf.broadcast_to(slots[:, None], [n, t_len]), write_pos], axis=-1)  # [N, T, 2]
    rows = tf.reshape(rows, [n * t_len, 2])
    cache[0].scatter_nd_update(rows, tf.cast(k, cache[0].dtype))
    cache[1].scatter_nd_update(rows, tf.cast(v, cache[1].dtype))
    keys = tf.reshape(tf.gather(cache[0][:, :ctx_len], slots), [n, ctx_len, h, d])  # [N, L, H, D]
    vals = tf.reshape(tf.gather(cache[1][:, :ctx_len], slots), [n, ctx_len, h, d])
    keys, vals = tf.cast(keys, q.dtype), tf.cast(vals, q.dtype)
    q = tf.reshape(q, [n, t_len, h, d])
    scores = tf.einsum("nthd,nlhd->nhtl", q, keys) * (1.0 / math.sqrt(d))  # [N, H, T, L]
    qpos = start[:, None] + t_idx  # [N, T]
    visible = tf.range(ctx_len)[None, None, :] <= qpos[:, :, None]  # [N, T, L]
    probs = tf.cast(_softmax_f32(scores, visible[:, None]), q.dtype)
    return tf.reshape(tf.einsum("nhtl,nlhd->nthd", probs, vals), [n * t_len, hp.n_embd])


def decode_attention(
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    cache: LayerCache,
    *,
    hp: HParams,
    pos: tf.Tensor,
    ctx_len: int,
) -> tf.Tensor:
    """Attention for one new token per slot: row b of ``q, k, v [B, C]`` is slot b, at ``pos[b]``.

    Rows are slots ``0..B-1`` (``B`` a batch bucket, ``<= S`` the cache's slot rows of
    ``[S, n_ctx + 1, C]``) so the cache is read as one contiguous slice ``[:B, :ctx_len]`` (a
    gather of scattered slots would copy it). Slots with nothing to do this step get
    ``pos == n_ctx``: they write to the scratch row and their output is ignored. Each row attends
    over its own positions ``[0, pos[b]]``; the rest is masked, so a row's result does not depend
    on the other rows' values.
    """
    bsz = q.shape[0]
    h, d = hp.n_head, hp.head_dim
    rows = tf.stack([tf.range(bsz), pos], axis=1)  # [B, 2]
    cache[0].scatter_nd_update(rows, tf.cast(k, cache[0].dtype))
    cache[1].scatter_nd_update(rows, tf.cast(v, cache[1].dtype))
    keys = tf.cast(tf.reshape(cache[0][:bsz, :ctx_len], [bsz, ctx_len, h, d]), q.dtype)  # [B, L, H, D]
    vals = tf.cast(tf.reshape(cache[1][:bsz, :ctx_len], [bsz, ctx_len, h, d]), q.dtype)
    # Multiply-and-reduce instead of einsum: XLA fuses it into one pass over the cache, where its
    # batched dot for these shapes is ~4x slower on CPU (measured at B=32, L=256).
    q = tf.reshape(q, [bsz, 1, h, d])
    scores = tf.reduce_sum(q * keys, axis=-1) * (1.0 / math.sqrt(d))  # [B, L, H]
    visible = tf.range(ctx_len)[None, :] <= pos[:, None]  # [B, L]
    probs = tf.cast(_softmax_f32(scores, visible[:, :, None], axis=1), q.dtype)  # [B, L, H]
    return tf.reshape(tf.reduce_sum(probs[..., None] * vals, axis=1), [bsz, hp.n_embd])  # [B, C]


def causal_weights(q: tf.Tensor, k: tf.Tensor, *, hp: HParams, n: int, t_len: int) -> tf.Tensor:
    """The causal attention weights of ``n`` sequences of ``t_len`` tokens (rows ``q, k [n*T, C]``):
    ``[n, H, T, T]`` float32, query rows and key columns, each row summing to 1, zero above the
    diagonal."""
    h, d = hp.n_head, hp.head_dim
    q, k = (tf.reshape(z, [n, t_len, h, d]) for z in (q, k))
    scores = tf.einsum("nthd,nshd->nhts", q, k) * (1.0 / math.sqrt(d))
    causal = tf.range(t_len)[None, :] <= tf.range(t_len)[:, None]  # [T, T]
    return _softmax_f32(scores, causal[None, None])


def mix_values(probs: tf.Tensor, v: tf.Tensor, *, hp: HParams, n: int, t_len: int) -> tf.Tensor:
    """Attention weights ``probs [n, H, T, T]`` applied to values ``v [n*T, C]`` -> ``[n*T, C]``."""
    v = tf.reshape(v, [n, t_len, hp.n_head, hp.head_dim])
    out = tf.einsum("nhts,nshd->nthd", tf.cast(probs, v.dtype), v)
    return tf.reshape(out, [n * t_len, hp.n_embd])


def causal_attention(
    q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, *, hp: HParams, n: int, t_len: int
) -> tf.Tensor:
    """Cache-free causal attention of ``n`` sequences of ``t_len`` tokens (rows ``[n*T, C]``)."""
    probs = causal_weights(q, k, hp=hp, n=n, t_len=t_len)
    return mix_values(probs, v, hp=hp, n=n, t_len=t_len)


def prefill_layer(
    x: tf.Tensor,
    lw: Layer,
    cache: LayerCache,
    *,
    hp: HParams,
    slots: tf.Tensor,
    start: tf.Tensor,
    n_valid: tf.Tensor,
    ctx_len: int,
) -> tf.Tensor:
    """One block over ``N`` prompt pieces, rows ``x [N*T, C]``; see :func:`prefill_attention`."""
    return block(
        x,
        lw,
        functools.partial(
            prefill_attention, cache=cache, hp=hp, slots=slots, start=start, n_valid=n_valid, ctx_len=ctx_len
        ),
    )


def decode_layer(
    x: tf.Tensor, lw: Layer, cache: LayerCache, *, hp: HParams, pos: tf.Tensor, ctx_len: int
) -> tf.Tensor:
    """One block over one new token per slot, rows ``x [B, C]``; see :func:`decode_attention`."""
    return block(x, lw, functools.partial(decode_attention, cache=cache, hp=hp, pos=pos, ctx_len=ctx_len))


def embed(wte: tf.Tensor, wpe: tf.Tensor, tokens: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """Token plus position embeddings: ``tokens, positions [...]`` -> ``[..., C]``."""
    return tf.gather(wte, tokens) + tf.gather(wpe, positions)


def logits_of(x: tf.Tensor, ln_f_g: tf.Tensor, ln_f_b: tf.Tensor, wte: tf.Tensor) -> tf.Tensor:
    """Final layer norm and the tied output projection: ``[N, C] -> [N, n_vocab]`` float32.

    ``wte [V, C]`` is already the ``[out, in]`` layout, so this is :func:`dense` without a bias.
    """
    return tf.cast(dense(norm(x, ln_f_g, ln_f_b), wte), tf.float32)


def forward_full(w: Weights, tokens: tf.Tensor, *, hp: HParams) -> tf.Tensor:
    """Cache-free forward of ``tokens [N, T]`` -> logits ``[N, T, V]``: the reference path.

    Takes checkpoint-layout weights (the trainer's variables) and runs the same :func:`block` as
    serving, with the linear maps transposed on the fly.
    """
    n, t_len = tokens.shape
    x = embed(w["wte"], w["wpe"], tokens, tf.range(t_len)[None])  # [N, T, C]
    x = tf.reshape(x, [n * t_len, hp.n_embd])
    attend = functools.partial(causal_attention, hp=hp, n=n, t_len=t_len)
    for i in range(hp.n_layer):
        x = block(x, layer_weights(w, i), attend)
    return tf.reshape(logits_of(x, w["ln_f/g"], w["ln_f/b"], w["wte"]), [n, t_len, hp.n_vocab])
