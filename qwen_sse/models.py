"""Token limits of Qwen models on DashScope, and the pre-flight check of a prompt against them.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

The figures are DashScope's limits in non-thinking mode (``protocol.md``, "Models and
limits"), each with its source beside it: Alibaba Cloud Model Studio's own pages where
they give one, else a third-party registry, and where no source gives a figure (some max
inputs) it is derived, context minus max output, and marked so. Thinking-mode figures,
where they differ, are in the model's ``note``. Names match exactly: an alias and its
snapshots need not share limits (``qwen-max`` and ``qwen-max-latest`` do not), so a dated
snapshot such as ``qwen-max-2025-01-25`` is an unknown model, and unknown models are never
checked.
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
    ``max_output_tokens`` the reply alone, all in non-thinking mode. ``note`` qualifies the
    figures: thinking-mode limits where they differ (a reasoning budget may come on top of
    the reply), and a figure that is derived rather than documented.
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
        """The longest reply after a prompt of ``prompt_tokens``, in non-thinking mode.

        That is ``max_output_tokens``, or less when the prompt leaves less of the context;
        0 when nothing is left. (In thinking mode a reasoning budget may come on top: see
        ``note``.)
        """
        return max(0, min(self.max_output_tokens, self.context_tokens - prompt_tokens))


_DERIVED_INPUT = "max input derived: context minus max output (no source gives one)"

MODEL_LIMITS: Final[Mapping[str, ModelLimits]] = MappingProxyType(
    {
        limits.model: limits
        for limits in (
            # The first eight: protocol.md's table of official figures. Thinking-mode
            # figures in notes (here and below, unless said otherwise): protocol.md's list of
            # more models, not confirmed on an official page.
            ModelLimits("qwen-max", 32_768, 30_720, 8_192),
            ModelLimits("qwen-max-latest", 131_072, 129_024, 8_192),
            ModelLimits(
                "qwen-plus",
                1_000_000,
                997_952,
                32_768,
                note="max input holds in non-thinking mode; thinking mode: 995,904",
            ),
            ModelLimits(
                "qwen-flash",
                1_000_000,
                997_952,
                32_768,
                note="thinking mode: max input 995,904",
            ),
            ModelLimits("qwen-turbo", 1_000_000, 1_000_000, 16_384),
            ModelLimits(
                "qwen3-max",
                262_144,
                258_048,
                65_536,
                note="thinking mode: answer up to 32,768 tokens plus reasoning up to 81,920",
            ),
            ModelLimits("qwq-plus", 131_072, 98_304, 8_192),
            ModelLimits("qwen-long", 10_000_000, 10_000_000, 32_768),
            # Qwen3.5: protocol.md (official). A third-party audit of the official model list
            # (help.aliyun.com/zh/model-studio/model) confirms 1,000,000 and 65,536 for plus.
            ModelLimits(
                "qwen3.5-plus",
                1_000_000,
                991_808,
                65_536,
                note="thinking mode: max input 983,616",
            ),
            ModelLimits(
                "qwen3.5-flash",
                1_000_000,
                991_808,
                65_536,
                note="thinking mode: max input 983,616",
            ),
            # Third-party registries only (protocol.md; Vercel's gateway also says 1M).
            ModelLimits("qwen3.6-plus", 1_000_000, 934_464, 65_536, note=_DERIVED_INPUT),
            # Official: help.aliyun.com/zh/model-studio/qwen-coder, one table cell spanning
            # plus and flash. A registry's 1,048,576 context for plus is not the official one.
            ModelLimits("qwen3-coder-plus", 1_000_000, 997_952, 65_536),
            ModelLimits("qwen3-coder-flash", 1_000_000, 997_952, 65_536),
            # Official: the same page's table of earlier versions.
            ModelLimits("qwen-coder-turbo", 131_072, 129_024, 8_192),
            # Context and max output: registries (protocol.md). Max input: "126K" in a
            # third-party copy of the Model Studio console's cards, times 1,024 as its "128K"
            # context is 131,072.
            ModelLimits(
                "qwen-vl-max", 131_072, 129_024, 8_192, note="max input from a rounded 126K"
            ),
            ModelLimits(
                "qwen-vl-plus", 131_072, 129_024, 8_192, note="max input from a rounded 126K"
            ),
            # Registries (protocol.md: 262,144 / ~254K / 32K); the console copy's card gives
            # 256K / 254K (252K thinking) / 32K, reasoning 80K, times 1,024.
            ModelLimits(
                "qwen3-vl-plus",
                262_144,
                260_096,
                32_768,
                note="figures from rounded K; thinking mode: max input 258,048,"
                " reasoning up to 81,920",
            ),
            # Official, older: the Qwen-Omni page's table (help.aliyun.com, 2025).
            ModelLimits("qwen-omni-turbo", 32_768, 30_720, 2_048),
            # Third-party registries only (protocol.md).
            ModelLimits("qwen3-omni-flash", 65_536, 49_152, 16_384, note=_DERIVED_INPUT),
            # Official: alibabacloud.com/help/en/model-studio/qwen-mt-turbo (2026). It replaces
            # the older Qwen-MT tables (2,048 / 1,024 / 1,024 in 2025; protocol.md's 4,096 /
            # 2,048 / 2,048), which gave plus and turbo the same limits.
            ModelLimits("qwen-mt-turbo", 16_384, 8_192, 8_192),
            # Context and max output: a registry (Novita), agreeing with turbo's official page.
            ModelLimits("qwen-mt-plus", 16_384, 8_192, 8_192, note=_DERIVED_INPUT),
            # Open-weight Qwen3 as DashScope serves them: registries only (protocol.md).
            # qwen3-30b-a3b, -14b and -8b are left out: no source gives DashScope's max
            # output for them (the 128K context is the Qwen team's, for the weights).
            ModelLimits("qwen3-235b-a22b", 131_072, 114_688, 16_384, note=_DERIVED_INPUT),
            ModelLimits("qwen3-32b", 131_072, 114_688, 16_384, note=_DERIVED_INPUT),
        )
    }
)
"""Limits by exact model name (documented, or derived where the note says so)."""


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
