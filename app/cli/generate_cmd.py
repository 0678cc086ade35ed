"""`gpt2-serve generate`: OpenAI's two sample scripts in one command.

Without ``--prompt`` it samples unconditionally (context ``<|endoftext|>``, as
``sample_unconditional.py``); with ``--prompt TEXT`` or ``--interactive`` it continues the prompt
(``interactive_conditional_samples.py``). Samples run with continuous batching, ``--batch-size``
at a time, and print under ``SAMPLE n`` headers as the original scripts do, or as one JSON object
per line with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from app.cli.model_dir_arg import model_dir_arg
from app.model.default_model import DEFAULT_NAME

RULE = "=" * 40


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample text from a model", description=__doc__)
    p.add_argument("--model", default=DEFAULT_NAME, help="model name in --models-dir, or a model folder")
    p.add_argument("--models-dir", default="model_store")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="text to continue (omit for unconditional samples)")
    src.add_argument("--interactive", action="store_true", help="read prompts from stdin, one per line")
    p.add_argument("--nsamples", type=int, default=1, help="samples per prompt")
    p.add_argument("--batch-size", type=int, default=1, help="samples generated at once")
    p.add_argument("--length", type=int, default=None, help="tokens per sample (default n_ctx // 2)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=None, help="sample i uses seed + i")
    p.add_argument("--ignore-eos", action="store_true", help="do not end a sample at <|endoftext|>")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="e.g. CPU:0 or GPU:1 (default: GPU 0 if any, else CPU)")
    p.add_argument("--json", action="store_true", help="one JSON object per sample: text, token_ids")
    kw = p.add_argument_group("keyword-conditioned models (README: Keywords)")
    kw.add_argument(
        "--keywords", nargs="*", default=None, help="keywords the document is about (may be none)"
    )
    kw.add_argument("--category", default=None, help="the document's category")
    kw.add_argument("--title", default=None, help="its title (omit it to have the model write one)")
    p.set_defaults(func=run)


def _prompts(args: argparse.Namespace) -> Iterator[str | None]:
    if args.interactive:
        while True:
            if sys.stdin.isatty():
                print("Model prompt >>> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                return
            text = line.rstrip("\n")
            if text.strip():
                yield text
            else:
                print("Prompt should not be empty!", file=sys.stderr)
    else:
        yield args.prompt


def _keyword_prefix(args: argparse.Namespace, model) -> tuple[str, object] | None:
    """(the document prefix, the model's delimiters) of a keyword run; None otherwise."""
    if args.keywords is None and args.category is None and args.title is None:
        return None
    from app.keywords.format import prefix, valid_keyword, valid_text

    spec, model_path = model.keywords, model.path
    if spec is None:
        raise ValueError(f"{model_path} is not keyword-conditioned (no keywords.json); drop --keywords")
    d = spec.delimiters
    bad = [k for k in args.keywords or () if not valid_keyword(k, d)]
    bad += [t for t in (args.category, args.title) if t is not None and not valid_text(t, d)]
    if bad:
        raise ValueError(f"{bad[0]!r}: keywords may not be blank nor hold the model's delimiters")
    return prefix(args.keywords or (), args.category, args.title, d), d


def _context(enc, prompt: str | None, kw: tuple[str, object] | None) -> list[int]:
    if kw is not None:  # a new document: end-of-text, the keyword prefix, then the prompt
        return [enc.eot_token, *enc.encode(kw[0] + (prompt or ""))]
    return enc.encode(prompt) if prompt else [enc.eot_token]


def _show(args: argparse.Namespace, enc, seq, prompt: str, counter: int, kw=None) -> None:
    """One finished sample: a JSON line, or the text under a numbered rule (a keyword run's sample:
    its title and body)."""
    ids = [t for t in seq.generated if not (seq.finish_reason == "eos_token" and t == enc.eot_token)]
    text = enc.decode(ids)
    if kw is not None:
        from app.keywords.format import parse

        doc = parse(kw[0] + (prompt or "") + text, kw[1])
        text = f"{doc.title}\n\n{doc.body}" if not args.json else text
    if args.json:
        record = {
            "text": text,
            "token_ids": ids,
            "finish_reason": seq.finish_reason,
            "seed": seq.seed,
            "prompt": prompt,
        }
        if kw is not None:
            record.update(title=doc.title, body=doc.body)
        print(json.dumps(record), flush=True)
    else:
        print(f"{RULE} SAMPLE {counter} {RULE}")
        print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.nsamples < 1 or args.batch_size < 1:
        raise ValueError("--nsamples and --batch-size must be >= 1")
    # Imported here: `gpt2-serve --help` should not wait for TensorFlow.
    from app.engine.batcher import generate
    from app.engine.sampling import SamplingParams
    from app.engine.spec import GenerationSpec
    from app.runtime.load import load_model

    model_dir = model_dir_arg(args.model, args.models_dir)
    model = load_model(
        model_dir,
        args.models_dir,
        device=args.device,
        dtype=args.dtype,
        slots=min(args.batch_size, args.nsamples),
    )
    enc, hp = model.encoder, model.hparams
    length = args.length if args.length is not None else hp.n_ctx // 2
    if length < 1:
        raise ValueError(f"--length must be >= 1, got {length}")
    counter, kw = 0, _keyword_prefix(args, model)
    for prompt in _prompts(args):
        context = _context(enc, prompt, kw)
        seqs = [
            GenerationSpec(
                context,
                length,
                SamplingParams(
                    temperature=args.temperature,
                    top_k=args.top_k,
                    top_p=args.top_p,
                    seed=None if args.seed is None else args.seed + i,
                ),
                stop_at_eos=not args.ignore_eos,
            )
            for i in range(args.nsamples)
        ]
        for seq in generate(model.engine, seqs, eos_id=enc.eot_token):
            counter += 1
            _show(args, enc, seq, prompt, counter, kw)
        if args.interactive and not args.json:
            print("=" * 80, flush=True)
    return 0
