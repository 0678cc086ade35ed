"""The keyword document format and dataset (app/keywords): pure functions, YAKE, the real tokenizer."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from app.keywords.dataset import (
    Doc,
    KeywordConfig,
    encode_keyword_dataset,
    pieces,
    read_docs,
)
from app.keywords.extract import extract_keywords
from app.keywords.format import (
    Delimiters,
    document,
    keyword_subsets,
    parse,
    prefix,
    valid_keyword,
    valid_text,
)


def test_document_layout():
    doc = document("The body.\n", ["Dark Castle", "king"], category="tales", title="The King")
    assert doc == "<|startoftext|>~`tales~^dark-castle king~@The King~}The body.<|endoftext|>"
    # Missing sections are written empty: the layout is always the same.
    assert document("b", []) == "<|startoftext|>~`~^~@~}b<|endoftext|>"


def test_generation_prefix_stops_before_what_the_model_writes():
    assert prefix(["a b", "c"], "news") == "<|startoftext|>~`news~^a-b c~@"
    assert prefix(["a"], None, "Title") == "<|startoftext|>~`~^a~@Title~}"
    assert prefix([], title="") == "<|startoftext|>~`~^~@~}"  # no title: straight to the body


def test_custom_delimiters():
    d = Delimiters(section="|", category="c", keywords="k", title="t", body="b", start="<s>", end="</s>")
    assert prefix(["x y"], "cat", "T", d) == "<s>|ccat|kx-y|tT|b"
    assert parse("<s>|c|kx|tMy title|bSome body</s>junk", d).body == "Some body"
    assert Delimiters.from_dict(d.as_dict()) == d


def test_parse_title_and_body():
    full = prefix(["king"], "tales") + "A Title~}The body text.<|endoftext|>more"
    doc = parse(full)
    assert (doc.title, doc.body) == ("A Title", "The body text.")
    # Cut short before the body: the title so far, no body.
    assert parse(prefix(["king"]) + "Half a tit").title == "Half a tit"
    assert parse(prefix(["king"]) + "Half a tit").body == ""
    # Title given: everything generated is the body.
    assert parse(prefix(["king"], title="Given") + "Body.").title == "Given"
    assert parse(prefix(["king"], title="Given") + "Body.").body == "Body."


def test_round_trip_document_parse():
    doc = document("Once upon a time.", ["x"], "c", "T")
    assert parse(doc).title == "T" and parse(doc).body == "Once upon a time."


def test_keyword_subsets_carry_no_order_or_count_signal():
    rng = random.Random(0)
    kws = ["a", "b", "c", "d", "e"]
    subsets = keyword_subsets(kws, 400, rng, max_keywords=3)
    sizes = {len(s) for s in subsets}
    assert sizes == {0, 1, 2, 3}
    assert all(len(set(s)) == len(s) and set(s) <= set(kws) for s in subsets)
    firsts = {s[0] for s in subsets if s}
    assert firsts == set(kws)  # any keyword may come first: order says nothing
    assert keyword_subsets(["only"], 20, random.Random(1), 3) == keyword_subsets(
        ["only"], 20, random.Random(1), 3
    )
    assert all(len(s) <= 1 for s in keyword_subsets(["only"], 20, random.Random(1), 3))


def test_keyword_and_text_validation():
    assert valid_keyword("dark castle") and valid_keyword("кот")
    for bad in ("", "  ", "a~b", "a^", "`x", "@me", "x}"):
        assert not valid_keyword(bad), bad
    assert valid_text("") and valid_text("A title: @ ^ }") and not valid_text("a~b")


def test_yake_keywords_english_and_russian():
    text = "The king rode his horse to the castle. The castle was old and the king was tired of the castle."
    kws = extract_keywords(text, top=3)
    assert 1 <= len(kws) <= 3 and any("castle" in k for k in kws)
    assert all(k == k.lower() and "~" not in k for k in kws)
    ru = extract_keywords("Москва — столица России. В Москве много музеев, театров и музеев.", language="ru")
    assert any("москв" in k or "росси" in k for k in ru)


def test_pieces_split_a_long_body_and_drop_what_cannot_fit():
    pre = [1, 2, 3]
    out = pieces(pre, list(range(100, 125)), n_ctx=14, eot=0)  # room for 10 body tokens per piece
    assert [p[:3] for p in out] == [pre] * 3 and all(p[-1] == 0 and len(p) <= 14 for p in out)
    assert [t for p in out for t in p[3:-1]] == list(range(100, 125))
    assert pieces(list(range(10)), [5] * 30, n_ctx=14, eot=0) == []  # prefix leaves no room


def _docs() -> list[Doc]:
    return [
        Doc("The king rode out at dawn with his knights to the castle on the hill.", "tales", "The Ride"),
        Doc("Stocks fell sharply on Monday as markets reacted to the interest rate decision.", "news"),
    ]


def test_dataset_is_reproducible_from_the_seed(enc):
    cfg = KeywordConfig(n_ctx=128, repeat=5, seed=7)
    a, stats = encode_keyword_dataset(iter(_docs()), enc, cfg)
    b, _ = encode_keyword_dataset(iter(_docs()), enc, cfg)
    c, _ = encode_keyword_dataset(iter(_docs()), enc, KeywordConfig(n_ctx=128, repeat=5, seed=8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (stats.documents, stats.pieces, stats.split, stats.dropped) == (2, 10, 0, 0)
    text = enc.decode(a.tolist())
    assert text.count("<|startoftext|>~`tales~^") == 5 and text.count("~@The Ride~}The king rode") == 5
    assert text.count("<|startoftext|>~`news~^") == 5 and text.count("<|endoftext|>") == 10
    assert a.dtype == np.int32 and (a == enc.eot_token).sum() == 10  # the end is the special token


def test_long_documents_are_split_with_the_prefix_and_counted(enc):
    long = Doc(" ".join(f"word{i}" for i in range(200)), "c", "T")
    cfg = KeywordConfig(n_ctx=64, repeat=2, seed=0)
    tokens, stats = encode_keyword_dataset(iter([long, *_docs()]), enc, cfg)
    assert stats.split == 1 and stats.dropped == 0 and stats.pieces > 6
    docs = enc.decode(tokens.tolist()).split("<|endoftext|>")[:-1]
    assert all(d.startswith("<|startoftext|>~`") for d in docs)
    assert sum(d.startswith("<|startoftext|>~`c~^") for d in docs) == stats.pieces - 4
    tiny = KeywordConfig(n_ctx=16, repeat=1)  # the prefix alone fills the context
    _, stats = encode_keyword_dataset(iter(_docs()), enc, tiny)
    assert stats.dropped == 2 and stats.pieces == 0


def test_jsonl_and_folder_inputs(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    rows = [{"text": "one", "category": "a", "title": "T1"}, {"text": "two"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert list(read_docs(jsonl)) == [Doc("one", "a", "T1"), Doc("two")]
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        list(read_docs(tmp_path / "bad.jsonl"))
    root = tmp_path / "folder"
    (root / "sports").mkdir(parents=True)
    (root / "news" / "deep").mkdir(parents=True)
    (root / "sports" / "a.txt").write_text("goal")
    (root / "news" / "deep" / "b.txt").write_text("vote")
    (root / "loose.txt").write_text("free")
    assert list(read_docs(root)) == [Doc("free"), Doc("vote", "news"), Doc("goal", "sports")]
    with pytest.raises(FileNotFoundError):
        list(read_docs(tmp_path / "missing"))
