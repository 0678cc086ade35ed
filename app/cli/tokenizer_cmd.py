"""`gpt2-serve tokenizer train CORPUS --out DIR`: a byte-level BPE for your own language, as GPT-2's files.

The corpus is read as `encode` reads it (a file, a folder or a glob; `.jsonl` files one "text"
field a line). The tokenizer is GPT-2's (its regex, its byte table, `<|endoftext|>` the last id)
with your merges; `encoder.json` and `vocab.bpe` are written into --out, where every command and
the server load them as they load GPT-2's (docs/own-language.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="train a tokenizer for your own texts",
        description="Tokenizers for your own texts.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser(
        "train",
        help="train a byte-level BPE on a corpus; write encoder.json and vocab.bpe",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("corpus", help="a text file, a folder, a glob, or a JSONL file")
    t.add_argument("--out", type=Path, required=True, help="folder to write encoder.json and vocab.bpe into")
    t.add_argument(
        "--vocab-size",
        type=int,
        default=32000,
        help="tokens in all: 256 bytes + merges + special tokens (default: 32000)",
    )
    t.add_argument(
        "--min-frequency", type=int, default=2, help="a pair seen fewer times is not merged (default: 2)"
    )
    t.add_argument(
        "--special-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="another special token (repeatable); <|endoftext|> is always one, the last id",
    )
    t.add_argument("--encoding", default="utf-8")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.tokenizer.bpe import Encoder
    from app.tokenizer.bpe_train import train_bpe, write_gpt2_files
    from app.train.data import read_texts

    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: not a folder")
    texts = read_texts(args.corpus, encoding=args.encoding)
    tok = train_bpe(
        texts,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        special_tokens=args.special_token,
        progress=args.progress and sys.stderr.isatty(),  # no bar's blank lines in logs
    )
    files = write_gpt2_files(tok, args.out)
    enc = Encoder.from_files(*files)  # what every command will load: check it now
    fewer = (
        f" (fewer than --vocab-size {args.vocab_size}: no more pairs seen {args.min_frequency}+ times)"
        if enc.n_vocab < args.vocab_size
        else ""
    )
    print(
        f"wrote {files[0]} and {files[1]}: {enc.n_vocab:,} tokens{fewer}, <|endoftext|> = {enc.eot_token}; "
        f"a model for it needs n_vocab {enc.n_vocab}",
    )
    return 0
