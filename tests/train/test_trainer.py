"""Fine-tuning: exact resume with the optimizer state, and that training learns."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from app.model.random_init import random_params
from app.tokenizer.bpe import Encoder
from app.tokenizer.bundled import bundled_bpe_files
from app.train.data import Sampler, load_chunks
from app.train.trainer import TrainConfig, Trainer
from tests.support.server_harness import STORY, TRAIN_HP

pytestmark = pytest.mark.system  # starts processes or trains


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> Sampler:
    path = tmp_path_factory.mktemp("data") / "story.txt"
    path.write_text(STORY)
    return Sampler(load_chunks(str(path), Encoder.from_files(*bundled_bpe_files()), progress=False), seed=3)


DEFAULT = TrainConfig(batch_size=2, learning_rate=3e-3, save_every=1000)


def make(run_dir, cfg: TrainConfig = DEFAULT) -> Trainer:
    return Trainer(TRAIN_HP, random_params(TRAIN_HP, seed=0), cfg, run_dir)


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path, sampler):
    n = 4
    straight = make(tmp_path / "straight")
    losses = [r["loss"] for r in straight.fit(sampler, steps=2 * n, progress=False)]

    first = make(tmp_path / "resumed")
    head = [r["loss"] for r in first.fit(sampler, steps=n, progress=False)]
    second = make(tmp_path / "resumed")  # a new process's worth of objects
    assert second.restore("latest") != "fresh"
    tail = [r["loss"] for r in second.fit(sampler, steps=2 * n, progress=False)]

    np.testing.assert_allclose(head + tail, losses, rtol=0, atol=1e-6)
    for name, value in straight.params().items():
        np.testing.assert_array_equal(second.params()[name], value, err_msg=name)
    assert int(second.optimizer.iterations.numpy()) == 2 * n


def test_restoring_only_the_weights_does_not_continue_exactly(tmp_path, sampler):
    """The old tools' way (model variables only): Adam's moments restart, the losses differ."""
    n = 4
    straight = make(tmp_path / "straight")
    losses = [r["loss"] for r in straight.fit(sampler, steps=2 * n, progress=False)]
    first = make(tmp_path / "naive")
    first.fit(sampler, steps=n, progress=False)
    naive = make(tmp_path / "naive-restart")
    tf.train.Checkpoint(weights=naive.weights).restore(first.manager.latest_checkpoint).expect_partial()
    naive.step.assign(n)
    tail = [r["loss"] for r in naive.fit(sampler, steps=2 * n, progress=False)]
    assert np.abs(np.array(tail) - np.array(losses[n:])).max() > 1e-3


def test_training_lowers_the_validation_loss(tmp_path, sampler):
    train, val = sampler.split(0.1)
    cfg = TrainConfig(batch_size=4, learning_rate=3e-3, val_batches=4, save_every=1000)
    trainer = make(tmp_path / "learn", cfg)
    before = trainer.evaluate(val)
    trainer.fit(train, steps=30, progress=False)
    after = trainer.evaluate(val)
    assert after < before - 2.0, (before, after)


def test_batches_depend_only_on_seed_and_step(sampler):
    a = sampler.batch(7, 3, 16)
    b = Sampler([sampler.tokens], seed=sampler.seed).batch(7, 3, 16)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sampler.batch(8, 3, 16))


def test_progress_samples_come_from_the_engine_and_are_seeded(tmp_path, sampler):
    cfg = TrainConfig(
        batch_size=2,
        learning_rate=3e-3,
        save_every=1000,
        sample_every=2,
        sample_num=2,
        sample_length=TRAIN_HP.n_ctx + 8,
        top_k=40,
    )
    trainer = make(tmp_path / "samples", cfg)
    shown: list[tuple[int, list[list[int]]]] = []
    trainer.fit(
        sampler, steps=2, progress=False, on_sample=lambda step, samples: shown.append((step, samples))
    )
    assert [step for step, _ in shown] == [2]
    samples = shown[0][1]
    assert [len(s) for s in samples] == [TRAIN_HP.n_ctx + 8] * 2  # longer than the context: the window slides
    assert all(0 <= t < TRAIN_HP.n_vocab for s in samples for t in s)
    assert (
        trainer.sample([50256], TRAIN_HP.n_ctx + 8, seeds=[2000, 2001]) == samples
    )  # same weights and seeds
    assert trainer.sample([50256], 8, seeds=[5])[0] != trainer.sample([50256], 8, seeds=[6])[0]
