"""`gpt2-serve plan`: how GPT-2 sizes fit a device: weights, KV cache per slot, slots, yes or no.

The numbers come from :mod:`app.engine.memory`, the same calculation that sizes and checks a
worker when the server starts (``GPT2_SLOTS`` unset: slots from free memory, at most 32), so the
plan and the server agree. ``--gpu-memory`` is the memory the server will find free: on a real
card that is its size less the CUDA context and anything else running (a few hundred MiB).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from app.cli.model_hparams import model_hparams
from app.engine import memory

DTYPES = tuple(memory.BYTES)


@dataclass(frozen=True)
class PlanRow:
    memory_bytes: int
    model: str
    dtype: str
    weights_bytes: int
    cache_bytes_per_slot: int
    overhead_bytes: int
    max_slots: int  # most slots that fit; 0: not even the weights do
    slots: int  # what the server starts with (configured, else sized from memory)
    total_bytes: int  # weights + slots x cache + overhead
    fits: bool


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="memory plan: which GPT-2 sizes fit a GPU, with how many slots",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    p.add_argument(
        "--models",
        default="124M,355M,774M,1558M",
        help="comma-separated GPT-2 sizes, model names or folders (default: all four sizes)",
    )
    p.add_argument(
        "--models-dir", default="model_store", help="folder of model folders (default model_store)"
    )
    p.add_argument(
        "--gpu-memory",
        required=True,
        metavar="SIZE[,SIZE...]",
        help="free device memory, e.g. 6GiB or 6GiB,8GiB,24GiB (GiB/G binary, GB decimal)",
    )
    p.add_argument(
        "--dtype",
        default=",".join(DTYPES),
        metavar="DTYPE[,DTYPE...]",
        help=f"dtypes to plan (default: {','.join(DTYPES)})",
    )
    p.add_argument(
        "--slots",
        type=int,
        default=None,
        metavar="N",
        help="plan N slots (GPT2_SLOTS) instead of sizing them from memory",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("--markdown", action="store_true", help="a Markdown table (docs/memory-plan.md)")
    p.set_defaults(func=run)


def plan_row(name: str, hp, dtype: str, available: int, slots: int | None) -> PlanRow:
    n = memory.startup_slots(hp, dtype=dtype, configured=slots, available=available)
    p = memory.plan(hp, slots=n, dtype=dtype)
    most = memory.max_slots(hp, dtype=dtype, available=available)
    return PlanRow(
        available,
        name,
        dtype,
        p.weights_bytes,
        p.cache_bytes_per_slot,
        p.overhead_bytes,
        most,
        n,
        p.total_bytes,
        p.total_bytes <= available,
    )


def build_rows(args: argparse.Namespace) -> list[PlanRow]:
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        raise ValueError(f"--dtype {args.dtype!r}: choose from {', '.join(DTYPES)}")
    if args.slots is not None and args.slots < 1:
        raise ValueError("--slots must be at least 1")
    sizes = [memory.parse_size(s) for s in args.gpu_memory.split(",") if s.strip()]
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    hparams = {name: model_hparams(name, args.models_dir)[0] for name in names}
    return [
        plan_row(name, hparams[name], dtype, size, args.slots)
        for size in sizes
        for name in names
        for dtype in dtypes
    ]


def human(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MiB"


HEADER = (
    "memory",
    "model",
    "dtype",
    "weights",
    "KV cache/slot",
    "max slots",
    "slots at start",
    "total",
    "fits",
)


def cells(r: PlanRow) -> tuple[str, ...]:
    fits = "yes" if r.fits else ("no: weights alone too big" if r.max_slots == 0 else "no")
    return (
        human(r.memory_bytes),
        r.model,
        r.dtype,
        human(r.weights_bytes),
        human(r.cache_bytes_per_slot),
        str(r.max_slots),
        str(r.slots),
        human(r.total_bytes),
        fits,
    )


def render_text(rows: list[PlanRow]) -> str:
    table = [HEADER, *(cells(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def render_markdown(rows: list[PlanRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = build_rows(args)
    if args.json:
        print("\n".join(json.dumps(asdict(r)) for r in rows))
    else:
        print(render_markdown(rows) if args.markdown else render_text(rows))
    return 0
