"""Which kernels run each engine call on this machine, chosen by timing at warm-up and remembered.

An engine call runs in one of two *variants* (:mod:`app.engine.engine`):

* ``xla``: each block is one XLA program (matmuls in XLA's CPU dot, everything around them fused);
* ``onednn``: the block's matmuls, layer norms and GELU run as plain TensorFlow graph ops, whose
  matmul is oneDNN's on x86 (``TF_ENABLE_ONEDNN_OPTS``, on by default), and only the attention with
  its in-place cache update is an XLA program.

Which is faster depends on the CPU and the row count: on a 2-core AMD EPYC (AVX2) XLA's matmul won
at every size the roofline measured; on a Sapphire Rapids Xeon (AVX-512, AMX) oneDNN's was 1.3x
XLA's at 32 rows and, with bfloat16 weights (AMX), 2.2x float32, while XLA's bfloat16 dot was the
slowest of all. So ``kernels="auto"`` times both variants of every row class (decode rows, prefill
rows) on the model itself at warm-up and keeps the faster, XLA unless oneDNN wins by ``MARGIN``.
The plan is stored in a small JSON file keyed by everything that decides it (CPU model and flags,
core count, TensorFlow version, oneDNN switch, model shape, dtype), so only the first start pays;
an unreadable or stale file is ignored with a warning and measured again.

Half-precision weights on the CPU always take ``onednn`` (XLA's bfloat16 dot measured 3-6x slower
than its float32 one); on a GPU both variants would run cuBLAS, so the plan is ``xla`` there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

VARIANTS = ("xla", "onednn")
MARGIN = 0.05  # oneDNN is kept only when at least this much faster than XLA
KINDS = ("decode", "prefill")
# CPU flags that change which kernels win (the rest are common to every x86-64 machine here).
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # a native bfloat16 matmul: without them it is emulated


@dataclass(frozen=True)
class KernelPlan:
    """The variant of each row class: ``decode`` by decode rows, ``prefill`` by padded rows (pieces
    x piece length). A call of ``r`` rows takes the class of the smallest measured size >= r."""

    decode: Mapping[int, str] = field(default_factory=dict)
    prefill: Mapping[int, str] = field(default_factory=dict)
    reason: str = "XLA everywhere (the default)"
    timings: Mapping[str, Mapping[int, Mapping[str, float]]] = field(default_factory=dict)  # ms
    fixed: str | None = "xla"  # one variant for every call, or None (per class, as measured)

    def variant(self, kind: str, rows: int) -> str:
        if self.fixed:
            return self.fixed
        classes = self.decode if kind == "decode" else self.prefill
        sizes = sorted(classes)
        return classes[next((s for s in sizes if s >= rows), sizes[-1])]

    def as_dict(self) -> dict:
        return {
            "fixed": self.fixed,
            "reason": self.reason,
            "decode": {str(k): v for k, v in sorted(self.decode.items())},
            "prefill": {str(k): v for k, v in sorted(self.prefill.items())},
            "timings_ms": {
                kind: {str(r): dict(t) for r, t in sorted(rows.items())}
                for kind, rows in self.timings.items()
            },
        }

    def summary(self) -> str:
        """One line for the start-up log and ``/models``."""
        if self.fixed:
            return f"{self.fixed} ({self.reason})"
        parts = [
            f"{kind} " + ", ".join(f"{r}:{v}" for r, v in sorted(getattr(self, kind).items()))
            for kind in KINDS
        ]
        return f"{'; '.join(parts)} ({self.reason})"


def fixed(variant: str, reason: str) -> KernelPlan:
    if variant not in VARIANTS:
        raise ValueError(f"kernels must be one of {', '.join(VARIANTS)} or auto, got {variant!r}")
    return KernelPlan(reason=reason, fixed=variant)


def choose(timings: Mapping[str, Mapping[int, Mapping[str, float]]], reason: str) -> KernelPlan:
    """The plan that keeps, per class, oneDNN where it beat XLA by ``MARGIN`` and XLA elsewhere."""

    def pick(t: Mapping[str, float]) -> str:
        return "onednn" if t["onednn"] < t["xla"] * (1 - MARGIN) else "xla"

    by_kind = {kind: {rows: pick(t) for rows, t in timings.get(kind, {}).items()} for kind in KINDS}
    return KernelPlan(by_kind["decode"], by_kind["prefill"], reason, timings, fixed=None)


# ---- the machine ----


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of :data:`KERNEL_FLAGS` it has ("?" and () when unknown)."""
    try:
        text = path.read_text()
    except OSError:
        return "?", ()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line), "?")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    have = set(re.findall(r"\S+", flags_line.split(":", 1)[-1]))
    return model, tuple(f for f in KERNEL_FLAGS if f in have)


