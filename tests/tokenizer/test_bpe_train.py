"""A byte-level BPE trained with Hugging Face ``tokenizers`` (app/tokenizer/bpe_train.py), written as
GPT-2's files and read back by our own Encoder: the same ids as the trained object on held-out text,
exact round trips, GPT-2's id layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.tokenizer.bpe import ENDOFTEXT, Encoder, bytes_to_unicode
from app.tokenizer.bpe_train import MERGES_HEADER, train_bpe, write_gpt2_files
from app.tokenizer.detokenizer import IncrementalDetokenizer

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

TRAINING = [
    "The quick brown fox jumps over the lazy dog. It's the dog's day, isn't it?\n" * 20,
    "Съешь же ещё этих мягких французских булок, да выпей же чаю. Привет, мир!\n" * 20,
    "Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus München.\n" * 10,
    "def main():\n    return [x * 2 for x in range(10)]  # 1234567890\n" * 10,
    "我能吞下玻璃而不伤身体。日本語のテキスト。🙂🙂 🎉\n" * 10,
]
USER = "<|user|>"

# Held out: none of it is in TRAINING; some characters are in no training text at all.
HELD_OUT = {
    "english": "A lazy fox, the quickest dog: they're jumping over brown logs!",
    "russian": "Ещё раз: мягкие булки и горячий чай, пожалуйста.",
    "greek_thai_hangul_unseen": "Ελληνικά ภาษาไทย 한국어 ꙮ",
    "emoji_unseen": "👨‍👩‍👧‍👦 👍🏽 🇺🇦 ❤️ 1️⃣ 🙂🎉",
    "whitespace_runs": "a  b   c\n\n\n  d\t\t e \u00a0\u3000f   \r\n\r\n   ",
    "controls": "\x00\x01\x1b[31mred\x1b[0m\x7f\x85",
    "code": "    if x:\n        return {k: v for k, v in y.items()}\n",
    "combining": "e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "numbers": "3.14159 1,000,000 ٣٤٥ ½",
    "endoftext_as_text": f"a{ENDOFTEXT}b {USER}",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(the trained tokenizers object, our Encoder loaded from the files written for it)."""
    tok = train_bpe(TRAINING, vocab_size=600, min_frequency=2, special_tokens=[USER], progress=False)
    out = tmp_path_factory.mktemp("own-bpe")
    write_gpt2_files(tok, out)
    return tok, Encoder.from_dir(out), out


@pytest.mark.parametrize("name", sorted(HELD_OUT))
def test_our_encoder_gives_the_trained_ids_and_round_trips(trained, name: str) -> None:
    tok, enc, _ = trained
    text = HELD_OUT[name]
    ids = enc.encode(text)
    if (
        ENDOFTEXT not in text
    ):  # tokenizers reads special tokens in text; ours (as GPT-2's) does not by default
        assert ids == tok.encode(text).ids
    assert enc.decode(ids) == text
    assert enc.decode_bytes(ids) == text.encode("utf-8")
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_in_text_as_tokenizers_reads_them(trained) -> None:
    tok, enc, _ = trained
    text = HELD_OUT["endoftext_as_text"] + f" {ENDOFTEXT}{USER}x"
    assert enc.encode(text, allowed_special="all") == tok.encode(text).ids
    assert enc.eot_token not in enc.encode(text)
    assert enc.special_tokens == {ENDOFTEXT, USER}


def test_characters_absent_from_training_fall_back_to_byte_tokens(trained) -> None:
    _, enc, _ = trained
    seen = "".join(TRAINING)
    for ch in "ꙮภ":  # no training text has a byte of these but the last
        assert not any(b in seen.encode() for b in (ch.encode()[:1], ch.encode()[:2]))
        ids = enc.encode(ch)
        assert [enc.token_bytes(i) for i in ids] == [bytes([b]) for b in ch.encode("utf-8")]
    ids = enc.encode("😱")  # unseen, but its first bytes are those of the emoji trained on
    assert len(ids) > 1 and enc.decode_bytes(ids) == "😱".encode()


@PROPERTY
@given(st.text(max_size=60))
def test_any_text_same_ids_and_exact_round_trip(trained, text: str) -> None:
    tok, enc, _ = trained
    ids = enc.encode(text)
    if ENDOFTEXT not in text and USER not in text:
        assert ids == tok.encode(text).ids
    assert enc.decode(ids) == text


@PROPERTY
@given(st.lists(st.integers(0, 255), max_size=30))
def test_byte_tokens_invalid_utf8_decode_as_tokenizers_and_stream(trained, ids: list[int]) -> None:
    # Byte tokens alone make invalid and truncated UTF-8: decoding replaces as tokenizers does,
    # and the streamed pieces add up to it.
    tok, enc, _ = trained
    assert enc.decode(ids) == tok.decode(ids)
    detok = IncrementalDetokenizer(enc)
    assert "".join(detok.push(i) for i in ids) + detok.flush() == enc.decode(ids)


def test_gpt2_id_layout(trained) -> None:
    tok, enc, out = trained
    vocab = tok.get_vocab()
    assert enc.n_vocab == len(vocab) == tok.get_vocab_size() > 300
    assert enc.eot_token == enc.n_vocab - 1  # last, as GPT-2's 50256
    assert vocab[USER] == enc.n_vocab - 2
    assert [vocab[c] for c in bytes_to_unicode().values()] == list(range(256))
    lines = (out / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    assert lines[0] == MERGES_HEADER
    first_merge = "".join(lines[1].split())
    assert vocab[first_merge] == 256  # each merge's token in merge order, as GPT-2's


def test_a_small_corpus_gives_fewer_tokens_than_asked() -> None:
    tok = train_bpe(["ab ab ab"], vocab_size=5000, progress=False)
    assert 257 < tok.get_vocab_size() < 5000
    assert tok.get_vocab()[ENDOFTEXT] == tok.get_vocab_size() - 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 256}, "--vocab-size 256 is too small: the 256 byte tokens and 1 special token"),
        ({"vocab_size": 257, "special_tokens": ["<a>"]}, "need 258"),
        ({"vocab_size": 300, "min_frequency": 0}, "--min-frequency must be >= 1"),
        ({"vocab_size": 300, "special_tokens": ["a b"]}, "special token 'a b'"),
    ],
)
def test_bad_settings(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_bpe(["some text"], progress=False, **kwargs)


@pytest.mark.parametrize("texts", [[], ["", ""]])
def test_empty_corpus(texts) -> None:
    with pytest.raises(ValueError, match="the corpus holds no text"):
        train_bpe(texts, vocab_size=300, progress=False)


def test_written_files_are_what_encoder_loads_from_a_model_folder(trained, tmp_path: Path) -> None:
    from app.tokenizer.load import load_tokenizer

    _, enc, out = trained
    loaded = load_tokenizer(out)
    assert isinstance(loaded, Encoder)
    assert loaded.n_vocab == enc.n_vocab != 50257
