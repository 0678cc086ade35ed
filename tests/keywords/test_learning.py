"""The keyword format teaches: a small GPT-2 fine-tuned here, with the project's trainer, on
documents written by ``encode --keywords``'s code learns to write the continuation its keyword marks,
and once exported and served, ``/generate`` with ``keywords`` writes it.

Eight documents, ``"<Word>."``; YAKE finds the word as each one's keyword, and every document is
written three times, each time with 0 or 1 keyword (``keyword_subsets``). Without the keyword the
first word of the body is any of the eight; with it, the fine-tuned model writes that word.

The model is the committed demo (4 layers, width 96, trained on Shakespeare), so it starts, like a
real fine-tune, from a model that already attends back: trained from random weights, a model this
small learns to look back at the keyword only after thousands of steps. To make each step cheap,
its vocabulary is cut to the tokens these texts use: the GPT-2 merges that build the tokens GPT-2's
encoder gives them (in GPT-2's order) and the embedding rows of those tokens, written in GPT-2's own file
formats. On these texts the cut model computes exactly what the demo computes (checked below), with
an output layer of a few hundred rows instead of 50257.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest
import tensorflow as tf

from app.engine import gpt2
from app.keywords.dataset import Doc, KeywordConfig, encode_keyword_dataset, spec
from app.keywords.format import prefix
from app.model.hparams import HParams
from app.model.loader import load_weights
from app.tokenizer.bpe import ENDOFTEXT, Encoder, bytes_to_unicode, read_merges, read_vocab
from app.tokenizer.load import tokenizer_files
from app.train.data import Sampler
from app.train.export import export_weights
from app.train.trainer import TrainConfig, Trainer, write_run_info
from tests.support.server_harness import live_server, tiny_settings

pytestmark = pytest.mark.system  # starts processes or trains

DEMO = Path(__file__).resolve().parents[2] / "model_store" / "demo"
WORDS = ("apple", "river", "castle", "winter", "garden", "silver", "horse", "candle")
STEPS = 700  # about 50 s here; every word is learned by about 600 (data seeds 0, 1, 2)


def used_merges(
    texts: list[str], vocab: dict[str, int], merges: list[tuple[str, str]]
) -> set[tuple[str, str]]:
    """The merges that build the tokens GPT-2's encoder gives ``texts``. Every GPT-2 token but the
    256 bytes and ``<|endoftext|>`` is made by exactly one merge, of two tokens: follow them down."""
    enc = Encoder(vocab, merges)
    by_id = {i: token for token, i in vocab.items()}
    by_result = {a + b: (a, b) for a, b in merges}
    used: set[tuple[str, str]] = set()
    todo = [by_id[i] for text in texts for i in enc.encode(text, allowed_special="all")]
    while todo:
        pair = by_result.get(todo.pop())
        if pair is not None and pair not in used:
            used.add(pair)
            todo.extend(pair)
    return used


class Cut(NamedTuple):
    hp: HParams
    params: dict[str, np.ndarray]
    enc: Encoder
    old_ids: list[int]  # the demo's id of each new id
    bpe: Path  # the folder with the cut encoder.json and vocab.bpe


def cut_vocabulary(model_dir: Path, texts: list[str], out: Path) -> Cut:
    """The model of ``model_dir`` with only the tokens ``texts`` need; its ``encoder.json`` and
    ``vocab.bpe`` are written to ``out``."""
    hp, params = load_weights(model_dir)
    vocab = read_vocab(model_dir / "encoder.json")
    merges, _ = read_merges(model_dir / "vocab.bpe")
    used = used_merges(texts, vocab, merges)
    kept_merges = [m for m in merges if m in used]
    tokens = {*bytes_to_unicode().values(), *(a + b for a, b in kept_merges), ENDOFTEXT}
    old_ids = sorted(vocab[t] for t in tokens)
    by_old = {i: t for t, i in vocab.items()}
    new_vocab = {by_old[old]: new for new, old in enumerate(old_ids)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder.json").write_text(json.dumps(new_vocab))
    (out / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in kept_merges))
    cut = dict(params, wte=params["wte"][old_ids])
    hp_cut = HParams(**{**hp.__dict__, "n_vocab": len(old_ids)})
    return Cut(hp_cut, cut, Encoder.from_files(out / "encoder.json", out / "vocab.bpe"), old_ids, out)


def documents() -> list[Doc]:
    return [Doc(f"{w.capitalize()}.") for w in WORDS] * 25


def probe(keywords: list[str]) -> str:
    """Where the model writes the body: a new document after the previous one's end."""
    return ENDOFTEXT + prefix(keywords, None, "")


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    texts = [d.text for d in documents()] + [probe([w]) for w in WORDS] + [probe([])]
    return cut_vocabulary(DEMO, texts, tmp_path_factory.mktemp("kwlearn") / "bpe")


