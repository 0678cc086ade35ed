"""The engine against an independent implementation (transformers' GPT2LMHeadModel, PyTorch CPU).

Same random weights written in both real on-disk layouts; logits within 1e-4 in float32 for a full
prompt and for token-by-token cached decoding in every slot of a shared batch; greedy continuations
token-identical to transformers' ``generate``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from app.engine import gpt2
from app.engine.batcher import Batcher, generate
from app.engine.engine import Engine, EngineConfig
from app.engine.sampling import SamplingParams
from app.engine.spec import GenerationSpec
from app.model.hparams import HParams, preset
from app.model.random_init import random_params
from app.runtime.load import load_model
from tests.support.hf_reference import hf_greedy, hf_logits, hf_model

TOL = 1e-4


@pytest.fixture(scope="module")
def reference(tiny_hp, tiny_params):
    return hf_model(tiny_hp, tiny_params)


@pytest.fixture(scope="module", params=["openai", "hf"])
def loaded(request, tiny_dirs):
    return load_model(tiny_dirs[request.param], slots=4)


@pytest.fixture(scope="module")
def solo(tiny_hp, tiny_params, shelf):
    """The one-slot engine (prompts prefilled in one call) that lone reference runs share, so its
    programs compile once per module. Each use leaves its slot free; nothing a run leaves in the
    KV cache may change the next run's numbers."""
    engine = Engine(tiny_hp, tiny_params, EngineConfig(slots=1, prefill_chunk=128), shelf=shelf)
    yield engine
    assert engine.free_slots() == [0]


def prompts(n: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=k).tolist() for k in lengths]


def test_prefill_matches_transformers(loaded, reference):
    (ids,) = prompts(loaded.hparams.n_vocab, [37])
    ref = hf_logits(reference, ids)
    for t in (1, 2, 17, 37):
        got = loaded.engine.prefill(1, ids[:t])
        np.testing.assert_allclose(got, ref[t - 1], atol=TOL, rtol=0)
    loaded.engine.release(1)


def test_full_forward_matches_transformers(tiny_hp, tiny_params, reference):
    ids = prompts(tiny_hp.n_vocab, [3, 3], seed=3)
    full = gpt2.forward_full(tiny_params, tf.constant(ids), hp=tiny_hp).numpy()
    for row, seq in zip(full, ids):
        np.testing.assert_allclose(row, hf_logits(reference, seq), atol=TOL, rtol=0)


def test_cached_decoding_in_every_slot_of_a_shared_batch(loaded, reference):
    """Four different requests share each step; every row matches its own full forward pass."""
    engine = loaded.engine
    seqs = prompts(loaded.hparams.n_vocab, [40, 25, 60, 33], seed=1)
    starts = [5, 1, 20, 9]  # prompt lengths at prefill: slots sit at different positions
    refs = [hf_logits(reference, s) for s in seqs]
    for slot, (seq, start) in enumerate(zip(seqs, starts)):
        np.testing.assert_allclose(engine.prefill(slot, seq[:start]), refs[slot][start - 1], atol=TOL, rtol=0)
    pos = list(starts)
    while True:
        live = [s for s in range(4) if pos[s] < len(seqs[s])]
        if not live:
            break
        out = engine.step({s: seqs[s][pos[s]] for s in live})
        for row, s in enumerate(live):
            np.testing.assert_allclose(
                out[row], refs[s][pos[s]], atol=TOL, rtol=0, err_msg=f"slot {s} pos {pos[s]}"
            )
            pos[s] += 1
    for s in range(4):
        engine.release(s)


@pytest.mark.slow
def test_greedy_continuation_equals_transformers_generate(loaded, reference):
    (ids,) = prompts(loaded.hparams.n_vocab, [20], seed=7)
    spec = GenerationSpec(ids, 64, SamplingParams(temperature=0), stop_at_eos=False)
    (seq,) = generate(loaded.engine, [spec], eos_id=None)
    assert seq.generated == hf_greedy(reference, ids, 64)


