"""Train a GPT-2-style byte-level BPE on your own texts and write GPT-2's own files.

The training is Hugging Face ``tokenizers``' (``BpeTrainer``), set up as GPT-2's tokenizer is: no
normaliser, the ``ByteLevel`` pre-tokenizer with GPT-2's regex and byte-to-character table, all 256
byte symbols in the alphabet (so no text is ever unknown). The result is written as
``encoder.json`` + ``vocab.bpe``, which :class:`app.tokenizer.bpe.Encoder` (and so every route, the
detokenizer and the training pipeline) loads unchanged.

Ids follow GPT-2's layout, not the trainer's (which puts special tokens first): the 256 byte
symbols in :func:`bytes_to_unicode` order, then each merge's new token in merge order, then the
special tokens in the order given, ``<|endoftext|>`` always last (as GPT-2's 50256 is the last
id). :func:`train_bpe` returns a ``tokenizers.Tokenizer`` rebuilt with these ids, so its
``encode`` gives exactly the ids the written files give.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from app.tokenizer.bpe import ENDOFTEXT, bytes_to_unicode

N_BYTES = 256
MERGES_HEADER = "#version: 0.2"  # the first line of GPT-2's vocab.bpe


def special_token_list(extra: Sequence[str] = ()) -> list[str]:
    """The special tokens in id order: ``extra`` (duplicates dropped), then ``<|endoftext|>``."""
    out: list[str] = []
    for token in extra:
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"special token {token!r}: must be non-empty and without whitespace")
        if token != ENDOFTEXT and token not in out:
            out.append(token)
    return [*out, ENDOFTEXT]


def train_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = (),
    progress: bool = True,
):
    """A byte-level BPE trained on ``texts``, as a ``tokenizers.Tokenizer`` with GPT-2's id layout.

    ``vocab_size`` counts everything: 256 bytes, merges and special tokens (``<|endoftext|>`` is
    always one); a corpus with too few pairs seen ``min_frequency`` times gives fewer tokens.
    Raises ``ValueError`` for a vocabulary too small to hold the bytes and special tokens, or
    when ``texts`` hold no text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = special_token_list(special_tokens)
    smallest = N_BYTES + len(specials)
    if vocab_size < smallest:
        raise ValueError(
            f"--vocab-size {vocab_size} is too small: the 256 byte tokens and {len(specials)} special "
            f"token(s) need {smallest}"
        )
    if min_frequency < 1:
        raise ValueError(f"--min-frequency must be >= 1, got {min_frequency}")
    seen = _Counted(texts)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(seen, trainer)
    if not seen.characters:
        raise ValueError("the corpus holds no text")
    return gpt2_layout(tok, specials)


class _Counted:
    """Pass texts through, counting their characters (to tell an empty corpus)."""

    def __init__(self, texts: Iterable[str]):
        self._texts = texts
        self.characters = 0

    def __iter__(self):
        for text in self._texts:
            self.characters += len(text)
            yield text


def trained_merges(tok) -> list[tuple[str, str]]:
    """The merges of a trained ``tokenizers`` BPE, highest priority first."""
    merges = json.loads(tok.to_str())["model"]["merges"]
    # tokenizers >= 0.20 stores [a, b] pairs; older versions "a b" strings.
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def gpt2_layout(tok, specials: Sequence[str]):
    """``tok`` rebuilt with GPT-2's ids (bytes, merge results, special tokens; see the module)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    merges = trained_merges(tok)
    trained = tok.get_vocab()
    vocab: dict[str, int] = {}
    for token in [*bytes_to_unicode().values(), *(a + b for a, b in merges), *specials]:
        vocab.setdefault(token, len(vocab))
    if set(vocab) != set(trained):  # the rule above must account for every trained token
        odd = sorted(set(vocab) ^ set(trained))[:5]
        raise RuntimeError(f"trained vocabulary does not follow bytes + merges + specials: {odd}")
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    out.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    out.decoder = decoders.ByteLevel()
    out.add_special_tokens(list(specials))
    return out


def write_gpt2_files(tok, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``encoder.json`` and ``vocab.bpe`` (GPT-2's formats) into ``out_dir``; return them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = dict(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
    encoder_json, vocab_bpe = out_dir / "encoder.json", out_dir / "vocab.bpe"
    encoder_json.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = [MERGES_HEADER, *(f"{a} {b}" for a, b in trained_merges(tok))]
    vocab_bpe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return encoder_json, vocab_bpe
