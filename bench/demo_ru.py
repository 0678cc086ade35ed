"""What a tokenizer of its own buys the Russian demo (``make demo-ru``, then ``make bench-demo-ru``).

Two models of the same shape trained the same number of steps on the same fortunes
(``bench/russian_fortunes.py``): ``model_store/demo-ru`` on a byte-level BPE trained on them
(``gpt2-serve tokenizer train``), and its twin on GPT-2's own English BPE. On the held-out
fortunes (never trained on) it measures:

* tokens per character of each tokenizer;
* bits per character of each model: the summed negative log-likelihood of every held-out fortune
  (each one a document after ``<|endoftext|>``, as trained; a fortune longer than the context is
  scored in windows of ``n_ctx`` tokens that overlap by half, each token scored once, with at least
  half a window before it), divided by its characters and ln 2;
* characters per second through the server: the same greedy ``POST /generate`` (prompt, 200 new
  tokens) to each model served alone, the best of ``--repeat`` runs;
* samples: the same prompts, sampled (top-k 40, seed 0), from both.

It prints the table with the machine's CPU flags and the load average before and after, and with
``--card`` writes it into the demo's MODEL_CARD.md between the ``bench/demo_ru.py`` markers.

Run: ``python bench/demo_ru.py --heldout build/demo-ru/heldout.jsonl --twin build/demo-ru/gpt2-bpe``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from app.client.process import serve_process  # noqa: E402
from app.engine.gpt2 import forward_full  # noqa: E402
from app.model.loader import load_weights  # noqa: E402
from app.tokenizer.load import load_tokenizer  # noqa: E402

PROMPTS = ["Жизнь — это", "Программист", "Любовь"]
BEGIN, END = "<!-- bench/demo_ru.py: begin -->", "<!-- bench/demo_ru.py: end -->"


def heldout(path: Path) -> list[str]:
    return [
        json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def bits_per_char(model_dir: Path, texts: list[str]) -> tuple[float, float]:
    """(bits per character, tokens per character) of ``texts`` under the model in ``model_dir``.
    Windows are right-padded to ``n_ctx`` (a causal model's earlier positions do not see the
    padding) and run 32 at a time, so one program serves them all."""
    enc = load_tokenizer(model_dir)
    hp, params = load_weights(model_dir)
    w = {k: tf.constant(v) for k, v in params.items()}

    @tf.function
    def logprobs(t: tf.Tensor) -> tf.Tensor:
        """Log-probability of each next token of ``t`` under the model: ``[B, n_ctx - 1]``."""
        lp = tf.nn.log_softmax(forward_full(w, t, hp=hp)[:, :-1])
        return tf.gather(lp, t[:, 1:], batch_dims=2)

    n, half = hp.n_ctx, hp.n_ctx // 2
    windows: list[tuple[list[int], int]] = []  # (window, first position in it to score)
    chars = tokens = 0
    for text in texts:
        ids = [enc.eot_token, *enc.encode(text)]
        chars += len(text)
        tokens += len(ids) - 1
        start, scored = 0, 1  # ids[scored:] are still to be scored
        while scored < len(ids):
            window = ids[start : start + n]
            windows.append((window, max(scored, start + 1) - start))
            scored = start + len(window)
            start += half
    nll = 0.0
    for g in range(0, len(windows), 32):
        group = windows[g : g + 32]
        batch = np.zeros([len(group), n], np.int32)
        for row, (window, _) in enumerate(group):
            batch[row, : len(window)] = window
        lp = logprobs(tf.constant(batch)).numpy().astype(np.float64)
        for row, (window, first) in enumerate(group):
            nll -= float(np.sum(lp[row, first - 1 : len(window) - 1]))
    return nll / chars / math.log(2), tokens / chars


def served_chars_per_second(model_dir: Path, repeat: int) -> tuple[float, str]:
    """Greedy 200 new tokens after the first prompt, best of ``repeat`` (after one untimed run)."""
    body = {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 200, "speculative": False}}
    with serve_process(model_dir, "--slots", "1") as srv, httpx.Client(base_url=srv.url, timeout=300) as http:
        http.post("/generate", json=body).raise_for_status()
        best, text = 0.0, ""
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = http.post("/generate", json=body)
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            text = r.json()["generated_text"]
            best = max(best, len(text) / elapsed)
    return best, text


def samples(model_dir: Path) -> list[str]:
    out = []
    with serve_process(model_dir, "--slots", "1") as srv, httpx.Client(base_url=srv.url, timeout=300) as http:
        for prompt in PROMPTS:
            params = {"max_new_tokens": 60, "do_sample": True, "top_k": 40, "seed": 0}
            r = http.post("/generate", json={"inputs": prompt, "parameters": params})
            r.raise_for_status()
            out.append(prompt + r.json()["generated_text"])
    return out


def machine() -> str:
    flags = subprocess.run(
        "grep -o 'avx512[^ ]*\\|amx[^ ]*' /proc/cpuinfo | sort -u", shell=True, capture_output=True, text=True
    ).stdout.split()
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    return f"{model}, {os.cpu_count()} cores; AVX-512/AMX flags: {' '.join(flags) or 'none'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "model_store/demo-ru")
    ap.add_argument("--twin", type=Path, default=ROOT / "build/demo-ru/gpt2-bpe", help="the GPT-2-BPE twin")
    ap.add_argument("--heldout", type=Path, default=ROOT / "build/demo-ru/heldout.jsonl")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--card", action="store_true", help="write the results into the model's MODEL_CARD.md")
    args = ap.parse_args(argv)
    texts = heldout(args.heldout)
    before = os.getloadavg()
    rows = {}
    for name, path in (("own BPE (demo-ru)", args.model), ("GPT-2's BPE (twin)", args.twin)):
        bpc, tpc = bits_per_char(path, texts)
        cps, _ = served_chars_per_second(path, args.repeat)
        rows[name] = (tpc, bpc, cps, samples(path), load_tokenizer(path).n_vocab)
    after = os.getloadavg()
    hp = json.loads((args.model / "hparams.json").read_text())
    lines = [
        f"Held-out: {len(texts)} fortunes, {sum(map(len, texts))} characters (every 20th, never trained on). "
        f"Both models: {hp['n_layer']} layers, {hp['n_embd']} wide, {hp['n_head']} heads, context {hp['n_ctx']}, "
        "the same training steps and data; only the tokenizer (and so the embedding's rows) differs.",
        "",
        "| tokenizer | vocabulary | tokens per character | bits per character | characters/s served (greedy, 200 tokens) |",
        "|---|---|---|---|---|",
        *(f"| {name} | {r[4]} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.0f} |" for name, r in rows.items()),
        "",
        f"Machine: {machine()}; load average before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, "
        f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}. Command: `make bench-demo-ru` "
        f"(`python bench/demo_ru.py`), {time.strftime('%Y-%m-%d')}.",
        "",
        "Samples (top-k 40, seed 0, 60 new tokens):",
        "",
    ]
    for name, r in rows.items():
        lines += [f"*{name}*:", ""] + [f"> {s.replace(chr(10), ' / ')}" for s in r[3]] + [""]
    table = "\n".join(lines).rstrip() + "\n"
    print(table)
    if args.card:
        card = args.model / "MODEL_CARD.md"
        text = card.read_text(encoding="utf-8")
        block = f"{BEGIN}\n{table}{END}"
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip() + "\n\n## What its own tokenizer buys\n\n" + block + "\n"
        card.write_text(text, encoding="utf-8")
        print(f"written into {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
