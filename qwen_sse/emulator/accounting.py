"""Token accounting of an emulated answer: the prompt as DashScope bills it, and the
answer's usage.

Edge layer (part of :mod:`qwen_sse.emulator`), built on :mod:`qwen_sse.tokens`; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from qwen_sse.emulator.answers import EmulatedAnswer
from qwen_sse.emulator.rejects import bad_request
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import message_token_count

__all__ = ["AnswerUsage", "answer_usage", "prompt_tokens"]


class AnswerUsage(NamedTuple):
    """What an answer costs: ``completion_tokens`` include ``reasoning_tokens``, which are
    None unless the request asked for thinking (and then reported apart); ``prompt_tokens``
    include ``cached_tokens``, those the context cache held."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int | None
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def prompt_tokens(body: Mapping[str, Any], messages: list[Any]) -> int:
    """The prompt of an answer request as DashScope bills it: the ChatML messages, with the
    tools block if any; a message the count cannot read is a 400 :class:`Reject`."""
    tools = body.get("tools")
    try:
        count = message_token_count(messages, tools if isinstance(tools, list) else None)
    except ConfigurationError as error:
        raise bad_request(str(error)) from None
    return count.tokens


def answer_usage(
    body: Mapping[str, Any], answers: Sequence[EmulatedAnswer], prompt: int
) -> AnswerUsage:
    """The usage of ``answers`` (every choice of the answer request ``body``) whose prompt
    is ``prompt`` tokens: the tokens of every choice's pieces, reasoning counted apart."""
    completion = sum(answer.completion_tokens for answer in answers)
    reasoning = sum(answer.reasoning_tokens for answer in answers)
    thinking = body.get("enable_thinking") is True
    return AnswerUsage(prompt, completion, reasoning if thinking else None)
