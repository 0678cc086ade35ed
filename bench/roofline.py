"""Roofline of one decode step: each part's time and bandwidth, the engine's way vs every other way.

Run: ``make bench-roofline`` (or ``.venv/bin/python bench/roofline.py [--quick] [--batches 1,8]
[--contexts 128,1024] [--repeats N] [--full-prefill]``). Default: batches 1, 8, 32 x contexts 128,
256, 1024, 10 repeats, about 5-10 minutes on a quiet 2-core machine.

Set-up: GPT-2 124M shape (``PRESETS["124M"]``), random weights ``random_params(hp, seed=0)``,
float32, TensorFlow's default thread pools (printed), CPU.

What a decode step is made of, for ``B`` rows whose longest context is ``L`` (the engine's decode
program ``(B, L)``, :mod:`app.engine.gpt2`), and how each part is measured alone:

* per layer (x 12): **QKV** (layer norm, ``x @ W_qkv + b``, split), **cache write** (scatter of the
  B new key and value rows into the layer's cache), **attention** (scores against the ``[B, L]``
  cache slice, masked softmax, weighted sum of values, as ``gpt2.decode_attention`` does it),
  **out proj** (``a @ W_o + b`` + residual), **MLP** (layer norm, fc, GELU, proj, residual);
* once: **embedding** (two gathers), **LM head** (final norm, ``x @ wte^T``, log-sum-exp, one XLA
  program in the engine), **top-k** (the engine's 64 candidates per row), **host transfer**
  (``.numpy()`` of the step's outputs), **graph call** (the fixed cost of one call of a
  ``tf.function``: a step pays it once; every other TF row has it subtracted), and **sampling**
  (top-k 40 on the host: ``sampling.sample_batch`` where it exists, else ``sampling.sample`` per
  row; not part of ``engine.step`` but of every generated token).

Ways ("way" column): ``XLA`` = the part is one ``jit_compile`` program called once per layer from a
plain ``tf.function`` graph (the engine's structure); ``graph`` = the same ops in the plain graph
(TensorFlow's own / oneDNN kernels, grappler fusions); ``[out,in]`` = weights stored transposed and
multiplied with ``tf.matmul(x, w_t, transpose_b=True)`` (the engine's serving layout); ``[in,out]``
= checkpoint layout, ``x @ w``; ``unfused`` = one XLA program per op; attention ``mul-reduce`` (the
engine's), ``einsum`` (batched dot) and ``head-major`` (a ``[B, H, n_ctx+1, D]`` cache) ; numpy
(OpenBLAS) rows are an outside reference, not in the stack. ``(engine)`` marks the way the engine
uses; ``best`` the fastest in-stack way of that part.

Columns: ``ms/step`` = time of that part for one whole step (all 12 layers for per-layer parts);
``GB/s`` = bytes that must move / time (weights read + activations in and out + cache read/write;
intermediates that a fused program keeps in registers are not counted, so the byte count of a part
is the same for all its ways, except the host transfer and sampling ways that touch only the
candidates); ``GFLOP/s`` = multiply-adds x 2 (plus the element-wise work of softmax / GELU / norms)
/ time; ``vs engine`` = engine's time / this time (> 1: faster). Parts that do not depend on the
context (all but attention) are measured once per batch size and repeated in each ``L`` table.

Summary columns: the real step (``engine.step_scores``) and its tokens/s (B / step), the compiled
call alone and the host overhead (the difference), the sums of the engine's and of the best
in-stack parts (graph call to host transfer; sampling is shown apart), step / best sum, the tokens/s
the best sum would give, the host sampling time, the part where the best in-stack way saves most,
and the part where numpy (outside the stack) beats the engine's way by most.

Method, so that the figures mean what they say:
1. No fake cache hits: every per-layer part cycles through distinct copies of its weights (and of
   the KV cache), as the real step does, and through at least ``WORKING_SET`` bytes (2x a 32 MiB
   L3) so that a small matrix (one out proj is 2.4 MB; 12 of them still fit in L3) is read from
   memory as it is in the real step, where ~28 MB of other weights pass between two reads of it
   (KV caches: at most ``MAX_CACHE_COPIES`` copies). One call runs all copies; its time is scaled
   to 12 layers. The cache write uses 12 copies (it touches B rows per layer).
2. Every compiled function is called twice before timing (compile, warm caches and allocators).
3. Each figure is the best of ``--repeats`` calls (the least disturbed one); a way whose calls
   take long stops after ``MIN_REPEATS`` once it has spent ``ROW_BUDGET`` seconds (and then has
   one warm-up call, not two), which keeps the slow alternatives from dominating the run time.
4. TF and numpy do not overlap: switching between them sleeps ``SETTLE`` first (see ``Timer``).
5. The load average is printed before and after, with the machine, versions and thread counts.
6. OpenBLAS variables (``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``; set on some machines for old
   OpenBLAS builds, they slow a current numpy) are reported, never changed: numpy is only an outside
   reference.

The end: the engine's real step, ``Engine(hp, params, EngineConfig(slots=B)).step_scores`` over B
occupied slots in the ``(B, L)`` bucket (best of ``--repeats`` steps after one untimed step), then
the compiled decode call alone (``engine._decode_fn``: no host work around it; the difference is
host overhead), the whole layer as the engine compiles it (``gpt2.decode_layer``, one XLA program)
x 12, the sum of the engine's parts and the sum of the best in-stack parts: the step time the best
formulation of each part would give. Slot 0 is prefilled with ``L - r`` tokens (``r`` the steps
timed) so every step runs in the ``L`` bucket; the other slots get 8 tokens, which is the same
program and the same work (the program reads the whole ``[B, L]`` cache slice and masks what a row
does not see); ``--full-prefill`` prefills every slot to ``L - r`` instead (slow at B=32, L=1024).

Timings are wall clock on whatever else the machine is doing: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without the editable install
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from app.engine import gpt2, sampling  # noqa: E402
from app.engine.engine import Engine, EngineConfig  # noqa: E402
from app.model.hparams import PRESETS, HParams  # noqa: E402
from app.model.random_init import random_params  # noqa: E402

F32 = 4  # bytes
WORKING_SET = 64 << 20  # bytes each per-layer part cycles through at least (2x a 32 MiB L3)
MAX_CACHE_COPIES = 64  # caps the KV-cache copies (B=1, L=128 would need 85; each adds ops to trace)
ROW_BUDGET = 2.0  # seconds of timed calls after which a figure stops repeating (at least MIN_REPEATS)
MIN_REPEATS = 2
SETTLE = 0.3  # seconds of sleep when switching between TF and host measurements (see Timer)
CANDIDATES = 64  # EngineConfig.candidates' default: top-k ids the engine returns per row
TOP_K = 40  # the sampling parameters timed on the host
PER_LAYER = ("QKV", "cache write", "attention", "out proj", "MLP")
ONCE = ("graph call", "embedding", "LM head", "top-k", "host transfer")


@dataclass
class Row:
    """One way of running one part: its time per step and what it moved and computed."""

    part: str
    way: str
    seconds: float
    nbytes: float
    flops: float
    engine: bool = False  # the engine's way
    in_stack: bool = True  # False for the numpy reference
    note: str = ""


# ---------------------------------------------------------------- timing


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Fastest of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (seconds); a slow way
    (e.g. attention at B=32, L=1024 without XLA) stops after ``MIN_REPEATS`` calls once its timed
    calls have taken ``ROW_BUDGET`` seconds, and its second warm-up call is then skipped."""
    start = time.perf_counter()
    fn()
    if warmup > 1 and time.perf_counter() - start < ROW_BUDGET / MIN_REPEATS:
        for _ in range(warmup - 1):
            fn()
    best, spent, n = math.inf, 0.0, 0
    while n < repeats and (n < MIN_REPEATS or spent < ROW_BUDGET):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, n = min(best, elapsed), spent + elapsed, n + 1
    return best


