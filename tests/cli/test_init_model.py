"""`gpt2-serve init-model` writes a loadable random GPT-2 in either layout, and leaves models alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.cli.main import main
from app.model.hparams import HParams
from app.model.loader import detect_layout, load_weights
from app.model.random_init import random_params
from app.tokenizer.bpe import tokenizer_files

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
    encoder_json, _ = tokenizer_files(dest)
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
