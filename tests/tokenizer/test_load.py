"""Which files make up a folder's tokenizer, and what GET /models and a model card call it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.tokenizer.bpe import Encoder, read_merges, read_vocab
from app.tokenizer.bundled import bundled_bpe_files
from app.tokenizer.load import (
    describe_tokenizer,
    find_tokenizer_files,
    gpt2_tokenizer_files,
    load_tokenizer,
    tokenizer_files,
)
from tests.support.tokenizers import train_bpe_folder, train_sp_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {"bpe": train_bpe_folder(root / "bpe"), "sp": train_sp_folder(root / "sp")}


def test_the_kinds_and_sizes(enc, folders):
    assert describe_tokenizer(enc) == {"kind": "GPT-2 BPE", "n_vocab": 50257}
    trained = load_tokenizer(folders["bpe"])
    assert describe_tokenizer(trained) == {"kind": "byte-level BPE", "n_vocab": trained.n_vocab}
    sp = load_tokenizer(folders["sp"])
    assert describe_tokenizer(sp) == {"kind": "sentencepiece", "n_vocab": sp.n_vocab}


def test_gpt2_means_gpt2s_own_vocabulary_and_merges_not_its_size():
    encoder_json, vocab_bpe = bundled_bpe_files()
    vocab, (merges, _) = read_vocab(encoder_json), read_merges(vocab_bpe)
    assert describe_tokenizer(Encoder(vocab, merges))["kind"] == "GPT-2 BPE"
    swapped = [merges[1], merges[0], *merges[2:]]  # the same 50257 tokens, two merges' order swapped
    assert describe_tokenizer(Encoder(vocab, swapped)) == {"kind": "byte-level BPE", "n_vocab": 50257}


def test_which_files_make_up_a_folders_tokenizer(folders, tmp_path):
    assert tokenizer_files(folders["bpe"]).paths == (
        folders["bpe"] / "encoder.json",
        folders["bpe"] / "vocab.bpe",
    )
    assert tokenizer_files(folders["sp"]).kind == "sentencepiece"
    assert tokenizer_files(folders["sp"]).paths == (folders["sp"] / "sp.model",)
    assert find_tokenizer_files(tmp_path) is None
    assert gpt2_tokenizer_files().paths == bundled_bpe_files()
    copied = tokenizer_files(folders["sp"]).copy_to(tmp_path / "hf", "hf")
    assert copied.paths == (tmp_path / "hf" / "sp.model",) and tokenizer_files(tmp_path / "hf") == copied
    copied = tokenizer_files(folders["bpe"]).copy_to(tmp_path / "hf2", "hf")
    assert [p.name for p in copied.paths] == ["vocab.json", "merges.txt"]
    assert load_tokenizer(tmp_path / "hf2").encode("Съешь") == load_tokenizer(folders["bpe"]).encode("Съешь")