@pytest.mark.slow
def test_chunked_prefill_equals_one_shot(tiny_hp, tiny_params, solo, shelf):
    (ids,) = prompts(tiny_hp.n_vocab, [100], seed=2)
    chunked = Engine(tiny_hp, tiny_params, EngineConfig(slots=1, prefill_chunk=16), shelf=shelf)
    np.testing.assert_allclose(chunked.prefill(0, ids), solo.prefill(0, ids), atol=1e-5, rtol=0)
    np.testing.assert_allclose(chunked.step({0: 5}), solo.step({0: 5}), atol=1e-5, rtol=0)
    solo.release(0)


def test_second_request_of_a_bucket_does_not_retrace(tiny_hp, tiny_params, shelf):
    engine = Engine(tiny_hp, tiny_params, EngineConfig(slots=2), shelf=shelf)
    a, b = prompts(tiny_hp.n_vocab, [20, 23], seed=4)  # same prompt bucket (32), same context bucket
    generate(engine, [GenerationSpec(a, 10, SamplingParams(top_k=5, seed=1))], eos_id=None)
    traced = engine.trace_count()
    assert traced >= 2  # one prefill and one decode shape at least
    generate(engine, [GenerationSpec(b, 12, SamplingParams(temperature=0.7, seed=2))], eos_id=None)
    assert engine.trace_count() == traced


@pytest.mark.slow
def test_seeded_requests_give_the_same_tokens_alone_or_in_a_full_batch(tiny_hp, tiny_params, solo, shelf):
    params = [
        SamplingParams(temperature=1.0, seed=11),
        SamplingParams(temperature=0.8, top_k=40, seed=12),
        SamplingParams(temperature=1.2, top_p=0.9, seed=13),
        SamplingParams(temperature=0, seed=14),
    ]
    ids = prompts(tiny_hp.n_vocab, [5, 17, 9, 30], seed=5)

    def make() -> list[GenerationSpec]:
        return [GenerationSpec(p, 24, sp, stop_at_eos=False) for p, sp in zip(ids, params)]

    alone = [generate(solo, [seq], eos_id=None)[0].generated for seq in make()]
    together = generate(Engine(tiny_hp, tiny_params, EngineConfig(slots=4), shelf=shelf), make(), eos_id=None)
    assert [s.generated for s in together] == alone
    # And once more in another order, through a batch that is never full.
    shuffled = generate(
        Engine(tiny_hp, tiny_params, EngineConfig(slots=3), shelf=shelf), make()[::-1], eos_id=None
    )
    assert [s.generated for s in shuffled][::-1] == alone


@pytest.mark.slow
def test_endoftext_ends_a_sample_unless_ignored(tiny_hp, tiny_params, shelf):
    engine = Engine(tiny_hp, tiny_params, EngineConfig(slots=2), shelf=shelf)
    (ids,) = prompts(tiny_hp.n_vocab, [8], seed=6)
    free_run = generate(
        engine, [GenerationSpec(ids, 6, SamplingParams(temperature=0), stop_at_eos=False)], eos_id=None
    )
    eos = free_run[0].generated[2]  # pretend the third greedy token is <|endoftext|>
    stopped = generate(engine, [GenerationSpec(ids, 6, SamplingParams(temperature=0))], eos_id=eos)[0]
    assert stopped.generated == free_run[0].generated[: free_run[0].generated.index(eos) + 1]
    assert stopped.finish_reason == "eos_token"
    ignored = generate(
        engine, [GenerationSpec(ids, 6, SamplingParams(temperature=0), stop_at_eos=False)], eos_id=eos
    )[0]
    assert ignored.generated == free_run[0].generated and ignored.finish_reason == "length"
    assert engine.free_slots() == [0, 1]


