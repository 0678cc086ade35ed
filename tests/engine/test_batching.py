"""Batched and chunked prefill, whole-batch sampling and compile-once-before-ready (issue 8).

Every fast path is checked against the plain one it replaces: several prompts prefilled in one call
against one at a time, ``sample_batch`` against per-row ``sample``, the device's top-k candidates
against the host's sort. The tiny model keeps the warm-up of every shape short.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from app.engine.batcher import Batcher, Entry, NonFiniteScores, StepFailure, generate, programs
from app.engine.buckets import round_up
from app.engine.engine import Engine, EngineConfig, Piece
from app.engine.sampling import SamplingParams, make_rng, sample, sample_batch
from app.engine.spec import GenerationSpec
from app.model.hparams import HParams
from app.model.random_init import random_params
from tests.support.faults import wrapped
from tests.support.server_harness import TINY as HP


@pytest.fixture(scope="module")
def params():
    return random_params(HP, seed=21, ln_noise=True)


@pytest.fixture(scope="module")
def solo(params, shelf):
    """The one-slot engine the tests' lone reference runs share: every program of a lone run is
    compiled once per module. Each use must leave its slot free; nothing a run leaves in the KV
    cache may change the next run's tokens."""
    engine = Engine(HP, params, EngineConfig(slots=1), shelf=shelf)
    yield engine
    assert engine.free_slots() == [0]


@pytest.fixture(scope="module")
def speculating(params, shelf):
    """A one-slot engine that speculates (4-token drafts), shared like ``solo``."""
    return Engine(HP, params, EngineConfig(slots=1, speculative_tokens=4), shelf=shelf)


def prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, HP.n_vocab - 1, size=k).tolist() for k in lengths]


@pytest.mark.slow
def test_several_prompts_in_one_call_equal_one_at_a_time(params, shelf):
    batched = Engine(HP, params, EngineConfig(slots=4, prefill_chunk=64), shelf=shelf)
    alone = Engine(HP, params, EngineConfig(slots=4, prefill_chunk=64), shelf=shelf)
    ids = prompts([5, 16, 9, 13], seed=1)
    assert batched.piece_fits([len(p) for p in ids])
    together = batched.prefill_batch([Piece(slot, p) for slot, p in enumerate(ids)])
    for slot, p in enumerate(ids):
        np.testing.assert_allclose(together.logits[slot], alone.prefill(slot, p), atol=1e-5, rtol=0)
    step = {slot: 7 + slot for slot in range(4)}
    np.testing.assert_allclose(batched.step(step), alone.step(step), atol=1e-5, rtol=0)


def test_pieces_that_do_not_fit_one_bucket_are_refused(params, shelf):
    engine = Engine(HP, params, EngineConfig(slots=4, prefill_chunk=64), shelf=shelf)
    a, b = prompts([40, 40], seed=2)
    assert not engine.piece_fits([40, 40])  # 2 x 64 padded tokens > 64
    with pytest.raises(ValueError, match="fit one prefill bucket"):
        engine.prefill_batch([Piece(0, a), Piece(1, b)])
    engine.prefill(0, a[:10])
    with pytest.raises(ValueError, match="cannot start at 3"):
        engine.prefill_batch([Piece(0, a[10:20], 3)])


def test_device_candidates_are_the_hosts_top_k_with_ties_by_lower_id(params, shelf):
    engine = Engine(HP, params, EngineConfig(slots=2, candidates=16), shelf=shelf)
    (ids,) = prompts([12], seed=3)
    scores = engine.prefill_scores(0, ids)
    logits = scores.logits[0]
    order = np.lexsort((np.arange(HP.n_vocab), -logits))[:16]
    assert scores.top_ids[0].tolist() == order.tolist()
    assert scores.lse[0] == pytest.approx(np.log(np.exp(logits.astype(np.float64)).sum()), abs=1e-4)
    tied = tf.math.top_k(tf.constant([[1.0, 3.0, 3.0, 2.0, 3.0]]), k=2).indices.numpy()
    assert tied.tolist() == [[1, 2]]  # the rule sample_batch relies on for top-k ties


