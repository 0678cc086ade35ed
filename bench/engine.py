"""Engine throughput benchmark: this engine vs llama.cpp and Hugging Face transformers on the CPU.

Run: ``make bench-engine`` (or ``.venv/bin/python bench/engine.py [--quick] [--skip-llama] [--skip-hf]``).

Set-up (same process for ours and transformers, same weights everywhere)
  * GPT-2 124M shape (``PRESETS["124M"]``), random weights ``random_params(hp, seed=0)``, float32.
    transformers gets the same arrays through a state dict keyed by ``hf_key`` (as
    ``tests/support/hf_reference.py`` builds it), with its default attention implementation (SDPA).
    llama.cpp (``bench/llamacpp.py``: commit 0c1e570 from the llama-cpp-python 0.3.36 sdist, built
    with ``-DGGML_NATIVE=ON`` into ``build/``) gets them converted to an f32 GGUF by its own
    ``convert_hf_to_gguf.py``, and runs ``llama-bench`` / ``llama-batched-bench`` with 2 threads.
  * Prompts: ``--prompt-tokens`` (128) random ids from ``default_rng(1234)``, one per sequence;
    ``--new-tokens`` (128) new tokens each, sampled with top-k 40, temperature 1, no EOS stop.
  * Threads are left at each framework's default (TensorFlow and torch: the 2 cores); on a shared
    machine torch's OpenMP threads suffer far more than their share, so compare on an idle machine.

Measurements (``time.perf_counter``; for each batch size ours runs first, then transformers)
  * Ours at batch B: a fresh ``Engine(EngineConfig(slots=B))``, one untimed run that compiles
    every shape the timed run uses (checked: the timed run traces nothing), then B sequences
    admitted at once and ``Batcher.step`` until all are done. "generate" = B * N / wall time,
    prefill included (prompts are prefilled together, a prefill call per round); "decode" = the
    tokens of the rounds that ran no prefill / their time (llama-batched-bench's ``S_TG``, and
    llama-bench's ``tg`` at depth P for batch 1, measure the same thing).
  * transformers: ``model.generate(ids [B, P], do_sample=True, top_k=40, max_new_tokens=N,
    min_new_tokens=N)`` after an untimed warm-up; its figure includes prefill.
  * Prefill tokens/s at batch 1: ``--prefill-repeats`` (8) prompts after a warm-up, P * n / time;
    time to first token = prefill + sampling (median). llama.cpp: ``llama-bench -p P``.
  * Speculative decoding (batch 1, prompt lookup, 4 drafted tokens) against plain decoding on a
    repetitive prompt decoded greedily and on a random prompt sampled with top-k.
  * ``--repeats k`` times every generation measurement k times and keeps the fastest.

Targets (issue 8), ratios from one run: decode >= 0.8x llama.cpp at batch 1, >= 1.0x at 8,
>= 1.2x at 32, prefill >= 1.5x; >= 2x transformers at every batch size. For where each part of a
step stands against its kernel ceiling, run ``make bench-roofline``.

Timings are wall-clock on whatever else the machine is doing: the load average is printed before
and after so a noisy run can be recognised.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without the editable install
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from app.engine.batcher import Batcher  # noqa: E402
from app.engine.engine import Engine, EngineConfig  # noqa: E402
from app.engine.sampling import SamplingParams, make_rng, sample  # noqa: E402
from app.engine.spec import GenerationSpec  # noqa: E402
from app.model.hparams import PRESETS, HParams  # noqa: E402
from app.model.random_init import random_params  # noqa: E402

EOS = 50256
TOP_K = 40
PROMPT_SEED = 1234
LLAMA_TARGETS = {1: 0.8, 8: 1.0, 32: 1.2, "prefill": 1.5}  # issue 8: ours / llama.cpp, same run
HF_TARGET = 2.0  # issue 8: ours / transformers at every batch size


@dataclass
class GenResult:
    tokens_per_s: float
    seconds: float
    decode_tokens_per_s: float | None = None  # ours only: after all prompts were admitted


@dataclass
class PrefillResult:
    tokens_per_s: float
    ttft_s: float  # median time to first token


# ---------------------------------------------------------------------------------------------
# set-up and machine info


def make_prompts(hp: HParams, batch: int, length: int) -> np.ndarray:
    """``[batch, length]`` random token ids, excluding <|endoftext|>; row i is the same for any batch."""
    rng = np.random.default_rng(PROMPT_SEED)
    return rng.integers(0, hp.n_vocab - 1, size=(batch, length), dtype=np.int64)


def machine_info(hf: bool) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    lines = [
        f"- machine: {platform.node()}, {cpu}; nproc {len(os.sched_getaffinity(0))} "
        f"(cpu_count {os.cpu_count()}); load average {load_average()}",
        f"- python {platform.python_version()}, numpy {np.__version__}, tensorflow {tf.__version__}, "
        f"git {commit}",
        f"- TensorFlow threads: intra-op {intra or f'default ({os.cpu_count()})'}, "
        f"inter-op {inter or 'default'}; XLA JIT on (EngineConfig.jit_compile)",
    ]
    if hf:
        import torch
        import transformers

        lines.append(
            f"- torch {torch.__version__}, transformers {transformers.__version__}; torch threads: "
            f"intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}"
        )
    return lines


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------------
# our engine


def build_engine(hp: HParams, params: dict[str, np.ndarray], slots: int, speculative: int = 0) -> Engine:
    return Engine(hp, params, EngineConfig(slots=slots, dtype="float32", speculative_tokens=speculative))


def make_sequences(prompts: np.ndarray, new_tokens: int, *, greedy: bool = False) -> list[GenerationSpec]:
    params = [
        SamplingParams(temperature=0) if greedy else SamplingParams(top_k=TOP_K, seed=i)
        for i in range(len(prompts))
    ]
    return [
        GenerationSpec([int(t) for t in p], new_tokens, sp, stop_at_eos=False)
        for p, sp in zip(prompts, params)
    ]


def ours_generate_once(engine: Engine, prompts: np.ndarray, new_tokens: int, **kw) -> GenResult:
    """One timed run of ``prompts`` through the batcher; decode-only counts the rounds with no prefill."""
    seqs = make_sequences(prompts, new_tokens, **kw)
    batcher = Batcher(engine, eos_id=EOS)
    decode_s, decode_tokens = 0.0, 0
    t0 = time.perf_counter()
    seqs = [batcher.admit(s) for s in seqs]
    while batcher.active:
        ts = time.perf_counter()
        events = batcher.step()
        if not batcher.times.prefill_s:
            decode_s += time.perf_counter() - ts
            decode_tokens += len(events)
    t1 = time.perf_counter()
    assert all(len(s.generated) == new_tokens for s in seqs), "a sequence stopped early"
    decode = decode_tokens / decode_s if decode_s else None
    return GenResult(len(prompts) * new_tokens / (t1 - t0), t1 - t0, decode)


def bench_ours_generation(
    engine: Engine, prompts: np.ndarray, new_tokens: int, repeats: int, **kw
) -> GenResult:
    ours_generate_once(engine, prompts, new_tokens, **kw)  # warm-up: compiles every shape the run uses
    traces = engine.trace_count()
    best = min(
        (ours_generate_once(engine, prompts, new_tokens, **kw) for _ in range(repeats)),
        key=lambda r: r.seconds,
    )
    if engine.trace_count() != traces:
        print(f"  warning: the timed run compiled {engine.trace_count() - traces} new function(s)")
    return best


def bench_ours_prefill(
    hp: HParams, params: dict[str, np.ndarray], prompt: np.ndarray, repeats: int
) -> PrefillResult:
    """Prefill tokens/s and time to first token (prefill + sample) of one prompt, batch 1."""
    engine = build_engine(hp, params, slots=1)
    ids = [int(t) for t in prompt]
    sp = SamplingParams(top_k=TOP_K, seed=0)
    rng = make_rng(0)
    sample(engine.prefill(0, ids), sp, rng)  # warm-up: compiles the prefill bucket
    t0 = time.perf_counter()
    for _ in range(repeats):
        engine.prefill(0, ids)
    prefill_s = time.perf_counter() - t0
    ttft = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(engine.prefill(0, ids), sp, rng)
        ttft.append(time.perf_counter() - t0)
    del engine
    gc.collect()
    return PrefillResult(len(ids) * repeats / prefill_s, statistics.median(ttft))


# ---------------------------------------------------------------------------------------------
# transformers (PyTorch, CPU)


def build_hf(hp: HParams, params: dict[str, np.ndarray]):
    """GPT2LMHeadModel with our weights, state dict built as in tests/support/hf_reference.py."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from app.model.formats.hf import hf_key

    config = GPT2Config(
        vocab_size=hp.n_vocab, n_positions=hp.n_ctx, n_embd=hp.n_embd, n_layer=hp.n_layer, n_head=hp.n_head
    )
    model = GPT2LMHeadModel(config).eval()
    state = {f"transformer.{hf_key(n)}": torch.from_numpy(np.ascontiguousarray(a)) for n, a in params.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(
        k == "lm_head.weight" or k.endswith(".attn.bias") or k.endswith("masked_bias") for k in missing
    ), missing
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head is not tied"
    return model


def hf_generate(model, ids, new_tokens: int):
    import torch

    with torch.inference_mode():
        return model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            top_k=TOP_K,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=EOS,
        )


