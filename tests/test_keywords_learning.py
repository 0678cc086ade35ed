"""The keyword format teaches: a tiny GPT-2 trained here, with the project's trainer, on documents
encoded by ``encode --keywords``'s code learns to write the continuation its keyword marks.

Four documents, ``"<word> is here."``; YAKE finds the word as each one's keyword, and every
document is written several times with 0 or 1 keyword (``keyword_subsets``). Without the keyword
the first body token is one of four words; with it, the trained model puts that word first.

The model is real GPT-2 in every respect but its vocabulary: a byte-level BPE in GPT-2's own file
formats (``encoder.json`` + ``vocab.bpe``) with merges that make the four words and the markers
single tokens, so that its output layer has 312 rows instead of 50257 and the few hundred steps
this takes run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from app.engine import gpt2
from app.keywords.dataset import Doc, KeywordConfig, encode_keyword_dataset
from app.keywords.format import prefix
from app.model.hparams import HParams
from app.model.random_init import random_params
from app.tokenizer.bpe import ENDOFTEXT, Encoder, bytes_to_unicode
from app.train.data import Sampler
from app.train.trainer import TrainConfig, Trainer

WORDS = ("apple", "river", "castle", "winter")
PIECES = (*WORDS, "<|", "|>", "startoftext", " is", " here")
STEPS = 400


def write_bpe(root: Path, pieces: tuple[str, ...]) -> Encoder:
    """GPT-2's byte alphabet, merges that join each of ``pieces`` left to right, and end-of-text."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for piece in pieces:
        symbols = [b2u[b] for b in piece.encode()]
        joined = symbols[0]
        for s in symbols[1:]:
            if (joined, s) not in merges:
                merges.append((joined, s))
                vocab.setdefault(joined + s, len(vocab))
            joined += s
    vocab[ENDOFTEXT] = len(vocab)
    root.mkdir(parents=True, exist_ok=True)
    (root / "encoder.json").write_text(json.dumps(vocab))
    (root / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return Encoder.from_files(root / "encoder.json", root / "vocab.bpe")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("kwlearn")
    enc = write_bpe(root / "bpe", PIECES)
    hp = HParams(n_vocab=enc.n_vocab, n_ctx=32, n_embd=32, n_head=2, n_layer=2)
    docs = [Doc(f"{w} is here.") for w in WORDS] * 50
    cfg = KeywordConfig(n_ctx=hp.n_ctx, keywords_per_doc=1, repeat=2, max_keywords=1, seed=0)
    tokens, stats = encode_keyword_dataset(iter(docs), enc, cfg)
    assert stats.pieces == 400 and stats.split == stats.dropped == 0
    trainer = Trainer(
        hp, random_params(hp, seed=0), TrainConfig(batch_size=8, learning_rate=1e-2), root / "run"
    )
    trainer.fit(Sampler([tokens], seed=0), steps=STEPS, progress=False)
    return enc, hp, trainer.params(), tokens


def next_logprobs(enc: Encoder, hp: HParams, params, text: str) -> np.ndarray:
    """log p(first body token) of each word after a new document's prefix ``text``."""
    ids = [enc.eot_token, *enc.encode(text)]
    logits = gpt2.forward_full(params, tf.constant([ids]), hp=hp).numpy()[0, -1].astype(np.float64)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    return np.array([logp[enc.encode(w)[0]] for w in WORDS])


def test_the_dataset_marks_the_continuation(trained):
    enc, _, _, tokens = trained
    text = enc.decode(tokens.tolist())
    # Every document is the keyword format with the word as its only keyword, or with none.
    docs = text.split(ENDOFTEXT)[:-1]
    assert len(docs) == 400
    assert {d.split("~}")[0] for d in docs} == {prefix([w], None, "")[:-2] for w in WORDS} | {
        prefix([], None, "")[:-2]
    }
    assert all(d.split("~}")[1].split(" ")[0] in WORDS for d in docs)


@pytest.mark.parametrize("word", WORDS)
def test_the_trained_model_follows_the_keyword(trained, word):
    enc, hp, params, _ = trained
    with_keyword = next_logprobs(enc, hp, params, prefix([word], None, ""))
    without = next_logprobs(enc, hp, params, prefix([], None, ""))
    i = WORDS.index(word)
    # Without a keyword the four words are about equally likely; the keyword makes its word the
    # model's clear first choice.
    assert int(np.argmax(with_keyword)) == i
    assert with_keyword[i] > without[i] + 0.5, (with_keyword, without)
    assert np.exp(with_keyword[i]) > 0.5
