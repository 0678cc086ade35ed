"""encode --keywords -> train -> export -> serve and generate, through the real commands on a tiny
model: the format travels from the dataset to the model folder, and the server answers keyword
requests with a title and a body."""

from __future__ import annotations

import json

import httpx
import numpy as np

from app.model.hparams import HParams
from app.model.random_init import write_random_model
from app.tokenizer.bpe import Encoder
from app.tokenizer.bundled import bundled_bpe_files
from tests.support.cli import cli
from tests.support.server_harness import STORY, running_server, tiny_settings

HP = HParams(n_vocab=50257, n_ctx=64, n_embd=32, n_head=2, n_layer=2)


def write_jsonl(path, n: int = 6) -> None:
    rows = [
        {"text": STORY[i * 200 : i * 200 + 400 + 300 * (i == 0)], "category": "tales", "title": f"Part {i}"}
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_encode_keywords_is_reproducible_and_records_the_format(tmp_path):
    base = write_random_model(tmp_path / "base", HP, seed=0)
    write_jsonl(tmp_path / "docs.jsonl")
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        args = ["encode", str(tmp_path / "docs.jsonl"), str(tmp_path / f"{name}.npz"), "--model", str(base)]
        code, out, _ = cli([*args, "--keywords", "--repeat", "3", "--seed", str(seed)])
        assert code == 0 and "6 documents x 3 keyword sets" in out and "split" in out and "dropped" in out
        with np.load(tmp_path / f"{name}.npz") as npz:
            outs.append(np.concatenate([npz[k] for k in npz.files]))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])
    spec = json.loads((tmp_path / "a.keywords.json").read_text())
    assert spec["delimiters"]["section"] == "~" and spec["max_keywords"] == 3 and spec["language"] == "en"
    text = Encoder.from_files(*bundled_bpe_files()).decode(outs[0].tolist())
    docs = text.split("<|endoftext|>")[:-1]
    assert all(d.startswith("<|startoftext|>~`tales~^") and "~@Part " in d for d in docs)
    assert len(docs) > 6 * 3  # the long documents were split, each piece with its prefix


def test_keywords_round_trip(tmp_path, shelf):
    base = write_random_model(tmp_path / "base", HP, seed=0)
    data = tmp_path / "folder"
    for i, cat in enumerate(("tales", "news")):
        (data / cat).mkdir(parents=True)
        (data / cat / "doc.txt").write_text(STORY[i * 300 : i * 300 + 600])
    code, out, _ = cli(["encode", str(data), str(tmp_path / "kw.npz"), "--model", str(base), "--keywords"])
    assert code == 0 and "2 documents x 4 keyword sets" in out
    ck, models = tmp_path / "ck", tmp_path / "models"
    train = ["train", "--dataset", str(tmp_path / "kw.npz"), "--model", str(base), "--run-name", "kw"]
    train += ["--checkpoint-dir", str(ck), "--steps", "3", "--batch-size", "2", "--save-every", "3"]
    assert cli([*train, "--val-fraction", "0", "--sample-every", "0"])[0] == 0
    assert json.loads((ck / "kw" / "run.json").read_text())["keywords"]["delimiters"]["title"] == "@"
    export = ["export", "kw", "--name", "kwmodel", "--checkpoint-dir", str(ck), "--models-dir", str(models)]
    assert cli([*export, "--samples", "0"])[0] == 0
    spec = json.loads((models / "kwmodel" / "keywords.json").read_text())
    assert spec["delimiters"]["body"] == "}" and (models / "kwmodel" / "hparams.json").is_file()

    with running_server(tiny_settings("kwmodel", models_dir=str(models)), shelf=shelf) as url:
        listed = httpx.get(f"{url}/models", timeout=30).json()["models"]
        assert listed[0]["keywords"]["delimiters"]["section"] == "~"
        body = {
            "inputs": "",
            "parameters": {"keywords": ["king", "queen"], "category": "tales", "max_new_tokens": 8},
        }
        r = httpx.post(f"{url}/generate", json=body, timeout=120)
        assert r.status_code == 200, r.text
        out = r.json()["keywords_output"]
        assert set(out) == {"title", "body"} and isinstance(out["title"], str)
        body["parameters"]["title"] = "The Ride"
        r = httpx.post(f"{url}/generate", json=body, timeout=120)
        assert r.status_code == 200 and r.json()["keywords_output"]["title"] == "The Ride"

    gen = ["generate", "--model", "kwmodel", "--models-dir", str(models), "--length", "5", "--json"]
    code, out, _ = cli([*gen, "--keywords", "king", "--title", "The Ride", "--temperature", "0"])
    record = json.loads(out.splitlines()[0])
    assert code == 0 and record["title"] == "The Ride" and record["body"] == record["text"].strip()
    code, out, _ = cli([*gen, "--keywords", "king", "--temperature", "0"])
    assert code == 0 and set(json.loads(out)) >= {"title", "body", "text"}
