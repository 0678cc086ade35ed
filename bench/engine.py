"""Engine throughput benchmark: this engine vs Hugging Face transformers' ``generate`` on CPU.

Run: ``make bench-engine`` (or ``.venv/bin/python bench/engine.py [--quick] [--profile]``).

Set-up (both frameworks, same process, same weights)
  * GPT-2 124M shape (``PRESETS["124M"]``), random weights ``random_params(hp, seed=0)``, float32.
    transformers gets the same arrays through a state dict keyed by ``hf_key`` (as
    ``tests/hf_reference.py`` builds it), with its default attention implementation (SDPA).
  * Prompts: ``--prompt-tokens`` (128) random ids from ``default_rng(1234)``, one per sequence;
    ``--new-tokens`` (128) new tokens each, sampled with top-k 40, temperature 1, no EOS stop.
  * Threads are left at each framework's default; both counts are printed (``--torch-threads``
    overrides torch's). On a machine shared with other work, torch's OpenMP threads suffer far more
    than their share from oversubscription (seen: a [1, 128] forward 3x slower with 2 threads than
    with 1 on a loaded 2-core box), so compare on an idle machine or check with ``--torch-threads 1``.

Measurements (``time.perf_counter``; for each batch size ours runs first, then transformers)
  * Generation at batch B: tokens/s = B * new_tokens / wall time of the whole call, prefill
    included. Ours: a fresh ``Engine(EngineConfig(slots=B))``, one untimed full generation to
    compile every shape bucket the timed run uses, then ``batcher.generate`` over B
    ``Sequence(prompt, N, SamplingParams(top_k=40, seed=i), stop_at_eos=False)``. The compiled
    function count is checked to be unchanged by the timed run. Ours also reports decode-only
    tokens/s: B * (N - 1) / (time from the first ``engine.step``, i.e. all prompts admitted, to the
    end). transformers: ``model.generate(ids [B, P], attention_mask=ones, do_sample=True,
    top_k=40, max_new_tokens=N, min_new_tokens=N, pad_token_id=50256)`` after a short untimed
    warm-up generation (there is nothing to compile).
  * Prefill tokens/s at batch 1: ``--prefill-repeats`` (8) prompts after a warm-up, P * n / time.
    Ours: ``engine.prefill``; transformers: one forward over ``[1, P]`` with ``use_cache=True``.
  * Time to first token at batch 1 (median of the same number of repeats): ours = ``engine.prefill``
    + ``sample``; transformers = ``generate`` with ``max_new_tokens=1``.
  * ``--repeats k`` times every generation measurement k times and keeps the fastest.

The ratio column is ours/theirs for throughputs and theirs/ours for TTFT, so > 1 always means we
are faster. Targets come from the issue: >= 1.5x at batch 1, >= 3x at batch 32, prefill >= 1.5x.

``--profile`` splits our decode step at the largest batch (host-side timers wrapped around app
functions from this script; the app code is not changed): the compiled decode call, the
``.numpy()`` transfer of the logits, the rest of ``engine.step``, and in ``Batcher._emit`` the
top-k sampling, the chosen token's log-probability and the rest.

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
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without the editable install
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from app.engine import batcher as batcher_mod  # noqa: E402
from app.engine.batcher import Batcher, Sequence, generate  # noqa: E402
from app.engine.engine import Engine, EngineConfig  # noqa: E402
from app.engine.sampling import SamplingParams, make_rng, sample  # noqa: E402
from app.model.hparams import PRESETS, HParams  # noqa: E402
from app.model.random_init import random_params  # noqa: E402

EOS = 50256
TOP_K = 40
PROMPT_SEED = 1234
TARGETS = {"batch 1": 1.5, "batch 32": 3.0, "prefill": 1.5}  # from the issue; ratio ours/theirs


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
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
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

        lines.append(f"- torch {torch.__version__}, transformers {transformers.__version__}; torch threads: "
                     f"intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")  # fmt: skip
    return lines


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------------
# our engine


def build_engine(hp: HParams, params: dict[str, np.ndarray], slots: int) -> Engine:
    return Engine(hp, params, EngineConfig(slots=slots, dtype="float32"))


def make_sequences(prompts: np.ndarray, new_tokens: int) -> list[Sequence]:
    return [
        Sequence([int(t) for t in p], new_tokens, SamplingParams(top_k=TOP_K, seed=i), stop_at_eos=False)
        for i, p in enumerate(prompts)
    ]


def ours_generate_once(engine: Engine, prompts: np.ndarray, new_tokens: int) -> GenResult:
    """One timed ``batcher.generate`` over ``prompts``; also times from the first decode step."""
    seqs = make_sequences(prompts, new_tokens)
    first_step: list[float] = []
    real_step = engine.step

    def step(tokens):
        if not first_step:
            first_step.append(time.perf_counter())
        return real_step(tokens)

    with mock.patch.object(engine, "step", step):
        t0 = time.perf_counter()
        generate(engine, seqs, eos_id=EOS)
        t1 = time.perf_counter()
    assert all(len(s.generated) == new_tokens for s in seqs), "a sequence stopped early"
    batch = len(prompts)
    decode = batch * (new_tokens - 1) / (t1 - first_step[0]) if first_step else None
    return GenResult(batch * new_tokens / (t1 - t0), t1 - t0, decode)


def bench_ours_generation(engine: Engine, prompts: np.ndarray, new_tokens: int, repeats: int) -> GenResult:
    generate(engine, make_sequences(prompts, new_tokens), eos_id=EOS)  # warm-up: compiles all buckets
    traces = engine.trace_count()
    best = min((ours_generate_once(engine, prompts, new_tokens) for _ in range(repeats)),
               key=lambda r: r.seconds)  # fmt: skip
    if engine.trace_count() != traces:
        print(f"  warning: the timed run compiled {engine.trace_count() - traces} new function(s)")
    return best


def bench_ours_prefill(hp: HParams, params: dict[str, np.ndarray], prompt: np.ndarray, repeats: int) -> PrefillResult:
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
    """GPT2LMHeadModel with our weights, state dict built as in tests/hf_reference.py."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from app.model.formats.hf import hf_key

    config = GPT2Config(vocab_size=hp.n_vocab, n_positions=hp.n_ctx, n_embd=hp.n_embd,
                        n_layer=hp.n_layer, n_head=hp.n_head)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    state = {f"transformer.{hf_key(n)}": torch.from_numpy(np.ascontiguousarray(a)) for n, a in params.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k == "lm_head.weight" or k.endswith(".attn.bias") or k.endswith("masked_bias") for k in missing), missing
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head is not tied"
    return model


