"""Sampling as pure functions: the support (temperature, top-k, top-p in Hugging Face's order), the
seeded one-uniform-per-token draw, the empirical distribution, and parameter validation.

Every property is checked against a softmax computed here, independently of ``support``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.engine.sampling import SamplingParams, make_rng, sample, support

SETTINGS = settings(max_examples=200, deadline=None)
TOL = 1e-9  # float64 rounding between this file's softmax and the module's


def finite_f32(lo: float | None = None, hi: float | None = None):
    return st.floats(min_value=lo, max_value=hi, width=32, allow_nan=False, allow_infinity=False)


# Logits over the whole float32 range (overflow, ties, subnormals) or a range that gives spread-out
# probabilities, so both the edge cases and meaningful nucleus sets are exercised.
logits_st = st.integers(2, 300).flatmap(
    lambda v: (
        hnp.arrays(np.float32, v, elements=st.one_of(finite_f32(), finite_f32(-20.0, 20.0)))
        | hnp.arrays(np.float32, v, elements=finite_f32(-20.0, 20.0))
    )
)


@st.composite
def params_st(draw, vocab: int, greedy_ok: bool = True) -> SamplingParams:
    temps = st.floats(0.05, 5.0)
    temperature = draw(st.just(0.0) | temps if greedy_ok else temps)
    top_k = draw(st.just(0) | st.integers(1, vocab + 5))
    top_p = draw(st.just(1.0) | st.floats(0.0, 1.0, exclude_min=True))
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)


def ranked(logits: np.ndarray) -> np.ndarray:
    """Token ids most likely first; equal logits by lower id."""
    return np.lexsort((np.arange(len(logits)), -logits.astype(np.float64)))


def reference(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids after top-k, most likely first, and their tempered probabilities (renormalised
    over the candidates, which is the distribution top-p cuts, as in Hugging Face's warpers)."""
    order = ranked(logits)
    if params.top_k:
        order = order[: params.top_k]
    x = logits.astype(np.float64) / params.temperature
    p = np.exp(x - x.max())
    p /= p.sum()  # the full tempered softmax over the vocabulary
    q = p[order]
    return order, q / q.sum()


def check_support(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    ids, probs = support(logits, params)
    assert len(ids) == len(probs) >= 1
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-9)
    assert len(set(ids.tolist())) == len(ids)
    if params.greedy:
        assert ids.tolist() == [int(np.argmax(logits))]
        return ids, probs
    if params.top_k > 0:
        assert len(ids) <= params.top_k
    order, q = reference(logits, params)
    k = len(ids)
    # The kept tokens are the k most likely ones, in order (ties broken by lower id).
    assert ids.tolist() == order[:k].tolist()
    cum = np.cumsum(q)
    if params.top_p < 1.0:
        assert cum[k - 1] >= params.top_p - TOL  # their mass reaches top_p ...
        if k > 1:
            assert cum[k - 2] < params.top_p + TOL  # ... and one fewer would not
    else:
        assert k == len(order)
    np.testing.assert_allclose(probs, q[:k] / cum[k - 1], rtol=1e-9, atol=1e-12)
    return ids, probs


@SETTINGS
@given(data=st.data(), logits=logits_st, seed=st.integers(0, 2**64 - 1))
def test_sampled_token_lies_in_support(data, logits, seed):
    params = data.draw(params_st(len(logits)))
    ids, _ = check_support(logits, params)
    rng = make_rng(seed)
    for _ in range(5):
        assert sample(logits, params, rng) in set(ids.tolist())


@SETTINGS
@given(data=st.data(), logits=logits_st)
def test_support_is_the_smallest_most_likely_set_reaching_top_p(data, logits):
    params = data.draw(params_st(len(logits), greedy_ok=False))
    check_support(logits, params)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=0.7, top_k=40),
        SamplingParams(temperature=1.3, top_p=0.9),
        SamplingParams(temperature=0.9, top_k=100, top_p=0.5),
        SamplingParams(top_k=50257),
    ],
    ids=str,
)
def test_support_with_the_real_vocabulary(params):
    logits = (np.random.default_rng(7).standard_normal(50257) * 3).astype(np.float32)
    ids, _ = check_support(logits, params)
    rng = make_rng(11)
    allowed = set(ids.tolist())
    assert all(sample(logits, params, rng) in allowed for _ in range(50))


