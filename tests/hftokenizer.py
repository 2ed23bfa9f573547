"""A small Hugging Face ``tokenizer.json`` that a test writes itself (nothing downloaded): a
word-level vocabulary, split on whitespace and punctuation, without a chat template, so
its counts differ from Qwen's in ways a test can predict."""

from __future__ import annotations

from pathlib import Path

import tokenizers

SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "a stream of tokens goes from the server to the client",
    "every request has a prompt and an answer",
)


def write_tokenizer(directory: Path) -> Path:
    """Write ``tokenizer.json`` into ``directory`` and return its path: every word of
    :data:`SENTENCES` is one token, any other word is one ``[UNK]`` token, punctuation runs
    are tokens of their own."""
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]"])
    tokenizer.train_from_iterator(SENTENCES, trainer=trainer)
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return path
