"""Fine-tuning GPT-2 in TF2 that keeps everything a resumed run needs.

nshepperd's ``train.py`` and gpt-2-simple save only the model variables, so Adam's moment
estimates restart from zero after every interruption and the loss jumps. Here one
``tf.train.Checkpoint`` holds the weights, the Keras optimizer with all its slot variables and
iteration count, and the step; batches are a pure function of ``(seed, step)``
(:class:`app.train.data.Sampler`), so a run stopped at step N and restored continues exactly as
if it had never stopped (tested to the bit, ``tests/test_train.py``).

The forward pass is the engine's own reference path (:func:`app.engine.gpt2.forward_full`), so
what is trained is what is served.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from app.engine import gpt2
from app.engine.sampling import SamplingParams, make_rng, sample
from app.model.hparams import HParams, param_shapes
from app.train.data import Sampler


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 1  # sequences per micro-batch
    accumulate_gradients: int = 1  # micro-batches per optimizer step
    learning_rate: float = 2e-5  # nshepperd's default for fine-tuning
    optimizer: Literal["adam", "sgd"] = "adam"
    only_train_transformer_layers: bool = False  # freeze wte, wpe and ln_f (saves memory on big sizes)
    context: int | None = None  # train on windows this long (<= n_ctx): the memory saver for big sizes
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    seed: int = 0  # data order
    save_every: int = 1000
    sample_every: int = 0  # 0 = never
    sample_length: int = 100
    sample_num: int = 1
    top_k: int = 40
    val_every: int = 0  # 0 = never (when a validation set is given: every this many steps)
    val_batches: int = 8  # fixed validation windows averaged for the validation loss
    jit_compile: bool = False  # XLA for the training step

    def __post_init__(self) -> None:
        for name in ("batch_size", "accumulate_gradients", "save_every", "sample_length", "sample_num", "val_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError("learning-rate must be a positive number")


class Weights(tf.Module):
    """The model's variables under their canonical names (tracked for checkpoints as a dict)."""

    def __init__(self, params: Mapping[str, np.ndarray]):
        super().__init__(name="gpt2")
        self.v = {name: tf.Variable(np.asarray(a, np.float32), name=name.replace("/", "_")) for name, a in params.items()}


def make_optimizer(cfg: TrainConfig):
    if cfg.optimizer == "adam":
        opt = tf.keras.optimizers.Adam(cfg.learning_rate)
    elif cfg.optimizer == "sgd":
        opt = tf.keras.optimizers.SGD(cfg.learning_rate)
    else:
        raise ValueError(f"optimizer must be adam or sgd, got {cfg.optimizer!r}")
    if cfg.precision == "mixed_float16":
        opt = tf.keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


