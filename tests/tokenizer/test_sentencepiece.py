"""A sentencepiece model as a model's tokenizer (app/tokenizer/sentencepiece_encoder.py, found by
app/tokenizer/load.py): a model trained here, decoded as sentencepiece decodes, streamed without
broken characters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import ModelFileError
from app.server.text_stream import TextStream
from app.tokenizer.bpe import ENDOFTEXT, Encoder, bytes_to_unicode
from app.tokenizer.detokenizer import IncrementalDetokenizer
from app.tokenizer.load import load_tokenizer
from app.tokenizer.sentencepiece_encoder import SentencePieceEncoder
from tests.support.tokenizers import train_sp_folder

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

TRAINING = [
    "Съешь же ещё этих мягких французских булок, да выпей же чаю.",
    "Привет, мир! Как дела? Всё хорошо, спасибо.",
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "日本語のテキスト、我能吞下玻璃而不伤身体。",
] * 40

HELD_OUT = [
    "Ещё раз: мягкие булки и горячий чай.",
    "  leading spaces, then   runs\n\nof whitespace\t\tand tabs  ",
    "Unseen: Ελληνικά ภาษาไทย 한국어 ꙮ",  # byte fallback
    "👨‍👩‍👧‍👦 👍🏽 🇺🇦 😱🎉",
    "x",
    " y",
    "",
]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    """A model folder with an sp.model trained here: byte fallback, identity normalisation (so text
    round-trips), the default dummy prefix, <|endoftext|> as a user-defined symbol."""
    return train_sp_folder(tmp_path_factory.mktemp("sp-model"), TRAINING, vocab_size=360, repeat=1)


@pytest.fixture(scope="module")
def sp_enc(sp_dir: Path) -> SentencePieceEncoder:
    enc = load_tokenizer(sp_dir)
    assert isinstance(enc, SentencePieceEncoder)
    return enc


@pytest.fixture(scope="module")
def processor(sp_dir: Path) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(sp_dir / "sp.model"))


def stream(enc, ids: list[int]) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(enc)
    return [detok.push(i) for i in ids], detok.flush()


@pytest.mark.parametrize("text", HELD_OUT)
def test_encodes_as_sentencepiece_and_round_trips(sp_enc, processor, text: str) -> None:
    ids = sp_enc.encode(text)
    assert ids == processor.encode(text)
    assert sp_enc.decode(ids) == processor.decode(ids) == text


@pytest.mark.parametrize("text", HELD_OUT)
def test_streams_whole_characters_that_add_up_to_decode(sp_enc, text: str) -> None:
    ids = sp_enc.encode(text)
    pieces, rest = stream(sp_enc, ids)
    assert "".join(pieces) + rest == sp_enc.decode(ids) == text
    assert rest == ""
    assert not any("\ufffd" in p for p in pieces)


def test_unseen_characters_really_are_split_into_byte_pieces(sp_enc, processor) -> None:
    ids = sp_enc.encode("ꙮ")
    assert all(processor.is_byte(i) for i in ids if processor.id_to_piece(i) != "▁")
    pieces, _ = stream(sp_enc, ids)
    assert pieces[-1] == "ꙮ" and set(pieces[:-1]) <= {""}


@PROPERTY
@given(st.text(alphabet=st.sampled_from(list("абв ёж\n\tqü日本😀ꙮ")), max_size=40))
def test_any_text_round_trips_and_streams(sp_enc, processor, text: str) -> None:
    ids = sp_enc.encode(text)
    pieces, rest = stream(sp_enc, ids)
    assert "".join(pieces) + rest == sp_enc.decode(ids) == processor.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


@PROPERTY
@given(st.data())
def test_any_ids_without_byte_pieces_decode_as_sentencepiece(sp_enc, processor, data) -> None:
    # Control pieces, <unk>, lone "▁" pieces: where the leading space is dropped, and where not.
    text_ids = [i for i in range(sp_enc.n_vocab) if not processor.is_byte(i)]
    ids = data.draw(st.lists(st.sampled_from(text_ids), max_size=12))
    assert sp_enc.decode(ids) == processor.decode(ids)
    pieces, rest = stream(sp_enc, ids)
    assert "".join(pieces) + rest == sp_enc.decode(ids)


@PROPERTY
@given(st.data())
def test_any_ids_stream_to_decode(sp_enc, data) -> None:
    # Byte pieces alone make invalid and truncated UTF-8 (replaced as Python replaces).
    ids = data.draw(st.lists(st.integers(0, sp_enc.n_vocab - 1), max_size=30))
    pieces, rest = stream(sp_enc, ids)
    assert "".join(pieces) + rest == sp_enc.decode(ids)


def test_eot_token_and_allowed_special(sp_enc, processor) -> None:
    eot = processor.piece_to_id(ENDOFTEXT)
    assert sp_enc.eot_token == eot and sp_enc.n_vocab == processor.get_piece_size() > 256
    ids = sp_enc.encode(f"мир{ENDOFTEXT}чай", allowed_special={ENDOFTEXT})
    assert eot in ids
    assert sp_enc.decode(ids).startswith(f"мир{ENDOFTEXT}")
    with pytest.raises(ValueError, match="special"):
        sp_enc.encode("x", allowed_special={"<|nope|>"})


def test_out_of_range_id(sp_enc) -> None:
    n = sp_enc.n_vocab
    with pytest.raises(ValueError, match=rf"outside the vocabulary \(0..{n - 1}\)"):
        sp_enc.decode([n])


def test_text_stream_stops_with_a_sentencepiece_model(sp_enc) -> None:
    ids = sp_enc.encode("Привет, мир! 😀 STOP не это")
    ts = TextStream(sp_enc, stop=["STOP"])
    out = "".join(ts.push(i) for i in ids) + ts.finish()
    assert out == ts.text == "Привет, мир! 😀 " and ts.stopped_by == "STOP"


# -- which tokenizer a folder has ---------------------------------------------------------------


def test_bpe_files_win_over_sp_model(sp_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "both"
    folder.mkdir()
    (folder / "sp.model").write_bytes((sp_dir / "sp.model").read_bytes())
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    (folder / "encoder.json").write_text(json.dumps(vocab))
    (folder / "vocab.bpe").write_text("#version: 0.2\n")
    assert isinstance(load_tokenizer(folder), Encoder)


def test_folder_without_tokenizer_names_every_kind(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="encoder.json: file is missing.*or a sentencepiece sp.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(ModelFileError, match="model folder is missing"):
        load_tokenizer(tmp_path / "nope")


def test_broken_sp_model_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "sp.model").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"sp.model: not a sentencepiece model"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "pieces",
    [["▁", "W"], ["<s>", "W"], ["<s>", "▁", "W"], ["<unk>", "W"], ["<0x41>", "W"], ["▁", "▁"], ["W", "W"]],
)
def test_leading_space_dropped_only_from_the_first_visible_piece(sp_enc, processor, pieces) -> None:
    # "W": a piece that starts with "▁" and has more after it.
    word = next(
        p for i in range(processor.get_piece_size()) if len(p := processor.id_to_piece(i)) > 1 and p[0] == "▁"
    )
    ids = [processor.piece_to_id(word if p == "W" else p) for p in pieces]
    assert sp_enc.decode(ids) == processor.decode(ids)