@dataclass
class Timer:
    """Best-of timing of TF calls and of host (numpy) work, letting the other side's threads settle.

    After a TF call TensorFlow's pool threads keep spinning for a while, and so do OpenBLAS's after
    a numpy call: on 2 cores the next measurement of the other kind would share the CPU with them
    (seen: numpy 10x slower right after TF work). So a switch between kinds first sleeps ``SETTLE``.
    """

    repeats: int
    floor: float = 0.0  # one tf.function call's fixed cost, subtracted from every graph call
    _last: str = ""

    def graph(self, fn: Callable[[], object], scale: float = 1.0) -> float:
        """Time of a call of a ``tf.function``, less the call's fixed cost, times ``scale``."""
        self._settle("tf")
        return max(best_time(fn, self.repeats) - self.floor, 0.0) * scale

    def host(self, fn: Callable[[], object], scale: float = 1.0) -> float:
        self._settle("host")
        return best_time(fn, self.repeats) * scale

    def _settle(self, kind: str) -> None:
        if kind != self._last:
            time.sleep(SETTLE)
        self._last = kind


def call_floor(repeats: int) -> float:
    """The fixed cost of calling a ``tf.function`` (a graph with one trivial op)."""
    fn = tf.function(lambda x: x + 1.0)
    x = tf.constant(1.0)
    return best_time(lambda: fn(x), max(repeats, 50))


def copies_for(nbytes_per_layer: float, n_layer: int, cap: int = 1 << 30) -> int:
    """How many distinct copies a per-layer part cycles through (see the module docstring, 1.)."""
    return max(n_layer, min(math.ceil(WORKING_SET / nbytes_per_layer), cap))


# ---------------------------------------------------------------- formulations


def mm(x: tf.Tensor, w: tf.Tensor, out_in: bool) -> tf.Tensor:
    """``x @ W``, ``w`` stored ``[out, in]`` (``out_in``, the engine's layout) or ``[in, out]``."""
    return tf.matmul(x, w, transpose_b=out_in)


def qkv_part(x, g, b, w, wb, *, out_in: bool):
    return tf.split(mm(gpt2.norm(x, g, b), w, out_in) + wb, 3, axis=-1)


def proj_part(a, x, w, wb, *, out_in: bool):
    return x + (mm(a, w, out_in) + wb)


def mlp_part(x, g, b, fc_w, fc_b, pw, pb, *, out_in: bool):
    h = gpt2.gelu(mm(gpt2.norm(x, g, b), fc_w, out_in) + fc_b)
    return x + (mm(h, pw, out_in) + pb)


def mlp_unfused(out_in: bool) -> Callable:
    """The MLP as four XLA programs (norm, fc + bias, GELU, proj + bias + residual)."""
    jit = functools.partial(tf.function, jit_compile=True)
    norm, gelu = jit(gpt2.norm), jit(gpt2.gelu)
    fc = jit(lambda h, w, b: mm(h, w, out_in) + b)
    proj = jit(lambda h, x, w, b: x + (mm(h, w, out_in) + b))

    def run(x, g, b, fc_w, fc_b, pw, pb):
        return proj(gelu(fc(norm(x, g, b), fc_w, fc_b)), x, pw, pb)

    return run


def write_part(rows, k, v, kc, vc):
    kc.scatter_nd_update(rows, k)
    vc.scatter_nd_update(rows, v)


def write_head_major(rows, k, v, kc, vc, *, hp: HParams):
    """Scatter into a ``[B, H, n_ctx+1, D]`` cache: one ``D`` row per (slot, head)."""
    bsz = k.shape[0]
    b_idx = tf.repeat(rows[:, 0], hp.n_head)
    h_idx = tf.tile(tf.range(hp.n_head), [bsz])
    idx = tf.stack([b_idx, h_idx, tf.repeat(rows[:, 1], hp.n_head)], axis=1)
    kc.scatter_nd_update(idx, tf.reshape(k, [-1, hp.head_dim]))
    vc.scatter_nd_update(idx, tf.reshape(v, [-1, hp.head_dim]))


