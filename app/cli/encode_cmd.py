"""`gpt2-serve encode INPUT OUTPUT.npz`: text files to token arrays for training (nshepperd's encode.py)."""

from __future__ import annotations

import argparse

from app.cli.model_dir_arg import model_dir_arg
from app.model.default_model import DEFAULT_NAME


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
    kw = p.add_argument_group(
        "keyword conditioning (INPUT: a JSONL file or a folder whose subfolders are categories)"
    )
    kw.add_argument(
        "--keywords", action="store_true", help="write keyword-conditioned documents (README: Keywords)"
    )
    kw.add_argument("--keywords-per-doc", type=int, default=5, help="keywords YAKE extracts per document")
    kw.add_argument("--repeat", type=int, default=4, help="copies of each document, each with other keywords")
    kw.add_argument("--max-keywords", type=int, default=3, help="most keywords in one copy")
    kw.add_argument("--language", default="en", help="the texts' language for YAKE (en, ru, de, ...)")
    kw.add_argument("--seed", type=int, default=0, help="the same seed writes the same dataset")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.tokenizer.load import load_tokenizer
    from app.train.data import load_chunks, save_npz

    model_dir = model_dir_arg(args.model, args.models_dir)
    if args.keywords:
        return _run_keywords(args, model_dir)
    chunks = load_chunks(args.input, load_tokenizer(model_dir), combine=args.combine, encoding=args.encoding)
    save_npz(args.output, chunks)
    print(f"wrote {sum(len(c) for c in chunks):,} tokens in {len(chunks)} chunks to {args.output}")
    return 0


def _run_keywords(args: argparse.Namespace, model_dir) -> int:
    import json

    from app.keywords.dataset import KeywordConfig, encode_keyword_dataset, read_docs, spec, spec_path
    from app.model.loader import read_hparams
    from app.tokenizer.load import load_tokenizer
    from app.train.data import save_npz

    if min(args.keywords_per_doc, args.repeat) < 1 or args.max_keywords < 0:
        raise ValueError("--keywords-per-doc and --repeat must be >= 1, --max-keywords >= 0")
    cfg = KeywordConfig(
        n_ctx=read_hparams(model_dir).n_ctx,
        language=args.language,
        keywords_per_doc=args.keywords_per_doc,
        repeat=args.repeat,
        max_keywords=args.max_keywords,
        seed=args.seed,
    )
    tokens, stats = encode_keyword_dataset(
        read_docs(args.input, args.encoding), load_tokenizer(model_dir), cfg
    )
    if not len(tokens):
        raise ValueError(
            f"dataset {args.input!r} gave no documents that fit the context ({cfg.n_ctx} tokens)"
        )
    save_npz(args.output, [tokens])
    spec_path(args.output).write_text(json.dumps(spec(cfg), indent=2) + "\n")
    print(
        f"wrote {stats.tokens:,} tokens: {stats.documents} documents x {cfg.repeat} keyword sets in "
        f"{stats.pieces} pieces to {args.output} ({stats.split} split: longer than the context of "
        f"{cfg.n_ctx} tokens; {stats.dropped} dropped: no room after the prefix); format in "
        f"{spec_path(args.output)}"
    )
    return 0
