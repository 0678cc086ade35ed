"""Prompt-lookup speculative decoding: ``propose`` (drafting) and ``accept`` (verification).

``propose`` is checked on hand-made contexts and, with Hypothesis, against a brute-force search.
``accept`` is checked three ways: greedy targets give exactly the argmax chain; sampled output
follows exactly the target distributions (chi-square on 40,000 seeded runs, with deliberately wrong
rules shown to fail the same test, so it has power); and a toy language model decoded with
speculation gives token for token what plain decoding gives from the same seed.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.sampling import SamplingParams, draw, make_rng, support
from app.engine.speculative import accept, propose

# --------------------------------------------------------------------------------------------------
# propose


def test_propose_continues_the_earlier_occurrence_of_the_suffix():
    # suffix [1, 2, 3] occurs at 0, followed by 4, 5, 9, 1
    assert propose([1, 2, 3, 4, 5, 9, 1, 2, 3], max_ngram=3, k=4) == [4, 5, 9, 1]
    assert propose([1, 2, 3, 4, 5, 9, 1, 2, 3], max_ngram=3, k=2) == [4, 5]  # at most k


def test_propose_takes_the_most_recent_occurrence():
    # [1, 2] occurs at 0 (then 7) and at 3 (then 8): the most recent wins. Its continuation runs
    # into the suffix and then copies itself: 8, 1, 2, then the draft's own first token 8.
    assert propose([1, 2, 7, 1, 2, 8, 1, 2], max_ngram=2, k=1) == [8]
    assert propose([1, 2, 7, 1, 2, 8, 1, 2], max_ngram=2, k=4) == [8, 1, 2, 8]


def test_propose_prefers_longer_ngrams():
    # n=2 ([5, 6]) matches at 0, then 0; n=1 ([6]) matches more recently at 4, then 1.
    ctx = [5, 6, 0, 9, 6, 1, 5, 6]
    assert propose(ctx, max_ngram=2, k=1) == [0]
    assert propose(ctx, max_ngram=1, k=1) == [1]
    assert propose(ctx, max_ngram=3, k=1) == [0]  # no 3-gram match: falls back to n=2


def test_propose_loops_continue_for_k_tokens():
    assert propose([3, 3], k=4) == [3, 3, 3, 3]
    assert propose([4, 1, 2, 1, 2], max_ngram=2, k=5) == [1, 2, 1, 2, 1]


def test_propose_without_a_match_is_empty():
    assert propose([], k=4) == []
    assert propose([7], k=4) == []  # the final position itself never counts
    assert propose([1, 2, 3, 4], k=4) == []
    assert propose([1, 2, 3], min_ngram=1, max_ngram=3, k=4) == []
    assert propose([9, 1, 2, 3, 1], k=0) == []
    # only a 1-gram matches ([1] at 1); min_ngram=2 excludes it
    assert propose([9, 1, 2, 3, 1], min_ngram=2, max_ngram=3, k=4) == []
    assert propose([9, 1, 2, 3, 1], min_ngram=1, max_ngram=3, k=2) == [2, 3]


def test_propose_accepts_numpy_arrays_and_returns_python_ints():
    out = propose(np.array([1, 2, 7, 1, 2], dtype=np.int32), k=3)
    assert out == [7, 1, 2]
    assert all(type(t) is int for t in out)


@pytest.mark.parametrize("kwargs", [{"k": -1}, {"min_ngram": 0}, {"min_ngram": 3, "max_ngram": 2}])
def test_propose_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        propose([1, 2, 1, 2], **kwargs)


def _occurrences(context: list[int], n: int) -> list[int]:
    """Starts j of earlier occurrences of the last n tokens (not the suffix itself), brute force."""
    total = len(context)
    if n >= total:
        return []
    return [j for j in range(total - n) if context[j : j + n] == context[total - n :]]


@settings(max_examples=300, deadline=None)
@given(
    context=st.lists(st.integers(0, 3), max_size=60) | st.lists(st.integers(0, 40), max_size=60),
    max_ngram=st.integers(1, 4),
    min_ngram=st.integers(1, 4),
    k=st.integers(0, 6),
)
def test_propose_follows_the_most_recent_occurrence_of_the_longest_suffix(context, max_ngram, min_ngram, k):
    min_ngram = min(min_ngram, max_ngram)
    out = propose(context, max_ngram=max_ngram, min_ngram=min_ngram, k=k)
    found = [(n, _occurrences(context, n)) for n in range(max_ngram, min_ngram - 1, -1)]
    found = [(n, js) for n, js in found if js]
    if k == 0 or not found:
        assert out == []
        return
    n, js = found[0]  # the longest n with an earlier occurrence ...
    j = js[-1]  # ... and its most recent one
    assert len(out) == k
    ext = context + out
    # The draft is what follows that occurrence: literally from the context, then (when it runs
    # past the end) continuing the copy into the draft itself.
    assert ext[j : j + n] == context[len(context) - n :]
    assert ext[j + n : j + n + k] == out
    literal = min(k, len(context) - j - n)
    assert literal >= 1 and out[:literal] == context[j + n : j + n + literal]


# --------------------------------------------------------------------------------------------------
# accept: greedy


def _greedy(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return support(logits, SamplingParams(temperature=0.0))


def test_accept_greedy_is_the_argmax_chain():
    rows = np.eye(6)[[2, 4, 1, 5]] * 3.0  # argmaxes 2, 4, 1, 5
    dists = [_greedy(r) for r in rows]
    rng = make_rng(0)
    assert accept([2, 4, 1], dists, rng) == [2, 4, 1, 5]  # all accepted, plus the bonus
    assert accept([2, 0, 1], dists, rng) == [2, 4]  # rejected at 1: the argmax replaces it
    assert accept([3, 4, 1], dists, rng) == [2]  # rejected at 0
    assert accept([], dists[:1], rng) == [2]  # no draft: one plain greedy token


@settings(max_examples=200, deadline=None)
@given(
    argmaxes=st.lists(st.integers(0, 7), min_size=1, max_size=6),
    draft_bits=st.lists(st.booleans(), min_size=5, max_size=5),
    seed=st.integers(0, 2**32),
)
def test_accept_greedy_equals_plain_greedy(argmaxes, draft_bits, seed):
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((len(argmaxes), 8))
    rows[np.arange(len(argmaxes)), argmaxes] = 10.0
    k = len(argmaxes) - 1
    # draft token i is right when its bit is set, otherwise some other token
    draft = [g if ok else (g + 1) % 8 for g, ok in zip(argmaxes[:k], draft_bits)]
    first_wrong = next((i for i in range(k) if draft[i] != argmaxes[i]), k)
    assert accept(draft, [_greedy(r) for r in rows], make_rng(seed)) == argmaxes[: first_wrong + 1]


def test_accept_rejects_a_distribution_count_mismatch():
    with pytest.raises(ValueError):
        accept([1, 2], [_greedy(np.eye(3)[0])] * 2, make_rng(0))


def test_accept_consumes_one_uniform_per_emitted_token():
    dists = [_greedy(r) for r in np.eye(4) * 5.0]  # argmaxes 0, 1, 2, 3
    for draft, emitted in [([0, 1, 2], 4), ([0, 3, 2], 2), ([1, 1, 2], 1)]:
        rng, ref = make_rng(5), make_rng(5)
        assert len(accept(draft, dists, rng)) == emitted
        ref.random(emitted)
        assert rng.random() == ref.random()


# --------------------------------------------------------------------------------------------------
# accept: the output distribution is exactly the target's

N_DRAWS = 40_000
ALPHA = 0.001
# Upper 0.001 quantiles of the chi-square distribution (standard tables, e.g. NIST/SEMATECH
# e-Handbook 1.3.6.7.4, or scipy.stats.chi2.ppf(0.999, df)): what ``chi2_sf`` is checked against.
CHI2_CRIT_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 10: 29.588, 20: 45.315, 30: 59.703}


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df), exact for integer df (scipy is not installed): the closed
    forms Q(x; 1) = erfc(sqrt(x / 2)), Q(x; 2) = exp(-x / 2) and the recurrence
    Q(x; v + 2) = Q(x; v) + (x / 2)^(v / 2) exp(-x / 2) / Gamma(v / 2 + 1)."""
    if x <= 0:
        return 1.0
    v = 2 - df % 2
    q = math.exp(-x / 2) if v == 2 else math.erfc(math.sqrt(x / 2))
    while v < df:
        q += math.exp(v / 2 * math.log(x / 2) - x / 2 - math.lgamma(v / 2 + 1))
        v += 2
    return q


