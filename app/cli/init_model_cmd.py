"""`gpt2-serve init-model DIR`: write a randomly initialised GPT-2, with GPT-2's vocabulary or a tokenizer's.

Useful before any trained weights are on the machine (they cannot always be downloaded): the
model loads and generates through the whole stack, its text is just random tokens. With
``--tokenizer DIR`` (``tokenizer train``'s folder, or any folder holding a tokenizer: a BPE pair or
a sentencepiece ``sp.model``) the embedding is sized to that tokenizer and its files go with the
model: the start of a model trained from scratch in your own language (docs/own-language.md).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from app.errors import ModelFileError
from app.model.formats import LAYOUTS
from app.model.hparams import ALIASES, PRESETS, HParams, preset
from app.model.loader import detect_layout
from app.model.random_init import write_random_model
from app.tokenizer.load import describe_tokenizer, tokenizer_files

OVERRIDES = ("n_layer", "n_embd", "n_head", "n_ctx")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init-model",
        help="write a randomly initialised GPT-2 (GPT-2's 50257-token vocabulary, or --tokenizer's) to DIR",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder to create (must not hold files yet)")
    parser.add_argument(
        "--preset", choices=[*PRESETS, *ALIASES], default="124M", help="size to start from (default 124M)"
    )
    for field in OVERRIDES:
        flag = "--" + field.replace("_", "-")
        parser.add_argument(flag, type=int, dest=field, metavar="N", help=f"override the preset's {field}")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        metavar="TOKENIZER_DIR",
        help="a folder with the tokenizer to use (encoder.json + vocab.bpe, vocab.json + merges.txt, or "
        "sp.model); n_vocab becomes its vocabulary size (default: GPT-2's own)",
    )
    parser.add_argument("--layout", choices=LAYOUTS, default="openai", help="folder layout (default openai)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing if DIR already holds a model")
    parser.set_defaults(func=run)


def hparams_from_args(args: argparse.Namespace, n_vocab: int | None = None) -> HParams:
    """The preset with any ``--n-*`` overrides (and ``n_vocab``, a tokenizer's); ValueError (printed
    by main) on impossible sizes."""
    overrides = {field: getattr(args, field) for field in OVERRIDES if getattr(args, field) is not None}
    if n_vocab is not None:
        overrides["n_vocab"] = n_vocab
    return dataclasses.replace(preset(args.preset), **overrides)


def run(args: argparse.Namespace) -> int:
    dest: Path = args.dir
    if args.if_missing and dest.is_dir():
        try:
            layout = detect_layout(dest)
        except ModelFileError:
            pass  # not a model folder: write one (or refuse below if it holds other files)
        else:
            print(f"{dest} already holds a model ({layout} layout); left it alone")
            return 0
    tokenizer = tokenizer_files(args.tokenizer) if args.tokenizer is not None else None
    described = describe_tokenizer(tokenizer.load()) if tokenizer else {"kind": "GPT-2 BPE", "n_vocab": 50257}
    hp = hparams_from_args(args, described["n_vocab"] if tokenizer else None)
    write_random_model(dest, hp, seed=args.seed, layout=args.layout, tokenizer=tokenizer)
    print(
        f"wrote a random GPT-2 ({hp.n_layer} layers, {hp.n_embd} wide, {hp.n_head} heads, context {hp.n_ctx}, "
        f"{described['kind']} vocabulary of {hp.n_vocab}, {hp.n_params() / 1e6:.1f}M parameters, "
        f"seed {args.seed}) in the {args.layout} layout to {dest}"
    )
    return 0
