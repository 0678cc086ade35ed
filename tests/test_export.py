"""encode -> train -> export -> serve, through the real commands."""

from __future__ import annotations

import httpx
import numpy as np

from app.cli.main import main
from app.model.loader import detect_layout, load_weights
from app.model.random_init import write_random_model
from tests.server_harness import running_server, tiny_settings
from tests.test_train import HP, TEXT


def test_encode_train_export_and_serve(tmp_path, capsys):
    data = tmp_path / "texts"
    data.mkdir()
    for i in range(3):
        (data / f"part{i}.txt").write_text(TEXT[i * 300 : (i + 1) * 300 + 2000])
    base = write_random_model(tmp_path / "base", HP, seed=0)

    assert main(["encode", str(data), str(tmp_path / "data.npz"), "--model", str(base), "--combine", "100"]) == 0
    assert "tokens in 3 chunks" in capsys.readouterr().out
    with np.load(tmp_path / "data.npz") as npz:
        assert len(npz.files) == 3 and all(npz[k].dtype == np.int32 for k in npz.files)

    ck = tmp_path / "checkpoint"
    args = ["train", "--dataset", str(tmp_path / "data.npz"), "--model", str(base), "--run-name", "r1",
            "--checkpoint-dir", str(ck), "--steps", "6", "--batch-size", "2", "--learning-rate", "3e-3",
            "--val-fraction", "0.2", "--val-every", "3", "--val-batches", "2", "--save-every", "3"]  # fmt: skip
    assert main(args) == 0
    assert (ck / "r1" / "losses.csv").read_text().count("\n") == 7  # header + 6 steps
    assert main([*args[:-4], "--steps", "8"]) == 0  # resumes at step 6
    assert "restored" in capsys.readouterr().err

    models = tmp_path / "models"
    assert main(["export", "r1", "--name", "mine", "--checkpoint-dir", str(ck), "--models-dir", str(models),
                 "--samples", "2", "--sample-length", "5"]) == 0  # fmt: skip
    folder = models / "mine"
    assert detect_layout(folder) == "openai"
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Steps: 8" in card and "Validation loss:" in card and "Sample 2" in card
    hp, params = load_weights(folder)
    assert hp == HP and not np.allclose(params["h0/mlp/c_fc/w"], load_weights(base)[1]["h0/mlp/c_fc/w"])

    with running_server(tiny_settings("mine", models_dir=str(models))) as url:
        listed = httpx.get(f"{url}/models").json()["models"]
        assert [(m["name"], m["state"]) for m in listed] == [("mine", "ready")]
        r = httpx.post(f"{url}/generate", json={"inputs": "The king", "parameters": {"max_new_tokens": 4}})
        assert r.status_code == 200 and r.json()["generated_text"]