def attn_mul_reduce(q, kc, vc, pos, *, hp: HParams, ctx_len: int):
    """``gpt2.decode_attention`` without its cache write: multiply-and-reduce over ``[B, L, H, D]``."""
    bsz, h, d = q.shape[0], hp.n_head, hp.head_dim
    keys = tf.reshape(kc[:bsz, :ctx_len], [bsz, ctx_len, h, d])
    vals = tf.reshape(vc[:bsz, :ctx_len], [bsz, ctx_len, h, d])
    q = tf.reshape(q, [bsz, 1, h, d])
    scores = tf.reduce_sum(q * keys, axis=-1) * (1.0 / math.sqrt(d))  # [B, L, H]
    visible = tf.range(ctx_len)[None, :] <= pos[:, None]
    probs = tf.nn.softmax(tf.where(visible[:, :, None], scores, -1e30), axis=1)
    return tf.reshape(tf.reduce_sum(probs[..., None] * vals, axis=1), [bsz, hp.n_embd])


def attn_einsum(q, kc, vc, pos, *, hp: HParams, ctx_len: int):
    """The same over the same ``[B, L, H, D]`` cache with batched dots (``einsum``)."""
    bsz, h, d = q.shape[0], hp.n_head, hp.head_dim
    keys = tf.reshape(kc[:bsz, :ctx_len], [bsz, ctx_len, h, d])
    vals = tf.reshape(vc[:bsz, :ctx_len], [bsz, ctx_len, h, d])
    q = tf.reshape(q, [bsz, h, d])
    scores = tf.einsum("bhd,blhd->bhl", q, keys) * (1.0 / math.sqrt(d))
    visible = tf.range(ctx_len)[None, :] <= pos[:, None]
    probs = tf.nn.softmax(tf.where(visible[:, None, :], scores, -1e30), axis=-1)
    return tf.reshape(tf.einsum("bhl,blhd->bhd", probs, vals), [bsz, hp.n_embd])


def attn_head_major(q, kc, vc, pos, *, hp: HParams, ctx_len: int):
    """Batched dots over a head-major cache ``[B, H, n_ctx+1, D]`` (each head's keys contiguous)."""
    bsz, h, d = q.shape[0], hp.n_head, hp.head_dim
    keys, vals = kc[:bsz, :, :ctx_len], vc[:bsz, :, :ctx_len]  # [B, H, L, D]
    q = tf.reshape(q, [bsz, h, 1, d])
    scores = tf.matmul(q, keys, transpose_b=True)[:, :, 0] * (1.0 / math.sqrt(d))  # [B, H, L]
    visible = tf.range(ctx_len)[None, :] <= pos[:, None]
    probs = tf.nn.softmax(tf.where(visible[:, None, :], scores, -1e30), axis=-1)
    return tf.reshape(tf.matmul(probs[:, :, None], vals), [bsz, hp.n_embd])


def attn_head_major_mul_reduce(q, kc, vc, pos, *, hp: HParams, ctx_len: int):
    """Multiply-and-reduce over a head-major cache ``[B, H, n_ctx+1, D]``."""
    bsz, h, d = q.shape[0], hp.n_head, hp.head_dim
    keys, vals = kc[:bsz, :, :ctx_len], vc[:bsz, :, :ctx_len]  # [B, H, L, D]
    scores = tf.reduce_sum(tf.reshape(q, [bsz, h, 1, d]) * keys, axis=-1) * (1.0 / math.sqrt(d))  # [B, H, L]
    visible = tf.range(ctx_len)[None, :] <= pos[:, None]
    probs = tf.nn.softmax(tf.where(visible[:, None, :], scores, -1e30), axis=-1)
    return tf.reshape(tf.reduce_sum(probs[..., None] * vals, axis=2), [bsz, hp.n_embd])


def head_part(x, g, b, wte, *, out_in: bool):
    logits = mm(gpt2.norm(x, g, b), wte, out_in)
    return logits, tf.reduce_logsumexp(logits, axis=-1)


# numpy references (OpenBLAS)


def np_norm(x, g, b, eps=1e-5):
    u = x.mean(-1, keepdims=True)
    s = ((x - u) ** 2).mean(-1, keepdims=True)
    return (x - u) / np.sqrt(s + eps) * g + b


def np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + 0.044715 * x**3)))


def np_mm(x, w, out_in: bool):
    return x @ w.T if out_in else x @ w


