"""Does the keyword demo steer? ``make eval-keywords`` (after ``make demo-keywords``).

For every held-out speech (``bench/shakespeare_speeches.py`` keeps every 50th out of training) the model is
asked ``--samples`` times (seeds differ between samples, not between conditions) for a document:

* ``keywords``: the speech's keywords (YAKE's top ``max_keywords``, as ``encode --keywords`` finds
  them), its play as category and its speaker as title: the model writes the body;
* ``no keywords``: the same without the keywords: the unconditioned baseline of the hit rate;
* ``no title``: keywords and play, no title: the model writes the speaker first;
* ``no title, no play``: keywords only.

A requested keyword is *hit* when the stem of every word in it (Snowball's English stemmer, so
"loving" matches "love") appears in the generated body. For the conditions where the model writes
the title, the table says how often that title is a speaker of the held-out speech's play (from the
training speeches), and how often it is the held-out speaker. Generation is the serving engine's
(continuous batching), sampled with temperature ``--temperature`` and top-k ``--top-k``; the
prefix is built by the same function the server uses.

Run: ``python bench/keyword_steering.py --models-dir model_store --heldout build/demo-keywords/heldout.jsonl``
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import snowballstemmer

from app.engine.batcher import generate
from app.engine.sampling import SamplingParams
from app.engine.spec import GenerationSpec
from app.keywords.extract import extract_keywords
from app.keywords.format import parse, prefix
from app.runtime.load import load_model

WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Condition:
    name: str
    keywords: bool
    category: bool
    title: bool


CONDITIONS = (
    Condition("keywords", True, True, True),
    Condition("no keywords", False, True, True),
    Condition("no title", True, True, False),
    Condition("no title, no play", True, False, False),
)


@dataclass
class Tally:
    documents: int = 0
    asked: int = 0  # keywords requested (the same set in every condition)
    hit: int = 0
    documents_hit: int = 0  # documents with at least one requested keyword
    of_play: int = 0  # model-written titles that are a speaker of the play
    speaker: int = 0  # model-written titles that are the held-out speaker
    words: int = 0
    examples: list[str] = field(default_factory=list)
    per_document: list[int] = field(default_factory=list)  # hits of each document, in request order


def stems(text: str, stemmer) -> set[str]:
    return set(stemmer.stemWords(WORD.findall(text.lower())))


def hits(keywords: list[str], body: str, stemmer) -> int:
    """How many of ``keywords`` have every word's stem in ``body``."""
    found = stems(body, stemmer)
    return sum(all(s in found for s in stemmer.stemWords(WORD.findall(k.lower()))) for k in keywords)


def paired(conditioned: list[int], baseline: list[int]) -> str:
    """A sign test over the document pairs (same speech, same seed) whose hits differ."""
    more = sum(a > b for a, b in zip(conditioned, baseline))
    fewer = sum(a < b for a, b in zip(conditioned, baseline))
    n, k = more + fewer, min(more, fewer)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return (
        f"paired (same speech, same seed): with keywords more hits in {more} documents, fewer in {fewer}; "
        f"two-sided sign test p = {p:.2g}"
    )


def norm(name: str) -> str:
    return " ".join(name.lower().replace(".", " ").split())


def speakers_by_play(train: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with train.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out.setdefault(row["category"], set()).add(norm(row["title"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default="model_store")
    ap.add_argument("--model", default="demo-keywords")
    ap.add_argument("--heldout", type=Path, default=Path("build/demo-keywords/heldout.jsonl"))
    ap.add_argument(
        "--train", type=Path, help="the training speeches (default: train.jsonl beside --heldout)"
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N held-out speeches (0: all)")
    ap.add_argument("--length", type=int, default=80, help="most new tokens per document")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=3, help="documents per held-out speech and condition")
    ap.add_argument("--slots", type=int, default=32)
    args = ap.parse_args(argv)

    started = time.monotonic()
    model = load_model(args.model, args.models_dir, slots=args.slots)
    spec = model.keywords
    if spec is None:
        raise SystemExit(
            f"{model.path} is not keyword-conditioned (no keywords.json): run make demo-keywords"
        )
    rows = [json.loads(line) for line in args.heldout.open(encoding="utf-8")]
    rows = rows[: args.limit] if args.limit else rows
    plays = speakers_by_play(args.train or args.heldout.with_name("train.jsonl"))
    stemmer = snowballstemmer.stemmer("english")
    asks = [extract_keywords(r["text"], language=spec.language, top=spec.max_keywords) for r in rows]
    keep = [(r, k) for r, k in zip(rows, asks) if k] * args.samples  # sample j of speech i: seed + j*n + i
    enc, d = model.encoder, spec.delimiters
    tallies = {c.name: Tally() for c in CONDITIONS}

    for c in CONDITIONS:
        heads = [
            prefix(
                k if c.keywords else (),
                r["category"] if c.category else None,
                r["title"] if c.title else None,
                d,
            )
            for r, k in keep
        ]
        entries = [
            GenerationSpec(
                [enc.eot_token, *enc.encode(h)],
                args.length,
                SamplingParams(temperature=args.temperature, top_k=args.top_k, seed=args.seed + i),
            )
            for i, h in enumerate(heads)
        ]
        t = tallies[c.name]
        for (row, kws), head, done in zip(keep, heads, generate(model.engine, entries, eos_id=enc.eot_token)):
            doc = parse(head + enc.decode([i for i in done.generated if i != enc.eot_token]), d)
            n = hits(kws, doc.body, stemmer)
            t.documents += 1
            t.asked += len(kws)
            t.hit += n
            t.documents_hit += n > 0
            t.per_document.append(n)
            t.words += len(doc.body.split())
            if not c.title:
                t.of_play += norm(doc.title) in plays.get(row["category"], set())
                t.speaker += norm(doc.title) == norm(row["title"])
            if len(t.examples) < 2:
                t.examples.append(
                    f"{kws} / {row['category']} / {row['title']} -> {doc.title!r}: {doc.body[:160]!r}"
                )

    print(
        f"model {model.path} ({len(keep) // args.samples} held-out speeches with keywords of {len(rows)}, "
        f"{args.samples} documents each per condition; "
        f"{args.length} new tokens at most, temperature {args.temperature}, top-k {args.top_k}, "
        f"seeds {args.seed}..{args.seed + len(keep) - 1}; {time.monotonic() - started:.0f} s)\n"
    )
    print(
        "| condition | keyword hit rate | documents with a hit | title a speaker of the play | title the held-out speaker | body words (mean) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for c in CONDITIONS:
        t = tallies[c.name]
        titled = "given" if c.title else f"{t.of_play / t.documents:.1%}"
        exact = "given" if c.title else f"{t.speaker / t.documents:.1%}"
        print(
            f"| {c.name} | {t.hit / t.asked:.1%} ({t.hit}/{t.asked}) | {t.documents_hit / t.documents:.1%} "
            f"| {titled} | {exact} | {t.words / t.documents:.0f} |"
        )
    print()
    print(paired(tallies["keywords"].per_document, tallies["no keywords"].per_document))
    print()
    for c in CONDITIONS:
        for ex in tallies[c.name].examples:
            print(f"{c.name}: {ex}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
