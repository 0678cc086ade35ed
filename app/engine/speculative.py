"""Prompt-lookup speculative decoding: the drafting and the acceptance rule, as pure functions.

At batch 1 a decode step reads every weight to produce one token. Speculative decoding drafts k
tokens cheaply, has the model score all of them in one forward of k+1 rows (a small matrix product
instead of k+1 matrix-vector products), and keeps the longest prefix the model agrees with, plus one
token of its own. Output follows exactly the model's distribution whatever the draft, so a bad draft
costs time, never correctness.

Drafting (``propose``) is prompt-lookup decoding (A. Saxena, "Prompt Lookup Decoding", 2023,
github.com/apoorvumang/prompt-lookup-decoding; transformers' ``PromptLookupCandidateGenerator``):
no draft model, the draft is what followed an earlier occurrence of the context's last n tokens.
It pays on repetitive text (lists, code, quoting the prompt, a small model's loops) and costs one
wasted verify on text that does not repeat.

Acceptance (``accept``) is speculative sampling (Leviathan, Kalman & Matias, "Fast Inference from
Transformers via Speculative Decoding", ICML 2023; Chen et al., "Accelerating Large Language Model
Decoding with Speculative Sampling", 2023) with a deterministic draft, i.e. a draft distribution q
that is a point mass on each drafted token x. Their rule then reads: accept x with probability
min(1, p(x) / q(x)) = p(x); on rejection emit a token from norm(max(0, p - q)), which is p with x
removed and renormalised; after k acceptances emit a bonus token from p_{k+1}.

We realise that rule with one uniform number per emitted token: at position i draw
t = draw(p_i, u_i) by inverse CDF, emit t, and continue only if t == x_i. The event t == x_i is u_i
falling in x_i's CDF interval, of length p_i(x_i), so x_i is accepted with probability p_i(x_i); and
given a rejection u_i is uniform outside that interval, so t follows p_i with x_i removed and
renormalised: the rule above, with the uniforms coupled so that (this is the point) the emitted
tokens are exactly those plain decoding draws from the same random stream: with a seeded request,
speculation on or off gives the same tokens, not merely the same distribution, and greedy output is
plain greedy output. transformers verifies prompt-lookup drafts the same way (sample every position
from the target, keep the prefix that matches the draft).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.engine.sampling import draw

Dist = tuple[np.ndarray, np.ndarray]  # (ids [K] int64, probs [K] float64), as sampling.support returns


def propose(context: Sequence[int], *, max_ngram: int = 3, min_ngram: int = 1, k: int = 4) -> list[int]:
    """Up to ``k`` draft tokens for ``context [L]``: what followed an earlier occurrence of its suffix.

    For n from ``max_ngram`` down to ``min_ngram`` (a longer match is better evidence), look for the
    last n tokens earlier in ``context``, and take the first n that has an occurrence. Among that n's
    occurrences the most recent is chosen (transformers takes the earliest): it reflects the text's
    current state (the latest item of a list, the latest edit of repeated code), and when the text
    is looping it is the copy just before the suffix, whose continuation is the loop itself.

    The suffix itself (the occurrence ending at the final position) never counts, so every match has
    at least one token after it. When the match lies fewer than ``k`` tokens before the end, the
    continuation runs into the suffix and on into the draft itself, as an LZ77 copy: draft[i] is
    (context + draft)[j + n + i] for match start j. For a period-d loop that is the loop continued,
    k tokens, where stopping at the end of ``context`` would draft only d. So the result is either
    empty (no match, or ``k == 0``) or exactly ``k`` tokens, and each one follows an occurrence of
    the suffix in ``context + draft``.

    O(L * max_ngram) vectorised; pure and deterministic.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not 1 <= min_ngram <= max_ngram:
        raise ValueError(
            f"need 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram}, max_ngram={max_ngram}"
        )
    a = np.asarray(context, dtype=np.int64)
    total = len(a)
    if k == 0:
        return []
    for n in range(min(max_ngram, total - 1), min_ngram - 1, -1):
        # Candidate starts j in [0, total - n - 1]: a[j : j + n] ends before the suffix's last token.
        hit = np.ones(total - n, dtype=bool)
        for t in range(n):
            hit &= a[t : t + total - n] == a[total - n + t]
        starts = np.flatnonzero(hit)
        if starts.size:
            src = int(starts[-1]) + n  # first token after the match; < total
            out: list[int] = []
            for i in range(k):
                out.append(int(a[src + i]) if src + i < total else out[src + i - total])
            return out
    return []


def accept(draft: Sequence[int], dists: Sequence[Dist], rng: np.random.Generator) -> list[int]:
    """Verify ``draft [k]`` against the target distributions; the tokens to emit, 1 to k+1 of them.

    ``dists [k+1]``: ``dists[i] = (ids, probs)`` is the target's sampling distribution for the token
    after ``context + draft[:i]`` (after temperature, top-k, top-p, penalties), as
    ``sampling.support`` gives it; greedy parameters give one id with probability 1. ``dists`` may be
    a lazy sequence: only ``dists[0 .. len(result) - 1]`` are read, in order.

    Emitted token i is ``draw(*dists[i], u_i)`` with u_i the i-th uniform of ``rng``, and the walk
    stops at the first emitted token that differs from the draft (the replacement) or after the
    bonus token ``dists[k]``. Consumes exactly ``len(result)`` uniforms, one per emitted token, as
    plain sampling does, so the rng stays aligned with plain decoding. See the module docstring for
    why this is Leviathan et al.'s rule with q a point mass. Edge cases follow: p_i(x_i) == 1 is
    always accepted, x_i outside the support is always rejected with the replacement drawn from p_i
    unchanged, an empty draft emits one token from ``dists[0]``.
    """
    if len(dists) != len(draft) + 1:
        raise ValueError(f"need len(draft) + 1 = {len(draft) + 1} distributions, got {len(dists)}")
    out: list[int] = []
    for i in range(len(draft) + 1):
        ids, probs = dists[i]
        token = draw(ids, probs, float(rng.random()))
        out.append(token)
        if i == len(draft) or token != draft[i]:
            break
    return out
