"""IncrementalDetokenizer (app/tokenizer/detokenizer.py): streamed pieces add up to decode()."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.tokenizer.bpe import Encoder
from app.tokenizer.detokenizer import IncrementalDetokenizer

PROPERTY = settings(max_examples=150, deadline=None)


def stream(enc: Encoder, ids: list[int]) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(enc)
    return [detok.push(i) for i in ids], detok.flush()


MULTIBYTE = [
    "😀",
    "🙂 hello 🎉🎉",
    "family 👨‍👩‍👧‍👦 and 👍🏽",
    "我能吞下玻璃而不伤身体。",
    "日本語のテキスト、ｶﾀｶﾅ",
    "Ёлка, naïve café",
    "e\u0301\u0302 \U0001f1fa\U0001f1e6 \U00010348 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.mark.parametrize("text", MULTIBYTE)
def test_pieces_add_up_and_never_split_a_character(enc: Encoder, text: str) -> None:
    ids = enc.encode(text)
    pieces, rest = stream(enc, ids)
    assert "".join(pieces) + rest == enc.decode(ids) == text
    assert rest == ""
    assert not any("\ufffd" in p for p in pieces)


def test_characters_really_are_split_across_tokens(enc: Encoder) -> None:
    # The case the detokenizer exists for: some tokens end inside a character.
    ids = enc.encode("😀 我能吞下玻璃")
    pieces, _ = stream(enc, ids)
    assert "" in pieces
    assert any(not is_utf8(enc.token_bytes(i)) for i in ids)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_holds_back_then_completes(enc: Encoder) -> None:
    ids = enc.encode("😀")
    detok = IncrementalDetokenizer(enc)
    assert [detok.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.pending
    assert detok.push(ids[-1]) == "😀"
    assert not detok.pending


def test_flush_replaces_an_incomplete_character_and_resets(enc: Encoder) -> None:
    ids = enc.encode("😀")
    detok = IncrementalDetokenizer(enc)
    assert detok.push(ids[0]) == ""
    assert detok.flush() == "\ufffd" == enc.decode(ids[:1])
    assert detok.flush() == ""
    assert "".join(detok.push(i) for i in enc.encode("ok")) == "ok"


def test_invalid_bytes_match_decode(enc: Encoder) -> None:
    ids = enc.encode("😀")
    seq = [ids[0], *enc.encode("a"), ids[0], ids[0], *ids]  # truncated, then a full emoji
    pieces, rest = stream(enc, seq)
    assert "".join(pieces) + rest == enc.decode(seq)


def test_out_of_range_id(enc: Encoder) -> None:
    detok = IncrementalDetokenizer(enc)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        detok.push(enc.n_vocab)


def test_special_token_text(enc: Encoder) -> None:
    detok = IncrementalDetokenizer(enc)
    assert detok.push(enc.eot_token) == "<|endoftext|>"


@PROPERTY
@given(st.text())
def test_valid_text_streams_exactly(enc: Encoder, text: str) -> None:
    ids = enc.encode(text)
    pieces, rest = stream(enc, ids)
    assert "".join(pieces) == text
    assert rest == ""
    assert not any("\ufffd" in p for p in pieces) or "\ufffd" in text


@PROPERTY
@given(st.lists(st.integers(0, 50256), max_size=40))
def test_any_ids_add_up_to_decode(enc: Encoder, ids: list[int]) -> None:
    pieces, rest = stream(enc, ids)
    assert "".join(pieces) + rest == enc.decode(ids)


# Byte tokens (the 256 single-byte ids) make invalid and truncated UTF-8 far more often.
BYTE_IDS = st.lists(st.integers(0, 255), max_size=40)


@PROPERTY
@given(BYTE_IDS)
def test_byte_tokens_add_up_to_decode(enc: Encoder, ids: list[int]) -> None:
    detok = IncrementalDetokenizer(enc)
    pieces = []
    for i in ids:
        pieces.append(detok.push(i))
        held = detok._decoder.getstate()[0]
        assert len(held) <= 3  # O(1) state: never more than an incomplete character
    assert "".join(pieces) + detok.flush() == enc.decode(ids)
