"""Memory plan of a worker, computed before anything is loaded.

Weights: every parameter once (the output projection is tied to ``wte``). Cache: keys and values
for every layer, slot and position (plus the scratch row, see :mod:`app.engine.gpt2`):
``n_layer * 2 * (n_ctx + 1) * n_embd`` values per slot. For GPT-2 124M in float32 that is
0.50 GB of weights and 75 MB per slot; 1558M is 6.2 GB of weights and 0.6 GB per slot, which is
why it does not fit a 6 GB card in float32 at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from app.model.hparams import HParams

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Activations, compiled code and allocator slack: a fixed part plus a share of the weights.
OVERHEAD_FIXED = 256 * 2**20
OVERHEAD_SHARE = 0.10


@dataclass(frozen=True)
class MemoryPlan:
    dtype: str
    slots: int
    weights_bytes: int
    cache_bytes_per_slot: int
    overhead_bytes: int

    @property
    def cache_bytes(self) -> int:
        return self.slots * self.cache_bytes_per_slot

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes + self.overhead_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "cache_bytes": self.cache_bytes, "total_bytes": self.total_bytes}


class InsufficientMemory(ValueError):
    """The plan does not fit the device; the message says what would."""


def plan(hp: HParams, *, slots: int, dtype: str = "float32") -> MemoryPlan:
    size = BYTES[dtype]
    weights = hp.n_params() * size
    per_slot = hp.n_layer * 2 * (hp.n_ctx + 1) * hp.n_embd * size
    overhead = OVERHEAD_FIXED + int(OVERHEAD_SHARE * weights)
    return MemoryPlan(dtype, slots, weights, per_slot, overhead)


def max_slots(hp: HParams, *, dtype: str, available: int) -> int:
    """Most slots that fit in ``available`` bytes with this dtype (0 if not even the weights do)."""
    p = plan(hp, slots=0, dtype=dtype)
    return max(0, (available - p.total_bytes) // p.cache_bytes_per_slot)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(p: MemoryPlan, hp: HParams, *, available: int, where: str) -> None:
    """Raise :class:`InsufficientMemory` unless ``p`` fits in ``available`` bytes on ``where``."""
    if p.total_bytes <= available:
        return
    options = []
    for dtype in BYTES:
        n = max_slots(hp, dtype=dtype, available=available)
        if n >= 1:
            options.append(f"{dtype} with up to {n} slot{'s' if n > 1 else ''}")
    hint = "would fit: " + "; ".join(options) if options else "no dtype fits even with one slot"
    raise InsufficientMemory(
        f"{where} has {gib(available)} free but the model needs {gib(p.total_bytes)} "
        f"({p.dtype}: weights {gib(p.weights_bytes)} + {p.slots} slots x {gib(p.cache_bytes_per_slot)} "
        f"cache + {gib(p.overhead_bytes)} overhead); {hint}"
    )


def default_slots(hp: HParams, *, dtype: str, available: int, cap: int = 32) -> int:
    """Slots to use when none are configured: up to ``cap``, using at most half the memory left after
    the weights, at least 1."""
    p = plan(hp, slots=0, dtype=dtype)
    spare = max(0, available - p.total_bytes) // 2
    return max(1, min(cap, spare // p.cache_bytes_per_slot))


def startup_slots(hp: HParams, *, dtype: str, configured: int | None, available: int | None) -> int:
    """Slots a worker starts with: the configured count, else sized from free memory
    (:func:`default_slots`), else 8 when the free memory cannot be told; ``dtype="auto"`` is sized
    as float32 (the larger weights). The one rule: :func:`app.runtime.load.load_model`, ``gpt2-serve
    plan`` and ``devices`` all call it."""
    if configured is not None:
        return configured
    sized_as = "float32" if dtype == "auto" else dtype
    return default_slots(hp, dtype=sized_as, available=available) if available else 8


def parse_size(text: str) -> int:
    """``6GiB``, ``6G`` (binary), ``6GB`` (decimal), ``512MiB``, ``1.5TiB`` or plain bytes -> bytes."""
    units = {
        "": 1,
        "k": 2**10,
        "kib": 2**10,
        "kb": 10**3,
        "m": 2**20,
        "mib": 2**20,
        "mb": 10**6,
        "g": 2**30,
        "gib": 2**30,
        "gb": 10**9,
        "t": 2**40,
        "tib": 2**40,
        "tb": 10**12,
    }
    raw = text.strip().replace(" ", "")
    number = raw.rstrip("kKmMgGtTiIbB")
    unit = raw[len(number) :].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise ValueError(f"memory size {text!r} is not a size such as 6GiB, 8GB or 512MiB")
    return int(value * units[unit])
