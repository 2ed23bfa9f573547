"""The emulator's implicit context cache (:class:`ContextCache`): how many leading tokens of
a prompt an earlier prompt began with, which the usage reports as cached.

Edge layer (part of :mod:`qwen_sse.emulator`), built on :mod:`qwen_sse.tokens`; no I/O.

DashScope caches the common prefix of requests on its own (its "implicit cache": no
setting, no guarantee of a hit, at least :data:`MIN_CACHED_TOKENS` tokens) and reports the
hit as ``prompt_tokens_details.cached_tokens``. Its granularity is not documented; the
emulator's is whole messages, the boundary a shared system prompt or an earlier turn of a
conversation ends on: a prompt's cached tokens are those of its longest run of leading
messages (after the same tools, for the same model and API key) that an earlier prompt
began with, as rendered before the rest of the prompt, when they are at least
:data:`MIN_CACHED_TOKENS`; else none. A run only counts where it ends a turn of this
prompt as rendered (not between two tool results, which share a turn, and not at a last
assistant message left open to be continued), so the cached tokens are always a leading
part of the prompt. Unlike the real service it always hits when it can, so a test can
predict it. It remembers the last ``entries`` leading runs it met (a prompt of n messages
has n), however long it runs and whatever one request holds.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from qwen_sse.tokens import message_token_count

__all__ = ["MIN_CACHED_TOKENS", "ContextCache"]

MIN_CACHED_TOKENS = 256
"""The least prefix DashScope's implicit cache holds, in tokens (its documentation)."""

# 128-bit digests: runs that differ collide with odds far below any run's length.
_KEY_BYTES = 16


class ContextCache:
    """The leading message runs of the prompts seen so far, the last ``entries`` of them
    used (0 remembers nothing: no prompt is ever cached)."""

    __slots__ = ("_entries", "_seen")

    def __init__(self, entries: int) -> None:
        self._entries = entries
        # A run's key, and its tokens once a hit needed them (-1 until then).
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def cached_tokens(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: list[Any] | None,
        prompt_tokens: int,
        *,
        model: str,
        api_key: str,
    ) -> int:
        """The cached tokens of the prompt of ``messages`` and ``tools`` (``prompt_tokens``
        in all, as :func:`~qwen_sse.emulator.accounting.prompt_tokens` counted it) sent to
        ``model`` with ``api_key``, and remember its leading runs for the prompts after it
        (the key only as part of a digest)."""
        if not self._entries or prompt_tokens < MIN_CACHED_TOKENS:
            # No run of a prompt this short can reach the minimum, now or later.
            return 0
        seen = self._seen
        hit, hit_key = 0, b""
        key = _digest(msgspec.json.encode([model, api_key, tools]))
        for length in range(1, len(messages) + 1):
            key = _digest(key + msgspec.json.encode(messages[length - 1]))
            if key not in seen:
                seen[key] = -1
                if len(seen) > self._entries:
                    seen.popitem(last=False)
            elif _ends_a_turn(messages, length):
                seen.move_to_end(key)
                hit, hit_key = length, key
        if not hit:
            return 0
        # The runs after it may have pushed the hit out of a small cache already.
        tokens = seen.get(hit_key, -1)
        if tokens < 0:
            tokens = _leading_tokens(messages[:hit], tools)
            if hit_key in seen:
                seen[hit_key] = tokens
        return tokens if tokens >= MIN_CACHED_TOKENS else 0


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_KEY_BYTES).digest()


def _ends_a_turn(messages: Sequence[Mapping[str, Any]], length: int) -> bool:
    """Whether the first ``length`` of ``messages`` render, closed, as a leading part of
    the whole prompt: not when a tool result follows a tool result (they share a turn), nor
    when the last is an assistant message left open (``partial``) to be continued."""
    last = messages[length - 1]
    if length == len(messages):
        return not (last.get("role") == "assistant" and last.get("partial") is True)
    return not (last.get("role") == "tool" and messages[length].get("role") == "tool")


def _leading_tokens(messages: Sequence[Mapping[str, Any]], tools: list[Any] | None) -> int:
    """The tokens of ``messages`` (and ``tools``) as they open a longer prompt: the count of
    a whole prompt of them less the assistant turn's opening it ends with."""
    # A last assistant message marked partial would be left open; in a longer prompt it is
    # not the last.
    closed = [{k: v for k, v in m.items() if k != "partial"} for m in messages]
    return message_token_count(closed, tools).tokens - _opening_tokens()


@functools.cache
def _opening_tokens() -> int:
    """The assistant turn's opening ("<|im_start|>assistant\\n") that ends a whole prompt
    (counted on first use: the vocabulary loads then)."""
    return message_token_count([], None).tokens
