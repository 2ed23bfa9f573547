"""What a load test sends: synthetic prompts of a target size, or prompts read from a file.

Edge layer (bench). It uses the core's Qwen tokenizer (:mod:`qwen_sse.tokens`) to size
prompts and must not import the client: a workload is plain data that any worker process
can rebuild request by request, deterministically from the request's index.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import count_message_tokens, encode

__all__ = [
    "FileWorkload",
    "PromptEntry",
    "RequestSpec",
    "SyntheticWorkload",
    "Workload",
    "read_prompts",
]

# Common English words; those that are one Qwen token with a leading space are used, so
# that a prompt's size is a sum (the pre-tokenizer never merges across " word" pieces).
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


_FIX_ROUNDS = 8


class RequestSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One request of a run: its ``index``, the ``messages``, ``max_tokens`` to send (None
    sends none) and ``prompt_tokens``, the prompt's size as DashScope bills it, counted
    locally with the Qwen tokenizer."""

    index: int
    messages: list[dict[str, Any]]
    max_tokens: int | None
    prompt_tokens: int


class SyntheticWorkload(msgspec.Struct, frozen=True, kw_only=True, tag="synthetic"):
    """Prompts of exactly ``input_tokens`` billed tokens (the chat template included),
    asking for ``output_tokens`` (sent as ``max_tokens``).

    Every request gets different words (seeded by ``seed`` and the request's index), so
    a server's prefix cache cannot make later requests cheaper than the first.
    """

    input_tokens: int
    output_tokens: int | None
    seed: int = 0

    def __post_init__(self) -> None:
        minimum = _template_tokens() + 1
        if self.input_tokens < minimum:
            raise ConfigurationError(
                f"input tokens must be at least {minimum} (the chat template alone takes "
                f"{minimum - 1}), got {self.input_tokens}"
            )
        if self.output_tokens is not None and self.output_tokens < 1:
            raise ConfigurationError(f"output tokens must be at least 1, got {self.output_tokens}")

    def request(self, index: int) -> RequestSpec:
        """The ``index``-th request (the same for the same seed and index, in any process)."""
        rng = random.Random(f"{self.seed}:{index}")
        words = _single_token_words()
        need = self.input_tokens - _template_tokens()
        picked = [rng.choice(words) for _ in range(need)]
        content = _join(picked)
        messages = [{"role": "user", "content": content}]
        counted = count_message_tokens(messages)
        # Additivity holds by construction; these rounds only guard that invariant.
        for _ in range(_FIX_ROUNDS):
            if counted == self.input_tokens or len(picked) <= 1:
                break
            if counted > self.input_tokens:
                picked.pop()
            else:
                picked.append(rng.choice(words))
            messages = [{"role": "user", "content": _join(picked)}]
            counted = count_message_tokens(messages)
        return RequestSpec(
            index=index, messages=messages, max_tokens=self.output_tokens, prompt_tokens=counted
        )


class PromptEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a prompts file: its messages and its own ``max_tokens`` (or None)."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    prompt_tokens: int = 0


class FileWorkload(msgspec.Struct, frozen=True, kw_only=True, tag="file"):
    """Prompts read from a file, used in turn (request ``i`` sends entry ``i mod n``).

    ``output_tokens``, when set, is the ``max_tokens`` of entries that set none.
    """

    entries: list[PromptEntry]
    output_tokens: int | None = None

    def request(self, index: int) -> RequestSpec:
        entry = self.entries[index % len(self.entries)]
        max_tokens = entry.max_tokens if entry.max_tokens is not None else self.output_tokens
        return RequestSpec(
            index=index,
            messages=entry.messages,
            max_tokens=max_tokens,
            prompt_tokens=entry.prompt_tokens,
        )


Workload = SyntheticWorkload | FileWorkload


def read_prompts(path: str | Path, *, output_tokens: int | None = None) -> FileWorkload:
    """Read a JSONL file of prompts: one JSON object a line, blank lines skipped.

    Each object has ``"prompt"`` (a string, sent as one user message) or ``"messages"``
    (an OpenAI-style list), and optionally ``"max_tokens"`` (an integer). Raises
    :class:`~qwen_sse.errors.ConfigurationError` naming the line of the first bad entry.
    """
    entries: list[PromptEntry] = []
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except OSError as error:
        raise ConfigurationError(f"cannot read {file}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"{file} is not UTF-8 text ({error.reason} at byte {error.start}): a prompts file "
            "is JSON lines"
        ) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"{where}: not JSON: {error.msg}") from None
        entries.append(_entry(item, where))
    if not entries:
        raise ConfigurationError(f"{file} holds no prompts")
    return FileWorkload(entries=entries, output_tokens=output_tokens)


def _entry(item: Any, where: str) -> PromptEntry:
    if not isinstance(item, Mapping):
        raise ConfigurationError(f"{where}: expected a JSON object")
    if isinstance(item.get("messages"), list):
        messages = [dict(message) for message in item["messages"] if isinstance(message, Mapping)]
        if len(messages) != len(item["messages"]) or not messages:
            raise ConfigurationError(f"{where}: messages must be a non-empty list of objects")
    elif isinstance(item.get("prompt"), str):
        messages = [{"role": "user", "content": item["prompt"]}]
    else:
        raise ConfigurationError(f'{where}: expected "prompt" (a string) or "messages" (a list)')
    max_tokens = item.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise ConfigurationError(f"{where}: max_tokens must be a positive integer")
    try:
        prompt_tokens = count_message_tokens(messages)
    except ConfigurationError as error:
        raise ConfigurationError(f"{where}: {error}") from None
    return PromptEntry(messages=messages, max_tokens=max_tokens, prompt_tokens=prompt_tokens)


def _join(words: Sequence[str]) -> str:
    return words[0] + "".join(" " + word for word in words[1:]) if words else ""


@functools.cache
def _single_token_words() -> tuple[str, ...]:
    words = tuple(word for word in _WORDS if len(encode(" " + word)) == 1 == len(encode(word)))
    if not words:
        raise ConfigurationError("no single-token words: the Qwen vocabulary did not load")
    return words


@functools.cache
def _template_tokens() -> int:
    """Tokens of one user message with empty content: the chat template's share."""
    return count_message_tokens([{"role": "user", "content": ""}])
