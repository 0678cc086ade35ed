"""Russian fortunes as JSONL documents, the corpus of the Russian demo (``make demo-ru``).

The texts are Debian's ``fortunes-ru`` (fortune-mod-ru 1.52 by Pavel Maryanov, GPL-2): UTF-8
files of sayings, jokes and quotations separated by lines holding ``%``. ``make demo-ru`` fetches
the package with ``apt-get download`` and unpacks it with ``dpkg-deb -x`` (no installation, no
root). Each fortune is one row ``{"text": ...}`` (its lines as written, the attribution line
included); the ``.u8`` names are links to the same files and are read once. Every
``--heldout-every``-th fortune goes to the held-out file instead, which the demo's measurements
read; it is never trained on.

Run: ``python bench/russian_fortunes.py FORTUNES_DIR TRAIN.jsonl HELDOUT.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path

SEPARATOR = re.compile(r"^%\s*$", re.M)


def fortunes(text: str, min_chars: int) -> Iterator[str]:
    """The fortunes of one file, each stripped of surrounding blank lines and trailing spaces."""
    for piece in SEPARATOR.split(text.replace("\r", "")):
        lines = [ln.rstrip() for ln in piece.strip("\n").split("\n")]
        body = "\n".join(lines).strip("\n")
        if len(body) >= min_chars:
            yield body


def sources(folder: Path) -> list[Path]:
    """The fortune files of ``folder``: not the ``.dat`` indexes, each file once (``.u8`` links)."""
    files = {p.resolve() for p in folder.iterdir() if p.is_file() and p.suffix != ".dat"}
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fortunes", type=Path, help="the unpacked package's usr/share/games/fortunes/ru")
    ap.add_argument("train", type=Path)
    ap.add_argument("heldout", type=Path)
    ap.add_argument("--heldout-every", type=int, default=20, help="every n-th fortune is held out")
    ap.add_argument("--min-chars", type=int, default=20, help="shorter fortunes are left out")
    args = ap.parse_args(argv)
    files = sources(args.fortunes)
    if not files:
        ap.error(f"{args.fortunes}: no fortune files")
    seen: set[str] = set()
    counts = [0, 0]
    with args.train.open("w", encoding="utf-8") as train, args.heldout.open("w", encoding="utf-8") as held:
        for path in files:
            for text in fortunes(path.read_text(encoding="utf-8", errors="replace"), args.min_chars):
                if text in seen:  # the monthly files repeat some fortunes: each is one document
                    continue
                seen.add(text)
                out = (len(seen) % args.heldout_every) == 0
                (held if out else train).write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                counts[out] += 1
    print(f"{counts[0]} fortunes to {args.train}, {counts[1]} held out to {args.heldout}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
