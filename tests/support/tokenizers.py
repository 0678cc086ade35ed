"""Tokenizers trained in a test: a byte-level BPE (``tokenizer train``'s files) and a sentencepiece
``sp.model``, on a tiny Russian corpus, each in a folder of its own."""

from __future__ import annotations

from pathlib import Path

from app.tokenizer.bpe import ENDOFTEXT

RUSSIAN = [
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Широкая электрификация южных губерний даст мощный толчок подъёму сельского хозяйства.",
    "В чащах юга жил бы цитрус? Да, но фальшивый экземпляр!",
    "Любя, съешь щипцы, — вздохнёт мэр, — кайф жгуч.",
]


def train_bpe_folder(folder: Path, texts: list[str] = RUSSIAN, vocab_size: int = 400) -> Path:
    """``encoder.json`` + ``vocab.bpe`` of a BPE trained on ``texts`` (as ``tokenizer train``)."""
    from app.tokenizer.bpe_train import train_bpe, write_gpt2_files

    write_gpt2_files(train_bpe(texts * 20, vocab_size=vocab_size, progress=False), folder)
    return folder


def train_sp_folder(
    folder: Path, texts: list[str] = RUSSIAN, vocab_size: int = 400, repeat: int = 20
) -> Path:
    """An ``sp.model`` trained on ``texts`` (``repeat`` times over): byte fallback, identity
    normalisation, ``<|endoftext|>`` a user-defined symbol."""
    import sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * repeat),
        model_prefix=str(folder / "sp"),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=[ENDOFTEXT],
        minloglevel=2,
    )
    (folder / "sp.vocab").unlink()
    return folder
