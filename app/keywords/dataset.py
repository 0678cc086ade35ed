"""A keyword-conditioned training set: documents (JSONL or a folder) to token arrays.

Each document's keywords are extracted once (YAKE); the document is then written ``repeat`` times,
each time with a random subset of 0..``max_keywords`` of them (:func:`format.keyword_subsets`). A
document longer than the context is split into pieces that each carry the prefix and end with
``<|endoftext|>``; one whose prefix alone leaves no room is dropped. Everything random comes from
``seed``: the same inputs and seed give the same arrays.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.keywords.extract import extract_keywords
from app.keywords.format import DEFAULT, Delimiters, keyword_subsets, prefix
from app.tokenizer.load import Tokenizer

MIN_BODY_TOKENS = 8  # a piece shorter than this would teach little besides the prefix


@dataclass(frozen=True)
class Doc:
    text: str
    category: str | None = None
    title: str | None = None


@dataclass
class Stats:
    documents: int = 0
    split: int = 0  # documents longer than the context, written in several pieces
    dropped: int = 0  # documents whose prefix leaves no room for a body
    pieces: int = 0
    tokens: int = 0


def read_jsonl(path: Path, encoding: str = "utf-8") -> Iterator[Doc]:
    """One document per line: ``{"text": ..., "category": ..., "title": ...}`` (the last two optional)."""
    with path.open(encoding=encoding) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field") from None
            yield Doc(text, row.get("category") or None, row.get("title") or None)


def read_folder(root: Path, encoding: str = "utf-8") -> Iterator[Doc]:
    """Every file under ``root`` is a document; its first-level subfolder's name is its category."""
    for f in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = f.relative_to(root).parts
        yield Doc(f.read_text(encoding=encoding), rel[0] if len(rel) > 1 else None)


def read_docs(path: str | Path, encoding: str = "utf-8") -> Iterator[Doc]:
    p = Path(path)
    if p.is_dir():
        return read_folder(p, encoding)
    if p.is_file():
        return read_jsonl(p, encoding)
    raise FileNotFoundError(f"no dataset at {path!r}: expected a folder or a JSONL file")


def pieces(prefix_ids: list[int], body_ids: list[int], n_ctx: int, eot: int) -> list[list[int]]:
    """``prefix + body + eot`` cut to fit ``n_ctx`` tokens: each piece carries the prefix (none
    when the prefix leaves fewer than MIN_BODY_TOKENS tokens of room)."""
    room = n_ctx - len(prefix_ids) - 1
    if room < MIN_BODY_TOKENS:
        return []
    steps = range(0, max(len(body_ids), 1), room)
    return [prefix_ids + body_ids[i : i + room] + [eot] for i in steps]


@dataclass(frozen=True)
class KeywordConfig:
    n_ctx: int
    language: str = "en"
    keywords_per_doc: int = 5
    repeat: int = 4
    max_keywords: int = 3
    seed: int = 0
    delimiters: Delimiters = DEFAULT


def encode_doc(
    doc: Doc, enc: Tokenizer, cfg: KeywordConfig, rng: random.Random, stats: Stats
) -> list[list[int]]:
    """Every piece of every repeat of one document."""
    d = cfg.delimiters
    kws = extract_keywords(doc.text, language=cfg.language, top=cfg.keywords_per_doc, d=d)
    body_ids = enc.encode(doc.text.strip())
    out: list[list[int]] = []
    for subset in keyword_subsets(kws, cfg.repeat, rng, cfg.max_keywords):
        head = enc.encode(prefix(subset, doc.category, doc.title or "", d))
        out += pieces(head, body_ids, cfg.n_ctx, enc.eot_token)
    stats.documents += 1
    if not out:
        stats.dropped += 1
    elif len(out) > cfg.repeat:
        stats.split += 1
    return out


def encode_keyword_dataset(
    docs: Iterator[Doc], enc: Tokenizer, cfg: KeywordConfig
) -> tuple[np.ndarray, Stats]:
    """All pieces, shuffled (so a document's repeats are not neighbours), as one ``int32`` array."""
    rng = random.Random(cfg.seed)
    stats = Stats()
    all_pieces: list[list[int]] = []
    for doc in docs:
        if doc.text.strip():
            all_pieces += encode_doc(doc, enc, cfg, rng, stats)
    rng.shuffle(all_pieces)
    stats.pieces = len(all_pieces)
    tokens = np.asarray([t for p in all_pieces for t in p], dtype=np.int32)
    stats.tokens = len(tokens)
    return tokens, stats


def spec_path(npz: str | Path) -> Path:
    """Where the encoder records the format next to the dataset: ``data.npz`` -> ``data.keywords.json``."""
    p = Path(npz)
    return (
        p.with_name(p.stem + ".keywords.json")
        if p.suffix == ".npz"
        else p.with_name(p.name + ".keywords.json")
    )


def spec(cfg: KeywordConfig) -> dict:
    """What a keyword-conditioned model records (``keywords.json``): its delimiters and training shape."""
    return {
        "delimiters": cfg.delimiters.as_dict(),
        "max_keywords": cfg.max_keywords,
        "language": cfg.language,
    }


def read_spec(npz: str | Path) -> dict | None:
    """The keyword spec recorded next to a dataset, or None (a plain dataset)."""
    p = spec_path(npz)
    return json.loads(p.read_text()) if p.is_file() else None