class Trainer:
    def __init__(self, hp: HParams, params: Mapping[str, np.ndarray], cfg: TrainConfig, run_dir: Path):
        self.hp, self.cfg, self.run_dir = hp, cfg, Path(run_dir)
        self.context = cfg.context or hp.n_ctx
        if not 1 <= self.context <= hp.n_ctx:
            raise ValueError(f"context must be in 1..{hp.n_ctx}, got {self.context}")
        self.weights = Weights({k: params[k] for k in param_shapes(hp)})
        names = sorted(self.weights.v)
        if cfg.only_train_transformer_layers:
            names = [n for n in names if n.startswith("h")]
        self.trainable = [self.weights.v[n] for n in names]
        self.optimizer = make_optimizer(cfg)
        self.optimizer.build(self.trainable)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(weights=self.weights, optimizer=self.optimizer, step=self.step)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.run_dir, max_to_keep=3)
        self.compute_dtype = {"float32": tf.float32, "mixed_float16": tf.float16,
                              "mixed_bfloat16": tf.bfloat16}[cfg.precision]  # fmt: skip
        # XLA (``--xla``) can fuse the 50257-way softmax and cross-entropy passes, at a compile cost
        # per run; off by default (no gain measured here on 2 busy cores, and tests build many runs).
        self._grad_fn = tf.function(self._loss_and_grads, jit_compile=cfg.jit_compile)
        self._loss_fn = tf.function(self._loss, jit_compile=cfg.jit_compile)

    # ---- checkpoints ----

    def restore(self, restore_from: str = "latest") -> str:
        """``latest`` (this run's newest checkpoint, else start fresh), ``fresh``, or a checkpoint path."""
        if restore_from == "fresh":
            return "fresh"
        path = self.manager.latest_checkpoint if restore_from == "latest" else restore_from
        if path is None:
            return "fresh"
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def save(self) -> str:
        return self.manager.save(checkpoint_number=int(self.step.numpy()))

    # ---- math ----

    def _loss(self, tokens: tf.Tensor) -> tf.Tensor:
        """Mean next-token cross-entropy of ``tokens [B, T+1]`` (float32)."""
        w = {k: tf.cast(v, self.compute_dtype) for k, v in self.weights.v.items()}
        logits = gpt2.forward_full(w, tokens[:, :-1], hp=self.hp)  # [B, T, V] float32
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens[:, 1:], logits=logits)
        return tf.reduce_mean(ce)

    def _loss_and_grads(self, tokens: tf.Tensor):
        with tf.GradientTape() as tape:
            loss = self._loss(tokens)
            scaled = self.optimizer.scale_loss(loss) if self.cfg.precision == "mixed_float16" else loss
        grads = tape.gradient(scaled, self.trainable)
        # wte's gradient arrives as IndexedSlices (embedding lookup) plus a dense part (output
        # projection); dense tensors accumulate across micro-batches simply.
        return loss, [tf.convert_to_tensor(g) for g in grads]

    def train_step(self, micro_batches: list[np.ndarray]) -> float:
        """One optimizer step over ``accumulate_gradients`` micro-batches; returns their mean loss."""
        total, acc = 0.0, None
        for batch in micro_batches:
            loss, grads = self._grad_fn(tf.constant(batch))
            total += float(loss)
            acc = list(grads) if acc is None else [a + g for a, g in zip(acc, grads)]
        n = len(micro_batches)
        self.optimizer.apply_gradients(zip([g / n for g in acc], self.trainable))
        self.step.assign_add(1)
        return total / n

    def evaluate(self, sampler: Sampler) -> float:
        """Mean loss over the same ``val_batches`` windows every time (comparable across steps)."""
        losses = [float(self._loss_fn(tf.constant(sampler.batch(i, self.cfg.batch_size, self.context + 1))))
                  for i in range(self.cfg.val_batches)]  # fmt: skip
        return float(np.mean(losses))

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.weights.v.items()}

    def sample(self, context: list[int], length: int, *, seed: int) -> list[int]:
        """A short sample with the current weights (top-k, cache-free: for progress checks)."""
        rng, params = make_rng(seed), SamplingParams(top_k=self.cfg.top_k, seed=seed)
        tokens = list(context)
        for _ in range(length):
            window = tokens[-self.hp.n_ctx :]
            logits = gpt2.forward_full(self.weights.v, tf.constant([window]), hp=self.hp)[0, -1].numpy()
            tokens.append(sample(logits, params, rng))
        return tokens[len(context) :]

    # ---- the loop ----

    def fit(self, train: Sampler, *, steps: int, val: Sampler | None = None,
            on_sample: Callable[[int, list[list[int]]], None] | None = None, eot: int = 50256,
            progress: bool = True) -> list[dict]:  # fmt: skip
        """Train until the step counter reaches ``steps``; returns the logged rows.

        Ctrl-C saves a checkpoint before the interrupt goes on up.
        """
        from tqdm import tqdm

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "losses.csv"
        new_log = not log_path.exists()
        rows: list[dict] = []
        start_step = int(self.step.numpy())
        tokens_per_step = cfg.batch_size * cfg.accumulate_gradients * self.context
        bar = tqdm(total=steps, initial=start_step, unit="step", disable=not progress, dynamic_ncols=True)
        with log_path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", "loss", "val_loss", "tokens_per_sec", "time"])
            if new_log:
                writer.writeheader()
            try:
                while int(self.step.numpy()) < steps:
                    step = int(self.step.numpy())
                    t0 = time.perf_counter()
                    micro = [train.batch(step * cfg.accumulate_gradients + i, cfg.batch_size, self.context + 1)
                             for i in range(cfg.accumulate_gradients)]  # fmt: skip
                    loss = self.train_step(micro)
                    rate = tokens_per_step / (time.perf_counter() - t0)
                    done = step + 1
                    row = {"step": done, "loss": loss, "val_loss": "", "tokens_per_sec": round(rate, 1),
                           "time": round(time.time(), 3)}  # fmt: skip
                    if val is not None and cfg.val_every and done % cfg.val_every == 0:
                        row["val_loss"] = self.evaluate(val)
                    writer.writerow(row)
                    fh.flush()  # the log can be watched (and survives a kill) while training runs
                    rows.append(row)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}",
                                    **({"val": f"{row['val_loss']:.3f}"} if row["val_loss"] != "" else {}))  # fmt: skip
                    if done % cfg.save_every == 0:
                        self.save()
                    if on_sample and cfg.sample_every and done % cfg.sample_every == 0:
                        on_sample(done, [self.sample([eot], cfg.sample_length, seed=done * 1000 + i)
                                         for i in range(cfg.sample_num)])  # fmt: skip
            except KeyboardInterrupt:
                fh.flush()
                self.save()
                bar.close()
                raise
        bar.close()
        self.save()
        return rows


def write_run_info(run_dir: Path, *, hp: HParams, source: str, dataset: str, cfg: TrainConfig) -> None:
    """``run.json``: what export needs to describe the run (model card) and rebuild its weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"hparams": asdict(hp), "source_model": source, "dataset": dataset, "config": asdict(cfg)}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
