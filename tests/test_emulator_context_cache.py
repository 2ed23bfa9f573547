"""The emulator's implicit context cache: which leading tokens of a prompt an earlier prompt
already had, at whole messages, 256 tokens or more; bounded; reported in every protocol's
usage as the client reads it."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_sse import protocols
from qwen_sse.client import QwenClient
from qwen_sse.emulator import Emulator, EmulatorConfig
from qwen_sse.emulator.context_cache import MIN_CACHED_TOKENS, ContextCache
from qwen_sse.retry import NO_RETRIES
from qwen_sse.tokens import count_message_tokens, count_tokens, message_token_count

KEY = "sk-test"
# About 330 tokens, every prompt's shared system message.
SYSTEM = {"role": "system", "content": "You answer questions about the sea. " * 40}
TOOLS = [{"type": "function", "function": {"name": "tide", "parameters": {"type": "object"}}}]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def leading_tokens(role: str, content: str) -> int:
    """One message as ChatML renders it when more follows: <|im_start|>, "role\\ncontent"
    (one run of text), <|im_end|>, then the "\\n" before the next <|im_start|>."""
    return 1 + count_tokens(f"{role}\n{content}") + 1 + count_tokens("\n")


def cached(cache: ContextCache, messages: list[dict[str, Any]], tools: Any = None) -> int:
    return cache.cached_tokens(messages, tools, message_token_count(messages, tools).tokens)


def test_a_shared_system_message_is_cached_from_the_second_prompt_on() -> None:
    cache = ContextCache(1024)
    system_tokens = leading_tokens("system", SYSTEM["content"])
    assert system_tokens >= MIN_CACHED_TOKENS
    assert cached(cache, [SYSTEM, user("Why is the sea salty?")]) == 0
    assert cached(cache, [SYSTEM, user("How deep is it?")]) == system_tokens
    assert cached(cache, [SYSTEM, user("And how cold?")]) == system_tokens


def test_a_conversation_is_cached_up_to_its_last_turn_seen() -> None:
    cache = ContextCache(1024)
    first = [SYSTEM, user("Why is the sea salty?")]
    assert cached(cache, first) == 0
    answer = {"role": "assistant", "content": "Rivers carry salt into it."}
    second = [*first, answer, user("Since when?")]
    assert cached(cache, second) == (
        leading_tokens("system", SYSTEM["content"])
        + leading_tokens("user", "Why is the sea salty?")
    )
    # The same prompt again: all of it but the assistant turn's opening.
    assert cached(cache, second) == count_message_tokens(second) - 1 - count_tokens("assistant\n")


def test_a_prefix_under_the_minimum_is_not_cached() -> None:
    cache = ContextCache(1024)
    short_system = {"role": "system", "content": "Be brief."}
    long_question = "Tell me everything about the tides. " * 40
    assert cached(cache, [short_system, user(long_question)]) == 0
    assert cached(cache, [short_system, user(long_question + "Now.")]) == 0
    # A prompt under the minimum never reaches the cache, so nothing of it hits later.
    small = ContextCache(1024)
    assert cached(small, [user("hi")]) == 0
    assert cached(small, [user("hi"), {"role": "assistant", "content": "x " * 400}]) == 0


def test_other_tools_are_another_prefix() -> None:
    cache = ContextCache(1024)
    assert cached(cache, [SYSTEM, user("a")]) == 0
    assert cached(cache, [SYSTEM, user("b")], TOOLS) == 0
    assert cached(cache, [SYSTEM, user("c")], TOOLS) > leading_tokens("system", SYSTEM["content"])


def test_the_cache_remembers_only_its_last_entries() -> None:
    cache = ContextCache(2)
    other = {"role": "system", "content": "You answer questions about the sky. " * 40}
    assert cached(cache, [SYSTEM, user("a")]) == 0  # two runs: [SYSTEM], [SYSTEM, a]
    assert cached(cache, [other, user("b")]) == 0  # two more push the first two out
    assert cached(cache, [SYSTEM, user("c")]) == 0
    assert cached(cache, [SYSTEM, user("d")]) > 0
    assert cached(ContextCache(0), [SYSTEM, user("a")]) == 0
    nothing = ContextCache(0)
    cached(nothing, [SYSTEM, user("a")])
    assert cached(nothing, [SYSTEM, user("a")]) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from(["sea", "sky", "salt " * 300, "tide " * 150]), min_size=1, max_size=8
        ),
        min_size=1,
        max_size=6,
    )
)
def test_cached_tokens_are_none_or_a_leading_part_of_the_prompt(
    conversations: list[list[str]],
) -> None:
    cache = ContextCache(64)
    for texts in conversations:
        messages = [user(text) for text in texts]
        prompt = count_message_tokens(messages)
        hit = cached(cache, messages)
        assert hit == 0 or MIN_CACHED_TOKENS <= hit < prompt
        # The same prompt at once again: its whole length less the opening, if long enough.
        again = cached(cache, messages)
        whole = prompt - 1 - count_tokens("assistant\n")
        assert again == (whole if whole >= MIN_CACHED_TOKENS else 0)


def test_the_config_refuses_a_negative_size() -> None:
    with pytest.raises(ValueError, match="context_cache_entries must be at least 0"):
        EmulatorConfig(context_cache_entries=-1)


@pytest.mark.parametrize("protocol", protocols.NAMES)
async def test_every_protocol_reports_the_hit_as_the_client_reads_it(protocol: str) -> None:
    system_tokens = leading_tokens("system", SYSTEM["content"])
    async with Emulator(EmulatorConfig(api_key=KEY, ttft_s=0, itl_s=0)) as emulator:
        client = QwenClient(
            KEY, emulator.base_url_for(protocol), protocol=protocol, retry=NO_RETRIES
        )
        async with client:
            first = await client.chat([SYSTEM, user("Why is the sea salty?")], max_tokens=4)
            second = await client.chat([SYSTEM, user("How deep is it?")], max_tokens=4)
    assert first.complete
    assert second.complete
    assert first.usage is not None
    assert second.usage is not None
    expected_prompt = count_message_tokens([SYSTEM, user("How deep is it?")])
    # Anthropic counts the cached tokens apart; the client adds them back in.
    assert second.usage.prompt_tokens == expected_prompt
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == system_tokens
    details = first.usage.prompt_tokens_details
    assert details is None or not details.cached_tokens


async def test_a_request_refused_does_not_fill_the_cache() -> None:
    config = EmulatorConfig(api_key=KEY, ttft_s=0, itl_s=0)
    async with Emulator(config) as emulator, aiohttp.ClientSession() as session:
        url = f"{emulator.base_url}/chat/completions"
        body = {
            "model": "qwen-plus",
            "messages": [SYSTEM, user("a")],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # A bad sampling setting is refused before the model sees the prompt.
        async with session.post(
            url, json={**body, "top_p": 7}, headers={"Authorization": f"Bearer {KEY}"}
        ) as refused:
            assert refused.status == 400
        client = QwenClient(KEY, emulator.base_url, retry=NO_RETRIES)
        async with client:
            result = await client.chat([SYSTEM, user("b")], max_tokens=4)
    assert result.usage is not None
    assert result.usage.prompt_tokens_details is None
