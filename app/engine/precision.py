"""``dtype="auto"``: bfloat16 weights only where the CPU multiplies them natively and it was faster.

bfloat16 weights (rows, layer norm and softmax stay float32: :mod:`app.engine.gpt2`) halve the
bytes a decode step reads and, on a CPU with AMX or AVX512-BF16, run oneDNN's bfloat16 matmul:
2.2-2.3x float32 from 32 rows up on a Sapphire Rapids Xeon. Without those instructions oneDNN
emulates bfloat16 (or TensorFlow falls back to Eigen) and it is slower than float32, so ``auto``
does not even measure there and says why. Where it can, it times one layer's four matmuls and the
LM head at 1 row and at the slot count, float32 (XLA and oneDNN, the faster) against bfloat16
(oneDNN), and picks bfloat16 when it is at least :data:`kernels.MARGIN` faster at the slot count
and not that much slower at one row. The result is kept like the kernel plan.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from app.engine import kernels
from app.model.hparams import HParams

log = logging.getLogger(__name__)


def time_matmuls(hp: HParams, rows: Sequence[int], *, repeats: int = 5) -> dict[int, dict[str, float]]:
    """Milliseconds (best of ``repeats``) of one block's four linear maps and the LM head, random
    weights of the model's shapes in the serving layout, at each row count: ``float32`` (the faster
    of XLA and graph ops) and ``bfloat16`` (graph ops: oneDNN)."""
    import numpy as np
    import tensorflow as tf

    c = hp.n_embd
    shapes = [(3 * c, c), (c, c), (4 * c, c), (c, 4 * c), (hp.n_vocab, c)]
    rng = np.random.default_rng(0)
    f32 = [tf.constant(rng.standard_normal(s, np.float32) * 0.02) for s in shapes]
    b16 = [tf.cast(w, tf.bfloat16) for w in f32]

    def run(x, x4, ws, dtype):  # x [m, C], x4 [m, 4C]: the inputs of the maps that take C and 4C
        total = 0.0
        for w in ws:
            xin = x if w.shape[1] == c else x4
            total += tf.reduce_sum(tf.cast(tf.matmul(tf.cast(xin, dtype), w, transpose_b=True), tf.float32))
        return total

    graph = tf.function(run)
    xla = tf.function(run, jit_compile=True)
    ways = {
        "float32 xla": (xla, f32, tf.float32),
        "float32 onednn": (graph, f32, tf.float32),
        "bfloat16 onednn": (graph, b16, tf.bfloat16),
    }
    out: dict[int, dict[str, float]] = {}
    for m in rows:
        x = tf.constant(rng.standard_normal((m, c), np.float32))
        x4 = tf.constant(rng.standard_normal((m, 4 * c), np.float32))
        best = {}
        for fn, ws, dtype in ways.values():
            fn(x, x4, ws, dtype).numpy()  # compile / warm
        for _ in range(repeats):
            for name, (fn, ws, dtype) in ways.items():
                t0 = time.perf_counter()
                fn(x, x4, ws, dtype).numpy()
                best[name] = min(best.get(name, float("inf")), (time.perf_counter() - t0) * 1e3)
        out[m] = {
            "float32": round(min(best["float32 xla"], best["float32 onednn"]), 3),
            "bfloat16": round(best["bfloat16 onednn"], 3),
        }
    return out


def decide(timings: dict[int, dict[str, float]]) -> tuple[str, str]:
    """bfloat16 when faster by ``MARGIN`` at the most rows and not slower by it at the fewest."""
    few, most = min(timings), max(timings)
    at = {m: timings[m]["bfloat16"] / timings[m]["float32"] for m in (few, most)}
    faster = at[most] < 1 - kernels.MARGIN and at[few] < 1 + kernels.MARGIN
    figures = ", ".join(f"{m} rows {at[m]:.2f}x the time of float32" for m in sorted(at))
    return ("bfloat16" if faster else "float32"), f"auto: bfloat16 measured {figures}"


def auto_dtype(
    hp: HParams,
    *,
    slots: int,
    on_gpu: bool,
    cache_dir: Path | None,
    flags: tuple[str, ...] | None = None,
    repeats: int = 5,
) -> tuple[str, str]:
    """What ``dtype="auto"`` runs this model in here, and why (one line)."""
    if on_gpu:
        return "float32", "auto keeps float32 on a GPU (ask for bfloat16 or float16 to halve the weights)"
    if flags is None:
        flags = kernels.cpu_info()[1]
    if not kernels.bf16_native(flags):
        return "float32", (
            "auto keeps float32: this CPU has neither AVX512-BF16 nor AMX-BF16, so bfloat16 matmuls"
            " would be emulated (slower than float32)"
        )
    key = kernels.machine_key({"model": vars(hp), "slots": slots, "choice": "dtype"})
    key["flags"] = list(flags)
    path = kernels.cache_file(cache_dir, key) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text())
            if data["key"] != json.loads(json.dumps(key)):
                raise ValueError("it was measured for another machine or model")
            timings = {int(m): {k: float(v) for k, v in t.items()} for m, t in data["timings_ms"].items()}
            dtype, reason = decide(timings)
            return dtype, f"{reason} (at an earlier start, kept in {path})"
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring the dtype choice in %s (%s); measuring again", path, exc)
    timings = time_matmuls(hp, sorted({1, slots}), repeats=repeats)
    dtype, reason = decide(timings)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"key": key, "timings_ms": timings}, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("cannot keep the dtype choice in %s (%s)", path.parent, exc)
    return dtype, reason