@pytest.mark.parametrize("df, crit", sorted(CHI2_CRIT_001.items()))
def test_chi2_sf_matches_the_tables(df, crit):
    assert chi2_sf(crit, df) == pytest.approx(ALPHA, rel=2e-3)


def chi2_rejects(counts: Counter, probs: dict, total: int) -> tuple[bool, float]:
    """Pearson's chi-square goodness of fit of ``counts`` (outcome -> count, ``total`` in all) to
    ``probs`` (outcome -> probability): (rejected at p = 0.001, statistic). Outcomes expected fewer
    than 5 times are pooled into one cell so the chi-square approximation holds; an outcome of
    probability 0 that occurs at all rejects outright."""
    if any(probs.get(o, 0.0) == 0.0 for o in counts):
        return True, float("inf")
    obs, exp, small_obs, small_exp = [], [], 0, 0.0
    for o, p in probs.items():
        if p == 0.0:
            continue
        if p * total < 5:
            small_obs, small_exp = small_obs + counts.get(o, 0), small_exp + p * total
        else:
            obs.append(counts.get(o, 0))
            exp.append(p * total)
    if small_exp > 0:
        obs.append(small_obs)
        exp.append(small_exp)
    if len(obs) < 2:  # one possible outcome: nothing to test beyond the zero-probability check
        return False, 0.0
    obs_a, exp_a = np.array(obs, dtype=np.float64), np.array(exp)
    stat = float(((obs_a - exp_a) ** 2 / exp_a).sum())
    return chi2_sf(stat, len(obs) - 1) < ALPHA, stat


