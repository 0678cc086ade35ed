"""`gpt2-serve encode INPUT OUTPUT.npz`: text files to token arrays for training (nshepperd's encode.py)."""

from __future__ import annotations

import argparse

from app.cli.model_arg import model_dir_arg
from app.model.default import DEFAULT_NAME


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode", help="encode text into token arrays (.npz) for training", description=__doc__
    )
    p.add_argument("input", help="a text file, a folder, or a glob")
    p.add_argument("output", help="the .npz file to write")
    p.add_argument(
        "--model", default=DEFAULT_NAME, help="model whose tokenizer to use (all GPT-2 sizes share one)"
    )
    p.add_argument("--models-dir", default="model_store")
    p.add_argument(
        "--combine", type=int, default=50000, help="join small files into chunks of this many characters"
    )
    p.add_argument("--encoding", default="utf-8")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.tokenizer.bpe import Encoder
    from app.train.data import load_chunks, save_npz

    model_dir = model_dir_arg(args.model, args.models_dir)
    chunks = load_chunks(
        args.input, Encoder.from_dir(model_dir), combine=args.combine, encoding=args.encoding
    )
    save_npz(args.output, chunks)
    print(f"wrote {sum(len(c) for c in chunks):,} tokens in {len(chunks)} chunks to {args.output}")
    return 0