def test_sample_batch_gives_every_row_what_sample_gives_it():
    rng = np.random.default_rng(4)
    v = 500
    logits = rng.normal(0, 3, size=(9, v)).astype(np.float32)
    logits[3] = np.round(logits[3])  # many ties, at the top-k boundary too
    logits[4, :] = 1.0  # all equal
    params = [
        SamplingParams(temperature=0),
        SamplingParams(top_k=1),
        SamplingParams(temperature=0.7),
        SamplingParams(top_k=5, temperature=1.3),
        SamplingParams(top_k=7),
        SamplingParams(top_p=0.8),
        SamplingParams(top_k=40, top_p=0.5, temperature=0.9),
        SamplingParams(top_k=300),
        SamplingParams(temperature=1e-310),
    ]
    k = 64
    top_vals, top_ids = tf.math.top_k(tf.constant(logits), k=k)
    for seed in range(20):
        expected = [sample(row, p, make_rng(seed + i)) for i, (row, p) in enumerate(zip(logits, params))]
        got = sample_batch(
            logits,
            params,
            [make_rng(seed + i) for i in range(len(params))],
            top_ids=top_ids.numpy(),
            top_logits=top_vals.numpy(),
        )
        assert got.tolist() == expected, seed


def test_a_burst_of_short_prompts_is_prefilled_in_one_call(params, shelf):
    engine = Engine(HP, params, EngineConfig(slots=4, prefill_chunk=64), shelf=shelf)
    batcher = Batcher(engine, eos_id=None)
    seqs = [
        GenerationSpec(p, 3, SamplingParams(temperature=0), stop_at_eos=False)
        for p in prompts([6, 9, 11, 4], seed=5)
    ]
    seqs = [batcher.admit(s) for s in seqs]
    with mock.patch.object(engine, "prefill_batch", wraps=engine.prefill_batch) as spy:
        events = batcher.step()
    assert spy.call_count == 1 and len(spy.call_args.args[0]) == 4
    assert sorted(e.seq.slot for e in events) == [0, 1, 2, 3] and all(len(s.generated) == 1 for s in seqs)


def _streams_then_arrivals(params, n_running: int, shelf) -> tuple[Batcher, list[Entry], list[Entry], list]:
    """``n_running`` greedy streams decoding, then seven 10-token prompts admitted."""
    engine = Engine(HP, params, EngineConfig(slots=16, prefill_chunk=128, slide_chunk=32), shelf=shelf)
    batcher = Batcher(engine, eos_id=None)
    greedy = SamplingParams(temperature=0)
    running = [GenerationSpec(p, 40, greedy, stop_at_eos=False) for p in prompts([5] * n_running, seed=30)]
    running = [batcher.admit(s) for s in running]
    batcher.step()
    ids = prompts([10] * 7, seed=31)
    seqs = [GenerationSpec(p, 3, greedy, stop_at_eos=False) for p in ids]
    seqs = [batcher.admit(s) for s in seqs]
    return batcher, running, seqs, ids


@pytest.mark.slow
def test_while_streams_decode_a_round_packs_first_pieces_only_up_to_the_slide_chunk(params, solo, shelf):
    """Seven 10-token prompts arrive while six streams decode (fewer than 1.2 waiting per stream):
    with a 32-token budget (16-token buckets) they go two a round, the streams stepping each
    round. Their tokens are those they get alone."""
    batcher, running, seqs, ids = _streams_then_arrivals(params, 6, shelf)
    with mock.patch.object(batcher.engine, "prefill_batch", wraps=batcher.engine.prefill_batch) as spy:
        for _ in range(4):
            before = [len(r.generated) for r in running]
            batcher.step()
            assert [len(r.generated) for r in running] == [b + 1 for b in before]
    assert [len(call.args[0]) for call in spy.call_args_list] == [2, 2, 2, 1]
    while any(not s.finished for s in seqs):
        batcher.step()
    greedy = SamplingParams(temperature=0)
    for seq, p in zip(seqs, ids):
        (alone,) = generate(solo, [GenerationSpec(p, 3, greedy, stop_at_eos=False)], eos_id=None)
        assert seq.generated == alone.generated


@pytest.mark.slow
def test_a_burst_arriving_beside_few_streams_is_prefilled_in_full_pieces(params, shelf):
    """Seven prompts arriving beside one stream outnumber it 1.2 to 1 or more (TGI's
    waiting_served_ratio): one round prefills them all, the stream still stepping in it."""
    batcher, running, seqs, _ = _streams_then_arrivals(params, 1, shelf)
    with mock.patch.object(batcher.engine, "prefill_batch", wraps=batcher.engine.prefill_batch) as spy:
        batcher.step()
    assert [len(call.args[0]) for call in spy.call_args_list] == [7]
    assert len(running[0].generated) == 2 and all(len(s.generated) == 1 for s in seqs)


