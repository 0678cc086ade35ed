"""Keywords of a text with YAKE (unsupervised, offline, many languages: pass the language code)."""

from __future__ import annotations

from functools import lru_cache

from app.keywords.format import DEFAULT, Delimiters


@lru_cache(maxsize=8)
def _extractor(language: str, top: int, ngram: int):
    import yake

    return yake.KeywordExtractor(lan=language, n=ngram, top=top, dedupLim=0.7)


def extract_keywords(
    text: str, *, language: str = "en", top: int = 5, ngram: int = 2, d: Delimiters = DEFAULT
) -> list[str]:
    """Up to ``top`` keywords of ``text``, most relevant first, lower-cased, without duplicates and
    without the format's section character (a keyword holding it is dropped)."""
    found = _extractor(language, top, ngram).extract_keywords(text)
    out: list[str] = []
    for phrase, _score in found:
        kw = " ".join(phrase.lower().split())
        if kw and d.section not in kw and kw not in out:
            out.append(kw)
    return out
