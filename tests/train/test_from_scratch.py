"""A model from scratch in a language of its own (issue 20 §2, docs/own-language.md), through the
real commands: `tokenizer train` on a tiny Russian corpus, `init-model --tokenizer` sized to it,
`train`, `export`; the exported folder loads with its own tokenizer, and the real server continues
a training sentence greedily as the corpus does and says which tokenizer the model has."""

from __future__ import annotations

import httpx
import pytest

from app.engine.batcher import generate
from app.engine.sampling import SamplingParams
from app.engine.spec import GenerationSpec
from app.model.loader import read_hparams
from app.runtime.load import load_model
from app.tokenizer.load import load_tokenizer, tokenizer_files
from tests.support.cli import cli
from tests.support.server_harness import running_server, tiny_settings
from tests.support.tokenizers import RUSSIAN

pytestmark = pytest.mark.system  # trains

STEPS = 100  # the loss falls from 6.2 to about 0.2 by step 60 (2 layers, width 64, batch 8)
PROMPT, CONTINUATION = "Широкая электрификация южных", " губерний даст мощный толчок"


def test_a_model_from_scratch_learns_a_tiny_corpus_and_serves_it(tmp_path, shelf):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(RUSSIAN * 40) + "\n", encoding="utf-8")
    tok, models, ck = tmp_path / "tok", tmp_path / "models", tmp_path / "checkpoint"

    code, out, err = cli(["tokenizer", "train", str(corpus), "--out", str(tok), "--vocab-size", "500"])
    assert code == 0, err
    tokenizer = load_tokenizer(tok)
    assert tokenizer.n_vocab < 500 and len(tokenizer.encode(PROMPT)) < len(PROMPT) / 3  # Russian merges

    base = models / "base"
    init = ["init-model", str(base), "--tokenizer", str(tok), "--n-layer", "2", "--n-embd", "64"]
    code, out, err = cli([*init, "--n-head", "4", "--n-ctx", "64"])
    assert code == 0, err
    assert read_hparams(base).n_vocab == tokenizer.n_vocab

    train = ["train", "--dataset", str(corpus), "--model", str(base), "--run-name", "ru"]
    train += ["--checkpoint-dir", str(ck), "--steps", str(STEPS), "--batch-size", "8"]
    code, out, err = cli([*train, "--learning-rate", "3e-3", "--save-every", str(STEPS)])
    assert code == 0, err
    code, out, err = cli(
        ["export", "ru", "--name", "ru", "--checkpoint-dir", str(ck), "--models-dir", str(models)]
        + ["--samples", "1", "--sample-length", "8"]
    )
    assert code == 0, err
    folder = models / "ru"
    # The tokenizer went from its folder into the model, the run and the exported model.
    for where in (base, ck / "ru", folder):
        for mine, theirs in zip(tokenizer_files(where).paths, tokenizer_files(tok).paths, strict=True):
            assert mine.read_bytes() == theirs.read_bytes(), mine
    assert (
        f"- Tokenizer: byte-level BPE, {tokenizer.n_vocab} tokens" in (folder / "MODEL_CARD.md").read_text()
    )

    model = load_model(folder, slots=1)
    assert model.hparams.n_vocab == model.encoder.n_vocab == tokenizer.n_vocab
    spec = GenerationSpec(model.encoder.encode(PROMPT), 6, SamplingParams(temperature=0))
    local = generate(model.engine, [spec], eos_id=model.encoder.eot_token)[0].generated
    assert model.encoder.decode(local).startswith(CONTINUATION)

    with running_server(tiny_settings("ru", models_dir=str(models), slots=1), shelf=shelf) as url:
        (listed,) = httpx.get(f"{url}/models", timeout=30).json()["models"]
        assert listed["tokenizer"] == {"kind": "byte-level BPE", "n_vocab": tokenizer.n_vocab}
        assert listed["hparams"]["n_vocab"] == tokenizer.n_vocab
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True}}
        r = httpx.post(f"{url}/generate", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["generated_text"].startswith(CONTINUATION), r.json()["generated_text"]
        assert [t["id"] for t in r.json()["details"]["tokens"]] == local
