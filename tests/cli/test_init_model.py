"""`gpt2-serve init-model` writes a loadable random GPT-2 in either layout, and leaves models alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from app.cli.main import main
from app.model.hparams import HParams
from app.model.loader import detect_layout, load_weights
from app.model.random_init import random_params, write_random_model
from app.runtime.load import load_model
from app.tokenizer.load import load_tokenizer, tokenizer_files
from tests.support.tokenizers import train_bpe_folder, train_sp_folder

TINY_ARGS = ["--n-layer", "2", "--n-embd", "64", "--n-head", "4", "--n-ctx", "128"]
TINY = HParams(n_layer=2, n_embd=64, n_head=4, n_ctx=128)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("layout", ["openai", "hf"])
def test_init_model_writes_a_loadable_model(tmp_path, capsys, layout):
    dest = tmp_path / "random"
    assert main(["init-model", str(dest), *TINY_ARGS, "--layout", layout, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"in the {layout} layout to {dest}" in out and "2 layers" in out
    assert detect_layout(dest) == layout
    hp, params = load_weights(dest)
    assert hp == TINY
    expected = random_params(TINY, seed=3)
    for name, array in expected.items():
        np.testing.assert_array_equal(params[name], array, err_msg=name)
    encoder_json, _ = tokenizer_files(dest).paths
    assert encoder_json.stat().st_size > 1_000_000  # GPT-2's real 50257-entry encoder.json
    assert [p.name for p in tmp_path.iterdir()] == ["random"]  # no staging folder left behind


def test_if_missing_leaves_an_existing_model_alone(tmp_path, capsys):
    dest = tmp_path / "m"
    assert main(["init-model", str(dest), *TINY_ARGS, "--layout", "hf"]) == 0
    before = snapshot(dest)
    capsys.readouterr()
    assert (
        main(["init-model", str(dest), *TINY_ARGS, "--layout", "openai", "--seed", "9", "--if-missing"]) == 0
    )
    assert capsys.readouterr().out == f"{dest} already holds a model (hf layout); left it alone\n"
    assert snapshot(dest) == before


def test_if_missing_writes_into_an_empty_folder(tmp_path):
    assert main(["init-model", str(tmp_path), *TINY_ARGS, "--if-missing"]) == 0
    assert detect_layout(tmp_path) == "openai"


def test_refuses_to_overwrite_without_if_missing(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["init-model", str(tmp_path), *TINY_ARGS]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_impossible_size_is_a_one_line_error(tmp_path, capsys):
    assert main(["init-model", str(tmp_path / "m"), *TINY_ARGS, "--n-embd", "66"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2-serve init-model: error:") and "not divisible by n_head 4" in err
    assert not (tmp_path / "m").exists()


# -- a model for a tokenizer of one's own (docs/own-language.md) ------------------------------------


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    return train_bpe_folder(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    return train_sp_folder(tmp_path_factory.mktemp("sp"))


@pytest.mark.parametrize("layout", ["openai", "hf"])
@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_init_model_with_a_tokenizer_sizes_the_embedding_and_keeps_its_files(
    tmp_path, capsys, bpe_dir, sp_dir, kind, layout
):
    source = bpe_dir if kind == "bpe" else sp_dir
    tokenizer = load_tokenizer(source)
    assert tokenizer.n_vocab < 1000  # not GPT-2's 50257
    dest = tmp_path / "mine"
    assert main(["init-model", str(dest), *TINY_ARGS, "--tokenizer", str(source), "--layout", layout]) == 0
    out = capsys.readouterr().out
    described = "byte-level BPE" if kind == "bpe" else "sentencepiece"
    assert f"{described} vocabulary of {tokenizer.n_vocab}," in out
    hp, params = load_weights(dest)
    assert hp == dataclasses.replace(TINY, n_vocab=tokenizer.n_vocab)
    assert params["wte"].shape == (tokenizer.n_vocab, TINY.n_embd)
    # The tokenizer's own files went with the model, under the layout's names.
    copied, original = tokenizer_files(dest), tokenizer_files(source)
    assert copied.kind == original.kind
    names = {"bpe": {"openai": ["encoder.json", "vocab.bpe"], "hf": ["vocab.json", "merges.txt"]}}
    assert [p.name for p in copied.paths] == names.get(kind, {}).get(layout, ["sp.model"])
    for mine, theirs in zip(copied.paths, original.paths, strict=True):
        assert mine.read_bytes() == theirs.read_bytes()
    text = "Съешь же ещё этих булок"
    assert load_tokenizer(dest).encode(text) == tokenizer.encode(text)
    if layout == "hf":  # transformers' config names the tokenizer's end of text, not GPT-2's 50256
        config = json.loads((dest / "config.json").read_text())
        assert config["eos_token_id"] == config["bos_token_id"] == tokenizer.eot_token


def test_write_random_model_refuses_a_size_that_is_not_the_tokenizers(tmp_path, bpe_dir):
    with pytest.raises(ValueError, match=r"n_vocab must be \d+ to match the tokenizer's vocabulary"):
        write_random_model(tmp_path / "m", TINY, tokenizer=tokenizer_files(bpe_dir))
    with pytest.raises(ValueError, match="n_vocab must be 50257 to match GPT-2's BPE vocabulary"):
        write_random_model(tmp_path / "m", dataclasses.replace(TINY, n_vocab=400))
    assert not (tmp_path / "m").exists()


def test_load_model_refuses_a_model_whose_embedding_is_not_its_tokenizers(tmp_path, bpe_dir):
    """A folder whose weights were sized for GPT-2 but whose tokenizer is another: a clear error,
    before any weight is read."""
    dest = write_random_model(tmp_path / "gpt2-sized", TINY)
    for path in tokenizer_files(dest).paths:
        path.unlink()
    tokenizer_files(bpe_dir).copy_to(dest)
    n = load_tokenizer(bpe_dir).n_vocab
    with pytest.raises(ValueError) as info:
        load_model(dest, slots=1)
    assert str(info.value) == (
        f"{dest}: the tokenizer has {n} tokens but the model has n_vocab 50257; they must be equal "
        "(init-model --tokenizer sizes a new model to its tokenizer)"
    )