def hf_generate(model, ids, new_tokens: int):
    import torch

    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=TOP_K,
                              temperature=1.0, top_p=1.0, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, pad_token_id=EOS)  # fmt: skip


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
# --profile: where a decode step's time goes


# Host-side parts of Batcher._emit, by the names the batcher module calls them.
HOST_PARTS = {"sample": ("sample",), "logprob": ("token_logprob", "log_softmax")}


class _TimedTensor:
    """Stands in for the decode function's output so ``Engine._decode``'s ``.numpy()`` is timed."""

    def __init__(self, tensor, timers: dict[str, float]):
        self._tensor, self._timers = tensor, timers

    def numpy(self):
        t0 = time.perf_counter()
        out = self._tensor.numpy()
        self._timers["transfer"] += time.perf_counter() - t0
        return out


@contextlib.contextmanager
def decode_step_timers(engine: Engine) -> Iterator[dict[str, float]]:
    """Wrap the app's decode-path functions with timers (decode steps only, not admissions)."""
    timers: dict[str, float] = defaultdict(float)
    in_step = [False]

    def timed(key: str, fn: Callable, *, only_in_step: bool = True) -> Callable:
        def wrapper(*args, **kwargs):
            if only_in_step and not in_step[0]:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            timers[key] += time.perf_counter() - t0
            return out

        return wrapper

    real_batcher_step = Batcher.step
    real_decode_fn = engine._decode_fn

    def batcher_step(self):
        in_step[0] = True
        t0 = time.perf_counter()
        try:
            return real_batcher_step(self)
        finally:
            timers["batcher.step"] += time.perf_counter() - t0
            timers["steps"] += 1
            in_step[0] = False

    def decode_fn(*args):
        t0 = time.perf_counter()
        out = real_decode_fn(*args)
        timers["device"] += time.perf_counter() - t0
        return _TimedTensor(out, timers)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(Batcher, "step", batcher_step))
        stack.enter_context(mock.patch.object(Batcher, "_emit", timed("emit", Batcher._emit)))
        for key, names in HOST_PARTS.items():
            for name in names:  # whichever of these the batcher calls (the app has changed before)
                if hasattr(batcher_mod, name):
                    fn = getattr(batcher_mod, name)
                    stack.enter_context(mock.patch.object(batcher_mod, name, timed(key, fn)))
        stack.enter_context(mock.patch.object(engine, "step", timed("engine.step", engine.step)))
        stack.enter_context(mock.patch.object(engine, "_decode_fn", decode_fn))
        yield timers