@pytest.mark.slow
def test_slots_join_and_leave_between_steps(tiny_hp, tiny_params, solo, shelf):
    """A request admitted while another decodes gets its first token before the other finishes."""
    engine = Engine(tiny_hp, tiny_params, EngineConfig(slots=2), shelf=shelf)
    batcher = Batcher(engine, eos_id=None)
    a, b = prompts(tiny_hp.n_vocab, [10, 12], seed=8)
    long = GenerationSpec(a, 30, SamplingParams(temperature=0), stop_at_eos=False)
    short = GenerationSpec(b, 3, SamplingParams(temperature=0), stop_at_eos=False)
    long = batcher.admit(long)
    for _ in range(5):
        batcher.step()
    short = batcher.admit(short)
    while not short.finished:
        batcher.step()
    assert not long.finished and len(long.generated) < 30
    assert batcher.free_slots() == 1
    while not long.finished:
        batcher.step()
    alone = generate(
        solo, [GenerationSpec(a, 30, SamplingParams(temperature=0), stop_at_eos=False)], eos_id=None
    )
    assert long.generated == alone[0].generated


@pytest.mark.slow
def test_sliding_window_runs_past_the_context(tiny_params, shelf):
    """n_ctx 32, 200 new tokens: never an error, positions stay < n_ctx, and the tokens equal a
    reference that re-runs transformers on the kept window every step."""
    hp = HParams(n_vocab=50257, n_ctx=32, n_embd=64, n_head=4, n_layer=2)
    params = random_params(hp, seed=9, ln_noise=True)
    reference = hf_model(hp, params)
    engine = Engine(hp, params, EngineConfig(slots=2, window_keep=24), shelf=shelf)
    (ids,) = prompts(hp.n_vocab, [10], seed=10)
    seq = generate(
        engine, [GenerationSpec(ids, 200, SamplingParams(temperature=0), stop_at_eos=False)], eos_id=None
    )[0]
    assert len(seq.generated) == 200

    window, expected = list(ids), []
    for _ in range(200):
        token = int(np.argmax(hf_logits(reference, window)[-1]))
        expected.append(token)
        window.append(token)
        if len(window) > hp.n_ctx:
            window = window[-24:]
        assert len(window) <= hp.n_ctx  # every position the reference uses exists in wpe
    assert seq.generated == expected


def test_engine_rejects_bad_input(tiny_hp, tiny_params, shelf):
    engine = Engine(tiny_hp, tiny_params, EngineConfig(slots=1), shelf=shelf)
    with pytest.raises(ValueError, match="1..128 tokens"):
        engine.prefill(0, [])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.prefill(0, [50257])
    with pytest.raises(ValueError, match="slot 0 is free"):
        engine.step({0: 1})
    with pytest.raises(ValueError, match="outside 0..0"):
        engine.prefill(1, [1])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_options_run_and_stay_close(tiny_hp, tiny_params, dtype, shelf):
    (ids,) = prompts(tiny_hp.n_vocab, [16], seed=12)
    f32 = Engine(tiny_hp, tiny_params, EngineConfig(slots=1), shelf=shelf).prefill(0, ids)
    half = Engine(tiny_hp, tiny_params, EngineConfig(slots=1, dtype=dtype), shelf=shelf)
    got = half.prefill(0, ids)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - f32).max() < (0.05 if dtype == "float16" else 0.3)
    assert np.isfinite(half.step({0: int(np.argmax(got))})).all()


@pytest.mark.slow
def test_124m_shape_matches_transformers():
    hp = preset("124M")
    params = random_params(hp, seed=0)
    (ids,) = prompts(hp.n_vocab, [24], seed=11)
    engine = Engine(hp, params, EngineConfig(slots=2, prefill_chunk=32))
    ref = hf_logits(hf_model(hp, params), ids)
    np.testing.assert_allclose(engine.prefill(1, ids[:20]), ref[19], atol=TOL, rtol=0)
    for t in range(20, 24):
        np.testing.assert_allclose(engine.step({1: ids[t]})[0], ref[t], atol=TOL, rtol=0)
