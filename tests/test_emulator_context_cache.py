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


def cached(
    cache: ContextCache,
    messages: list[dict[str, Any]],
    tools: Any = None,
    *,
    model: str = "qwen-plus",
    api_key: str = KEY,
) -> int:
    prompt = message_token_count(messages, tools).tokens
    return cache.cached_tokens(messages, tools, prompt, model=model, api_key=api_key)


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


def test_a_prompt_under_the_minimum_is_not_remembered() -> None:
    # Were it remembered, its run would push the long prompt's first run out of a cache of
    # two entries.
    cache = ContextCache(2)
    assert cached(cache, [SYSTEM, user("a")]) == 0
    assert cached(cache, [user("hi")]) == 0
    assert cached(cache, [SYSTEM, user("b")]) == leading_tokens("system", SYSTEM["content"])


def test_another_model_or_key_is_another_cache() -> None:
    cache = ContextCache(1024)
    assert cached(cache, [SYSTEM, user("a")]) == 0
    assert cached(cache, [SYSTEM, user("b")], model="qwen-max") == 0
    assert cached(cache, [SYSTEM, user("c")], api_key="sk-other") == 0
    system_tokens = leading_tokens("system", SYSTEM["content"])
    assert cached(cache, [SYSTEM, user("d")], model="qwen-max") == system_tokens
    assert cached(cache, [SYSTEM, user("e")], api_key="sk-other") == system_tokens


def test_other_tools_are_another_prefix() -> None:
    cache = ContextCache(1024)
    assert cached(cache, [SYSTEM, user("a")]) == 0
    assert cached(cache, [SYSTEM, user("b")], TOOLS) == 0
    assert cached(cache, [SYSTEM, user("c")], TOOLS) > leading_tokens("system", SYSTEM["content"])


SKY = {"role": "system", "content": "You answer questions about the sky. " * 40}
LAND = {"role": "system", "content": "You answer questions about the land. " * 40}


def test_the_cache_remembers_exactly_its_last_entries() -> None:
    cache = ContextCache(4)
    system_tokens = leading_tokens("system", SYSTEM["content"])
    assert cached(cache, [SYSTEM, user("a")]) == 0  # two runs: [SYSTEM], [SYSTEM, a]
    assert cached(cache, [SKY, user("b")]) == 0  # two more: four, the cache is full
    # [SYSTEM] is still there; [SYSTEM, c] pushes out the oldest, [SYSTEM, a].
    assert cached(cache, [SYSTEM, user("c")]) == system_tokens
    # With one entry more [SYSTEM, a] would still be there, and all of it would hit.
    assert cached(cache, [SYSTEM, user("a")]) == system_tokens
    nothing = ContextCache(0)
    assert cached(nothing, [SYSTEM, user("a")]) == 0
    assert cached(nothing, [SYSTEM, user("a")]) == 0


def test_the_cache_forgets_the_run_used_longest_ago() -> None:
    cache = ContextCache(4)
    assert cached(cache, [SYSTEM, user("a")]) == 0
    assert cached(cache, [SKY, user("b")]) == 0
    # A hit on [SYSTEM] makes it the newest: [SYSTEM, a] goes first, then [SKY].
    assert cached(cache, [SYSTEM, user("c")]) > 0
    assert cached(cache, [LAND]) == 0
    assert cached(cache, [SYSTEM, user("f")]) > 0
    assert cached(cache, [SKY, user("g")]) == 0


def test_a_hit_pushed_out_by_its_own_prompt_still_counts() -> None:
    cache = ContextCache(2)
    assert cached(cache, [SYSTEM, user("a")]) == 0
    turns = [SYSTEM, user("b"), {"role": "assistant", "content": "c"}, user("d")]
    assert cached(cache, turns) == leading_tokens("system", SYSTEM["content"])
    # ... and stays out: the cache holds the prompt's last two runs, no more.
    assert cached(cache, [SYSTEM, user("e")]) == 0


def test_a_run_that_ends_inside_a_turn_is_not_a_hit() -> None:
    cache = ContextCache(1024)
    call: dict[str, Any] = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "function": {"name": "tide", "arguments": "{}"}}],
    }
    first: list[dict[str, Any]] = [
        SYSTEM,
        user("When is high tide?"),
        call,
        {"role": "tool", "content": "6 am"},
    ]
    assert cached(cache, first, TOOLS) == 0
    # Two tool results share one user turn: the run up to the first is not a leading part
    # of this prompt, so the hit is the run before the results.
    second = [*first, {"role": "tool", "content": "7 pm"}]
    expected = message_token_count(first[:3], TOOLS).tokens - message_token_count([]).tokens
    assert cached(cache, second, TOOLS) == expected
    # A last assistant message left open to be continued is not a closed turn either.
    opened: list[dict[str, Any]] = [
        SYSTEM,
        user("Say it"),
        {"role": "assistant", "content": "The sea", "partial": True},
    ]
    assert cached(cache, opened) == 0
    asked = leading_tokens("system", SYSTEM["content"]) + leading_tokens("user", "Say it")
    assert cached(cache, opened) == asked
    # Followed by more, the same message is a closed turn, and a run that hits.
    continued = [*opened, user("Go on")]
    assert cached(cache, continued) == asked + leading_tokens("assistant", "The sea")


MESSAGES = st.sampled_from(
    [
        user("sea"),
        user("salt " * 300),
        {"role": "system", "content": "tide " * 150},
        {"role": "assistant", "content": "wave " * 100},
        {"role": "assistant", "content": "The sea", "partial": True},
        {"role": "tool", "content": "6 am"},
        {"role": "tool", "content": "depth " * 200},
    ]
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(MESSAGES, min_size=1, max_size=8), min_size=1, max_size=6),
    st.booleans(),
)
def test_cached_tokens_are_none_or_a_leading_part_of_the_prompt(
    conversations: list[list[dict[str, Any]]], with_tools: bool
) -> None:
    cache = ContextCache(64)
    tools = TOOLS if with_tools else None
    for messages in conversations:
        prompt = message_token_count(messages, tools).tokens
        hit = cached(cache, messages, tools)
        assert hit == 0 or MIN_CACHED_TOKENS <= hit < prompt
        # The same prompt again: as much as a closed run of it can hold, and never more
        # than the tokens before its last message's end.
        again = cached(cache, messages, tools)
        assert again == 0 or MIN_CACHED_TOKENS <= again < prompt
        assert again >= hit


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
