"""How a load test counts tokens: with the bundled Qwen tokenizer, or with a local Hugging Face
``tokenizer.json`` (``--tokenizer``) for servers that use another vocabulary.

Edge layer (bench). Qwen counts are :mod:`qwen_sse.tokens`'s: a prompt as DashScope bills it,
ChatML template included. A ``tokenizer.json`` is read with the optional ``tokenizers``
package (``pip install 'qwen-sse[hf]'``) from a local path only, never downloaded; its
prompt count is the tokens of the messages' text, without a chat template (the file does not
hold one that could be rendered here; vLLM's benchmark counts prompts the same way). A
counter is loaded once per process and path, so each worker loads it once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qwen_sse.errors import ConfigurationError
from qwen_sse.protocols.base import text_of
from qwen_sse.tokens import PromptTokenCount, count_tokens, encode, message_token_count

__all__ = ["TokenCounter", "counter"]

# Common English words; those that are one token (alone and after a space) are used for
# synthetic prompts, so that a prompt's size is a sum of its words.
_WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "as", "by", "at",
    "from", "this", "be", "are", "was", "it", "or", "an", "not", "which", "have", "can",
    "all", "will", "more", "one", "has", "but", "their", "about", "new", "other", "time",
    "some", "into", "only", "over", "also", "after", "many", "most", "these", "first",
    "such", "people", "would", "between", "both", "well", "where", "while", "through",
    "because", "each", "under", "since", "without", "during", "against", "before", "system",
    "stream", "model", "answer", "token", "server", "client", "event", "request", "latency",
    "buffer", "region", "prompt", "signal", "network", "parser", "reply", "data", "cloud",
    "quick", "steady", "clear", "simple", "useful", "careful", "small", "large", "every",
    "final", "then", "long", "fresh", "short", "river", "mountain", "garden", "window",
    "table", "paper", "light", "water", "stone", "music", "letter", "market", "winter",
    "summer", "morning", "evening", "city", "field", "forest", "ocean", "bridge", "station",
    "library", "teacher", "student",
)  # fmt: skip


class TokenCounter:
    """Counts texts and prompts with one vocabulary; ``name`` is ``"qwen"`` or the path of
    the ``tokenizer.json``."""

    name = "qwen"

    def text(self, text: str) -> int:
        """Tokens of ``text`` as ordinary text (as an answer's completion tokens count)."""
        return count_tokens(text)

    def prompt(self, messages: Sequence[Mapping[str, Any]]) -> PromptTokenCount:
        """The size of a prompt of ``messages``: the billed ChatML count for Qwen. Raises
        ConfigurationError, naming the message, when one is malformed."""
        return message_token_count(messages)

    def _is_one_token(self, text: str) -> bool:
        return len(encode(text)) == 1

    @functools.cached_property
    def _empty_prompt_tokens(self) -> int:
        return self.prompt([]).tokens

    def message_tokens(self, message: Mapping[str, Any]) -> int:
        """What ``message`` adds to a prompt that it joins (prompts are sums of their
        messages, plus the tokens of an empty prompt)."""
        return self.prompt([message]).tokens - self._empty_prompt_tokens

    @functools.cached_property
    def words(self) -> tuple[str, ...]:
        """Words that are one token both alone and after a space: a text of ``n`` of them,
        joined by single spaces, is ``n`` tokens."""
        words = tuple(
            word for word in _WORDS if self._is_one_token(word) and self._is_one_token(" " + word)
        )
        if not words:
            raise ConfigurationError(
                f"tokenizer {self.name}: none of the synthetic prompts' words is one token"
            )
        return words


class _HuggingFaceCounter(TokenCounter):
    """Counts with a ``tokenizers.Tokenizer`` read from a local ``tokenizer.json``."""

    def __init__(self, path: str) -> None:
        self.name = path
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        try:
            from tokenizers import Tokenizer  # noqa: PLC0415  (the optional hf extra)
        except ImportError:
            raise ConfigurationError(
                "--tokenizer needs the tokenizers package: pip install 'qwen-sse[hf]'"
            ) from None
        if not file.is_file():
            raise ConfigurationError(f"cannot read tokenizer {file}: no such file")
        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as error:
            # The Rust side raises plain Exception subclasses for every kind of bad file.
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigurationError(f"cannot load tokenizer {file}: {first_line}") from None

    def _ids(self, text: str) -> list[int]:
        # No special tokens (BOS...): those belong to the server's chat template.
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def text(self, text: str) -> int:
        return len(self._ids(text)) if text else 0

    def prompt(self, messages: Sequence[Mapping[str, Any]]) -> PromptTokenCount:
        # The Qwen count validates the messages and finds the media parts it cannot count.
        shape = message_token_count(messages)
        tokens = sum(self.text(text_of(message.get("content"))) for message in messages)
        return PromptTokenCount(
            tokens=tokens,
            uncounted_parts=shape.uncounted_parts,
            notes=(f"counted without a chat template with {self.name}",),
        )

    def _is_one_token(self, text: str) -> bool:
        return len(self._ids(text)) == 1


_QWEN = TokenCounter()


@functools.cache
def counter(tokenizer: str | None) -> TokenCounter:
    """The counter of ``tokenizer`` (a ``tokenizer.json`` path, or a directory holding one;
    None: the bundled Qwen tokenizer), loaded once per process. ConfigurationError says why
    a file cannot be used."""
    return _QWEN if tokenizer is None else _HuggingFaceCounter(tokenizer)