def bench_hf_generation(model, prompts: np.ndarray, new_tokens: int, repeats: int) -> GenResult:
    import torch

    torch.manual_seed(0)
    ids = torch.from_numpy(prompts)
    hf_generate(model, ids, min(new_tokens, 8))  # warm-up (allocator, thread pool); nothing to compile
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = hf_generate(model, ids, new_tokens)
        seconds = time.perf_counter() - t0
        assert out.shape == (len(prompts), prompts.shape[1] + new_tokens), out.shape
        if best is None or seconds < best:
            best = seconds
    return GenResult(len(prompts) * new_tokens / best, best)


def bench_hf_prefill(model, prompt: np.ndarray, repeats: int) -> PrefillResult:
    import torch

    ids = torch.from_numpy(prompt[None])
    with torch.inference_mode():
        model(ids, use_cache=True)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(ids, use_cache=True)
        prefill_s = time.perf_counter() - t0
    hf_generate(model, ids, 1)  # warm-up
    ttft = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        hf_generate(model, ids, 1)
        ttft.append(time.perf_counter() - t0)
    return PrefillResult(len(prompt) * repeats / prefill_s, statistics.median(ttft))


# ---------------------------------------------------------------------------------------------
# report


def cell(x: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if x is None else fmt.format(x)


def verdict(ratio: float | None, target: float | None) -> str:
    if target is None:
        return "—"
    return "n/a" if ratio is None else f">= {target:g}x {'met' if ratio >= target else 'NOT met'}"


def report_table(
    gen: dict[int, tuple[GenResult, GenResult | None]],
    prefill: tuple[PrefillResult, PrefillResult | None],
    llama: dict | None,
) -> list[str]:
    """Decode rows compare with llama.cpp's decode (prefill excluded on both sides); generate rows
    (prefill included) with transformers' generate."""
    lines = [
        "| measurement (tok/s) | ours | llama.cpp | ours / llama.cpp | target | transformers "
        "| ours / transformers | target |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    lc = (llama or {}).get("decode", {})
    for batch, (ours, theirs) in gen.items():
        r_l = ours.decode_tokens_per_s / lc[batch] if batch in lc and ours.decode_tokens_per_s else None
        lines.append(
            f"| batch {batch} decode | {cell(ours.decode_tokens_per_s)} | {cell(lc.get(batch))} | "
            f"{cell(r_l, '{:.2f}x')} | {verdict(r_l, LLAMA_TARGETS.get(batch))} | | | |"
        )
        r_t = ours.tokens_per_s / theirs.tokens_per_s if theirs else None
        lines.append(
            f"| batch {batch} generate (incl. prefill) | {ours.tokens_per_s:.1f} | | | | "
            f"{cell(theirs and theirs.tokens_per_s)} | {cell(r_t, '{:.2f}x')} | {verdict(r_t, HF_TARGET)} |"
        )
    ours, theirs = prefill
    lp = (llama or {}).get("prefill_b1")
    r_l = ours.tokens_per_s / lp if lp else None
    r_t = ours.tokens_per_s / theirs.tokens_per_s if theirs else None
    lines.append(
        f"| prefill, batch 1 | {ours.tokens_per_s:.1f} | {cell(lp)} | {cell(r_l, '{:.2f}x')} | "
        f"{verdict(r_l, LLAMA_TARGETS['prefill'])} | {cell(theirs and theirs.tokens_per_s)} | "
        f"{cell(r_t, '{:.2f}x')} | {verdict(r_t, HF_TARGET)} |"
    )
    lines.append(
        f"| TTFT, batch 1 (ms) | {1e3 * ours.ttft_s:.1f} | | | | {cell(theirs and 1e3 * theirs.ttft_s)} | | |"
    )
    return lines


def bench_speculative(
    hp: HParams, params: dict[str, np.ndarray], prompts: np.ndarray, new_tokens: int, repeats: int
) -> list[str]:
    """Batch 1 with prompt-lookup speculation (4 drafted tokens) against plain decoding, on a
    repetitive prompt decoded greedily (a random model's greedy output loops, as small models'
    does on lists and code) and on random text sampled with top-k (drafts are rarely accepted)."""
    phrase = prompts[0, :16]
    repetitive = np.tile(phrase, (prompts.shape[1] + 15) // 16)[None, : prompts.shape[1]]
    lines = ["| batch 1 decode (tok/s) | plain | speculative (k=4) | ratio |", "|---|---:|---:|---:|"]
    for label, rows, greedy in (
        ("repetitive prompt, greedy", repetitive, True),
        ("random prompt, top-k 40", prompts[:1], False),
    ):
        plain = bench_ours_generation(build_engine(hp, params, 1), rows, new_tokens, repeats, greedy=greedy)
        spec_engine = build_engine(hp, params, 1, speculative=4)
        spec = bench_ours_generation(spec_engine, rows, new_tokens, repeats, greedy=greedy)
        ratio = spec.decode_tokens_per_s / plain.decode_tokens_per_s
        lines.append(
            f"| {label} | {plain.decode_tokens_per_s:.1f} | {spec.decode_tokens_per_s:.1f} | {ratio:.2f}x |"
        )
        print(lines[-1], flush=True)
        del spec_engine
        gc.collect()
    return lines


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="32 new tokens, batches 1 and 8 (unless given)")
    ap.add_argument(
        "--batches",
        type=lambda s: [int(b) for b in s.split(",")],
        default=None,
        help="comma-separated batch sizes (default 1,8,32)",
    )
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens generated per sequence (128)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (128)")
    ap.add_argument("--prefill-repeats", type=int, default=8, help="prompts timed for prefill and TTFT (8)")
    ap.add_argument("--repeats", type=int, default=1, help="timed generations per batch; fastest kept (1)")
    ap.add_argument("--skip-hf", action="store_true", help="measure only this engine")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N) for transformers (default: torch's own default)",
    )
    ap.add_argument("--skip-llama", action="store_true", help="do not build or measure llama.cpp")
    ap.add_argument("--skip-speculative", action="store_true", help="no speculative-decoding rows")
    args = ap.parse_args(argv)
    if args.batches is None:
        args.batches = [1, 8] if args.quick else [1, 8, 32]
    if args.new_tokens is None:
        args.new_tokens = 32 if args.quick else 128
    if args.new_tokens < 1 or args.prompt_tokens < 1 or min(args.batches) < 1:
        ap.error("--new-tokens, --prompt-tokens and batch sizes must be >= 1")
    if args.repeats < 1 or args.prefill_repeats < 1:
        ap.error("--repeats and --prefill-repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hp = PRESETS["124M"]
    if args.prompt_tokens + args.new_tokens > hp.n_ctx:
        sys.exit(f"prompt + new tokens must fit in n_ctx={hp.n_ctx} (the window would slide)")
    hf = not args.skip_hf
    if hf and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    print("# Engine benchmark: GPT-2 124M shape, random weights, float32, CPU\n")
    print("\n".join(machine_info(hf)))
    print(
        f"- prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, top-k {TOP_K}, "
        f"temperature 1; batches {','.join(map(str, args.batches))}\n",
        flush=True,
    )

    params = random_params(hp, seed=0)
    prompts = make_prompts(hp, max(args.batches), args.prompt_tokens)
    model = build_hf(hp, params) if hf else None
    if model is not None:
        print(f"transformers attention: {model.config._attn_implementation}", flush=True)

    gen: dict[int, tuple[GenResult, GenResult | None]] = {}
    for batch in args.batches:
        rows = prompts[:batch]
        engine = build_engine(hp, params, slots=batch)
        ours = bench_ours_generation(engine, rows, args.new_tokens, args.repeats)
        print(
            f"batch {batch}: ours {ours.tokens_per_s:.1f} tok/s ({ours.seconds:.2f} s), "
            f"decode only {ours.decode_tokens_per_s or 0:.1f} tok/s",
            flush=True,
        )
        del engine
        gc.collect()
        theirs = None
        if model is not None:
            theirs = bench_hf_generation(model, rows, args.new_tokens, args.repeats)
            print(
                f"batch {batch}: transformers {theirs.tokens_per_s:.1f} tok/s ({theirs.seconds:.2f} s)",
                flush=True,
            )
        gen[batch] = (ours, theirs)

    ours_pf = bench_ours_prefill(hp, params, prompts[0], args.prefill_repeats)
    theirs_pf = bench_hf_prefill(model, prompts[0], args.prefill_repeats) if model is not None else None
    del model
    gc.collect()
    llama = None
    if not args.skip_llama:
        import llamacpp  # bench/llamacpp.py, beside this file

        llama = llamacpp.baseline(
            threads=2, prompt=args.prompt_tokens, gen=args.new_tokens, batches=args.batches
        )
        if llama:
            print(
                f"llama.cpp {llama['version']}: decode {llama['decode']}, prefill {llama['prefill_b1']:.1f}",
                flush=True,
            )
    spec = (
        [] if args.skip_speculative else bench_speculative(hp, params, prompts, args.new_tokens, args.repeats)
    )

    print()
    print("\n".join(report_table(gen, (ours_pf, theirs_pf), llama)))
    if spec:
        print()
        print("\n".join(spec))
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