KW_CFG = KeywordConfig(n_ctx=256, keywords_per_doc=1, repeat=3, max_keywords=1, seed=0)  # the demo's n_ctx


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kwlearn") / "run"


@pytest.fixture(scope="module")
def trained(cut, run_dir):
    hp, params, enc = cut.hp, cut.params, cut.enc
    tokens, stats = encode_keyword_dataset(iter(documents()), enc, KW_CFG)
    assert stats.pieces == 600 and stats.split == stats.dropped == 0
    text = enc.decode(tokens.tolist())
    for w in WORDS:  # YAKE found each word as its document's keyword
        assert text.count(f"~^{w}~@~}}{w.capitalize()}.") > 10
    cfg = TrainConfig(batch_size=16, learning_rate=1e-3, context=32)
    write_run_info(
        run_dir,
        hp=hp,
        source="demo, cut",
        dataset="words",
        cfg=cfg,
        keywords=spec(KW_CFG),
        tokenizer=tokenizer_files(cut.bpe),
    )
    trainer = Trainer(hp, params, cfg, run_dir)
    trainer.fit(Sampler([tokens], seed=0), steps=STEPS, progress=False)
    return trainer.params()


@pytest.fixture(scope="module")
def served(trained, run_dir, tmp_path_factory, shelf):
    """The run exported as a model folder (with the cut tokenizer and ``keywords.json``), served."""
    dest = export_weights(run_dir, "kw", tmp_path_factory.mktemp("kwmodels"))
    with live_server(tiny_settings(dest), shelf=shelf) as server:
        yield server


def first_word_logprobs(hp: HParams, params, enc: Encoder, keywords: list[str]) -> np.ndarray:
    """log p(first body token) of each of WORDS after a new document's prefix."""
    ids = enc.encode(probe(keywords), allowed_special="all")
    logits = gpt2.forward_full(params, tf.constant([ids]), hp=hp).numpy()[0, -1].astype(np.float64)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    return np.array([logp[enc.encode(w.capitalize())[0]] for w in WORDS])


def test_the_cut_model_is_the_demo_on_these_texts(cut):
    hp, params, enc, old_ids = cut.hp, cut.params, cut.enc, cut.old_ids
    demo_hp, demo_params = load_weights(DEMO)
    demo_enc = Encoder.from_dir(DEMO)
    assert hp.n_vocab < 400
    for text in [probe(["castle"]), "Castle.", probe([])]:
        ids = enc.encode(text, allowed_special="all")
        assert [old_ids[i] for i in ids] == demo_enc.encode(text, allowed_special="all")
        demo_ids = [old_ids[i] for i in ids]
        ours = gpt2.forward_full(params, tf.constant([ids]), hp=hp).numpy()[0]
        theirs = gpt2.forward_full(demo_params, tf.constant([demo_ids]), hp=demo_hp).numpy()[0]
        np.testing.assert_allclose(ours, theirs[:, old_ids], atol=1e-5)


def test_the_keyword_picks_the_continuation_it_marks(cut, trained):
    hp, before, enc = cut.hp, cut.params, cut.enc
    after = np.stack([first_word_logprobs(hp, trained, enc, [w]) for w in WORDS])
    unconditioned = first_word_logprobs(hp, trained, enc, [])
    untrained = np.stack([first_word_logprobs(hp, before, enc, [w]) for w in WORDS])
    conditioned = np.exp(np.diag(after))
    # Each keyword makes its own word the most likely start of the body, and likely outright...
    assert list(after.argmax(axis=1)) == list(range(len(WORDS)))
    assert np.all(conditioned > 0.5), conditioned
    # ... where without a keyword no word is (the eight share the chance): the keyword did it.
    assert np.all(np.exp(unconditioned) < 0.5), np.exp(unconditioned)
    assert np.all(conditioned > 2 * np.exp(unconditioned))
    # The demo before this training had no such preference.
    assert np.all(np.exp(np.diag(untrained)) < 0.5), np.exp(np.diag(untrained))


def test_the_server_writes_the_body_the_keyword_marks(served):
    """Greedy generation through ``/generate`` with ``keywords``: the prompt is the document prefix
    the server builds, and the parsed answer is the marked body, ended by ``<|endoftext|>``."""
    for word in WORDS:
        body = {"inputs": "", "parameters": {"keywords": [word], "max_new_tokens": 8, "do_sample": False}}
        r = httpx.post(f"{served.url}/generate", json=body, timeout=60, trust_env=False)
        assert r.status_code == 200, r.text
        assert r.json()["keywords_output"] == {"title": "", "body": f"{word.capitalize()}."}, r.json()
