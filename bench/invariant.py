"""What batch-invariant mode costs (issue 18 §6): generation tokens/s with and without it.

Run: ``make bench-invariant`` (or ``.venv/bin/python bench/invariant.py [--streams 1,8,32]
[--prompt 32] [--new 64] [--tiny]``).

The batcher of each mode (``EngineConfig(batch_invariant=...)``, 32 slots, GPT-2 124M shape,
random weights ``random_params(seed=0)``, float32, XLA kernels) generates ``--new`` tokens for N
seeded streams at once (prompts of ``--prompt`` tokens), after one untimed run of the same
requests (which compiles what they need). Tokens/s = N x new / wall time, prefill included; best
of 2. The mode runs a lone stream's decode as two rows and prefills prompts one per call, so
its cost is largest for one stream and for bursts of short prompts. CPU flags and load average
are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine import kernels  # noqa: E402
from app.engine.batcher import generate  # noqa: E402
from app.engine.engine import Engine, EngineConfig  # noqa: E402
from app.engine.sampling import SamplingParams  # noqa: E402
from app.engine.spec import GenerationSpec  # noqa: E402
from app.model.hparams import PRESETS, HParams  # noqa: E402
from app.model.random_init import random_params  # noqa: E402


def rate(engine: Engine, n: int, prompt: int, new: int) -> float:
    rng = np.random.default_rng(n)
    prompts = [rng.integers(0, engine.hp.n_vocab, size=prompt).tolist() for _ in range(n)]

    def run() -> float:
        seqs = [
            GenerationSpec(p, new, SamplingParams(temperature=0.8, top_k=40, seed=i), stop_at_eos=False)
            for i, p in enumerate(prompts)
        ]
        t0 = time.perf_counter()
        generate(engine, seqs, eos_id=None)
        return n * new / (time.perf_counter() - t0)

    run()
    return max(run() for _ in range(2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (quick check)")
    args = ap.parse_args()
    hp = HParams(n_vocab=50257, n_ctx=1024, n_embd=64, n_head=4, n_layer=2) if args.tiny else PRESETS["124M"]
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    params = random_params(hp, seed=0)
    config = EngineConfig(slots=32)
    engines = {mode: Engine(hp, params, replace(config, batch_invariant=mode)) for mode in (False, True)}
    rows = []
    for n in (int(s) for s in args.streams.split(",")):
        fast, inv = (rate(engines[mode], n, args.prompt, args.new) for mode in (False, True))
        rows.append(f"| {n} | {fast:.1f} | {inv:.1f} | {inv / fast:.2f}x |")
    print(
        f"\n{'tiny 2-layer' if args.tiny else 'GPT-2 124M shape'}, random weights, float32, 32 slots;"
        f" prompt {args.prompt}, {args.new} new tokens, top-k 40, seeded"
    )
    print(f"CPU: {kernels.cpu_summary()}\n")
    print("| streams | default tok/s | batch-invariant tok/s | invariant / default |")
    print("|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\nload average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
