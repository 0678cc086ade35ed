"""The keyword document format, as pure functions.

A training document is ``<|startoftext|>~`category~^kw1 kw2~@title~}body<|endoftext|>``: ``~``
opens a section, then one character names it (`` ` `` category, ``^`` keywords, ``@`` title, ``}``
body). Every section is always written (empty when unknown) so the layout carries no signal. Spaces
inside a keyword become ``-`` and keywords are lower-cased. At generation time the prompt is the
document up to ``~@`` (no title: the model writes one) or ``~}`` (title given).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Delimiters:
    """The characters and markers of one model's keyword format (recorded in its ``keywords.json``)."""

    section: str = "~"
    category: str = "`"
    keywords: str = "^"
    title: str = "@"
    body: str = "}"
    start: str = "<|startoftext|>"
    end: str = "<|endoftext|>"
    keyword_space: str = "-"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Delimiters:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


DEFAULT = Delimiters()


def keyword_chars(d: Delimiters = DEFAULT) -> str:
    """The characters a keyword may not hold: the section character and every section's mark."""
    return d.section + d.category + d.keywords + d.title + d.body


def _class(chars: str) -> str:
    """``chars`` inside a regex character class (escaped only where a class needs it)."""
    return "".join("\\" + c if c in "^]\\-[" else c for c in sorted(set(chars)))


def keyword_pattern(chars: str) -> str:
    """A keyword: at least one non-space character and none of ``chars`` (the schema's ``pattern``)."""
    no = _class(chars)
    return f"^[^{no}]*[^{no}\\s][^{no}]*$"


def text_pattern(chars: str) -> str:
    """A category or title: none of ``chars`` (empty is allowed: "no category", "no title")."""
    return f"^[^{_class(chars)}]*$"


def valid_keyword(keyword: str, d: Delimiters = DEFAULT) -> bool:
    """Some non-space character and no delimiter (what the OpenAPI document's ``pattern`` says)."""
    return re.fullmatch(keyword_pattern(keyword_chars(d)), keyword) is not None


def valid_text(text: str, d: Delimiters = DEFAULT) -> bool:
    """A category or title: no section character."""
    return re.fullmatch(text_pattern(d.section), text) is not None


def keyword_token(keyword: str, d: Delimiters = DEFAULT) -> str:
    """One keyword as written in a document: lower case, inner whitespace as ``-``."""
    return d.keyword_space.join(keyword.lower().split())


def clean(text: str, d: Delimiters = DEFAULT) -> str:
    """A category or title on one line, without the section character."""
    return " ".join(text.replace(d.section, " ").split())


def prefix(
    keywords: Sequence[str],
    category: str | None = None,
    title: str | None = None,
    d: Delimiters = DEFAULT,
) -> str:
    """The document up to where the model writes: ``~@`` without a title, ``~}`` with one."""
    kws = " ".join(keyword_token(k, d) for k in keywords)
    head = f"{d.start}{d.section}{d.category}{clean(category or '', d)}{d.section}{d.keywords}{kws}"
    head += f"{d.section}{d.title}"
    if title is None:
        return head
    return f"{head}{clean(title, d)}{d.section}{d.body}"


def document(
    body: str,
    keywords: Sequence[str],
    category: str | None = None,
    title: str | None = None,
    d: Delimiters = DEFAULT,
) -> str:
    """One training document (the body keeps its text; the section character in it is not special)."""
    return f"{prefix(keywords, category, title or '', d)}{body.strip()}{d.end}"


def keyword_subsets(
    keywords: Sequence[str], repeat: int, rng: random.Random, max_keywords: int = 3
) -> list[list[str]]:
    """``repeat`` random subsets of 0..``max_keywords`` keywords, each shuffled: neither the order nor
    the number of keywords in a document says anything about it."""
    out = []
    for _ in range(repeat):
        k = rng.randint(0, min(max_keywords, len(keywords)))
        out.append(rng.sample(list(keywords), k))
    return out


@dataclass(frozen=True)
class Parsed:
    title: str
    body: str


def parse(text: str, d: Delimiters = DEFAULT) -> Parsed:
    """Title and body of a generated document (the prefix and what the model wrote after it). A
    document cut short has what it reached: no ``~}`` yet means the body is empty."""
    text = text.split(d.end, 1)[0]
    title_mark, body_mark = d.section + d.title, d.section + d.body
    rest = text.split(title_mark, 1)[1] if title_mark in text else ""
    if body_mark not in rest:
        return Parsed(title=rest.strip(), body="")
    title, body = rest.split(body_mark, 1)
    return Parsed(title=title.strip(), body=body.strip())