def as_dist(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A full-vocabulary probability vector as ``support`` returns it: nonzero ids, most likely first."""
    ids = np.flatnonzero(p)
    ids = ids[np.lexsort((ids, -p[ids]))]
    return ids.astype(np.int64), p[ids].astype(np.float64)


def full(dist: tuple[np.ndarray, np.ndarray], vocab: int) -> np.ndarray:
    p = np.zeros(vocab)
    p[dist[0]] = dist[1]
    return p


def output_law(draft: list[int], ps: list[np.ndarray]) -> dict[tuple[int, ...], float]:
    """The exact distribution of the emitted token tuple: plain sampling from p_1, p_2, ... that
    stops at the first token that differs from the draft, or after the bonus token."""
    law: dict[tuple[int, ...], float] = {}
    prefix_p = 1.0
    for i, p in enumerate(ps):
        for t in np.flatnonzero(p):
            if i < len(draft) and t == draft[i]:
                continue
            law[tuple(draft[:i]) + (int(t),)] = prefix_p * p[t]
        if i < len(draft):
            prefix_p *= p[draft[i]]
    return law


# Reference and wrong rules, all with ``accept``'s signature.
def accept_residual(draft, dists, rng):
    """The textbook rule (Leviathan et al., Algorithm 1, q one-hot): accept x iff u < p(x); on
    rejection draw from norm(max(0, p - q)) = p without x. Correct, with a different use of the
    uniforms than ``accept``; it must pass the same tests."""
    out = []
    for i, x in enumerate(draft):
        ids, probs = dists[i]
        px = float(probs[ids == x].sum())
        if rng.random() < px:
            out.append(x)
            continue
        keep = ids != x
        out.append(draw(ids[keep], probs[keep], float(rng.random())))
        return out
    ids, probs = dists[len(draft)]
    return out + [draw(ids, probs, float(rng.random()))]


def accept_always(draft, dists, rng):
    """Wrong: trusts the draft."""
    ids, probs = dists[len(draft)]
    return list(draft) + [draw(ids, probs, float(rng.random()))]


def accept_unrenormalised(draft, dists, rng):
    """Wrong, a classic bug: on rejection the replacement is drawn from p itself, x included."""
    out = []
    for i, x in enumerate(draft):
        ids, probs = dists[i]
        if rng.random() < float(probs[ids == x].sum()):
            out.append(x)
            continue
        out.append(draw(ids, probs, float(rng.random())))
        return out
    ids, probs = dists[len(draft)]
    return out + [draw(ids, probs, float(rng.random()))]


def failed_checks(rule, draft: list[int], ps: list[np.ndarray], seed: int, n: int = N_DRAWS) -> dict:
    """Run ``rule`` n times; the chi-square checks it fails (name -> statistic). Checks: the first
    emitted token follows p_1; the second, given the first was the accepted draft token, follows
    p_2 (likewise the third, p_3); and the whole emitted tuple follows ``output_law``."""
    dists = [as_dist(p) for p in ps]
    rng = make_rng(seed)
    outs = [tuple(rule(draft, dists, rng)) for _ in range(n)]
    failed = {}

    def check(name, counts, probs, total):
        rejected, stat = chi2_rejects(counts, probs, total)
        if rejected:
            failed[name] = stat

    check("first ~ p1", Counter(o[0] for o in outs), dict(enumerate(ps[0])), n)
    for i in range(1, len(draft) + 1):
        # Given draft[:i] was accepted (the first i emitted tokens are the draft's), token i ~ p_{i+1}.
        cond = [o[i] for o in outs if len(o) > i and o[:i] == tuple(draft[:i])]
        if cond:
            check(f"token {i + 1} ~ p{i + 1} | accepted", Counter(cond), dict(enumerate(ps[i])), len(cond))
    check("joint", Counter(outs), output_law(draft, ps), n)
    return failed


VOCAB = 6
P1 = np.array([0.45, 0.25, 0.15, 0.10, 0.05, 0.00])
P2 = np.array([0.10, 0.30, 0.05, 0.25, 0.00, 0.30])
P3 = np.array([0.20, 0.20, 0.20, 0.20, 0.10, 0.10])


@pytest.mark.parametrize(
    "draft, ps",
    [
        ([0], [P1, P2]),  # k=1, likely draft (p1 = 0.45)
        ([4], [P1, P2]),  # k=1, unlikely draft (p1 = 0.05)
        ([5], [P1, P2]),  # k=1, draft outside the support (p1 = 0): always rejected
        ([0, 1], [P1, P2, P3]),  # k=2, both likely
        ([4, 3], [P1, P2, P3]),  # k=2, unlikely then likely
        ([0, 4], [P1, P2, P3]),  # k=2, the second outside p2's support
        ([], [P1]),  # no draft
    ],
)
def test_accept_follows_the_target_distribution(draft, ps):
    assert failed_checks(accept, draft, ps, seed=1234) == {}


def test_the_textbook_rule_passes_the_same_test():
    assert failed_checks(accept_residual, [4, 3], [P1, P2, P3], seed=99) == {}


@pytest.mark.parametrize(
    "rule, draft, ps", [(accept_always, [0], [P1, P2]), (accept_unrenormalised, [4, 3], [P1, P2, P3])]
)
def test_the_distribution_test_has_power(rule, draft, ps):
    failed = failed_checks(rule, draft, ps, seed=1234)
    assert "first ~ p1" in failed and "joint" in failed, failed


def test_accept_with_probability_one_and_outside_the_support():
    sure, other = as_dist(np.eye(VOCAB)[2]), as_dist(P1)
    rng = make_rng(3)
    for _ in range(200):
        out = accept([2, 5], [sure, other, other], rng)
        assert out[0] == 2 and len(out) == 2 and out[1] != 5  # p=1 accepted; p=0 never


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=8),
        SamplingParams(temperature=1.3, top_p=0.8),
        SamplingParams(temperature=0.9, top_k=12, top_p=0.9),
    ],
    ids=["top_k", "top_p", "top_k+top_p"],
)
def test_accept_follows_real_sampling_distributions(params):
    vocab = 40
    logits = make_rng(7).standard_normal((3, vocab)).astype(np.float32) * 2.0
    dists = [support(row, params) for row in logits]
    ps = [full(d, vocab) for d in dists]
    # draft: the second most likely token first (often rejected), then the most likely
    draft = [int(dists[0][0][1]), int(dists[1][0][0])]
    assert failed_checks(accept, draft, ps, seed=11, n=20_000) == {}


# --------------------------------------------------------------------------------------------------
# End to end on a toy language model: speculation changes nothing but the number of forwards.


def toy_logits(context: list[int], vocab: int = 12) -> np.ndarray:
    """A fixed random trigram model: peaked enough that it loops, so drafts do get accepted."""
    seed = 1 + context[-2] * vocab + context[-1] if len(context) >= 2 else 0
    return (make_rng(seed).standard_normal(vocab) * 3.0).astype(np.float32)


def decode_plain(prompt, params, seed, steps):
    ctx, rng = list(prompt), make_rng(seed)
    for _ in range(steps):
        ctx.append(draw(*support(toy_logits(ctx), params), float(rng.random())))
    return ctx[len(prompt) :]


def decode_speculative(prompt, params, seed, steps):
    ctx, rng, verifies = list(prompt), make_rng(seed), 0
    while len(ctx) - len(prompt) < steps:
        draft = propose(ctx, k=4)
        dists = [support(toy_logits(ctx + draft[:i]), params) for i in range(len(draft) + 1)]
        ctx.extend(accept(draft, dists, rng))
        verifies += 1
    return ctx[len(prompt) : len(prompt) + steps], verifies


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, top_k=5), SamplingParams(top_p=0.9)],
    ids=["greedy", "top_k", "top_p"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speculative_decoding_gives_the_plain_tokens(params, seed):
    prompt = [3, 1, 4, 1, 5]
    steps = 120
    tokens, verifies = decode_speculative(prompt, params, seed, steps)
    assert tokens == decode_plain(prompt, params, seed, steps)
    if params.greedy:
        assert verifies < steps / 2  # drafts were accepted: the comparison is not vacuous
    else:
        assert verifies < steps