@pytest.mark.slow
def test_a_long_prompt_is_chunked_while_the_others_keep_streaming(params, solo, shelf):
    """A 100-token prompt (chunks of 32) takes four rounds; a running stream gets a token in each."""
    engine = Engine(HP, params, EngineConfig(slots=2, prefill_chunk=32), shelf=shelf)
    batcher = Batcher(engine, eos_id=None)
    short_ids, long_ids = prompts([5, 100], seed=6)
    running = GenerationSpec(short_ids, 50, SamplingParams(temperature=0), stop_at_eos=False)
    running = batcher.admit(running)
    batcher.step()
    long = GenerationSpec(long_ids, 5, SamplingParams(temperature=0), stop_at_eos=False)
    long = batcher.admit(long)
    rounds = 0
    while not long.generated:
        before = len(running.generated)
        batcher.step()
        rounds += 1
        assert len(running.generated) == before + 1
    assert rounds == 4 and long.prefilled == 100
    assert solo.chunk_buckets[-1] == 128  # the lone run prefills the whole prompt in one call
    alone = generate(
        solo, [GenerationSpec(long_ids, 5, SamplingParams(temperature=0), stop_at_eos=False)], eos_id=None
    )
    while not long.finished:
        batcher.step()
    assert long.generated == alone[0].generated


@pytest.mark.slow
def test_after_warmup_no_request_of_any_length_or_batch_compiles(params, shelf):
    engine = Engine(HP, params, EngineConfig(slots=4, prefill_chunk=32), shelf=shelf)
    lines: list[str] = []
    engine.warmup(programs(engine), lines.append)
    assert len(lines) == len(programs(engine)) and lines[-1].endswith(f"({len(lines)}/{len(lines)})")
    traced = engine.trace_count()
    rng = np.random.default_rng(7)
    lengths = [1, 2, 15, 16, 17, 31, 32, 33, 64, 65, 100, 127, 128, 129, 300]
    for batch in (1, 2, 3, 4):
        ids = [rng.integers(0, 5000, size=n).tolist() for n in rng.choice(lengths, size=batch)]
        seqs = [
            GenerationSpec(p, 40, SamplingParams(top_k=5, seed=i), stop_at_eos=False)
            for i, p in enumerate(ids)
        ]
        generate(engine, seqs, eos_id=None)
    assert engine.trace_count() == traced


@pytest.mark.slow
@pytest.mark.parametrize(
    "sp",
    [
        SamplingParams(temperature=0),
        SamplingParams(top_k=2, seed=3),
        SamplingParams(top_k=3, temperature=0.5, seed=4),
        SamplingParams(top_k=4, top_p=0.6, seed=5),
    ],
)
def test_speculation_gives_the_tokens_plain_decoding_gives(solo, speculating, sp):
    """Prompt-lookup drafts verified k+1 at a time: the same tokens as one at a time, for greedy and
    seeded sampling (accept() draws each position from the same random stream)."""
    rng = np.random.default_rng(8)
    phrase = rng.integers(0, 5000, size=6).tolist()
    ids = phrase * 5 + phrase[:2]  # repetitive: drafts are found and often accepted
    want = generate(solo, [GenerationSpec(ids, 40, sp, stop_at_eos=False)], eos_id=None)[0]
    with mock.patch.object(speculating, "verify", wraps=speculating.verify) as verify:
        got = generate(speculating, [GenerationSpec(ids, 40, sp, stop_at_eos=False)], eos_id=None)[0]
    assert verify.call_count > 0
    assert got.generated == want.generated
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)


