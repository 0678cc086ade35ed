"""A GPT-2 worker: weights and a fixed-shape KV cache with ``S`` slots on one device.

A request occupies one slot. :meth:`Engine.prefill` writes its prompt into the slot;
:meth:`Engine.step` advances any set of occupied slots by one token and returns their logits.
Slots join and leave between steps. Compiled functions (XLA) are built once per shape bucket and
reused: a decode step for ``B`` rows whose longest context is ``n`` runs the function for
``(round_up(B), round_up(n))``, so its cost follows the context in use, not ``n_ctx``.

Sliding window: GPT-2's positions are learned and absolute, so a full slot cannot simply drop its
oldest entry. When a slot holds ``n_ctx`` tokens and one more arrives, the engine keeps the last
``window_keep`` tokens (default ``n_ctx * 3 // 4``: a quarter of the context is freed, so the
re-prefill, which costs about as much as ``window_keep`` decode steps of one slot, happens once
per ``n_ctx // 4`` generated tokens), re-prefills them from position 0 and carries on. Positions
never exceed ``n_ctx - 1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from app.engine import gpt2
from app.engine.buckets import power_buckets, round_up
from app.model.hparams import HParams, param_shapes

DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}


@dataclass(frozen=True)
class EngineConfig:
    slots: int = 8  # concurrent sequences the cache holds
    dtype: str = "float32"  # weights, activations and cache: float32 | float16 | bfloat16
    device: str | None = None  # e.g. "/GPU:0", "/CPU:0"; None lets TensorFlow choose
    prefill_chunk: int = 256  # longest prompt piece run in one call (longer prompts are chunked)
    window_keep: int | None = None  # tokens kept when the window slides; None = 3/4 of n_ctx
    jit_compile: bool = True  # XLA: required on CPU for in-place cache updates

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")


class Engine:
    """Weights + KV cache + per-slot token windows. Not thread-safe: one thread drives it."""

    def __init__(self, hp: HParams, params: Mapping[str, np.ndarray], config: EngineConfig = EngineConfig()):
        self.hp = hp
        self.config = config
        self.dtype = DTYPES[config.dtype]
        keep = config.window_keep if config.window_keep is not None else hp.n_ctx * 3 // 4
        if not 1 <= keep < hp.n_ctx:
            raise ValueError(f"window_keep must be in [1, n_ctx={hp.n_ctx}), got {keep}")
        self.window_keep = keep
        self.ctx_buckets = power_buckets(64, hp.n_ctx)
        self.chunk_buckets = power_buckets(16, min(config.prefill_chunk, hp.n_ctx))
        # Decode runs rows 0..b-1 (row = slot). Never fewer than 2 rows: XLA runs a single row
        # through a matrix-vector kernel whose rounding differs from the matrix-matrix one
        # (measured: 2e-7), while 2..16 rows give bit-identical rows, so a request's tokens do not
        # depend on how many others share a step. With one slot, row 1 is an idle scratch row.
        self.batch_buckets = power_buckets(2, max(2, config.slots))
        self._windows: list[list[int] | None] = [None] * config.slots
        with self._placement():
            self._w = {
                name: tf.Variable(np.asarray(params[name]), dtype=self.dtype, trainable=False,
                                  name=name.replace("/", "_"))
                for name in param_shapes(hp)
            }  # fmt: skip
            # Row n_ctx of each slot is scratch: prompt padding writes land there, never read.
            # One slot row per batch row (with one slot, a second, scratch row: see batch_buckets).
            shape = [self.batch_buckets[-1], hp.n_ctx + 1, hp.n_embd]
            self._cache = [
                (tf.Variable(tf.zeros(shape, self.dtype), trainable=False, name=f"h{i}_k"),
                 tf.Variable(tf.zeros(shape, self.dtype), trainable=False, name=f"h{i}_v"))
                for i in range(hp.n_layer)
            ]  # fmt: skip
        self._prefill_fn = tf.function(self._prefill_graph, jit_compile=config.jit_compile)
        self._decode_fn = tf.function(self._decode_graph, jit_compile=config.jit_compile)

    # ---- compiled bodies (traced once per static shape / bucket) ----

    def _prefill_graph(self, tokens, slot, start, n_valid, ctx_len: int):
        return gpt2.prefill(self._w, self._cache, tokens, hp=self.hp, slot=slot, start=start,
                            n_valid=n_valid, ctx_len=ctx_len)  # fmt: skip

    def _decode_graph(self, tokens, pos, ctx_len: int):
        return gpt2.decode(self._w, self._cache, tokens, hp=self.hp, pos=pos, ctx_len=ctx_len)

    def _placement(self):
        return tf.device(self.config.device) if self.config.device else contextlib.nullcontext()

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

    def release(self, slot: int) -> None:
        self._check_slot(slot)
        self._windows[slot] = None

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside 0..{self.slots - 1}")

    def trace_count(self) -> int:
        """How many times the compiled functions have been traced (one per new shape bucket)."""
        return sum(f.experimental_get_tracing_count() for f in (self._prefill_fn, self._decode_fn))

    def warmup(self) -> None:
        """Compile the shapes of short requests (every prompt-chunk and batch bucket at the smallest
        context) so the first clients do not wait for XLA. Leaves every slot free."""
        for n in self.chunk_buckets:
            if n <= self.ctx_buckets[0]:
                self.prefill(0, [0] * n)
        for b in self.batch_buckets:
            stepping = range(min(b, self.slots))
            for slot in stepping:
                self.prefill(slot, [0])
            self.step({slot: 0 for slot in stepping})
        for slot in range(self.slots):
            self._windows[slot] = None

    # ---- compute ----

    def prefill(self, slot: int, ids: Sequence[int]) -> np.ndarray:
        """Put ``ids`` (1..n_ctx tokens) into ``slot``, replacing what it held.

        Returns float32 logits ``[n_vocab]`` for the token after ``ids``. Prompts longer than
        ``prefill_chunk`` run in several calls, each attending over what the previous ones wrote.
        """
        self._check_slot(slot)
        ids = [int(t) for t in ids]
        if not 1 <= len(ids) <= self.hp.n_ctx:
            raise ValueError(f"prefill takes 1..{self.hp.n_ctx} tokens, got {len(ids)}")
        bad = [t for t in ids if not 0 <= t < self.hp.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.hp.n_vocab - 1})")
        self._windows[slot] = None  # if a chunk fails, the slot is not left half-written and "occupied"
        logits = None
        chunk = self.chunk_buckets[-1]
        for start in range(0, len(ids), chunk):
            logits = self._prefill_chunk(slot, ids[start : start + chunk], start)
        self._windows[slot] = ids
        return logits

    def _prefill_chunk(self, slot: int, piece: list[int], start: int) -> np.ndarray:
        t_bucket = round_up(len(piece), self.chunk_buckets)
        ctx_len = round_up(start + len(piece), self.ctx_buckets)
        padded = np.zeros([t_bucket], np.int32)
        padded[: len(piece)] = piece
        with self._placement():
            out = self._prefill_fn(
                tf.constant(padded), tf.constant(slot, tf.int32), tf.constant(start, tf.int32),
                tf.constant(len(piece), tf.int32), ctx_len,
            )  # fmt: skip
        return out.numpy()

    def step(self, tokens: Mapping[int, int]) -> np.ndarray:
        """Append ``tokens[slot]`` to each given slot and return logits ``[len(tokens), V]``.

        Rows come in the order of ``tokens``' keys. Slots that are full slide their window
        (re-prefill); the others run together in one batched decode call.
        """
        slots = list(tokens)
        out = np.empty([len(slots), self.hp.n_vocab], np.float32)
        batch_rows, batch_slots, batch_tokens, batch_pos = [], [], [], []
        for row, slot in enumerate(slots):
            self._check_slot(slot)
            window = self._windows[slot]
            if window is None:
                raise ValueError(f"slot {slot} is free: prefill it before stepping")
            tok = int(tokens[slot])
            if not 0 <= tok < self.hp.n_vocab:
                raise ValueError(f"token id {tok} is outside the vocabulary (0..{self.hp.n_vocab - 1})")
            if len(window) >= self.hp.n_ctx:
                out[row] = self.prefill(slot, (window + [tok])[-self.window_keep :])
                continue
            batch_rows.append(row)
            batch_slots.append(slot)
            batch_tokens.append(tok)
            batch_pos.append(len(window))
        if batch_rows:
            out[batch_rows] = self._decode(batch_slots, batch_tokens, batch_pos)
            for slot, tok in zip(batch_slots, batch_tokens):
                self._windows[slot].append(tok)
        return out

    def _decode(self, slots: list[int], tokens: list[int], pos: list[int]) -> np.ndarray:
        """Run slots ``0..b-1`` (b: the bucket above the highest slot stepping) in one call.

        Slots are handed out lowest first, so the rows in use are mostly contiguous; rows with
        nothing to do write to the scratch row (``pos = n_ctx``) and are dropped.
        """
        b_bucket = round_up(max(slots) + 1, self.batch_buckets)
        ctx_len = round_up(max(pos) + 1, self.ctx_buckets)
        tok = np.zeros([b_bucket], np.int32)
        where = np.full([b_bucket], self.hp.n_ctx, np.int32)
        tok[slots] = tokens
        where[slots] = pos
        with self._placement():
            logits = self._decode_fn(tf.constant(tok), tf.constant(where), ctx_len)
        return logits.numpy()[slots]
