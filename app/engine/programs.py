"""The compiled bodies of an :class:`app.engine.engine.Engine`, as functions of their arguments only.

A block program takes its rows, the layers' weights and their caches; the head takes its rows and
the final layer norm and embedding; a move takes the caches. Nothing is read from an engine, so
every engine of one model shape can call the same traced functions: TensorFlow traces a function
once per argument signature (variables by shape and dtype) and XLA compiles each traced program
once per device. A :class:`ProgramShelf` hands out one :class:`Programs` per shape: the registry
keeps one, so two models of one size (a base and its fine-tune) compile once, and the trainer keeps
one for its progress samples.
"""

from __future__ import annotations

import threading

import tensorflow as tf

from app.engine import gpt2
from app.model.hparams import HParams


def _bodies(hp: HParams):
    """The block and attention bodies of one model shape (``hp`` is static: closed over, not an
    argument, so XLA sees the shapes and a compiled program's HLO can be read back)."""

    def decode_layers(x, layers, caches, pos, ctx_len: int):
        for lw, cache in zip(layers, caches):
            x = gpt2.decode_layer(x, lw, cache, hp=hp, pos=pos, ctx_len=ctx_len)
        return x

    def prefill_layers(x, layers, caches, slots, start, n_valid, ctx_len: int):
        for lw, cache in zip(layers, caches):
            x = gpt2.prefill_layer(
                x, lw, cache, hp=hp, slots=slots, start=start, n_valid=n_valid, ctx_len=ctx_len
            )
        return x

    def decode_attention(q, k, v, cache, pos, ctx_len: int):
        return gpt2.decode_attention(q, k, v, cache, hp=hp, pos=pos, ctx_len=ctx_len)

    def prefill_attention(q, k, v, cache, slots, start, n_valid, ctx_len: int):
        return gpt2.prefill_attention(
            q, k, v, cache, hp=hp, slots=slots, start=start, n_valid=n_valid, ctx_len=ctx_len
        )

    return decode_layers, prefill_layers, decode_attention, prefill_attention


def head(x, ln_g, ln_b, wte):
    """Float32 logits ``[N, V]`` of rows ``x`` and their log-sum-exp ``[N]``."""
    logits = gpt2.logits_of(x, ln_g, ln_b, wte)
    return logits, tf.reduce_logsumexp(logits, axis=-1)


def _move_rows(caches, src, dst, ctx_len: int):
    # Row ``dst`` of every layer's keys and values takes row ``src``'s first ctx_len positions.
    # (A gather, not ``k[src]``: XLA compiles a strided slice once per constant index.)
    where = tf.stack([tf.fill([ctx_len], dst), tf.range(ctx_len)], axis=1)  # [L, 2]
    for k, v in caches:
        k.scatter_nd_update(where, tf.gather(k, src)[:ctx_len])
        v.scatter_nd_update(where, tf.gather(v, src)[:ctx_len])
    return tf.constant(0)


class Programs:
    """The traced (and, with ``jit_compile``, XLA-compiled) bodies for one model shape."""

    def __init__(self, hp: HParams, jit_compile: bool):
        def compiled(fn):
            return tf.function(fn, jit_compile=jit_compile)

        decode_layers, prefill_layers, decode_attention, prefill_attention = _bodies(hp)
        self.decode_layers = compiled(decode_layers)
        self.prefill_layers = compiled(prefill_layers)
        self.decode_attention = compiled(decode_attention)
        self.prefill_attention = compiled(prefill_attention)
        self.head = compiled(head)
        self.move_rows = compiled(_move_rows)

    def functions(self) -> tuple:
        return (
            self.decode_layers,
            self.prefill_layers,
            self.decode_attention,
            self.prefill_attention,
            self.head,
            self.move_rows,
        )


class ProgramShelf:
    """One :class:`Programs` per ``(hp, jit_compile)``, made on first request (thread-safe)."""

    def __init__(self) -> None:
        self._programs: dict[tuple[HParams, bool], Programs] = {}
        self._lock = threading.Lock()

    def get(self, hp: HParams, jit_compile: bool) -> Programs:
        with self._lock:
            key = (hp, jit_compile)
            if key not in self._programs:
                self._programs[key] = Programs(hp, jit_compile)
            return self._programs[key]
