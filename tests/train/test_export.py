"""encode -> train -> export -> serve, through the real commands. The exported folder holds
exactly the weights training reached, and the server answers with them: its greedy tokens are
those of Hugging Face's GPT-2 (tests/support/hf_reference.py) built from the trained weights."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from app.model.loader import detect_layout, load_weights
from app.model.random_init import random_params, write_random_model
from app.tokenizer.bpe import Encoder
from app.tokenizer.bundled import bundled_bpe_files
from app.train.export import run_tokenizer
from app.train.trainer import TrainConfig, Trainer
from tests.support.cli import cli
from tests.support.hf_reference import hf_greedy, hf_model
from tests.support.server_harness import STORY, TRAIN_HP, running_server, tiny_settings

pytestmark = pytest.mark.system  # starts processes or trains


def test_encode_train_export_and_serve(tmp_path, shelf):
    data = tmp_path / "texts"
    data.mkdir()
    for i in range(3):
        (data / f"part{i}.txt").write_text(STORY[i * 300 : (i + 1) * 300 + 2000])
    base = write_random_model(tmp_path / "base", TRAIN_HP, seed=0)

    code, out, _ = cli(
        ["encode", str(data), str(tmp_path / "data.npz"), "--model", str(base), "--combine", "100"]
    )
    assert code == 0 and "tokens in 3 chunks" in out
    with np.load(tmp_path / "data.npz") as npz:
        assert len(npz.files) == 3 and all(npz[k].dtype == np.int32 for k in npz.files)

    ck = tmp_path / "checkpoint"
    args = [
        "train",
        "--dataset",
        str(tmp_path / "data.npz"),
        "--model",
        str(base),
        "--run-name",
        "r1",
        "--checkpoint-dir",
        str(ck),
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--learning-rate",
        "3e-3",
        "--val-fraction",
        "0.2",
        "--val-every",
        "3",
        "--val-batches",
        "2",
        "--save-every",
        "3",
    ]
    assert cli(args)[0] == 0
    assert (ck / "r1" / "losses.csv").read_text().count("\n") == 7  # header + 6 steps
    code, _, err = cli([*args[:-4], "--steps", "8"])
    assert code == 0 and "restored" in err  # resumes at step 6

    models = tmp_path / "models"
    assert (
        cli(
            [
                "export",
                "r1",
                "--name",
                "mine",
                "--checkpoint-dir",
                str(ck),
                "--models-dir",
                str(models),
                "--samples",
                "2",
                "--sample-length",
                "5",
            ]
        )[0]
        == 0
    )
    folder = models / "mine"
    assert detect_layout(folder) == "openai"
    # The source model's tokenizer went with the run into the model.
    for name in ("encoder.json", "vocab.bpe"):
        assert (ck / "r1" / name).read_bytes() == (base / name).read_bytes()
        assert (folder / name).read_bytes() == (base / name).read_bytes()
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Steps: 8" in card and "Validation loss:" in card and "Sample 2" in card
    hp, params = load_weights(folder)
    assert hp == TRAIN_HP and not np.allclose(params["h0/mlp/c_fc/w"], load_weights(base)[1]["h0/mlp/c_fc/w"])
    # Exactly the weights of the run's last checkpoint, as the trainer itself restores them.
    trained = Trainer(TRAIN_HP, random_params(TRAIN_HP, seed=99), TrainConfig(), ck / "r1")
    assert trained.restore("latest") != "fresh" and int(trained.step.numpy()) == 8
    assert sorted(params) == sorted(trained.params())
    for name, value in trained.params().items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)

    enc = Encoder.from_files(*bundled_bpe_files())
    prompt = enc.encode("The king")
    expected = hf_greedy(hf_model(TRAIN_HP, trained.params()), prompt, 4)
    if enc.eot_token in expected:  # the server stops at the end-of-text token, Hugging Face here does not
        expected = expected[: expected.index(enc.eot_token) + 1]
    with running_server(tiny_settings("mine", models_dir=str(models)), shelf=shelf) as url:
        listed = httpx.get(f"{url}/models", timeout=30).json()["models"]
        assert [(m["name"], m["state"]) for m in listed] == [("mine", "ready")]
        r = httpx.post(
            f"{url}/generate",
            json={"inputs": "The king", "parameters": {"max_new_tokens": 4, "details": True}},
            timeout=120,  # a loaded machine: httpx's default 5 s is not enough
        )
        assert r.status_code == 200 and r.json()["generated_text"]
        assert [t["id"] for t in r.json()["details"]["tokens"]] == expected
        assert r.json()["generated_text"] == enc.decode([t for t in expected if t != enc.eot_token])


def test_a_run_without_a_kept_tokenizer_exports_gpt2s(tmp_path):
    """Runs from before the trainer kept the source's tokenizer all started from GPT-2's vocabulary."""
    assert run_tokenizer(tmp_path).paths == bundled_bpe_files()
    for name in ("encoder.json", "vocab.bpe"):
        (tmp_path / name).write_text("{}")
    assert run_tokenizer(tmp_path).paths == (tmp_path / "encoder.json", tmp_path / "vocab.bpe")
