"""Sampling: pure functions from one row of logits to the next token.

Order and semantics follow Hugging Face's logits warpers (``TemperatureLogitsWarper``,
``TopKLogitsWarper``, ``TopPLogitsWarper``) and openai/gpt-2 ``src/sample.py``
(``top_k_logits``, ``top_p_logits``): temperature, then top-k, then top-p (nucleus: the smallest
set of most likely tokens whose probability reaches ``top_p``; the token that crosses the
threshold is kept).

Each request draws from its own ``numpy.random.Generator`` (seeded from its ``seed``), one uniform
number per token, so a seeded request gives the same tokens whatever else shares the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.errors import ParamError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy (argmax); otherwise logits are divided by it
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 = off
    seed: int | None = None  # None: the caller picks one (see ``resolve_seed``) so it can be reported
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the context (CTRL); 1 = off

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ParamError("temperature", f"must be a finite number >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ParamError("top_k", f"must be an integer >= 0, got {self.top_k}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ParamError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ParamError(
                "repetition_penalty", f"must be a finite number > 0, got {self.repetition_penalty}"
            )
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ParamError("seed", f"must be in [0, 2**64), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def resolve_seed(seed: int | None, entropy: np.random.Generator | None = None) -> int:
    """The seed a request will use: its own, or a fresh random one (reported back to the client)."""
    if seed is not None:
        return seed
    return int((entropy or np.random.default_rng()).integers(0, 2**63))


def make_rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def penalize_repetition(logits: np.ndarray, context: list[int], penalty: float) -> np.ndarray:
    """CTRL's repetition penalty as transformers' ``RepetitionPenaltyLogitsProcessor`` applies it:
    for every token present in ``context``, divide a positive logit by ``penalty`` and multiply a
    negative one. Returns a new array; ``penalty == 1`` returns ``logits`` itself."""
    if penalty == 1.0 or not context:
        return logits
    ids = np.unique(np.asarray(context, dtype=np.int64))
    out = logits.copy()
    seen = out[ids]
    out[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return out


def support(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The tokens a draw can return and their probabilities, most likely first.

    ``logits [V]`` -> ``(ids [K] int64, probs [K] float64)`` with ``probs`` summing to 1. Greedy
    parameters give the single argmax token. Ties are broken by the lower token id.
    """
    v = logits.shape[-1]
    if params.greedy or _overflows(logits, params.temperature):
        return np.array([int(np.argmax(logits))]), np.ones(1)
    if 0 < params.top_k < v:
        # argpartition alone picks arbitrary members of a tie at the k-th logit; take every token
        # above it, then the lowest ids among those equal to it.
        kth = np.partition(logits, v - params.top_k)[v - params.top_k]
        above = np.flatnonzero(logits > kth)
        ids = np.concatenate([above, np.flatnonzero(logits == kth)[: params.top_k - len(above)]])
    else:
        ids = np.arange(v)
    # Sort candidates by logit descending, then id ascending (deterministic ties).
    ids = ids[np.lexsort((ids, -logits[ids]))]
    return _tempered(ids, logits[ids], params)


