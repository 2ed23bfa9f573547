"""Token accounting of an emulated answer: the prompt as DashScope bills it, the answer's
usage, and the running count of a text being streamed.

Edge layer (part of :mod:`qwen_sse.emulator`), built on :mod:`qwen_sse.tokens`; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from qwen_sse.emulator.answers import EmulatedAnswer
from qwen_sse.emulator.rejects import bad_request
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import count_tokens, message_token_count

__all__ = ["AnswerUsage", "TokenTally", "answer_usage", "count_text_tokens", "prompt_tokens"]


class AnswerUsage(NamedTuple):
    """What an answer costs: ``completion_tokens`` include ``reasoning_tokens``, which are
    None unless the request asked for thinking (and then reported apart)."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def count_text_tokens(text: str) -> int:
    """``count_tokens(text)``, without the work for an empty text."""
    return count_tokens(text) if text else 0


def prompt_tokens(body: Mapping[str, Any], messages: list[Any]) -> int:
    """The prompt of an answer request as DashScope bills it: the ChatML messages, with the
    tools block if any; a message the count cannot read is a 400 :class:`Reject`."""
    tools = body.get("tools")
    try:
        count = message_token_count(messages, tools if isinstance(tools, list) else None)
    except ConfigurationError as error:
        raise bad_request(str(error)) from None
    return count.tokens


def answer_usage(body: Mapping[str, Any], answer: EmulatedAnswer, prompt: int) -> AnswerUsage:
    """The usage of ``answer`` to the answer request ``body`` whose prompt is ``prompt``
    tokens: the BPE count of its reasoning, content and tool-call arguments."""
    arguments = "".join(arguments for _, arguments in answer.tool_calls)
    reasoning_tokens = count_text_tokens(answer.reasoning)
    completion = reasoning_tokens + count_text_tokens(answer.content + arguments)
    thinking = body.get("enable_thinking") is True
    return AnswerUsage(prompt, completion, reasoning_tokens if thinking else None)


# Characters that end a run of letters for good: the pre-tokenizer never joins a letter to
# one of them, and NFC never composes them with what precedes them.
_SETTLING_CHARS = frozenset(" ,.!?…，。！？、；：")


class TokenTally:
    """The token count of a growing text, always equal to ``count_tokens`` of the whole.

    BPE never crosses a pre-tokenizer boundary, and the pre-tokenizer splits between a
    letter and a following character of :data:`_SETTLING_CHARS` whatever comes next, so
    the text before the last such boundary is counted once and only the rest is recounted
    as the text grows.
    """

    __slots__ = ("_settled", "_tail")

    def __init__(self) -> None:
        self._settled = 0
        self._tail = ""

    def add(self, text: str) -> int:
        """Append ``text``; the count of everything added so far."""
        tail = self._tail + text
        for cut in range(len(tail) - 1, 0, -1):
            if tail[cut] in _SETTLING_CHARS and tail[cut - 1].isalpha():
                self._settled += count_tokens(tail[:cut])
                tail = tail[cut:]
                break
        self._tail = tail
        return self._settled + count_text_tokens(tail)