@SETTINGS
@given(data=st.data(), logits=logits_st, seed=st.integers(0, 2**64 - 1))
def test_greedy_cases_are_argmax(data, logits, seed):
    v = len(logits)
    top_k = data.draw(st.integers(0, v + 5))
    top_p = data.draw(st.floats(0.0, 1.0, exclude_min=True))
    temperature = data.draw(st.floats(0.05, 5.0))
    expected = int(np.argmax(logits))
    rng = make_rng(seed)
    for params in (
        SamplingParams(temperature=temperature, top_k=1, top_p=top_p),
        SamplingParams(temperature=0.0, top_k=top_k, top_p=top_p),
        # The most likely token alone has mass >= 1/V > 1e-9.
        SamplingParams(temperature=temperature, top_k=top_k, top_p=1e-9),
    ):
        assert sample(logits, params, rng) == expected, params
        assert support(logits, params)[0].tolist() == [expected], params


def test_greedy_on_the_real_vocabulary():
    logits = np.random.default_rng(3).standard_normal(50257).astype(np.float32)
    logits[12345] = 10.0
    rng = make_rng(0)
    for params in (SamplingParams(top_k=1), SamplingParams(temperature=0.0), SamplingParams(top_p=1e-9)):
        assert sample(logits, params, rng) == 12345


@SETTINGS
@given(data=st.data(), logits=logits_st, seed=st.integers(0, 2**64 - 1))
def test_same_seed_same_tokens(data, logits, seed):
    params = data.draw(params_st(len(logits)))
    rng1, rng2 = make_rng(seed), make_rng(seed)
    a = [sample(logits, params, rng1) for _ in range(20)]
    b = [sample(logits, params, rng2) for _ in range(20)]
    assert a == b


@SETTINGS
@given(data=st.data(), logits=logits_st, seed=st.integers(0, 2**64 - 1))
def test_sample_consumes_exactly_one_uniform(data, logits, seed):
    v = len(logits)
    rng_a, rng_b, rng_ref = make_rng(seed), make_rng(seed), make_rng(seed)
    for _ in range(3):
        # Different parameters (greedy, plain, top-k, top-p paths) on the two generators.
        sample(logits, data.draw(params_st(v)), rng_a)
        sample(logits, data.draw(params_st(v)), rng_b)
        rng_ref.random()
        assert rng_a.bit_generator.state == rng_b.bit_generator.state == rng_ref.bit_generator.state
    assert rng_a.random() == rng_b.random()


EXPECTED = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
LOGITS5 = np.log(EXPECTED).astype(np.float32)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (SamplingParams(), EXPECTED),
        (SamplingParams(top_k=2), [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0]),
        # Cumulative mass 0.40, 0.65, 0.80: the third token crosses 0.7 and is kept.
        (SamplingParams(top_p=0.7), [0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0, 0]),
    ],
    ids=["plain", "top_k=2", "top_p=0.7"],
)
def test_empirical_distribution(params, expected):
    rng = make_rng(1234)
    draws = np.array([sample(LOGITS5, params, rng) for _ in range(20_000)])
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, expected, atol=0.015)
    assert freq[np.asarray(expected) == 0].sum() == 0  # excluded tokens never drawn


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_k": False}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
    ],
    ids=lambda x: repr(x) if isinstance(x, dict) else x,
)
def test_invalid_params_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_valid_edges_are_accepted():
    """The edge values construct, are kept as given, and sample as they mean to: temperature 0 is
    the argmax; a top_p of 1e-12 keeps the most likely token alone; the largest seed seeds the
    generator, checked against the inverse CDF of EXPECTED at a uniform drawn independently."""
    low = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, seed=0)
    high = SamplingParams(top_p=1e-12, seed=2**64 - 1)
    assert (low.temperature, low.top_k, low.top_p, low.seed) == (0.0, 0, 1.0, 0) and low.greedy
    assert (high.temperature, high.top_k, high.top_p, high.seed) == (
        1.0,
        0,
        1e-12,
        2**64 - 1,
    ) and not high.greedy
    assert [sample(LOGITS5, low, make_rng(low.seed)) for _ in range(3)] == [0, 0, 0]
    ids, probs = support(LOGITS5, high)
    assert ids.tolist() == [0] and probs.tolist() == [1.0]
    assert sample(LOGITS5, high, make_rng(high.seed)) == 0
    # The largest seed, plain sampling: the tokens whose cumulative-probability interval holds each
    # uniform of a PCG64 generator seeded here.
    plain = SamplingParams(seed=2**64 - 1)
    uniforms = np.random.Generator(np.random.PCG64(2**64 - 1)).random(200)
    expected = np.searchsorted(np.cumsum(EXPECTED), uniforms, side="right").tolist()
    rng = make_rng(plain.seed)
    assert [sample(LOGITS5, plain, rng) for _ in range(200)] == expected
    assert len(set(expected)) == 5  # every token drawn: a wrong generator or order would show
