"""Keyword requests (``keywords``, ``category``, ``title``) on the one generation path: checked
against the model's ``keywords.json`` and the server's limits, turned into the document prefix the
model was trained on, and the generated document parsed back into a title and a body."""

from __future__ import annotations

from collections.abc import Sequence

from app.keywords.format import (
    Delimiters,
    Parsed,
    keyword_chars,
    parse,
    prefix,
    valid_keyword,
    valid_text,
)
from app.keywords.model_spec import KeywordSpec
from app.server.errors import APIError
from app.server.settings import Settings


def model_spec(spec: KeywordSpec | None, name: str, param: str) -> KeywordSpec:
    """The model's spec; a 422 naming ``param`` for a model that is not keyword-conditioned."""
    if spec is None:
        raise APIError.invalid(
            param,
            f"model {name} is not keyword-conditioned (its folder has no keywords.json: it was "
            "not trained on a dataset from `gpt2-serve encode --keywords`)",
        )
    return spec


def check_keywords(settings: Settings, d: Delimiters, keywords: Sequence[str]) -> None:
    if len(keywords) > settings.max_keywords:
        raise APIError.invalid("keywords", f"at most {settings.max_keywords} keywords, got {len(keywords)}")
    for kw in keywords:
        if len(kw) > settings.max_keyword_length or not valid_keyword(kw, d):
            raise APIError.invalid(
                "keywords",
                f"each keyword must have 1 to {settings.max_keyword_length} characters, not all "
                f"spaces, and none of {' '.join(keyword_chars(d))} (the model's delimiters), got {kw!r}",
            )


def check_text_field(settings: Settings, d: Delimiters, value: str | None, param: str) -> None:
    if value is not None and (len(value) > settings.max_title_length or not valid_text(value, d)):
        raise APIError.invalid(
            param,
            f"at most {settings.max_title_length} characters, none of them {d.section!r} (the model's delimiter)",
        )


def keyword_prompt(
    settings: Settings,
    spec: KeywordSpec,
    keywords: Sequence[str] | None,
    category: str | None,
    title: str | None,
    inputs: str,
) -> str:
    """The checked document prefix, then ``inputs`` (the start of the title, or of the body when a
    title is given) as text."""
    d = spec.delimiters
    check_keywords(settings, d, keywords or ())
    check_text_field(settings, d, category, "category")
    check_text_field(settings, d, title, "title")
    return prefix(keywords or (), category, title, d) + inputs


def parsed_output(
    spec: KeywordSpec,
    keywords: Sequence[str] | None,
    category: str | None,
    title: str | None,
    text: str,
) -> Parsed:
    """Title and body of ``text`` (the request's ``inputs`` and what the model generated)."""
    d = spec.delimiters
    return parse(prefix(keywords or (), category, title, d) + text, d)