@pytest.mark.slow
def test_verify_scores_every_position_like_single_steps(params, shelf):
    engine = Engine(HP, params, EngineConfig(slots=2, speculative_tokens=4), shelf=shelf)
    other = Engine(HP, params, EngineConfig(slots=2), shelf=shelf)
    (ids,) = prompts([20], seed=9)
    engine.prefill(1, ids[:15])
    other.prefill(1, ids[:15])
    scores = engine.verify(1, ids[15:20])
    for i, tok in enumerate(ids[15:20]):
        np.testing.assert_allclose(scores.logits[i], other.step({1: tok})[0], atol=1e-5, rtol=0)
    engine.truncate(1, 17)
    np.testing.assert_allclose(engine.step({1: ids[17]})[0], scores.logits[2], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_blocks_per_compiled_program_do_not_change_the_numbers(params, shelf):
    one = Engine(HP, params, EngineConfig(slots=2, layers_per_call=1), shelf=shelf)
    both = Engine(HP, params, EngineConfig(slots=2, layers_per_call=2), shelf=shelf)
    (ids,) = prompts([30], seed=10)
    np.testing.assert_allclose(both.prefill(0, ids), one.prefill(0, ids), atol=1e-5, rtol=0)
    np.testing.assert_allclose(both.step({0: 3}), one.step({0: 3}), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="must divide n_layer=2"):
        Engine(HP, params, EngineConfig(slots=1, layers_per_call=3), shelf=shelf)


@pytest.mark.slow
def test_a_lone_stream_decodes_with_every_block_in_one_program(params, shelf):
    engine = Engine(HP, params, EngineConfig(slots=4), shelf=shelf)  # whole_model_rows=1 by default
    per_layer = Engine(HP, params, EngineConfig(slots=4, whole_model_rows=0), shelf=shelf)
    (ids,) = prompts([9], seed=40)
    for e in (engine, per_layer):
        e.prefill(0, ids)
        e.prefill(1, ids)
    with mock.patch.object(engine, "_decode_fn", wraps=engine._decode_fn) as spy:
        alone = engine.step_scores({0: 5})
        assert spy.call_args.args[3] == "whole"
        engine.step_scores({0: 6, 1: 6})
        assert spy.call_args.args[3] == "xla"  # two rows: a program per block
    np.testing.assert_allclose(alone.logits, per_layer.step_scores({0: 5}).logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="whole_model_rows must be >= 0"):
        EngineConfig(whole_model_rows=-1)


@pytest.mark.slow
def test_a_request_that_outlives_a_burst_decodes_as_one_row(params, solo, shelf):
    """Eight arrive together; the one in the highest slot outlives the rest. Once alone it moves to
    slot 0 and every later decode call runs one row, and its tokens are a lone run's."""
    engine = Engine(HP, params, EngineConfig(slots=8, prefill_chunk=128), shelf=shelf)
    batcher = Batcher(engine, eos_id=None)
    ids = prompts([5 + i for i in range(8)], seed=11)
    seqs = [GenerationSpec(p, 4, SamplingParams(temperature=0), stop_at_eos=False) for p in ids[:7]]
    survivor = GenerationSpec(ids[7], 30, SamplingParams(temperature=0), stop_at_eos=False)
    seqs = [batcher.admit(s) for s in seqs]
    survivor = batcher.admit(survivor)
    assert survivor.slot == 7
    while not all(s.finished for s in seqs):
        batcher.step()
    with mock.patch.object(engine, "_decode_fn", wraps=engine._decode_fn) as decode:
        while not survivor.finished:
            batcher.step()
    assert decode.call_count > 0
    assert {call.args[0].shape[0] for call in decode.call_args_list} == {1}
    assert engine.free_slots() == list(range(8))
    alone = generate(
        solo, [GenerationSpec(ids[7], 30, SamplingParams(temperature=0), stop_at_eos=False)], eos_id=None
    )[0]
    assert survivor.generated == alone.generated


@pytest.mark.slow
def test_live_sequences_stay_in_the_lowest_slots(params, shelf):
    """Whatever order requests end in, the live ones sit below the batch bucket of their count."""
    engine = Engine(HP, params, EngineConfig(slots=8, prefill_chunk=128), shelf=shelf)
    batcher = Batcher(engine, eos_id=None)
    rng = np.random.default_rng(12)
    lengths = rng.integers(2, 12, size=8).tolist()
    seqs = [
        GenerationSpec(p, n, SamplingParams(temperature=0), stop_at_eos=False)
        for p, n in zip(prompts([6] * 8, seed=12), lengths)
    ]
    seqs = [batcher.admit(s) for s in seqs]
    while batcher.active:
        live = len(batcher.active)
        with mock.patch.object(engine, "_decode_fn", wraps=engine._decode_fn) as decode:
            batcher.step()
        if decode.called:
            assert decode.call_args.args[0].shape[0] <= round_up(live, engine.batch_buckets)
        for s in batcher.active:
            assert engine.length(s.slot) == len(s.spec.prompt_ids) + len(s.generated) - 1


@pytest.mark.slow
def test_a_moved_slot_scores_what_it_would_have_scored(params, shelf):
    moved = Engine(HP, params, EngineConfig(slots=4), shelf=shelf)
    stayed = Engine(HP, params, EngineConfig(slots=4), shelf=shelf)
    (ids,) = prompts([70], seed=13)
    moved.prefill(3, ids)
    stayed.prefill(3, ids)
    moved.move(3, 1)
    assert moved.free_slots() == [0, 2, 3] and moved.window(1) == ids
    np.testing.assert_allclose(moved.step({1: 5}), stayed.step({3: 5}), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="slot 1 is not free"):
        moved.move(2, 1)
    with pytest.raises(ValueError, match="slot 2 is free"):
        moved.move(2, 0)


def _serial_slide(params, hp, ids, n, config, shelf):
    """Greedy tokens of one slot stepped through Engine.step_scores, which slides in place."""
    engine = Engine(hp, params, config, shelf=shelf)
    token, out = int(np.argmax(engine.prefill(0, ids))), []
    for _ in range(n):
        out.append(token)
        token = int(np.argmax(engine.step({0: token})[0]))
    return out


@pytest.mark.slow
def test_a_sliding_window_goes_through_the_prefill_plan_while_others_stream(shelf):
    """n_ctx 64, keep 40, chunks of 16: a slide is three prefill rounds; the other stream gets a
    token in every round but those of its own slides, and the sliding stream's tokens are the
    in-place slide's."""
    hp = HParams(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
    params = random_params(hp, seed=14, ln_noise=True)
    engine = Engine(hp, params, EngineConfig(slots=2, window_keep=40, prefill_chunk=16), shelf=shelf)
    batcher = Batcher(engine, eos_id=None)
    long_ids, short_ids = prompts([60, 5], seed=14)
    sliding = GenerationSpec(long_ids, 80, SamplingParams(temperature=0), stop_at_eos=False)
    other = GenerationSpec(short_ids, 200, SamplingParams(temperature=0), stop_at_eos=False)
    other = batcher.admit(other)
    batcher.step()
    sliding = batcher.admit(sliding)
    slides = streamed_during_slides = 0
    with mock.patch.object(engine, "prefill_batch", wraps=engine.prefill_batch) as prefill:
        while not sliding.finished:
            before = len(other.generated)
            was_prefilling = sliding.prefilling
            batcher.step()
            slides += sliding.prefilling and not was_prefilling
            got_token = len(other.generated) == before + 1
            assert got_token or other.prefilling  # it waits only for its own slide
            streamed_during_slides += got_token and sliding.prefilling
    assert slides >= 2  # 80 tokens past a 64 context with 40 kept: it slid more than once
    assert streamed_during_slides >= 2 * slides
    assert all(len(call.args[0][0].ids) <= 16 for call in prefill.call_args_list)
    serial = EngineConfig(slots=1, window_keep=40, prefill_chunk=16)
    assert sliding.generated == _serial_slide(params, hp, long_ids, 80, serial, shelf)


@pytest.mark.slow
def test_a_request_cancelled_mid_slide_frees_its_slot(params, shelf):
    hp = HParams(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
    engine = Engine(
        hp, random_params(hp, seed=15), EngineConfig(slots=2, window_keep=40, prefill_chunk=16), shelf=shelf
    )
    batcher = Batcher(engine, eos_id=None)
    (ids,) = prompts([63], seed=15)
    seq = GenerationSpec(ids, 50, SamplingParams(temperature=0), stop_at_eos=False)
    seq = batcher.admit(seq)
    while not seq.prefilling or len(seq.generated) < 2:
        batcher.step()
        assert not seq.finished, "the window never slid"
    batcher.finish(seq, "cancelled")
    assert not batcher.active and engine.free_slots() == [0, 1] and not batcher._waiting
    assert batcher.step() == []


def test_compiled_programs_do_not_depend_on_slot_or_position_values(params, shelf):
    """XLA compiles a program again for each value of an input it must know at compile time (a
    strided slice's index), which tf.function's trace count does not show: a move once cost 250 ms
    per new slot pair that way. The programs' HLO must be the same for any slots and positions."""
    engine = Engine(HP, params, EngineConfig(slots=8), shelf=shelf)
    layers, caches = engine._groups()[0]
    c, i32 = HP.n_embd, tf.int32

    def hlo(fn, *args):
        return fn.experimental_get_compiler_ir(*args)(stage="hlo")

    def move(src, dst):
        return hlo(engine.programs.move_rows, tuple(engine._cache), tf.constant(src), tf.constant(dst), 64)

    def decode(pos):
        return hlo(engine.programs.decode_layers, tf.zeros([4, c]), layers, caches, tf.constant(pos, i32), 64)

    def prefill(slots, start, n_valid):
        x = tf.zeros([2 * 16, c])
        consts = (tf.constant(v, i32) for v in (slots, start, n_valid))
        return hlo(engine.programs.prefill_layers, x, layers, caches, *consts, 64)

    assert move(7, 0) == move(5, 1)
    assert decode([1, 2, 3, 4]) == decode([9, HP.n_ctx, 0, 30])
    assert prefill([0, 1], [0, 0], [16, 3]) == prefill([5, 2], [32, 0], [1, 16])


@pytest.mark.slow
def test_a_slide_is_written_in_slide_chunks_and_a_new_prompt_in_prefill_chunks(shelf):
    hp = HParams(n_vocab=50257, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
    config = EngineConfig(slots=2, window_keep=40, prefill_chunk=64, slide_chunk=16)
    params = random_params(hp, seed=16)
    engine = Engine(hp, params, config, shelf=shelf)
    batcher = Batcher(engine, eos_id=None)
    (ids,) = prompts([60], seed=16)
    seq = GenerationSpec(ids, 10, SamplingParams(temperature=0), stop_at_eos=False)
    seq = batcher.admit(seq)
    with mock.patch.object(engine, "prefill_batch", wraps=engine.prefill_batch) as prefill:
        while not seq.finished:
            batcher.step()
    lengths = [len(call.args[0][0].ids) for call in prefill.call_args_list]
    assert lengths == [60, 16, 16, 8]  # the prompt in one piece; its 40-token slide in three
    assert seq.generated == _serial_slide(params, hp, ids, 10, config, shelf)


# ---- a row whose scores are not finite ----


def nan_in_row_of(victim: Entry):
    """Wraps ``Engine.step_scores``: a NaN in one logit of ``victim``'s row, in every call it is in."""

    def wrapper(step_scores):
        def poisoned(tokens):
            scores = step_scores(tokens)
            logits = scores.logits.copy()
            logits[[i for i, slot in enumerate(tokens) if slot == victim.slot], 0] = np.nan
            return scores._replace(logits=logits)

        return poisoned

    return wrapper


def test_a_row_whose_scores_are_not_finite_fails_alone(params, solo, shelf):
    """Its sequence ends with a NonFiniteScores failure; the others of the same decode calls draw
    exactly the tokens they draw alone."""
    engine = Engine(HP, params, EngineConfig(slots=4), shelf=shelf)
    sampling = [
        SamplingParams(temperature=0),
        SamplingParams(top_k=5, seed=2),
        SamplingParams(temperature=0.8, seed=3),
    ]
    specs = [
        GenerationSpec(p, 8, sp, stop_at_eos=False) for p, sp in zip(prompts([5, 9, 7], seed=4), sampling)
    ]
    alone = [generate(solo, [spec], eos_id=None)[0].generated for spec in specs]
    batcher = Batcher(engine, eos_id=None)
    first, victim, last = seqs = [batcher.admit(spec) for spec in specs]
    failures = []
    with wrapped(engine, "step_scores", nan_in_row_of(victim)):
        while batcher.active:
            failures += [e for e in batcher.step() if isinstance(e, StepFailure)]
    ((failure),) = failures
    assert failure.seqs == [victim] and failure.phase == "decode"
    assert isinstance(failure.error, NonFiniteScores)
    assert victim.finish_reason == "error" and len(victim.generated) == 1  # its prefill's token only
    assert [first.generated, last.generated] == [alone[0], alone[2]]
    assert all(s.finish_reason in ("length", "error") for s in seqs) and engine.free_slots() == [0, 1, 2, 3]


def test_a_verify_call_with_non_finite_scores_fails_its_sequence(speculating):
    rng = np.random.default_rng(8)
    phrase = rng.integers(0, 5000, size=6).tolist()
    spec = GenerationSpec(phrase * 5, 20, SamplingParams(temperature=0), stop_at_eos=False)
    batcher = Batcher(speculating, eos_id=None)
    seq = batcher.admit(spec)
    calls = []

    def infinite(verify):
        def poisoned(slot, tokens):
            calls.append(len(tokens))
            scores = verify(slot, tokens)
            return scores._replace(logits=np.full_like(scores.logits, np.inf))

        return poisoned

    events = []
    with wrapped(speculating, "verify", infinite):
        while not seq.finished:
            events += batcher.step()
    assert len(calls) == 1  # its first verify call failed it
    failure = events[-1]
    assert failure.seqs == [seq] and isinstance(failure.error, NonFiniteScores)
    assert seq.finish_reason == "error" and speculating.free_slots() == [0]