def profile_decode(engine: Engine, prompts: np.ndarray, new_tokens: int) -> list[str]:
    """Time split of our decode steps at batch ``len(prompts)`` (engine already warmed up)."""
    seqs = make_sequences(prompts, new_tokens)
    with decode_step_timers(engine) as t:
        generate(engine, seqs, eos_id=EOS)
    steps = int(t["steps"])
    if not steps:
        return ["(no decode steps: --new-tokens 1)"]
    total = t["batcher.step"]
    parts = [
        ("engine.step (whole call)", t["engine.step"], 0),
        ("compiled decode call (XLA, on device)", t["device"], 1),
        ("`.numpy()` of the logits [B, V]", t["transfer"], 1),
        ("rest of engine.step (checks, tf.constant, row copies)",
         t["engine.step"] - t["device"] - t["transfer"], 1),
        (f"Batcher._emit x {len(prompts)} rows (whole calls)", t["emit"], 0),
        ("sampling (`sample`: top-k partition, sort, draw)", t["sample"], 1),
        ("logprob of the chosen token", t["logprob"], 1),
        ("rest of _emit", t["emit"] - t["sample"] - t["logprob"], 1),
        ("rest of Batcher.step", total - t["engine.step"] - t["emit"], 0),
        ("**Batcher.step total**", total, 0),
    ]  # fmt: skip
    lines = [
        f"Decode step split, ours, batch {len(prompts)}: {steps} steps, mean per step "
        f"(context {prompts.shape[1]}..{prompts.shape[1] + new_tokens})",
        "",
        "| part | ms / step | share of step |",
        "|---|---:|---:|",
    ]
    for name, seconds, indent in parts:
        label = ("&nbsp;&nbsp;&nbsp;&nbsp;" * indent) + name
        lines.append(f"| {label} | {1e3 * seconds / steps:.2f} | {100 * seconds / total:.1f}% |")
    return lines


# ---------------------------------------------------------------------------------------------
# report


def ratio_cells(name: str, ratio: float | None) -> tuple[str, str, str]:
    target = TARGETS.get(name)
    ratio_s = f"{ratio:.2f}x" if ratio is not None else "—"
    if target is None:
        return ratio_s, "—", "—"
    status = "n/a" if ratio is None else ("met" if ratio >= target else "not met")
    return ratio_s, f">= {target:g}x", status