def np_attention(q, kc, vc, pos, *, hp: HParams, ctx_len: int):
    """numpy over a head-major cache ``[B, H, n_ctx+1, D]`` (contiguous per head: BLAS gemv)."""
    bsz, h, d = q.shape[0], hp.n_head, hp.head_dim
    keys, vals = kc[:, :, :ctx_len], vc[:, :, :ctx_len]
    scores = np.matmul(keys, q.reshape(bsz, h, d, 1))[..., 0] / np.float32(math.sqrt(d))  # [B, H, L]
    scores = np.where(np.arange(ctx_len)[None, None, :] <= pos[:, None, None], scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.matmul(probs[:, :, None, :], vals).reshape(bsz, hp.n_embd)


# ---------------------------------------------------------------- building the measured calls


def jit(fn: Callable) -> Callable:
    return tf.function(fn, jit_compile=True)


def over_copies(inner: Callable, shared: Sequence, per_copy: Sequence[Sequence]) -> Callable[[], object]:
    """A ``tf.function`` that runs ``inner(*shared, *args)`` for every copy's ``args`` (one graph,
    as the engine's step runs its layers), returning every output so nothing is pruned."""

    @tf.function
    def run(*shared_args):
        return [inner(*shared_args, *args) for args in per_copy]

    return lambda: run(*shared)


def tf_ways(inner: Callable, shared: Sequence, per_copy: dict[bool, list], engine_out_in: bool = True):
    """``{way: callable}`` for XLA / graph x ``[out,in]`` / ``[in,out]``; ``per_copy[out_in]``."""
    ways = {}
    for xla in (True, False):
        for out_in in (True, False):
            body = functools.partial(inner, out_in=out_in)
            name = f"{'XLA' if xla else 'graph'}, {'[out,in]' if out_in else '[in,out]'}"
            ways[name] = (
                over_copies(jit(body) if xla else body, shared, per_copy[out_in]),
                xla and out_in == engine_out_in,
            )
    return ways


class Weights:
    """Distinct copies of every layer's weights, in both layouts, in TF and numpy."""

    def __init__(self, hp: HParams, params: dict[str, np.ndarray]):
        self.hp, self.params = hp, params

    def pool(self, names: Sequence[str], n: int) -> tuple[dict[bool, list], dict[bool, list]]:
        """``(tf, np)``, each ``{out_in: [per copy: [arrays of names]]}``; copy c holds layer
        ``c % n_layer``'s values in its own buffers; matrices (``*/w``) in the asked layout."""
        tf_pool: dict[bool, list] = {True: [], False: []}
        np_pool: dict[bool, list] = {True: [], False: []}
        for c in range(n):
            layer = c % self.hp.n_layer
            for out_in in (True, False):
                arrays = []
                for name in names:
                    a = self.params[f"h{layer}/{name}"]
                    arrays.append(
                        np.array(a.T if out_in and name.endswith("/w") else a, order="C", copy=True)
                    )
                np_pool[out_in].append(arrays)
                tf_pool[out_in].append([tf.Variable(a, trainable=False) for a in arrays])
        return tf_pool, np_pool


# ---------------------------------------------------------------- parts


def linear_rows(
    name: str,
    timer: Timer,
    weights: Weights,
    x_args: Sequence[np.ndarray],
    names: Sequence[str],
    tf_body: Callable,
    np_body: Callable,
    nbytes: float,
    flops: float,
    extra: dict[str, Callable] | None = None,
) -> list[Row]:
    """Rows for a per-layer linear part: 4 TF ways, numpy in both layouts, and ``extra`` TF ways
    (``{way: inner taking out_in=True weights}``)."""
    hp = weights.hp
    n = copies_for(nbytes / hp.n_layer, hp.n_layer)
    scale = hp.n_layer / n
    tf_pool, np_pool = weights.pool(names, n)
    shared = [tf.constant(a) for a in x_args]
    rows = []
    for way, (fn, is_engine) in tf_ways(tf_body, shared, tf_pool).items():
        rows.append(Row(name, way, timer.graph(fn, scale), nbytes, flops, engine=is_engine))
    for way, inner in (extra or {}).items():
        rows.append(
            Row(name, way, timer.graph(over_copies(inner, shared, tf_pool[True]), scale), nbytes, flops)
        )
    for out_in in (True, False):
        pool = np_pool[out_in]

        def run(pool=pool, out_in=out_in):
            return [np_body(*x_args, *args, out_in=out_in) for args in pool]

        layout = "[out,in]" if out_in else "[in,out]"
        rows.append(Row(name, f"numpy, {layout}", timer.host(run, scale), nbytes, flops, in_stack=False))
    del tf_pool, np_pool
    return rows


def np_qkv(x, g, b, w, wb, *, out_in):
    return np.split(np_mm(np_norm(x, g, b), w, out_in) + wb, 3, axis=-1)


def np_proj(a, x, w, wb, *, out_in):
    return x + (np_mm(a, w, out_in) + wb)


def np_mlp(x, g, b, fc_w, fc_b, pw, pb, *, out_in):
    return x + (np_mm(np_gelu(np_mm(np_norm(x, g, b), fc_w, out_in) + fc_b), pw, out_in) + pb)


def layer_linear_rows(hp: HParams, bsz: int, timer: Timer, weights: Weights, rng) -> list[Row]:
    """QKV, out proj and MLP at batch ``bsz`` (they do not depend on the context)."""
    c, n = hp.n_embd, hp.n_layer
    x = rng.standard_normal((bsz, c), dtype=np.float32)
    a = rng.standard_normal((bsz, c), dtype=np.float32)
    act = bsz * c * F32
    rows = linear_rows(
        "QKV",
        timer,
        weights,
        [x],
        ["ln_1/g", "ln_1/b", "attn/c_attn/w", "attn/c_attn/b"],
        qkv_part,
        np_qkv,
        nbytes=n * ((3 * c * c + 5 * c) * F32 + 4 * act),
        flops=n * (2 * bsz * c * 3 * c + 8 * bsz * c),
    )
    rows += linear_rows(
        "out proj",
        timer,
        weights,
        [a, x],
        ["attn/c_proj/w", "attn/c_proj/b"],
        proj_part,
        np_proj,
        nbytes=n * ((c * c + c) * F32 + 3 * act),
        flops=n * (2 * bsz * c * c + 2 * bsz * c),
    )
    rows += linear_rows(
        "MLP",
        timer,
        weights,
        [x],
        ["ln_2/g", "ln_2/b", "mlp/c_fc/w", "mlp/c_fc/b", "mlp/c_proj/w", "mlp/c_proj/b"],
        mlp_part,
        np_mlp,
        nbytes=n * ((8 * c * c + 7 * c) * F32 + 2 * act),
        flops=n * (16 * bsz * c * c + 4 * c * bsz * 10 + 8 * bsz * c),
        extra={"XLA, [out,in], unfused (4 programs)": mlp_unfused(True)},
    )
    return rows


class Caches:
    """Distinct KV caches per copy in three layouts: the engine's ``[B, n_ctx+1, C]`` (TF), head-major
    ``[B, H, n_ctx+1, D]`` (TF) and head-major in numpy. Filled with small random values."""

    def __init__(self, hp: HParams, bsz: int, n: int, rng):
        self.n = n
        tok = [bsz, hp.n_ctx + 1, hp.n_embd]
        head = [bsz, hp.n_head, hp.n_ctx + 1, hp.head_dim]
        self.token_major = [
            tuple(tf.Variable(tf.random.uniform(tok, -1, 1), trainable=False) for _ in "kv") for _ in range(n)
        ]
        self.head_major = [
            tuple(tf.Variable(tf.random.uniform(head, -1, 1), trainable=False) for _ in "kv")
            for _ in range(n)
        ]
        self.numpy = [tuple(rng.uniform(-1, 1, head).astype(np.float32) for _ in "kv") for _ in range(n)]


def write_rows(hp: HParams, bsz: int, timer: Timer, caches: Caches, pos: np.ndarray, rng) -> list[Row]:
    c, n = hp.n_embd, hp.n_layer  # B rows per layer: the layer's own cache copies suffice
    scale = 1.0
    k = tf.constant(rng.standard_normal((bsz, c), dtype=np.float32))
    v = tf.constant(rng.standard_normal((bsz, c), dtype=np.float32))
    rows_idx = tf.constant(np.stack([np.arange(bsz), pos], axis=1).astype(np.int32))
    nbytes = hp.n_layer * 4 * bsz * c * F32  # read k and v, write them into the cache
    out = []
    head_major = functools.partial(write_head_major, hp=hp)
    for way, inner, pool, is_engine in (
        ("XLA scatter", jit(write_part), caches.token_major, True),
        ("graph scatter", write_part, caches.token_major, False),
        ("XLA scatter, head-major cache", jit(head_major), caches.head_major, False),
        ("graph scatter, head-major cache", head_major, caches.head_major, False),
    ):
        fn = over_copies(inner, [rows_idx, k, v], [(kc, vc) for kc, vc in pool[:n]])
        out.append(Row("cache write", way, timer.graph(fn, scale), nbytes, 0.0, engine=is_engine))
    kn, vn = k.numpy().reshape(bsz, hp.n_head, hp.head_dim), v.numpy().reshape(bsz, hp.n_head, hp.head_dim)
    b_idx = np.arange(bsz)

    def np_write():
        for kc, vc in caches.numpy[:n]:
            kc[b_idx, :, pos] = kn
            vc[b_idx, :, pos] = vn

    out.append(
        Row(
            "cache write", "numpy, head-major cache", timer.host(np_write, scale), nbytes, 0.0, in_stack=False
        )
    )
    return out


def attention_rows(hp: HParams, bsz: int, ctx_len: int, timer: Timer, caches: Caches, rng) -> list[Row]:
    c = hp.n_embd
    per_layer = 2 * bsz * ctx_len * c * F32
    n = min(copies_for(per_layer, hp.n_layer, MAX_CACHE_COPIES), caches.n)
    scale = hp.n_layer / n
    q = rng.standard_normal((bsz, c), dtype=np.float32)
    pos = np.full([bsz], ctx_len - 1, np.int32)
    nbytes = hp.n_layer * (per_layer + 2 * bsz * c * F32)
    flops = hp.n_layer * (4 * bsz * ctx_len * c + 5 * bsz * hp.n_head * ctx_len)
    shared = [tf.constant(q), tf.constant(pos)]
    out = []
    for way, body, pool, is_engine in (
        ("mul-reduce", attn_mul_reduce, caches.token_major, True),
        ("einsum", attn_einsum, caches.token_major, False),
        ("head-major cache, batched matmul", attn_head_major, caches.head_major, False),
        ("head-major cache, mul-reduce", attn_head_major_mul_reduce, caches.head_major, False),
    ):
        inner = functools.partial(_attend_args, functools.partial(body, hp=hp, ctx_len=ctx_len))
        for xla in (True, False):
            fn = over_copies(jit(inner) if xla else inner, shared, pool[:n])
            out.append(
                Row(
                    "attention",
                    f"{'XLA' if xla else 'graph'}, {way}",
                    timer.graph(fn, scale),
                    nbytes,
                    flops,
                    engine=is_engine and xla,
                )
            )
    np_fn = functools.partial(np_attention, hp=hp, ctx_len=ctx_len)
    out.append(
        Row(
            "attention",
            "numpy, head-major cache",
            timer.host(lambda: [np_fn(q, kc, vc, pos) for kc, vc in caches.numpy[:n]], scale),
            nbytes,
            flops,
            in_stack=False,
        )
    )
    return out


def _attend_args(body: Callable, q, pos, kc, vc):
    return body(q, kc, vc, pos)


def once_rows(
    hp: HParams, bsz: int, timer: Timer, params: dict[str, np.ndarray], rng
) -> tuple[list[Row], dict]:
    """Embedding, LM head, top-k, host transfer, sampling; also returns host-side arrays for sampling."""
    c, v = hp.n_embd, hp.n_vocab
    out = [Row("graph call", "tf.function call (once per step)", timer.floor, 0.0, 0.0, engine=True)]
    wte = tf.Variable(params["wte"], trainable=False)
    wpe = tf.Variable(params["wpe"], trainable=False)
    tokens = tf.constant(rng.integers(0, v, bsz).astype(np.int32))
    positions = tf.constant(np.full([bsz], 100, np.int32))
    emb_bytes = 3 * bsz * c * F32
    for way, fn, is_engine in (("graph", tf.function(gpt2.embed), True), ("XLA", jit(gpt2.embed), False)):
        out.append(
            Row(
                "embedding",
                way,
                timer.graph(lambda fn=fn: fn(wte, wpe, tokens, positions)),
                emb_bytes,
                0.0,
                engine=is_engine,
            )
        )

    # LM head: final norm, x @ wte^T, log-sum-exp
    x = rng.standard_normal((bsz, c), dtype=np.float32)
    g, b = params["ln_f/g"], params["ln_f/b"]
    wte_t_np = np.ascontiguousarray(params["wte"].T)
    wte_t = tf.Variable(wte_t_np, trainable=False)
    head_bytes = (v * c + bsz * v + bsz * c) * F32
    head_flops = 2 * bsz * c * v + 3 * bsz * v
    args = [tf.constant(x), tf.constant(g), tf.constant(b)]
    for xla in (True, False):
        for out_in, w in ((True, wte), (False, wte_t)):
            body = functools.partial(head_part, out_in=out_in)
            fn = jit(body) if xla else tf.function(body)
            way = f"{'XLA' if xla else 'graph'}, {'wte [V,C]' if out_in else 'copy wte^T [C,V]'}"
            out.append(
                Row(
                    "LM head",
                    way,
                    timer.graph(lambda fn=fn, w=w: fn(*args, w)),
                    head_bytes,
                    head_flops,
                    engine=xla and out_in,
                )
            )
    wte_np = params["wte"]
    for way, w, out_in in (
        ("numpy, x @ wte.T (no lse)", wte_np, True),
        ("numpy, x @ wte^T copy (no lse)", wte_t_np, False),
    ):
        out.append(
            Row(
                "LM head",
                way,
                timer.host(lambda w=w, o=out_in: np_mm(np_norm(x, g, b), w, o)),
                head_bytes,
                head_flops,
                in_stack=False,
            )
        )

    # top-k candidates of the logits
    logits_np = (np_norm(x, g, b) @ wte_np.T).astype(np.float32) * 50  # spread like a real model's logits
    logits = tf.constant(logits_np)
    topk_bytes = bsz * v * F32
    top = functools.partial(tf.math.top_k, k=CANDIDATES, sorted=True)
    for way, fn, is_engine in (
        ("graph tf.math.top_k", tf.function(top), True),
        ("XLA top_k", jit(top), False),
    ):
        out.append(
            Row("top-k", way, timer.graph(lambda fn=fn: fn(logits)), topk_bytes, 0.0, engine=is_engine)
        )
    out.append(
        Row(
            "top-k",
            "numpy argpartition + sort",
            timer.host(lambda: _np_topk(logits_np)),
            topk_bytes,
            0.0,
            in_stack=False,
        )
    )

    # host transfer of what a step returns
    lse = tf.reduce_logsumexp(logits, axis=-1)
    top_logits, top_ids = tf.math.top_k(logits, k=CANDIDATES)
    outputs = (logits, lse, top_ids, top_logits)
    cand_bytes = bsz * (1 + 2 * CANDIDATES) * F32
    out.append(
        Row(
            "host transfer",
            "logits, lse, candidates: t[:rows].numpy() (engine's _numpy_scores)",
            timer.host(lambda: [t[:bsz].numpy() for t in outputs]),
            topk_bytes + cand_bytes,
            0.0,
            engine=True,
        )
    )
    out.append(
        Row(
            "host transfer",
            "same, t.numpy() (no slice)",
            timer.host(lambda: [t.numpy() for t in outputs]),
            topk_bytes + cand_bytes,
            0.0,
        )
    )
    out.append(
        Row(
            "host transfer",
            "lse and candidates only",
            timer.host(lambda: [t.numpy() for t in outputs[1:]]),
            cand_bytes,
            0.0,
            note="only for requests that need no full row (top-k <= 64, no penalty)",
        )
    )
    host = {"logits": logits_np, "top_ids": top_ids.numpy(), "top_logits": top_logits.numpy()}
    return out, host


def _np_topk(logits: np.ndarray) -> np.ndarray:
    idx = np.argpartition(logits, -CANDIDATES, axis=-1)[:, -CANDIDATES:]
    order = np.argsort(-np.take_along_axis(logits, idx, axis=-1), axis=-1)
    return np.take_along_axis(idx, order, axis=-1)


def sampling_rows(bsz: int, timer: Timer, host: dict) -> list[Row]:
    logits, top_ids, top_logits = host["logits"], host["top_ids"], host["top_logits"]
    params = [sampling.SamplingParams(top_k=TOP_K, seed=i) for i in range(bsz)]
    rngs = [sampling.make_rng(i) for i in range(bsz)]
    full = logits.nbytes
    batch = getattr(sampling, "sample_batch", None)
    out = [
        Row(
            "sampling",
            "sample() per row, full logits",
            timer.host(lambda: [sampling.sample(logits[i], params[i], rngs[i]) for i in range(bsz)]),
            full,
            0.0,
            engine=batch is None,
        )
    ]
    if batch is not None:
        out.append(
            Row(
                "sampling",
                "sample_batch, full logits",
                timer.host(lambda: batch(logits, params, rngs)),
                full,
                0.0,
            )
        )
        out.append(
            Row(
                "sampling",
                "sample_batch, top candidates",
                timer.host(lambda: batch(logits, params, rngs, top_ids=top_ids, top_logits=top_logits)),
                top_ids.nbytes + top_logits.nbytes,
                0.0,
                engine=True,
            )
        )
    return out


# ---------------------------------------------------------------- the engine itself


@dataclass
class EngineTimes:
    step: float  # engine.step_scores
    decode_call: float | None  # engine._decode_fn alone
    layer: float | None  # gpt2.decode_layer (one XLA program) x n_layer
    prefill_seconds: float


def engine_times(
    engine: Engine, hp: HParams, bsz: int, ctx_len: int, repeats: int, full_prefill: bool, rng
) -> EngineTimes:
    """The real step in the ``(bsz, ctx_len)`` bucket; see the module docstring."""
    steps = min(repeats + 1, ctx_len // 2 - 1)  # all positions stay in (ctx_len/2, ctx_len]: one bucket
    start = time.perf_counter()
    long_prompt = [int(t) for t in rng.integers(0, hp.n_vocab, ctx_len - steps)]
    for slot in range(bsz):
        engine.prefill(slot, long_prompt if slot == 0 or full_prefill else long_prompt[:8])
    prefill_seconds = time.perf_counter() - start
    tokens = {slot: int(t) for slot, t in enumerate(rng.integers(0, hp.n_vocab, bsz))}
    call = _decode_call(engine, bsz, ctx_len, list(tokens.values()))
    time.sleep(SETTLE)
    step_times, call_times = [], []
    for _ in range(steps):  # interleaved, so both see the same machine; the first of each compiles
        t0 = time.perf_counter()
        engine.step_scores(tokens)
        step_times.append(time.perf_counter() - t0)
        if call is not None:
            t0 = time.perf_counter()
            call()
            call_times.append(time.perf_counter() - t0)
    step = min(step_times[1:] or step_times)
    decode_call = min(call_times[1:] or call_times) if call_times else None
    try:
        layer = whole_layer_time(engine, hp, bsz, ctx_len, repeats)
    except (AttributeError, TypeError, ValueError) as exc:  # private attributes the lead may change
        print(f"  (gpt2.decode_layer x {hp.n_layer} not timed: {exc})")
        layer = None
    for slot in range(bsz):
        engine.release(slot)
    return EngineTimes(step, decode_call, layer, prefill_seconds)


def _decode_call(engine: Engine, bsz: int, ctx_len: int, tokens: list[int]) -> Callable[[], object] | None:
    """``engine._decode_fn`` for the ``(bsz, ctx_len)`` bucket with the engine's own argument types
    (so it reuses the engine's trace), or None where that private function has changed."""
    fn = getattr(engine, "_decode_fn", None)
    if fn is None:
        print("  (engine._decode_fn not found: compiled call not timed)")
        return None
    tok = tf.constant(np.array(tokens, np.int32))
    pos = tf.constant(np.full([bsz], ctx_len - 1, np.int32))  # a row the slots write anyway
    try:
        fn(tok, pos, ctx_len)
    except (TypeError, ValueError) as exc:  # the lead may change the private signature
        print(f"  (engine._decode_fn not timed: {exc})")
        return None
    return lambda: fn(tok, pos, ctx_len)


def whole_layer_time(engine: Engine, hp: HParams, bsz: int, ctx_len: int, repeats: int) -> float:
    """``gpt2.decode_layer`` (one XLA program) over the engine's 12 layers, in one graph call."""
    layer = jit(functools.partial(gpt2.decode_layer, hp=hp, ctx_len=ctx_len))
    x = tf.random.normal([bsz, hp.n_embd])
    pos = tf.constant(np.full([bsz], hp.n_ctx, np.int32))  # scratch row: the slots are untouched

    @tf.function
    def run(x):
        for lw, cache in zip(engine._layers, engine._cache):
            x = layer(x, lw, cache, pos=pos)
        return x

    return best_time(lambda: run(x), repeats)


# ---------------------------------------------------------------- report


def best_rows(rows: list[Row]) -> dict[str, Row]:
    """Fastest in-stack row of each part."""
    best: dict[str, Row] = {}
    for r in rows:
        if r.in_stack and (r.part not in best or r.seconds < best[r.part].seconds):
            best[r.part] = r
    return best


def engine_rows(rows: list[Row]) -> dict[str, Row]:
    return {r.part: r for r in rows if r.engine}


def fmt_rate(amount: float, seconds: float) -> str:
    return f"{amount / seconds / 1e9:.1f}" if amount and seconds > 0 else "–"


def part_table(rows: list[Row]) -> list[str]:
    best, eng = best_rows(rows), engine_rows(rows)
    lines = ["| part | way | ms/step | GB/s | GFLOP/s | vs engine | |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        mark = " ".join(m for m, on in (("(engine)", r.engine), ("**best**", best.get(r.part) is r)) if on)
        if r.note:
            mark = f"{mark} {r.note}".strip()
        ref = eng.get(r.part)
        ratio = f"{ref.seconds / r.seconds:.2f}x" if ref and r.seconds > 0 else "–"
        lines.append(
            f"| {r.part} | {r.way} | {r.seconds * 1e3:.3f} | {fmt_rate(r.nbytes, r.seconds)} | "
            f"{fmt_rate(r.flops, r.seconds)} | {ratio} | {mark} |"
        )
    return lines


@dataclass
class Summary:
    bsz: int
    ctx_len: int
    engine: EngineTimes
    engine_sum: float
    best_sum: float
    sampling_engine: float
    sampling_best: float
    gap: str
    outside: str


def summarize(bsz: int, ctx_len: int, rows: list[Row], et: EngineTimes) -> Summary:
    steps_parts = (*ONCE, *PER_LAYER)
    eng, best = engine_rows(rows), best_rows(rows)
    engine_sum = sum(eng[p].seconds for p in steps_parts if p in eng)
    best_sum = sum(best[p].seconds for p in steps_parts if p in best)
    gaps = sorted(
        ((eng[p].seconds - best[p].seconds, p) for p in (*steps_parts, "sampling") if p in eng), reverse=True
    )
    gap_s, part = gaps[0]
    gap = f"{part}: {best[part].way} saves {gap_s * 1e3:.2f} ms" if gap_s > 0 else "none"
    return Summary(
        bsz,
        ctx_len,
        et,
        engine_sum,
        best_sum,
        eng["sampling"].seconds,
        best["sampling"].seconds,
        gap,
        outside_gap(rows),
    )


def outside_gap(rows: list[Row]) -> str:
    """The part whose engine's way loses most time to its numpy reference (if any does)."""
    eng = engine_rows(rows)
    ref: dict[str, Row] = {}
    for r in rows:
        if not r.in_stack and (r.part not in ref or r.seconds < ref[r.part].seconds):
            ref[r.part] = r
    gaps = sorted(((eng[p].seconds - ref[p].seconds, p) for p in ref if p in eng), reverse=True)
    if not gaps or gaps[0][0] <= 0:
        return "none"
    gap_s, part = gaps[0]
    return f"{part}: numpy {eng[part].seconds / ref[part].seconds:.1f}x faster ({gap_s * 1e3:.1f} ms)"


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.2f}" if seconds is not None else "n/a"


def step_lines(s: Summary) -> list[str]:
    et = s.engine
    call = _ms(et.decode_call)
    host = _ms(et.step - et.decode_call if et.decode_call is not None else None)
    return [
        "",
        f"| B={s.bsz}, L={s.ctx_len}: the whole step | ms |",
        "|---|---:|",
        f"| engine.step_scores (real step, {s.bsz / et.step:.0f} tok/s) | {et.step * 1e3:.2f} |",
        f"| engine._decode_fn alone (compiled call, no host work) | {call} |",
        f"| host overhead of step_scores (difference) | {host} |",
        f"| gpt2.decode_layer x 12 (the engine's one-program layer) | {_ms(et.layer)} |",
        f"| sum of the engine's parts (excl. sampling) | {s.engine_sum * 1e3:.2f} |",
        f"| sum of the best in-stack parts (excl. sampling) | {s.best_sum * 1e3:.2f} |",
        f"| engine step / best sum | {et.step / s.best_sum:.2f}x |",
        f"| sampling: engine's way / best way | {s.sampling_engine * 1e3:.2f} / {s.sampling_best * 1e3:.2f} |",
    ]


def summary_table(summaries: list[Summary]) -> list[str]:
    lines = [
        "| B | L | step ms | tok/s | decode call ms | host ms | Σ engine parts | Σ best parts | step/best "
        "| best tok/s | sampling ms | biggest in-stack gap | furthest from numpy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in summaries:
        et = s.engine
        call = _ms(et.decode_call)
        host = _ms(et.step - et.decode_call if et.decode_call is not None else None)
        lines.append(
            f"| {s.bsz} | {s.ctx_len} | {et.step * 1e3:.2f} | {s.bsz / et.step:.0f} | {call} | {host} | "
            f"{s.engine_sum * 1e3:.2f} | {s.best_sum * 1e3:.2f} | {et.step / s.best_sum:.2f}x | "
            f"{s.bsz / s.best_sum:.0f} | {s.sampling_engine * 1e3:.2f} | {s.gap} | {s.outside} |"
        )
    return lines


def environment_lines() -> list[str]:
    cpu = platform.processor() or platform.machine()
    flags = ""
    with contextlib.suppress(OSError, StopIteration):
        text = Path("/proc/cpuinfo").read_text()
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), cpu
        )
        have = set(next(ln for ln in text.splitlines() if ln.startswith("flags")).split(":", 1)[1].split())
        flags = " ".join(f for f in ("avx2", "fma", "avx512f", "amx_tile") if f in have)
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    lines = [
        f"- machine: {cpu} ({flags}), {os.cpu_count()} CPUs, {platform.platform()}",
        f"- python {platform.python_version()}, TensorFlow {tf.__version__}, numpy {np.__version__}",
        f"- TF threads: intra-op {intra or f'default ({os.cpu_count()})'}, inter-op {inter or 'default'}",
        f"- numpy BLAS: {_blas_name()}",
    ]
    env = {
        k: os.environ[k]
        for k in (
            "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE",
            "OPENBLAS_NUM_THREADS",
            "OMP_NUM_THREADS",
            "TF_ENABLE_ONEDNN_OPTS",
        )
        if k in os.environ
    }
    if env:
        lines.append("- environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if "OPENBLAS_CORETYPE" in env or "OPENBLAS_L2_SIZE" in env:
        lines.append(
            "  - OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set: they slow numpy's OpenBLAS; its rows are "
            "only an outside reference (not changed here)"
        )
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            lines.append(
                f"- threadpoolctl: {pool.get('internal_api')} {pool.get('version')}, "
                f"{pool.get('num_threads')} threads, kernel {pool.get('architecture')}"
            )
    except ImportError:
        lines.append("- threadpoolctl not installed: OpenBLAS kernel not reported")
    return lines


def _blas_name() -> str:
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]
        blas = deps.get("blas", {})
        return f"{blas.get('name')} {blas.get('version')}"
    except (TypeError, KeyError):
        return "unknown"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--batches", default="1,8,32", help="decode batch sizes B, comma-separated")
    ap.add_argument("--contexts", default="128,256,1024", help="context buckets L, comma-separated")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per figure (the best is kept)")
    ap.add_argument("--quick", action="store_true", help="B 1,8 x L 128,1024 with 3 repeats")
    ap.add_argument("--full-prefill", action="store_true", help="prefill every slot to L (not only slot 0)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.contexts, args.repeats = "1,8", "128,1024", 3
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.contexts = [int(c) for c in str(args.contexts).split(",")]
    return args


def run_batch(
    hp: HParams, params, bsz: int, contexts: list[int], timer: Timer, weights: Weights, full_prefill: bool
) -> list[Summary]:
    rng = np.random.default_rng(bsz)
    print(
        f"\n## B={bsz}: per-layer linear parts, head, top-k, transfer, sampling (independent of L)",
        flush=True,
    )
    common = layer_linear_rows(hp, bsz, timer, weights, rng)
    once, host = once_rows(hp, bsz, timer, params, rng)
    common += once + sampling_rows(bsz, timer, host)
    n_caches = max(
        copies_for(2 * bsz * ctx * hp.n_embd * F32, hp.n_layer, MAX_CACHE_COPIES) for ctx in contexts
    )
    caches = Caches(hp, bsz, n_caches, rng)
    common += write_rows(hp, bsz, timer, caches, np.full([bsz], min(contexts) - 1, np.int32), rng)
    per_ctx = {ctx: attention_rows(hp, bsz, ctx, timer, caches, rng) for ctx in contexts}
    del caches
    gc.collect()
    engine = Engine(hp, params, EngineConfig(slots=bsz))
    summaries = []
    for ctx in contexts:
        et = engine_times(engine, hp, bsz, ctx, timer.repeats, full_prefill, rng)
        rows = sorted(common + per_ctx[ctx], key=lambda r: _order(r.part))
        s = summarize(bsz, ctx, rows, et)
        print(f"\n### B={bsz}, L={ctx} (load {load()}; engine prefill {et.prefill_seconds:.1f} s)\n")
        print("\n".join(part_table(rows) + step_lines(s)), flush=True)
        summaries.append(s)
    del engine
    gc.collect()
    return summaries


def _order(part: str) -> int:
    order = ("graph call", "embedding", *PER_LAYER, "LM head", "top-k", "host transfer", "sampling")
    return order.index(part)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    hp = PRESETS["124M"]
    start = time.perf_counter()
    print("# Roofline of one decode step (GPT-2 124M shape, random weights, float32)\n")
    print(f"load average before: {load()}")
    print("\n".join(environment_lines()))
    params = random_params(hp, seed=0)
    timer = Timer(args.repeats)
    timer.floor = call_floor(args.repeats)
    print(
        f"- one tf.function call costs {timer.floor * 1e6:.0f} µs (subtracted from each TF row, counted once "
        f"per step as 'graph call'); sampling API: {'sample_batch' if hasattr(sampling, 'sample_batch') else 'sample per row'}"
    )
    weights = Weights(hp, params)
    summaries = []
    for bsz in args.batches:
        summaries += run_batch(hp, params, bsz, args.contexts, timer, weights, args.full_prefill)
    print(f"\n## Summary (load average after: {load()}; {time.perf_counter() - start:.0f} s)\n")
    print("\n".join(summary_table(summaries)))


if __name__ == "__main__":
    main()