def cpu_summary(path: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model and every AVX-512 / AMX flag it has, as ``grep -o 'avx512[^ ]*\\|amx[^ ]*'
    /proc/cpuinfo | sort -u`` prints them: the line benchmarks print beside their tables."""
    model = cpu_info(path)[0]
    try:
        text = path.read_text()
    except OSError:
        text = ""
    flags = sorted(set(re.findall(r"\b(avx512\w*|amx\w*)", text)))
    return f"{model}; flags: {' '.join(flags) or 'no avx512/amx'}"


def bf16_native(flags: tuple[str, ...]) -> bool:
    return any(f in flags for f in BF16_FLAGS)


def machine_key(extra: Mapping) -> dict:
    """Everything the timing of kernels depends on, beside the model's own ``extra``."""
    import tensorflow as tf

    model, flags = cpu_info()
    return {
        "cpu": model,
        "flags": list(flags),
        "cores": os.cpu_count(),
        "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        **extra,
    }


# ---- the cache file ----


def cache_file(folder: Path, key: Mapping) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"kernels-{digest}.json"


def load(folder: Path | None, key: Mapping) -> KernelPlan | None:
    """The plan stored for ``key`` in ``folder``, or None (nothing stored, or a file that cannot be
    used: warned and ignored)."""
    if folder is None:
        return None
    path = cache_file(folder, key)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data["key"] != json.loads(json.dumps(key)):
            raise ValueError("it was measured for another machine or model")
        return _plan_of(data, path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the kernel plan in %s (%s); measuring again", path, exc)
        return None


def _plan_of(data: Mapping, path: Path) -> KernelPlan:
    """The plan of a stored file's contents (its timings decide it again)."""
    stored = data["plan"]["timings_ms"]
    timings = {
        kind: {int(r): {v: float(t[v]) for v in VARIANTS} for r, t in stored[kind].items()} for kind in KINDS
    }
    if any(not rows for rows in timings.values()):
        raise ValueError("it has no timings")
    return choose(timings, f"measured at an earlier start, kept in {path}")


def stored_here(folder: Path) -> list[tuple[Mapping, KernelPlan]]:
    """The plans kept in ``folder`` that were measured on this machine (same CPU, flags, cores,
    TensorFlow): ``(key, plan)`` pairs, for ``gpt2-serve devices``. Unusable files are skipped."""
    here = machine_key({})
    out = []
    for path in sorted(folder.glob("kernels-*.json")):
        try:
            data = json.loads(path.read_text())
            if any(data["key"].get(k) != v for k, v in json.loads(json.dumps(here)).items()):
                continue
            out.append((data["key"], _plan_of(data, path)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def save(folder: Path | None, key: Mapping, plan: KernelPlan) -> Path | None:
    """Store ``plan`` for ``key``; a folder that cannot be written is warned about, not fatal."""
    if folder is None:
        return None
    path = cache_file(folder, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "plan": plan.as_dict()}, indent=1, sort_keys=True))
        tmp.replace(path)
        return path
    except OSError as exc:
        log.warning("cannot keep the kernel plan in %s (%s): the next start measures again", folder, exc)
        return None
