"""Token limits of Qwen models on DashScope, and the pre-flight check of a prompt against them.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

The figures are DashScope's documented limits (``protocol.md``, "Models and limits"). Names
match exactly: an alias and its snapshots need not share limits (``qwen-max`` and
``qwen-max-latest`` do not), so a dated snapshot such as ``qwen-max-2025-01-25`` is an
unknown model, and unknown models are never checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import msgspec

from qwen_sse.errors import TokenLimitError
from qwen_sse.tokens import PromptTokenCount, message_token_count

__all__ = ["MODEL_LIMITS", "ModelLimits", "PromptFit", "check_prompt_fits", "model_limits"]


class ModelLimits(msgspec.Struct, frozen=True, gc=False):
    """One model's limits, in tokens.

    ``context_tokens`` bounds prompt plus reply, ``max_input_tokens`` the prompt alone,
    ``max_output_tokens`` the reply alone. ``note`` qualifies the figures when DashScope
    does (e.g. a limit that holds in non-thinking mode only).
    """

    model: str
    context_tokens: int
    max_input_tokens: int
    max_output_tokens: int
    note: str = ""

    def input_room_tokens(self, prompt_tokens: int) -> int:
        """How many more tokens a prompt of ``prompt_tokens`` may take; 0 when over."""
        return max(0, self.max_input_tokens - prompt_tokens)

    def output_room_tokens(self, prompt_tokens: int) -> int:
        """The longest reply after a prompt of ``prompt_tokens``, reasoning included.

        That is ``max_output_tokens``, or less when the prompt leaves less of the context;
        0 when nothing is left.
        """
        return max(0, min(self.max_output_tokens, self.context_tokens - prompt_tokens))


MODEL_LIMITS: Final[Mapping[str, ModelLimits]] = MappingProxyType(
    {
        limits.model: limits
        for limits in (
            ModelLimits("qwen-max", 32_768, 30_720, 8_192),
            ModelLimits("qwen-max-latest", 131_072, 129_024, 8_192),
            ModelLimits(
                "qwen-plus",
                1_000_000,
                997_952,
                32_768,
                note="max input holds in non-thinking mode; thinking mode is not documented",
            ),
            ModelLimits("qwen-flash", 1_000_000, 997_952, 32_768),
            ModelLimits("qwen-turbo", 1_000_000, 1_000_000, 16_384),
            ModelLimits("qwen3-max", 262_144, 258_048, 65_536),
            ModelLimits("qwq-plus", 131_072, 98_304, 8_192),
            ModelLimits("qwen-long", 10_000_000, 10_000_000, 32_768),
        )
    }
)
"""Documented limits by exact model name."""


class PromptFit(msgspec.Struct, frozen=True, gc=False):
    """A prompt that fits its model: its size, the model's limits and the room they leave."""

    prompt: PromptTokenCount
    limits: ModelLimits

    @property
    def prompt_tokens(self) -> int:
        """The prompt's size (``prompt.tokens``)."""
        return self.prompt.tokens

    @property
    def input_room_tokens(self) -> int:
        """How many more tokens the prompt may take."""
        return self.limits.input_room_tokens(self.prompt.tokens)

    @property
    def output_room_tokens(self) -> int:
        """The longest reply the model can give after this prompt (a bound for max_tokens)."""
        return self.limits.output_room_tokens(self.prompt.tokens)


def model_limits(model: str) -> ModelLimits | None:
    """The documented limits of ``model`` (exact name), or None for a model not in the table."""
    return MODEL_LIMITS.get(model)


def check_prompt_fits(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> PromptFit | None:
    """Check, before anything is sent, that a chat prompt fits the model's input limit.

    Counts ``messages`` (and ``tools``) as :func:`~qwen_sse.tokens.message_token_count`
    does and raises TokenLimitError, naming the model, the counted tokens and the limit,
    when the count is over ``max_input_tokens``. Image, audio and video parts cannot be
    counted offline, so a prompt over the limit only because of them passes; estimated
    parts (tools, tool calls and results) count at their estimate. Returns the fit, or
    None without counting anything when ``model`` is not in the table: unknown models
    pass unchecked.
    """
    limits = MODEL_LIMITS.get(model)
    if limits is None:
        return None
    prompt = message_token_count(messages, tools)
    if prompt.tokens > limits.max_input_tokens:
        raise TokenLimitError(
            model=model, prompt_tokens=prompt.tokens, limit=limits.max_input_tokens
        )
    return PromptFit(prompt=prompt, limits=limits)