def _tempered(ids: np.ndarray, ranked: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of candidates ``ids`` whose logits ``ranked`` are sorted most likely first:
    temperature, softmax over the candidates, then the top-p cut (renormalised)."""
    scaled = ranked.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if params.top_p < 1.0:
        cum = np.cumsum(probs)
        keep = min(int(np.searchsorted(cum, params.top_p, side="left")) + 1, len(ids))
        ids, probs = ids[:keep], probs[:keep] / cum[keep - 1]
    return ids, probs


def _overflows(logits: np.ndarray, temperature: float) -> bool:
    """A temperature so small (e.g. 1e-310) that ``logits / temperature`` is no longer finite."""
    if temperature == 0:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        return not np.isfinite(float(np.abs(logits).max()) / temperature)


def draw(ids: np.ndarray, probs: np.ndarray, u: float) -> int:
    """Inverse-CDF draw: the token whose cumulative-probability interval contains ``u`` in [0, 1)."""
    cum = np.cumsum(probs)
    return int(ids[min(int(np.searchsorted(cum, u * cum[-1], side="right")), len(ids) - 1)])


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token from ``logits [V]``. Consumes exactly one uniform number of ``rng`` per call,
    greedy included, so a request's random stream does not depend on its parameters' path."""
    return _choose(logits, params, float(rng.random()))


def _choose(logits: np.ndarray, params: SamplingParams, u: float) -> int:
    """The token ``sample`` returns for the uniform number ``u``: the reference for every path."""
    return draw(*distribution(logits, params), u)


def distribution(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, weights)`` that ``sample`` draws from by inverse CDF (weights need not sum to 1):
    the argmax for greedy parameters (or a temperature so small that logits/T overflows: its
    limit), every token in id order for plain sampling (no sort needed), else :func:`support`."""
    if params.greedy or _overflows(logits, params.temperature):
        return np.array([int(np.argmax(logits))]), np.ones(1)
    if params.top_k == 0 and params.top_p >= 1.0:
        scaled = logits.astype(np.float64) / params.temperature
        return np.arange(logits.shape[-1]), np.exp(scaled - scaled.max())
    return support(logits, params)


_TINY_TEMPERATURE = 1e-200  # below this |logit| / T may overflow float64 (float32 logits < 3.5e38)


def sample_batch(
    logits: np.ndarray,
    params: Sequence[SamplingParams],
    rngs: Sequence[np.random.Generator],
    *,
    top_ids: np.ndarray | None = None,
    top_logits: np.ndarray | None = None,
) -> np.ndarray:
    """One token per row of ``logits [N, V]``: row i gets exactly ``sample(logits[i], params[i],
    rngs[i])`` (each row draws one uniform number from its own generator), computed for the batch.

    Greedy rows are one argmax; plain-sampling rows (no top-k, no top-p) one vectorised
    inverse-CDF draw; top-k rows whose k fits the device's candidates (``top_ids``/``top_logits``
    ``[N, K]``, most likely first, ties by lower id: exactly the tokens ``support`` keeps) use them
    instead of sorting the vocabulary. Other rows (top-p without top-k, k > K) take ``sample``'s path.
    """
    n = logits.shape[0]
    u = np.array([rng.random() for rng in rngs], np.float64)
    out = np.empty(n, np.int64)
    greedy, plain, rest = [], [], []
    for i, p in enumerate(params):
        if p.greedy or (p.temperature < _TINY_TEMPERATURE and _overflows(logits[i], p.temperature)):
            greedy.append(i)
        elif p.top_k == 0 and p.top_p >= 1.0:
            plain.append(i)
        else:
            rest.append(i)
    if greedy:
        out[greedy] = np.argmax(logits[greedy], axis=1)
    if plain:
        temps = np.array([params[i].temperature for i in plain], np.float64)[:, None]
        scaled = logits[plain].astype(np.float64) / temps
        cum = np.cumsum(np.exp(scaled - scaled.max(axis=1, keepdims=True)), axis=1)
        target = u[plain] * cum[:, -1]
        out[plain] = np.minimum((cum <= target[:, None]).sum(axis=1), logits.shape[1] - 1)
    k_max = 0 if top_ids is None else top_ids.shape[1]
    for i in rest:
        p = params[i]
        if 0 < p.top_k <= k_max:
            ids, probs = _tempered(top_ids[i, : p.top_k].astype(np.int64), top_logits[i, : p.top_k], p)
            out[i] = draw(ids, probs, u[i])
        else:
            out[i] = _choose(logits[i], p, u[i])
    return out


def alternatives(
    logits: np.ndarray, n: int, temperature: float, *, top_ids: np.ndarray | None = None
) -> list[tuple[int, float]]:
    """The ``n`` most likely tokens of one row of ``logits`` and their log-probabilities under the
    distribution a token is drawn from before top-k/top-p truncation: ``softmax(logits / T)``
    (``T = 1`` for greedy decoding, whose own distribution is all on one token). Most likely
    first, ties by the lower id. ``top_ids`` (the row's ids ranked by logit, as the engine returns
    them) saves sorting the row; temperature does not change the ranking."""
    t = temperature if temperature > 0 else 1.0
    scaled = logits.astype(np.float64) / t
    lse = float(np.logaddexp.reduce(scaled))
    if top_ids is not None and len(top_ids) >= n:
        ids = np.asarray(top_ids[:n])
    else:
        n = min(n, len(scaled))
        nth = np.partition(scaled, len(scaled) - n)[len(scaled) - n]  # the n-th largest value
        candidates = np.flatnonzero(scaled >= nth)  # ties at the edge included, then cut by id
        ids = candidates[np.lexsort((candidates, -scaled[candidates]))][:n]
    return [(int(i), float(scaled[i] - lse)) for i in ids]