def report_table(gen: dict[int, tuple[GenResult, GenResult | None]],
                 prefill: tuple[PrefillResult, PrefillResult | None]) -> list[str]:  # fmt: skip
    lines = [
        "| measurement | ours | ours, decode only | transformers | ratio | target | status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for batch, (ours, theirs) in gen.items():
        name = f"batch {batch}"
        ratio = ours.tokens_per_s / theirs.tokens_per_s if theirs else None
        decode = f"{ours.decode_tokens_per_s:.1f}" if ours.decode_tokens_per_s else "—"
        hf = f"{theirs.tokens_per_s:.1f}" if theirs else "—"
        lines.append(f"| {name} generate (tok/s) | {ours.tokens_per_s:.1f} | {decode} | {hf} | "
                     + " | ".join(ratio_cells(name, ratio)) + " |")  # fmt: skip
    ours, theirs = prefill
    ratio = ours.tokens_per_s / theirs.tokens_per_s if theirs else None
    hf = f"{theirs.tokens_per_s:.1f}" if theirs else "—"
    lines.append(f"| prefill, batch 1 (tok/s) | {ours.tokens_per_s:.1f} | | {hf} | "
                 + " | ".join(ratio_cells("prefill", ratio)) + " |")  # fmt: skip
    ratio = theirs.ttft_s / ours.ttft_s if theirs else None  # theirs/ours: > 1 means we are faster
    hf = f"{1e3 * theirs.ttft_s:.1f}" if theirs else "—"
    lines.append(f"| TTFT, batch 1 (ms; ratio theirs/ours) | {1e3 * ours.ttft_s:.1f} | | {hf} | "
                 + " | ".join(ratio_cells("ttft", ratio)) + " |")  # fmt: skip
    return lines


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="32 new tokens, batches 1 and 8 (unless given)")
    ap.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=None,
                    help="comma-separated batch sizes (default 1,8,32)")  # fmt: skip
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens generated per sequence (128)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (128)")
    ap.add_argument("--prefill-repeats", type=int, default=8, help="prompts timed for prefill and TTFT (8)")
    ap.add_argument("--repeats", type=int, default=1, help="timed generations per batch; fastest kept (1)")
    ap.add_argument("--skip-hf", action="store_true", help="measure only this engine")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads(N) for transformers (default: torch's own default)")  # fmt: skip
    ap.add_argument("--profile", action="store_true", help="split our decode step time at the largest batch")
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
    print(f"- prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, top-k {TOP_K}, "
          f"temperature 1; batches {','.join(map(str, args.batches))}\n", flush=True)  # fmt: skip

    params = random_params(hp, seed=0)
    prompts = make_prompts(hp, max(args.batches), args.prompt_tokens)
    model = build_hf(hp, params) if hf else None
    if model is not None:
        print(f"transformers attention: {model.config._attn_implementation}", flush=True)

    profile: list[str] = []
    gen: dict[int, tuple[GenResult, GenResult | None]] = {}
    for batch in args.batches:
        rows = prompts[:batch]
        engine = build_engine(hp, params, slots=batch)
        ours = bench_ours_generation(engine, rows, args.new_tokens, args.repeats)
        print(f"batch {batch}: ours {ours.tokens_per_s:.1f} tok/s ({ours.seconds:.2f} s), "
              f"decode only {ours.decode_tokens_per_s or 0:.1f} tok/s", flush=True)  # fmt: skip
        if args.profile and batch == max(args.batches):
            profile = profile_decode(engine, rows, args.new_tokens)
        del engine
        gc.collect()
        theirs = None
        if model is not None:
            theirs = bench_hf_generation(model, rows, args.new_tokens, args.repeats)
            print(f"batch {batch}: transformers {theirs.tokens_per_s:.1f} tok/s ({theirs.seconds:.2f} s)",
                  flush=True)  # fmt: skip
        gen[batch] = (ours, theirs)

    ours_pf = bench_ours_prefill(hp, params, prompts[0], args.prefill_repeats)
    theirs_pf = bench_hf_prefill(model, prompts[0], args.prefill_repeats) if model is not None else None
    del model
    gc.collect()

    print()
    print("\n".join(report_table(gen, (ours_pf, theirs_pf))))
    print(f"\nload average at the end: {load_average()}")
    if profile:
        print()
        print("\n".join(profile))


if __name__ == "__main__":
    main()
