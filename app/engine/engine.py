"""A GPT-2 worker: weights and a fixed-shape KV cache with ``S`` slots on one device.

A request occupies one slot. :meth:`Engine.prefill_batch` writes prompt pieces of several slots in
one call; :meth:`Engine.step` advances any set of occupied slots by one token and returns their
scores. Slots join and leave between calls.

Compilation. Each call is a TensorFlow graph that runs the embedding, then the *same* XLA-compiled
block program once per layer (the layer's weights and cache are arguments), then an XLA-compiled
head. A program is compiled once per shape bucket: decode ``(rows, context)``, prefill ``(pieces,
piece length, context)``. Because one block program serves all layers, compiling costs about one
layer's worth per bucket instead of ``n_layer`` (124M: ~1 s instead of ~4.5 s a shape), which is
what lets :meth:`Engine.warmup` compile every bucket a request can reach before the server says
ready in under a minute. The price, measured at 124M (interleaved runs, context 256): a step at
32 rows is ~12 % slower than with all 12 blocks in one program, at one row within noise;
``layers_per_call`` (e.g. 12) buys that back for a longer start-up.

Buckets. A decode step for ``B`` rows whose longest context is ``n`` runs the ``(round_up(B),
round_up(n))`` program, so its cost follows the context in use, not ``n_ctx``. One row is its own
bucket: padding a lone request to two rows doubled the cost of the LM head. Prefill packs up to
``prefill_chunk`` (padded) tokens per call: one piece of up to ``prefill_chunk`` tokens, or several
first pieces of prompts (each starting at position 0) of a shorter bucket.

Scores. Each call returns, per row, the float32 logits, their log-sum-exp and the
``candidates`` most likely token ids with their logits (TensorFlow's ``top_k``: most likely first,
ties by the lower id), so the host samples top-k requests without sorting 50,257 logits.

Sliding window: GPT-2's positions are learned and absolute, so a full slot cannot simply drop its
oldest entry. When a slot holds ``n_ctx`` tokens and one more arrives, the engine keeps the last
``window_keep`` tokens (default ``n_ctx * 3 // 4``: a quarter of the context is freed, so the
re-prefill, which costs about as much as ``window_keep`` decode steps of one slot, happens once
per ``n_ctx // 4`` generated tokens), re-prefills them from position 0 and carries on. Positions
never exceed ``n_ctx - 1``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from app.engine import gpt2, kernels, programs
from app.engine.buckets import power_buckets, round_up
from app.model.hparams import HParams, param_shapes

DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}
_SMALLEST_PIECE = 16  # shortest prefill bucket
_AUTO_PENDING = "auto: not measured yet"  # the reason of kernels="auto"'s plan until it is measured


@dataclass(frozen=True)
class EngineConfig:
    slots: int = 8  # concurrent sequences the cache holds
    dtype: str = "float32"  # weights, activations and cache: float32 | float16 | bfloat16
    device: str | None = None  # e.g. "/GPU:0", "/CPU:0"; None lets TensorFlow choose
    prefill_chunk: int = 256  # prompt tokens (padded) run in one prefill call; longer prompts are chunked
    window_keep: int | None = None  # tokens kept when the window slides; None = 3/4 of n_ctx
    # tokens of a slid window re-prefilled per call (per batcher round): streams wait on each round
    slide_chunk: int = 64
    candidates: int = 64  # most likely tokens returned per row with the logits (top-k sampling)
    speculative_tokens: int = 0  # draft length verified per call for a lone stream (0 = no speculation)
    layers_per_call: int = 1  # blocks per compiled program (a divisor of n_layer): compile time vs step time
    jit_compile: bool = True  # XLA: required on CPU for in-place cache updates
    # Matmul kernels (app.engine.kernels): "xla", "onednn", or "auto" (timed at warm-up). Half
    # precision on the CPU is always "onednn".
    kernels: str = "xla"
    # Seeded requests bit-identical alone and in any batch (GPT2_BATCH_INVARIANT): a decode call
    # never runs one row alone (XLA's matmul takes another kernel at one row; from two rows up a
    # row's result depends neither on its neighbours nor on its place), and kernels are XLA's.
    batch_invariant: bool = False
    # Decode calls of up to this many rows run every block as one XLA program (the XLA variant):
    # 5-11 % faster at one row (124M, 2 AMD cores) for ~3x the compile of those shapes; 0 = never.
    whole_model_rows: int = 1

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.prefill_chunk < _SMALLEST_PIECE:
            raise ValueError(f"prefill_chunk must be >= {_SMALLEST_PIECE}, got {self.prefill_chunk}")
        if self.slide_chunk < _SMALLEST_PIECE:
            raise ValueError(f"slide_chunk must be >= {_SMALLEST_PIECE}, got {self.slide_chunk}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        if self.whole_model_rows < 0:
            raise ValueError(f"whole_model_rows must be >= 0, got {self.whole_model_rows}")
        if self.kernels not in (*kernels.VARIANTS, "auto"):
            raise ValueError(
                f"kernels must be one of {', '.join(kernels.VARIANTS)} or auto, got {self.kernels!r}"
            )


class Scores(NamedTuple):
    """What one engine call returns for each of its ``N`` rows (numpy arrays)."""

    logits: np.ndarray  # [N, V] float32
    lse: np.ndarray  # [N] float32: log-sum-exp of each row (log-probabilities: logits - lse)
    top_ids: np.ndarray  # [N, K] int32: the K most likely ids, most likely first, ties by lower id
    top_logits: np.ndarray  # [N, K] float32: their logits


class ServingWeights(NamedTuple):
    """The weights an :class:`Engine` generates with (its variables, read-only), for a cache-free
    forward pass beside it (:mod:`app.engine.attention_maps`)."""

    wte: tf.Variable  # [V, C]
    wpe: tf.Variable  # [n_ctx, C]
    layers: tuple[gpt2.Layer, ...]  # serving layout: linear maps [out, in]
    device: str | None  # where they live (None: TensorFlow's choice)


class Piece(NamedTuple):
    """Prompt tokens for one slot, written from position ``start`` (0, or what the slot holds)."""

    slot: int
    ids: Sequence[int]
    start: int = 0


class Engine:
    """Weights + KV cache + per-slot token windows. Not thread-safe: one thread drives it."""

    def __init__(
        self,
        hp: HParams,
        params: Mapping[str, np.ndarray],
        config: EngineConfig = EngineConfig(),
        *,
        shelf: programs.ProgramShelf | None = None,
    ):
        """``shelf``: where engines of one model shape share their compiled programs (by default
        this engine's own)."""
        self.hp = hp
        self.config = config
        self.dtype = DTYPES[config.dtype]
        keep = config.window_keep if config.window_keep is not None else hp.n_ctx * 3 // 4
        if not 1 <= keep < hp.n_ctx:
            raise ValueError(f"window_keep must be in [1, n_ctx={hp.n_ctx}), got {keep}")
        self.window_keep = keep
        self.ctx_buckets = power_buckets(64, hp.n_ctx)
        self.chunk_buckets = power_buckets(_SMALLEST_PIECE, min(config.prefill_chunk, hp.n_ctx))
        self.slide_chunk = min(config.slide_chunk, self.chunk_buckets[-1])
        self.batch_buckets = power_buckets(1, config.slots)
        self.piece_buckets = power_buckets(1, min(config.slots, config.prefill_chunk // _SMALLEST_PIECE))
        self._candidates = min(config.candidates, hp.n_vocab)
        if config.layers_per_call < 1 or hp.n_layer % config.layers_per_call:
            raise ValueError(
                f"layers_per_call must divide n_layer={hp.n_layer}, got {config.layers_per_call}"
            )
        self._layers_per_call = config.layers_per_call
        self._windows: list[list[int] | None] = [None] * config.slots
        with self._placement():
            self._build_variables(params)
        jit = config.jit_compile
        self.kernel_plan = self._initial_plan()
        # kernels="auto" on the CPU in float32: the plan is measured by choose_kernels (once)
        self._kernels_to_measure = self.kernel_plan.reason == _AUTO_PENDING
        self.programs = (shelf or programs.ProgramShelf()).get(hp, jit)
        self._decode_fn = tf.function(self._decode_graph)
        self._prefill_fn = tf.function(self._prefill_graph)

    def _build_variables(self, params: Mapping[str, np.ndarray]) -> None:
        hp = self.hp
        missing = [n for n in param_shapes(hp) if n not in params]
        if missing:
            raise ValueError(f"missing weights: {', '.join(missing[:3])}")

        def var(array: np.ndarray, name: str) -> tf.Variable:
            return tf.Variable(np.ascontiguousarray(array), dtype=self.dtype, trainable=False, name=name)

        self._wte = var(params["wte"], "wte")
        self._wpe = var(params["wpe"], "wpe")
        self._ln_f = (var(params["ln_f/g"], "ln_f_g"), var(params["ln_f/b"], "ln_f_b"))
        self._layers = []
        for i in range(hp.n_layer):
            lw = gpt2.layer_weights(params, i, transpose=np.transpose)  # serving layout, on the host
            self._layers.append(gpt2.Layer(*(var(a, f"h{i}_{f}") for f, a in zip(gpt2.Layer._fields, lw))))
        # One cache row per decode row; row n_ctx of each slot is scratch (padding, idle rows).
        shape = [self.batch_buckets[-1], hp.n_ctx + 1, hp.n_embd]
        self._cache = [
            (
                tf.Variable(tf.zeros(shape, self.dtype), trainable=False, name=f"h{i}_k"),
                tf.Variable(tf.zeros(shape, self.dtype), trainable=False, name=f"h{i}_v"),
            )
            for i in range(hp.n_layer)
        ]

    # ---- graphs (traced once per static shape / bucket) around the compiled programs ----

    def _blocks(self, x, variant: str, layer_fn, attention_fn, *args):
        """Every block over rows ``x``: XLA's way, one program per group of layers (``layer_fn``);
        oneDNN's way, the block's graph ops with only the attention compiled (``attention_fn``)."""
        if variant == "whole":  # every block in one XLA program
            return layer_fn(x, tuple(self._layers), tuple(self._cache), *args)
        for layers, caches in self._groups():
            if variant == "xla":
                x = layer_fn(x, layers, caches, *args)
                continue
            for lw, cache in zip(layers, caches):
                x = gpt2.block(x, lw, functools.partial(_attend, attention_fn, cache, args))
        return x

    def _groups(self):
        """The layers (and their caches) of each compiled call, in order."""
        g = self._layers_per_call
        return [
            (tuple(self._layers[i : i + g]), tuple(self._cache[i : i + g]))
            for i in range(0, self.hp.n_layer, g)
        ]

    def _scores(self, x, variant: str) -> tuple[tf.Tensor, ...]:
        head = programs.head if variant == "onednn" else self.programs.head  # graph ops or XLA
        logits, lse = head(x, *self._ln_f, self._wte)  # [N, V] float32
        top_logits, top_ids = tf.math.top_k(logits, k=self._candidates, sorted=True)
        return logits, lse, top_ids, top_logits

    def _embed(self, tokens, positions):
        """Token plus position embeddings as float32 rows, whatever the weights' dtype."""
        return tf.cast(gpt2.embed(self._wte, self._wpe, tokens, positions), tf.float32)

    def _decode_graph(self, tokens, pos, ctx_len: int, variant: str = "xla"):
        x = self._embed(tokens, tf.minimum(pos, self.hp.n_ctx - 1))  # [B, C]
        p = self.programs
        x = self._blocks(x, variant, p.decode_layers, p.decode_attention, pos, ctx_len)
        return self._scores(x, variant)

    def _prefill_graph(
        self, tokens, slots, start, n_valid, ctx_len: int, every_row: bool = False, variant: str = "xla"
    ):
        n, t_len = tokens.shape
        positions = tf.minimum(start[:, None] + tf.range(t_len)[None, :], self.hp.n_ctx - 1)  # [N, T]
        x = tf.reshape(self._embed(tokens, positions), [n * t_len, self.hp.n_embd])
        p = self.programs
        x = self._blocks(x, variant, p.prefill_layers, p.prefill_attention, slots, start, n_valid, ctx_len)
        if every_row:  # scores after every token (speculative verification)
            return self._scores(x, variant)
        last = tf.range(n) * t_len + tf.maximum(n_valid - 1, 0)  # each piece's last real token
        return self._scores(tf.gather(x, last), variant)

    def _decode_variant(self, rows: int) -> str:
        """The kernel plan's variant for a decode call of ``rows`` rows; XLA's becomes the
        whole-model program (every block one program) up to ``whole_model_rows`` rows."""
        variant = self.kernel_plan.variant("decode", rows)
        whole = rows <= self.config.whole_model_rows and self._layers_per_call < self.hp.n_layer
        return "whole" if variant == "xla" and whole else variant

    def _on_gpu(self) -> bool:
        device = self.config.device
        if device is None:
            return bool(tf.config.list_logical_devices("GPU"))
        return "GPU" in device.upper()

    def _initial_plan(self) -> kernels.KernelPlan:
        """The kernel plan before any timing: the configured variant, oneDNN for half-precision
        weights on the CPU, XLA on a GPU; ``auto`` starts as XLA until :meth:`choose_kernels`."""
        if self._on_gpu():
            return kernels.fixed("xla", "GPU: XLA (cuBLAS under either variant)")
        if self.config.batch_invariant:
            return kernels.fixed(
                "xla",
                "batch-invariant: XLA, whose row results do not depend on their position; oneDNN's"
                " matmul computes the last rows of a block with another kernel (2 of 8 rows differ)",
            )
        if self.config.dtype != "float32":
            return kernels.fixed(
                "onednn",
                f"{self.config.dtype} weights on the CPU: oneDNN (XLA's half dot measured 3-6x slower)",
            )
        if self.config.kernels == "auto":
            return kernels.fixed("xla", _AUTO_PENDING)
        return kernels.fixed(self.config.kernels, f"kernels={self.config.kernels}")

    def kernel_key(self) -> dict:
        """What the kernel timings depend on (the machine's part added by :func:`kernels.machine_key`)."""
        return kernels.machine_key(
            {
                "model": asdict(self.hp),
                "dtype": self.config.dtype,
                "layers_per_call": self._layers_per_call,
                "decode_rows": list(self.batch_buckets),
                "prefill_rows": list(self.chunk_buckets),
                "timing": 2,  # what time_kernels measures: a new way of timing measures again
            }
        )

    def choose_kernels(
        self,
        cache_dir: Path | None = None,
        progress: Callable[[str], None] | None = None,
        *,
        repeats: int = 3,
        threads: int = 2,
    ) -> kernels.KernelPlan:
        """For ``kernels="auto"`` on the CPU in float32: the plan kept in ``cache_dir`` for this
        machine and model, or, failing that, time both variants of every row class (decode rows at
        context 64, one prefill piece of each length) and keep the faster; stored for the next
        start (124M on 2 AMD cores: 40-44 s the first time). Any other configuration keeps its fixed
        plan. Writes only scratch rows."""
        if not self._kernels_to_measure:
            return self.kernel_plan
        key = self.kernel_key()
        plan = kernels.load(cache_dir, key)
        if plan is None:
            plan = kernels.choose(
                self.time_kernels(repeats=repeats, threads=threads), "measured at this start"
            )
            where = kernels.save(cache_dir, key, plan)
            if where is not None:
                plan = kernels.KernelPlan(
                    plan.decode, plan.prefill, f"measured at this start, kept in {where}", plan.timings, None
                )
        self.kernel_plan, self._kernels_to_measure = plan, False
        if progress is not None:
            progress(f"kernels: {plan.summary()}")
        return plan

    def time_kernels(self, *, repeats: int = 3, threads: int = 2) -> dict[str, dict[int, dict[str, float]]]:
        """Milliseconds of one call (best of up to ``repeats``) of each row class in each variant:
        decode rows ``batch_buckets`` at context 64, prefill rows as one piece of the shortest,
        middle and longest chunk bucket. The programs are compiled first (``threads`` at once),
        then timed one at a time, the variants interleaved; a variant over 1.5x the other's best
        after a round is not timed again (its loss is clear, and start-up time counts)."""
        ctx = self.ctx_buckets[0]
        zeros = functools.partial(tf.zeros, dtype=tf.int32)

        def call(kind: str, rows: int, variant: str) -> None:
            with self._placement():
                if kind == "decode":
                    out = self._decode_fn(zeros([rows]), tf.fill([rows], self.hp.n_ctx), ctx, variant)
                else:
                    z = zeros([1])
                    ctx_len = round_up(rows, self.ctx_buckets)
                    out = self._prefill_fn(zeros([1, rows]), z, z, z, ctx_len, False, variant)
            out[1].numpy()

        chunks = self.chunk_buckets
        cases = [("decode", b) for b in self.batch_buckets]
        cases += [("prefill", t) for t in sorted({chunks[0], chunks[len(chunks) // 2], chunks[-1]})]
        runs = [(kind, rows, v) for kind, rows in cases for v in kernels.VARIANTS]
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="kernels") as pool:
            list(pool.map(lambda r: call(*r), runs))  # compile
        best: dict[tuple[str, int, str], float] = {}
        for _ in range(repeats):
            for kind, rows, v in runs:
                other = best.get((kind, rows, next(o for o in kernels.VARIANTS if o != v)))
                if other is not None and best.get((kind, rows, v), 0.0) > 1.5 * other:
                    continue
                t0 = time.perf_counter()
                call(kind, rows, v)
                ms = (time.perf_counter() - t0) * 1e3
                best[kind, rows, v] = min(best.get((kind, rows, v), float("inf")), ms)
        out: dict[str, dict[int, dict[str, float]]] = {kind: {} for kind in kernels.KINDS}
        for (kind, rows, v), ms in best.items():
            out[kind].setdefault(rows, {})[v] = round(ms, 3)
        return out

    def _placement(self):
        return tf.device(self.config.device) if self.config.device else contextlib.nullcontext()

    def weights(self) -> ServingWeights:
        """The weights generation runs on. They never change after construction, so another thread
        may read them while this engine steps (the KV cache is not part of them)."""
        return ServingWeights(self._wte, self._wpe, tuple(self._layers), self.config.device)

    # ---- slots ----

    @property
    def slots(self) -> int:
        return self.config.slots

    def free_slots(self) -> list[int]:
        return [i for i, w in enumerate(self._windows) if w is None]

    def occupied(self, slot: int) -> bool:
        return self._windows[slot] is not None

    def window(self, slot: int) -> list[int]:
        """The tokens slot ``slot`` currently attends over (a copy)."""
        w = self._windows[slot]
        if w is None:
            raise ValueError(f"slot {slot} is free")
        return list(w)

    def length(self, slot: int) -> int:
        """How many tokens slot ``slot`` holds (0 when free)."""
        self._check_slot(slot)
        return len(self._windows[slot] or [])

    def move(self, src: int, dst: int) -> None:
        """Move what slot ``src`` holds to the free slot ``dst`` (its cache rows, in one compiled
        copy over the context bucket in use) and free ``src``. The batcher keeps live sequences in
        the lowest slots this way, so a decode step's rows follow how many are live, not which
        slots they were given."""
        self._check_slot(src)
        self._check_slot(dst)
        if self._windows[dst] is not None:
            raise ValueError(f"slot {dst} is not free")
        window = self._windows[src]
        if window is None:
            raise ValueError(f"slot {src} is free")
        ctx_len = round_up(len(window), self.ctx_buckets)
        with self._placement():
            self.programs.move_rows(tuple(self._cache), tf.constant(src), tf.constant(dst), ctx_len)
        self._windows[dst], self._windows[src] = window, None

    def release(self, slot: int) -> None:
        self._check_slot(slot)
        self._windows[slot] = None

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside 0..{self.slots - 1}")

    # ---- shapes and compilation ----

    def trace_count(self) -> int:
        """How many times the graphs have been traced (each new shape bucket traces once)."""
        fns = (self._prefill_fn, self._decode_fn, *self.programs.functions())
        return sum(f.experimental_get_tracing_count() for f in fns)

    def piece_fits(self, lengths: Sequence[int]) -> bool:
        """Whether first pieces (start 0) of these lengths can run in one prefill call."""
        if not lengths or len(lengths) > self.piece_buckets[-1] or max(lengths) > self.chunk_buckets[-1]:
            return False
        return len(lengths) == 1 or self.padded_tokens(lengths) <= self.chunk_buckets[-1]

    def padded_tokens(self, lengths: Sequence[int]) -> int:
        """The tokens a prefill call of first pieces of these lengths computes, padding included."""
        return round_up(len(lengths), self.piece_buckets) * round_up(max(lengths), self.chunk_buckets)

    def prefill_shape(self, pieces: Sequence[tuple[int, int]]) -> tuple[int, int, int]:
        """The prefill program ``(pieces, length, ctx)`` that writes pieces of these ``(start,
        length)`` in one call: the buckets :meth:`prefill_batch` pads them to."""
        return (
            round_up(len(pieces), self.piece_buckets),
            round_up(max(n for _, n in pieces), self.chunk_buckets),
            round_up(max(s + n for s, n in pieces), self.ctx_buckets),
        )

    def step_programs(self) -> list[tuple[str, tuple[int, ...]]]:
        """The programs whose shapes the engine alone decides: ``("decode", (rows, ctx))``, ``("move",
        (ctx,))`` (:meth:`move`) and ``("verify", (1, tokens, ctx))``. Which prefill programs a caller
        reaches depends on how it cuts prompts (:func:`app.engine.batcher.programs`)."""
        out: set[tuple[str, tuple[int, ...]]] = set()
        rows = self.batch_buckets
        if self.config.batch_invariant and len(rows) > 1:
            rows = rows[1:]  # never one row alone (see _decode)
        out.update(("decode", (b, c)) for c in self.ctx_buckets for b in rows)
        if self.slots > 1:
            out.update(("move", (c,)) for c in self.ctx_buckets)
        if self.config.speculative_tokens:
            t = self.config.speculative_tokens + 1  # a draft and the token before it, unpadded
            out.update(("verify", (1, t, c)) for c in self.ctx_buckets)
        return sorted(out)

    def warmup(
        self,
        shapes: Sequence[tuple[str, tuple[int, ...]]],
        progress: Callable[[str], None] | None = None,
        *,
        threads: int = 2,
    ) -> None:
        """Compile these programs (the server's: :func:`app.engine.batcher.programs`), so no request
        waits for XLA.

        ``threads`` calls at once (XLA compiles one program per thread; measured on 2 cores: 1.05 s
        per 124M program with 2 threads, 1.45 s with 1). The dummy calls write only scratch rows
        (``n_valid = 0``, ``pos = n_ctx``) or copy row 0 onto itself (moves), so slots keep what
        they hold.
        """
        shapes = list(shapes)
        done = iter(range(1, len(shapes) + 1))

        def compile_one(item: tuple[str, tuple[int, ...]]) -> None:
            with self._placement():
                fn, args = self._dummy_call(item)
                fn(*args)
            if progress is not None:
                kind, shape = item
                progress(f"compiled {kind} {'x'.join(map(str, shape))} ({next(done)}/{len(shapes)})")

        # Traced one at a time in a fixed order first: a traced function's name counts traces in
        # this process, and XLA's persistent cache keys a program by it, so traces made in threads
        # (in whatever order they win) gave another start other names and cache misses.
        for item in shapes:
            with self._placement():
                fn, args = self._dummy_call(item)
                fn.get_concrete_function(*args)

        # oneDNN-variant programs one at a time: two first calls of them at once crashed TensorFlow
        # (a segfault in execute, seen once in the full suite under a mixed plan); XLA's in threads.
        serial = [self._graph_ops(item) for item in shapes]
        for item in (item for item, one in zip(shapes, serial) if one):
            compile_one(item)
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="warmup") as pool:
            list(pool.map(compile_one, [item for item, one in zip(shapes, serial) if not one]))

    def _dummy_call(self, item: tuple[str, tuple[int, ...]]) -> tuple[Callable, tuple]:
        """The function and dummy arguments that reach ``item``'s program (warm-up): they write only
        scratch rows (``n_valid = 0``, ``pos = n_ctx``) or copy row 0 onto itself (moves)."""
        kind, shape = item
        if kind == "decode":
            b, ctx = shape
            return self._decode_fn, (
                tf.zeros([b], tf.int32),
                tf.fill([b], self.hp.n_ctx),
                ctx,
                self._decode_variant(b),
            )
        if kind == "move":
            # row 0 onto itself
            return self.programs.move_rows, (tuple(self._cache), tf.constant(0), tf.constant(0), shape[0])
        n, t, ctx = shape
        zeros = tf.zeros([n], tf.int32)
        variant = self.kernel_plan.variant("prefill", n * t)
        return self._prefill_fn, (
            tf.zeros([n, t], tf.int32),
            zeros,
            zeros,
            zeros,
            ctx,
            kind == "verify",
            variant,
        )

    def _graph_ops(self, item: tuple[str, tuple[int, ...]]) -> bool:
        """Whether ``item``'s program runs oneDNN's graph ops (its kernel plan's variant)."""
        kind, shape = item
        if kind == "decode":
            return self._decode_variant(shape[0]) == "onednn"
        return kind != "move" and self.kernel_plan.variant("prefill", shape[0] * shape[1]) == "onednn"

    # ---- compute ----

    def prefill(self, slot: int, ids: Sequence[int]) -> np.ndarray:
        """Put ``ids`` (1..n_ctx tokens) into ``slot``, replacing what it held.

        Returns float32 logits ``[n_vocab]`` for the token after ``ids``. Prompts longer than
        ``prefill_chunk`` run in several calls, each attending over what the previous ones wrote.
        """
        return self.prefill_scores(slot, ids).logits[0]

    def prefill_scores(self, slot: int, ids: Sequence[int], chunk: int | None = None) -> Scores:
        """:meth:`prefill` returning the :class:`Scores` of the last token (one row), written
        ``chunk`` tokens per call (default: the longest piece, ``prefill_chunk``)."""
        ids = self._check_ids(ids)
        chunk = chunk or self.chunk_buckets[-1]
        scores = None
        for start in range(0, len(ids), chunk):
            scores = self.prefill_batch([Piece(slot, ids[start : start + chunk], start)])
        return scores

    def prefill_batch(self, pieces: Sequence[Piece]) -> Scores:
        """Write several slots' prompt pieces in one call; row i of the result scores piece i's last
        token. A piece with ``start == 0`` replaces what its slot held; otherwise ``start`` must be
        the slot's length (a continuation: one piece per call). Several pieces must satisfy
        :meth:`piece_fits`."""
        pieces = [Piece(p.slot, self._check_ids(p.ids), p.start) for p in pieces]
        self._check_pieces(pieces)
        n_bucket, t_bucket, ctx_len = self.prefill_shape([(p.start, len(p.ids)) for p in pieces])
        tokens = np.zeros([n_bucket, t_bucket], np.int32)
        slots, start, n_valid = (np.zeros([n_bucket], np.int32) for _ in range(3))
        for i, p in enumerate(pieces):
            tokens[i, : len(p.ids)] = p.ids
            slots[i], start[i], n_valid[i] = p.slot, p.start, len(p.ids)
            if p.start == 0:
                self._windows[p.slot] = None  # a failed call leaves no half-written slot "occupied"
        with self._placement():
            out = self._prefill_fn(
                tf.constant(tokens),
                tf.constant(slots),
                tf.constant(start),
                tf.constant(n_valid),
                ctx_len,
                False,
                self.kernel_plan.variant("prefill", n_bucket * t_bucket),
            )
        for p in pieces:
            self._windows[p.slot] = (self._windows[p.slot] or [])[: p.start] + list(p.ids)
        return _numpy_scores(out, len(pieces))

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in ids]
        if not 1 <= len(ids) <= self.hp.n_ctx:
            raise ValueError(f"prefill takes 1..{self.hp.n_ctx} tokens, got {len(ids)}")
        self.hp.check_token_ids(ids)
        return ids

    def _check_pieces(self, pieces: list[Piece]) -> None:
        for p in pieces:
            self._check_slot(p.slot)
            held = len(self._windows[p.slot] or [])
            if p.start not in (0, held) or p.start + len(p.ids) > self.hp.n_ctx:
                raise ValueError(f"slot {p.slot} holds {held} tokens: a piece cannot start at {p.start}")
        if len({p.slot for p in pieces}) != len(pieces):
            raise ValueError("two pieces for one slot in one call")
        if len(pieces) > 1 and (
            any(p.start for p in pieces) or not self.piece_fits([len(p.ids) for p in pieces])
        ):
            raise ValueError("several pieces in one call must all start at 0 and fit one prefill bucket")
        if len(pieces) == 1 and len(pieces[0].ids) > self.chunk_buckets[-1]:
            raise ValueError(f"a piece is at most {self.chunk_buckets[-1]} tokens")

    def verify(self, slot: int, tokens: Sequence[int]) -> Scores:
        """Append ``tokens`` to ``slot`` in one call and score every position: row i scores the token
        after ``tokens[: i + 1]``. Speculative decoding verifies a draft this way, then keeps what it
        accepted with :meth:`truncate`. The slot must have room for all of them."""
        tokens = self._check_ids(tokens)
        held = len(self.window(slot))
        t_bucket = self.config.speculative_tokens + 1
        if held + len(tokens) > self.hp.n_ctx or len(tokens) > t_bucket:
            raise ValueError(f"slot {slot} has no room to verify {len(tokens)} tokens")
        ctx_len = round_up(held + len(tokens), self.ctx_buckets)
        padded = np.zeros([1, t_bucket], np.int32)
        padded[0, : len(tokens)] = tokens
        with self._placement():
            out = self._prefill_fn(
                tf.constant(padded),
                tf.constant([slot]),
                tf.constant([held]),
                tf.constant([len(tokens)]),
                ctx_len,
                True,
                self.kernel_plan.variant("prefill", t_bucket),
            )
        self._windows[slot] += tokens
        return _numpy_scores(out, len(tokens))

    def truncate(self, slot: int, length: int) -> None:
        """Forget what ``slot`` holds past ``length`` tokens (rejected draft tokens); the cache rows
        stay but are never read, and the next tokens overwrite them."""
        window = self.window(slot)
        if not 1 <= length <= len(window):
            raise ValueError(f"slot {slot} holds {len(window)} tokens: cannot keep {length}")
        self._windows[slot] = window[:length]

    def step(self, tokens: Mapping[int, int]) -> np.ndarray:
        """Append ``tokens[slot]`` to each given slot and return logits ``[len(tokens), V]``."""
        return self.step_scores(tokens).logits

    def step_scores(self, tokens: Mapping[int, int]) -> Scores:
        """Append ``tokens[slot]`` to each given slot; rows of the result follow ``tokens``' keys.

        Slots that are full slide their window (re-prefill, here and serially); the others run
        together in one batched decode call. The batcher never hands this method a full slot: it
        slides windows through its prefill plan, so the other streams keep stepping.
        """
        slots = list(tokens)
        rows: list[Scores | None] = [None] * len(slots)
        batch_rows, batch_slots, batch_tokens, batch_pos = [], [], [], []
        for row, slot in enumerate(slots):
            self._check_slot(slot)
            window = self._windows[slot]
            if window is None:
                raise ValueError(f"slot {slot} is free: prefill it before stepping")
            tok = int(tokens[slot])
            self.hp.check_token_ids([tok])
            if len(window) >= self.hp.n_ctx:
                rows[row] = self.prefill_scores(slot, (window + [tok])[-self.window_keep :], self.slide_chunk)
                continue
            batch_rows.append(row)
            batch_slots.append(slot)
            batch_tokens.append(tok)
            batch_pos.append(len(window))
        if batch_rows:
            decoded = self._decode(batch_slots, batch_tokens, batch_pos)
            for i, row in enumerate(batch_rows):
                rows[row] = Scores(*(a[i : i + 1] for a in decoded))
            for slot, tok in zip(batch_slots, batch_tokens):
                self._windows[slot].append(tok)
        if not rows:
            v, k = self.hp.n_vocab, self._candidates
            return Scores(
                np.empty([0, v], np.float32),
                np.empty([0], np.float32),
                np.empty([0, k], np.int32),
                np.empty([0, k], np.float32),
            )
        return Scores(*(np.concatenate(parts) for parts in zip(*rows)))

    def _decode(self, slots: list[int], tokens: list[int], pos: list[int]) -> Scores:
        """Run slots ``0..b-1`` (b: the bucket above the highest slot stepping) in one call.

        The batcher keeps live sequences in the lowest slots (:meth:`move`), so the rows in use are
        contiguous but for those prefilling; rows with nothing to do write to the scratch row
        (``pos = n_ctx``) and are dropped.
        """
        b_bucket = round_up(max(slots) + 1, self.batch_buckets)
        ctx_len = round_up(max(pos) + 1, self.ctx_buckets)
        if self.config.batch_invariant and b_bucket == 1 and len(self.batch_buckets) > 1:
            b_bucket = self.batch_buckets[1]  # a lone row runs as two: the kernel of every batch
        tok = np.zeros([b_bucket], np.int32)
        where = np.full([b_bucket], self.hp.n_ctx, np.int32)
        tok[slots] = tokens
        where[slots] = pos
        with self._placement():
            variant = self._decode_variant(b_bucket)
            out = self._decode_fn(tf.constant(tok), tf.constant(where), ctx_len, variant)
        return Scores(*(a[slots] for a in _numpy_scores(out, b_bucket)))


def _attend(attention_fn, cache, args, q, k, v):
    """``attention_fn`` (a compiled attention of one layer) in :func:`gpt2.block`'s signature."""
    return attention_fn(q, k, v, cache, *args)


def _numpy_scores(out: tuple[tf.Tensor, ...], rows: int) -> Scores:
    """The first ``rows`` rows of a compiled call's outputs, on the host (sliced there: an eager
    slice on the device costs ~17x the transfer, measured by bench/roofline.py)."""
    return Scores(*(t.numpy()[:rows] for t in out))
