"""Stop sequences across token boundaries and UTF-8-safe text release (app/server/text_stream.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.server.text_stream import TextStream
from app.tokenizer.bpe import Encoder


def run(enc: Encoder, text: str, stop: list[str]) -> tuple[list[str], TextStream]:
    ts = TextStream(enc, stop)
    pieces = []
    for i in enc.encode(text):
        pieces.append(ts.push(i))
        if ts.stopped_by:
            break
    pieces.append(ts.finish())
    return pieces, ts


def test_without_stops_text_equals_decode(enc):
    text = "Hello 😀 wörld — 中文 tabs\t\tand  spaces"
    pieces, ts = run(enc, text, [])
    assert "".join(pieces) == ts.text == text


def test_stop_sequence_spanning_tokens_is_cut_and_excluded(enc):
    pieces, ts = run(enc, "The end is near, my friend. Later text", ["near, my"])
    assert ts.text == "The end is " and ts.stopped_by == "near, my"
    assert "".join(pieces) == ts.text


def test_held_text_is_released_when_the_stop_cannot_match(enc):
    # "my f" could start "my friend!" until "riend." arrives.
    pieces, ts = run(enc, "hello my friend. bye", ["my friend!"])
    assert ts.stopped_by is None and ts.text == "hello my friend. bye"
    assert "".join(pieces) == ts.text


def test_earliest_of_several_stops_wins(enc):
    _, ts = run(enc, "alpha beta gamma delta", ["delta", "beta"])
    assert ts.text == "alpha " and ts.stopped_by == "beta"


def test_special_tokens_add_no_text(enc):
    ts = TextStream(enc)
    assert ts.push(enc.eot_token, special=True) == ""
    assert ts.finish() == ""


def test_empty_stop_is_refused(enc):
    with pytest.raises(ValueError, match="must not be empty"):
        TextStream(enc, [""])


@settings(max_examples=150, deadline=None)
@given(text=st.text(min_size=0, max_size=60), stop=st.lists(st.text(min_size=1, max_size=6), max_size=3))
def test_pieces_concatenate_to_the_text_up_to_the_first_stop(enc, text, stop):
    pieces, ts = run(enc, text, stop)
    assert "".join(pieces) == ts.text
    assert "\ufffd" not in ts.text or "\ufffd" in text
    if ts.stopped_by is None:
        assert ts.text == text
    else:
        # The kept text is a prefix of the input and the first stop occurrence begins right after it.
        assert text.startswith(ts.text)
        assert text[len(ts.text) :].startswith(ts.stopped_by)
        assert not any(s in ts.text for s in stop)
