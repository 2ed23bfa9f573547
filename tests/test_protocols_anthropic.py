"""Tests of qwen_sse.protocols.anthropic: the Messages stream decoded under every chunking,
cut at every event, broken in every documented way; the request it builds.

The fixtures ``anthropic-*.sse`` are the example responses of Anthropic's "Streaming
Messages" page, data verbatim (https://docs.anthropic.com/en/docs/build-with-claude/streaming,
now https://platform.claude.com/docs/en/build-with-claude/streaming; the revision with
``claude-sonnet-4-5-20250929``): "Basic streaming request", "Streaming request with tool
use", "Streaming request with extended thinking", and the "Error events" example (which
the page shows alone; here it follows the start of the basic stream). The page's tool-use
and thinking examples end at the last ``data:`` line; the blank line that ends that event on
the wire is added here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_sse import protocols
from qwen_sse.chat import ChatResult, ChatStreamDecoder, ToolCall, ToolCallFunction, decode
from qwen_sse.chunks import ChatCompletionChunk, PromptTokensDetails, Usage
from qwen_sse.errors import InBandError, IncompleteStreamError, ProtocolError, QwenSSEError
from qwen_sse.protocols.anthropic import (
    ANTHROPIC,
    DEFAULT_MAX_TOKENS,
    DEFAULT_THINKING_BUDGET_TOKENS,
    FINISH_REASONS,
)
from qwen_sse.protocols.base import MAX_ANSWER_PARTS, ErrorFields
from tests.chunkings import every_chunking

FIXTURES = Path(__file__).parent / "fixtures"
BASIC_STREAM = (FIXTURES / "anthropic-basic.sse").read_bytes()
TOOL_USE_STREAM = (FIXTURES / "anthropic-tool-use.sse").read_bytes()
THINKING_STREAM = (FIXTURES / "anthropic-thinking.sse").read_bytes()
ERROR_EVENT = (FIXTURES / "anthropic-error.sse").read_bytes()
ERROR_STREAM = b"\n\n".join(BASIC_STREAM.split(b"\n\n")[:4]) + b"\n\n" + ERROR_EVENT
"""The basic stream as far as its first text delta ("Hello"), then the error event."""

THINKING = (
    "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3"
    "\n3. 27 * 400 = 10,800\n4. 27 * 50 = 1,350\n5. 27 * 3 = 81\n6. 10,800 + 1,350 + 81 = 12,231"
)
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."
WEATHER_CALL = ToolCall(
    index=0,
    id="toolu_01T1x1fJ34qAmk2tNTrN7Up6",
    type="function",
    function=ToolCallFunction(
        "get_weather", '{"location": "San Francisco, CA", "unit": "fahrenheit"}'
    ),
)

DOCUMENTED: dict[str, tuple[bytes, dict[str, Any]]] = {
    "basic": (
        BASIC_STREAM,
        {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            "content": "Hello!",
            "reasoning_content": "",
            "tool_calls": (),
            "finish_reason": "stop",
            "usage": Usage(25, 15, 40),
        },
    ),
    "tool-use": (
        TOOL_USE_STREAM,
        {
            "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
            "content": "Okay, let's check the weather for San Francisco, CA:",
            "reasoning_content": "",
            "tool_calls": (WEATHER_CALL,),
            "finish_reason": "tool_calls",
            "usage": Usage(472, 89, 561),
        },
    ),
    "thinking": (
        THINKING_STREAM,
        {
            "id": "msg_01...",
            "content": "27 * 453 = 12,231",
            "reasoning_content": THINKING,
            "tool_calls": (),
            "finish_reason": "stop",
            "usage": None,  # the page's example has usage in neither event
        },
    ),
}


def feed_all(pieces: list[bytes]) -> tuple[ChatResult, list[ChatCompletionChunk]]:
    decoder = ChatStreamDecoder(protocol="anthropic")
    chunks: list[ChatCompletionChunk] = []
    for piece in pieces:
        chunks += decoder.feed(piece)
    chunks += decoder.feed_eof()
    return decoder.result(), chunks


def failure(data: bytes) -> QwenSSEError:
    with pytest.raises(QwenSSEError) as caught:
        decode(data, "anthropic")
    return caught.value


def observed(result: ChatResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "content": result.content,
        "reasoning_content": result.reasoning_content,
        "tool_calls": result.tool_calls,
        "finish_reason": result.finish_reason,
        "usage": result.usage,
    }


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    """Events written as the Messages API writes them."""
    return "".join(
        f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n" for name, data in events
    ).encode()


def message_start(**usage: int) -> tuple[str, dict[str, Any]]:
    message: dict[str, Any] = {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "qwen-plus",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 3, "output_tokens": 1},
    }
    return "message_start", {"type": "message_start", "message": message}


def block_start(index: int, **block: Any) -> tuple[str, dict[str, Any]]:
    return "content_block_start", {
        "type": "content_block_start",
        "index": index,
        "content_block": block,
    }


def block_delta(index: int, **delta: Any) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> tuple[str, dict[str, Any]]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str | None = "end_turn", **usage: int) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    data["usage"] = usage or {"output_tokens": 5}
    return "message_delta", data


MESSAGE_STOP = ("message_stop", {"type": "message_stop"})


def text_answer(*pieces: str, stop_reason: str = "end_turn") -> list[tuple[str, dict[str, Any]]]:
    return [
        message_start(),
        block_start(0, type="text", text=""),
        *(block_delta(0, type="text_delta", text=piece) for piece in pieces),
        block_stop(0),
        message_delta(stop_reason),
        MESSAGE_STOP,
    ]


# --- The documented streams. ---


@pytest.mark.parametrize("name", DOCUMENTED)
def test_documented_streams_decode_under_every_chunking(name: str) -> None:
    data, expected = DOCUMENTED[name]
    for label, pieces in every_chunking(data):
        result, _ = feed_all(pieces)
        assert result.complete, label
        assert observed(result) == expected, label
        assert result.model == "claude-sonnet-4-5-20250929", label
        assert result.choices[0].role == "assistant"
        assert len(result.choices) == 1


def test_the_signature_arrives_as_reasoning_signature_after_the_thinking() -> None:
    _, chunks = feed_all([THINKING_STREAM])
    signatures = [c.choices[0].delta.reasoning_signature for c in chunks if c.choices]
    assert [s for s in signatures if s] == [SIGNATURE]
    kinds = [
        "signature" if c.choices[0].delta.reasoning_signature else "text"
        for c in chunks
        if c.choices and (c.choices[0].delta.reasoning_signature or c.choices[0].delta.content)
    ]
    assert kinds == ["signature", "text"]


@pytest.mark.parametrize("name", DOCUMENTED)
def test_role_comes_once_first_and_every_chunk_has_the_message_id(name: str) -> None:
    data, expected = DOCUMENTED[name]
    _, chunks = feed_all([data])
    roles = [c.choices[0].delta.role for c in chunks if c.choices]
    assert roles[0] == "assistant"
    assert not any(roles[1:])
    assert {c.id for c in chunks} == {expected["id"]}
    assert {c.model for c in chunks} == {"claude-sonnet-4-5-20250929"}


def test_the_usage_chunk_follows_the_finish_chunk_as_in_compatible_mode() -> None:
    _, chunks = feed_all([BASIC_STREAM])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-2].usage is None
    assert chunks[-1].choices == []
    assert chunks[-1].usage == Usage(25, 15, 40)


@pytest.mark.parametrize("name", DOCUMENTED)
def test_a_cut_at_any_event_boundary_is_never_complete(name: str) -> None:
    data, expected = DOCUMENTED[name]
    events = data.rstrip(b"\n").split(b"\n\n")
    for kept in range(len(events)):
        prefix = b"".join(event + b"\n\n" for event in events[:kept])
        error = failure(prefix)
        assert isinstance(error, IncompleteStreamError), kept
        assert "message_stop" in str(error)
        partial = error.partial
        assert partial is not None
        assert not partial.complete
        assert expected["content"].startswith(partial.content), kept
        assert expected["reasoning_content"].startswith(partial.reasoning_content), kept
        for call, whole in zip(partial.tool_calls, expected["tool_calls"], strict=False):
            assert (call.id, call.function.name) == (whole.id, whole.function.name)
            assert whole.function.arguments.startswith(call.function.arguments)


def test_the_documented_error_event_is_an_in_band_error_with_the_partial() -> None:
    for label, pieces in every_chunking(ERROR_STREAM):
        decoder = ChatStreamDecoder(protocol="anthropic")
        with pytest.raises(InBandError) as caught:
            for piece in pieces:
                decoder.feed(piece)
            decoder.feed_eof()
        error = caught.value
        assert (error.code, error.type, error.error_message) == (
            "overloaded_error",
            "overloaded_error",
            "Overloaded",
        ), label
        assert "overloaded_error: Overloaded" in str(error)
        assert error.partial is not None
        assert error.partial.content == "Hello", label
        assert not error.partial.complete


def test_an_error_event_whose_data_lacks_the_type_is_still_an_error() -> None:
    error = failure(sse(message_start(), ("error", {"error": {"message": "boom"}})))
    assert isinstance(error, InBandError)
    assert error.error_message == "boom"


def test_an_error_given_as_a_string_is_an_in_band_error() -> None:
    error = failure(sse(("error", {"type": "error", "error": "Overloaded"})))
    assert isinstance(error, InBandError)
    assert error.error_message == "Overloaded"


# --- The mapping. ---


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),
        ("model_context_window_exceeded", "model_context_window_exceeded"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    result = decode(sse(*text_answer("a", stop_reason=stop_reason)), "anthropic")
    assert result.complete
    assert result.finish_reason == finish_reason
    assert FINISH_REASONS.get(stop_reason, stop_reason) == finish_reason


def test_message_stop_without_a_stop_reason_is_incomplete() -> None:
    events = text_answer("a")
    events[-2] = message_delta(None)
    error = failure(sse(*events))
    assert isinstance(error, IncompleteStreamError)
    assert "message_stop but choice 0 has no finish_reason" in str(error)
    assert error.partial is not None
    assert error.partial.content == "a"


def test_a_stop_reason_in_a_later_message_delta_completes_the_answer() -> None:
    events = text_answer("a")
    events[-2:-1] = [message_delta(None), message_delta("max_tokens", output_tokens=9)]
    result = decode(sse(*events), "anthropic")
    assert (result.complete, result.finish_reason) == (True, "length")
    assert result.usage == Usage(3, 9, 12)


def test_cache_tokens_are_counted_into_the_prompt_and_detailed() -> None:
    events = text_answer("a")
    events[0] = message_start(
        input_tokens=10,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
        output_tokens=1,
    )
    events[-2] = message_delta(output_tokens=7)
    result = decode(sse(*events), "anthropic")
    assert result.usage == Usage(
        prompt_tokens=130,
        completion_tokens=7,
        total_tokens=137,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=100, cache_creation_input_tokens=20
        ),
    )


def test_usage_fields_of_message_delta_replace_those_of_message_start() -> None:
    # As in the page's web-search example, message_delta may repeat input and cache counts.
    events = text_answer("a")
    events[0] = message_start(input_tokens=2679, cache_read_input_tokens=0, output_tokens=3)
    events[-2] = message_delta(
        input_tokens=10682,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=0,
        output_tokens=510,
    )
    result = decode(sse(*events), "anthropic")
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (10682, 510)
    assert result.usage.prompt_tokens_details == PromptTokensDetails(
        cached_tokens=0, cache_creation_input_tokens=0
    )


def test_tool_use_blocks_count_from_zero_whatever_their_block_index() -> None:
    events = [
        message_start(),
        block_start(0, type="text", text=""),
        block_delta(0, type="text_delta", text="Two calls."),
        block_stop(0),
        block_start(1, type="tool_use", id="toolu_a", name="first", input={}),
        block_delta(1, type="input_json_delta", partial_json='{"x": '),
        block_delta(1, type="input_json_delta", partial_json="1}"),
        block_stop(1),
        block_start(2, type="tool_use", id="toolu_b", name="second", input={}),
        block_stop(2),
        message_delta("tool_use"),
        MESSAGE_STOP,
    ]
    result = decode(sse(*events), "anthropic")
    assert result.content == "Two calls."
    assert result.tool_calls == (
        ToolCall(0, "toolu_a", "function", ToolCallFunction("first", '{"x": 1}')),
        ToolCall(1, "toolu_b", "function", ToolCallFunction("second", "{}")),
    )


@pytest.mark.parametrize(
    ("start_input", "fragments", "arguments"),
    [
        ({}, [], "{}"),
        ({}, [""], "{}"),  # the page's streams open every tool_use block with ""
        ({"city": "杭州"}, [], '{"city": "杭州"}'),  # the input as the server wrote it
        ({}, ['{"a"', ": 1}"], '{"a": 1}'),
    ],
)
def test_a_tool_call_without_json_text_takes_its_start_input(
    start_input: dict[str, Any], fragments: list[str], arguments: str
) -> None:
    events = [
        message_start(),
        block_start(0, type="tool_use", id="toolu_a", name="f", input=start_input),
        *(block_delta(0, type="input_json_delta", partial_json=f) for f in fragments),
        block_stop(0),
        message_delta("tool_use"),
        MESSAGE_STOP,
    ]
    result = decode(sse(*events), "anthropic")
    assert result.tool_calls[0].function.arguments == arguments


def test_blocks_the_chunk_model_has_no_place_for_are_skipped() -> None:
    events = [
        message_start(),
        block_start(0, type="redacted_thinking", data="EmwKAhgBEgy3va3pzix"),
        block_stop(0),
        block_start(1, type="server_tool_use", id="srvtoolu_a", name="web_search", input={}),
        block_delta(1, type="input_json_delta", partial_json='{"query": "x"}'),
        block_stop(1),
        block_start(2, type="web_search_tool_result", tool_use_id="srvtoolu_a", content=[]),
        block_stop(2),
        block_start(3, type="text", text=""),
        block_delta(3, type="citations_delta", citation={"type": "web_search_result_location"}),
        block_delta(3, type="text_delta", text="Sunny."),
        block_stop(3),
        ("future_event", {"type": "future_event", "anything": [1, 2]}),
        message_delta(),
        MESSAGE_STOP,
    ]
    result = decode(sse(*events), "anthropic")
    assert (result.complete, result.content, result.tool_calls) == (True, "Sunny.", ())


def test_text_in_a_block_start_is_not_lost() -> None:
    events = [
        message_start(),
        block_start(0, type="thinking", thinking="Hm."),
        block_stop(0),
        block_start(1, type="text", text="Hi"),
        block_delta(1, type="text_delta", text="!"),
        block_stop(1),
        message_delta(),
        MESSAGE_STOP,
    ]
    result = decode(sse(*events), "anthropic")
    assert (result.reasoning_content, result.content) == ("Hm.", "Hi!")


def test_everything_after_message_stop_is_ignored_under_every_chunking() -> None:
    data = sse(*text_answer("a")) + b"event: content_block_delta\ndata: {not json\n\n"
    for label, pieces in every_chunking(data):
        result, _ = feed_all(pieces)
        assert (result.complete, result.content) == (True, "a"), label


# --- Grammar violations. ---

GRAMMAR_VIOLATIONS = {
    "delta-never-started": (
        [message_start(), block_delta(0, type="text_delta", text="a")],
        "content_block_delta for content block 0, which was never started",
    ),
    "stop-never-started": (
        [message_start(), block_stop(2)],
        "content_block_stop for content block 2, which was never started",
    ),
    "started-twice": (
        [message_start(), block_start(0, type="text", text=""), block_start(0, type="text")],
        "content block 0 started twice",
    ),
    "delta-after-stop": (
        [
            message_start(),
            block_start(0, type="text", text=""),
            block_stop(0),
            block_delta(0, type="text_delta", text="a"),
        ],
        "content_block_delta for content block 0 after its content_block_stop",
    ),
    "never-stopped": (
        [
            message_start(),
            block_start(0, type="text", text=""),
            block_delta(0, type="text_delta", text="a"),
            message_delta(),
            MESSAGE_STOP,
        ],
        "message_stop, but content block 0 was never stopped",
    ),
    "block-before-message-start": (
        [block_start(0, type="text", text="")],
        "content_block_start before message_start",
    ),
    "message-delta-before-message-start": (
        [message_delta()],
        "message_delta before message_start",
    ),
    "message-stop-before-message-start": (
        [MESSAGE_STOP],
        "message_stop before message_start",
    ),
    "second-message-start": (
        [message_start(), message_start()],
        "a second message_start",
    ),
    "no-index": (
        [message_start(), ("content_block_stop", {"type": "content_block_stop"})],
        "content_block_stop without an index",
    ),
    "no-content-block": (
        [message_start(), ("content_block_start", {"type": "content_block_start", "index": 0})],
        "content_block_start of content block 0 has no content_block",
    ),
}


@pytest.mark.parametrize("name", GRAMMAR_VIOLATIONS)
def test_grammar_violations_are_protocol_errors_naming_the_event(name: str) -> None:
    events, message = GRAMMAR_VIOLATIONS[name]
    data = sse(*events)
    for label, pieces in every_chunking(data):
        decoder = ChatStreamDecoder(protocol="anthropic")
        with pytest.raises(ProtocolError) as caught:
            for piece in pieces:
                decoder.feed(piece)
            decoder.feed_eof()
        error = caught.value
        assert str(error).startswith(message + "; frame: "), label
        assert "\n" not in str(error)
        assert error.frame
        assert error.partial is not None
        assert not error.partial.complete


def test_a_violation_keeps_what_came_before() -> None:
    events = [*text_answer("kept")[:4], block_delta(0, type="text_delta", text="lost")]
    error = failure(sse(*events))
    assert isinstance(error, ProtocolError)
    assert error.partial is not None
    assert error.partial.content == "kept"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "data frame is not valid JSON"),
        (
            b'{"type": "content_block_delta", "index": "0", "delta": {}}',
            "event has a field of the wrong type: Expected `int | null`, got `str` - at `$.index`",
        ),
        (
            b'{"type": "content_block_start", "index": 0, "content_block": {"input": {"a": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}}}",
            "data frame could not be decoded",
        ),
    ],
    ids=["malformed", "wrong-type", "nested-too-deep"],
)
def test_a_frame_that_cannot_be_read_is_a_protocol_error(data: bytes, message: str) -> None:
    body = sse(message_start()) + b"event: content_block_delta\ndata: " + data + b"\n\n"
    error = failure(body)
    assert isinstance(error, ProtocolError)
    assert str(error).startswith(message)
    assert error.partial is not None


# --- Laws over generated answers. ---

_pieces = st.lists(st.text(min_size=1, max_size=6), max_size=5)
_tools = st.lists(
    st.tuples(st.text(min_size=1, max_size=6), st.lists(st.text(max_size=5), max_size=4)),
    max_size=3,
)
_stop_reasons = st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal", "pause_turn"])


def generated(
    thinking: list[str], texts: list[str], tools: list[tuple[str, list[str]]], stop_reason: str
) -> tuple[bytes, dict[str, Any]]:
    """An answer as a Messages stream, and what it must decode to."""
    events = [message_start(input_tokens=7, output_tokens=1)]
    index = 0
    if thinking:
        events.append(block_start(index, type="thinking", thinking=""))
        events += [block_delta(index, type="thinking_delta", thinking=t) for t in thinking]
        events += [block_delta(index, type="signature_delta", signature="c2ln"), block_stop(index)]
        index += 1
    events.append(block_start(index, type="text", text=""))
    events += [block_delta(index, type="text_delta", text=t) for t in texts]
    events.append(block_stop(index))
    calls = []
    for number, (name, fragments) in enumerate(tools):
        index += 1
        call_id = f"toolu_{number}"
        events.append(block_start(index, type="tool_use", id=call_id, name=name, input={}))
        events += [block_delta(index, type="input_json_delta", partial_json=f) for f in fragments]
        events.append(block_stop(index))
        arguments = "".join(fragments) or "{}"
        calls.append(ToolCall(number, call_id, "function", ToolCallFunction(name, arguments)))
    events += [message_delta(stop_reason, output_tokens=11), MESSAGE_STOP]
    truth = {
        "id": "msg_test",
        "content": "".join(texts),
        "reasoning_content": "".join(thinking),
        "tool_calls": tuple(calls),
        "finish_reason": FINISH_REASONS.get(stop_reason, stop_reason),
        "usage": Usage(7, 11, 18),
    }
    return sse(*events), truth


@given(_pieces, _pieces, _tools, _stop_reasons, st.data())
@settings(max_examples=150, deadline=None)
def test_any_chunking_of_an_answer_decodes_to_the_answer(
    thinking: list[str],
    texts: list[str],
    tools: list[tuple[str, list[str]]],
    stop_reason: str,
    data: st.DataObject,
) -> None:
    body, truth = generated(thinking, texts, tools, stop_reason)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    pieces = [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    result, _ = feed_all(pieces)
    assert result.complete
    assert observed(result) == truth


@given(_pieces, _pieces, _tools, _stop_reasons, st.data())
@settings(max_examples=150, deadline=None)
def test_any_cut_of_an_answer_is_incomplete_and_a_prefix_of_it(
    thinking: list[str],
    texts: list[str],
    tools: list[tuple[str, list[str]]],
    stop_reason: str,
    data: st.DataObject,
) -> None:
    body, truth = generated(thinking, texts, tools, stop_reason)
    cut = data.draw(st.integers(0, len(body) - 1))
    error = failure(body[:cut])
    assert isinstance(error, IncompleteStreamError)
    partial = error.partial
    assert partial is not None
    assert not partial.complete
    assert truth["content"].startswith(partial.content)
    assert truth["reasoning_content"].startswith(partial.reasoning_content)
    assert len(partial.tool_calls) <= len(truth["tool_calls"])
    for call, whole in zip(partial.tool_calls, truth["tool_calls"], strict=False):
        assert (call.index, call.id, call.function.name) == (
            whole.index,
            whole.id,
            whole.function.name,
        )
        assert whole.function.arguments.startswith(call.function.arguments)


# --- The request side. ---


def test_the_protocol_is_registered() -> None:
    assert protocols.get("anthropic") is ANTHROPIC
    assert "anthropic" in protocols.NAMES
    assert (ANTHROPIC.root, ANTHROPIC.path) == ("/apps/anthropic", "/v1/messages")
    assert ANTHROPIC.end_marker == "message_stop"


def test_headers_carry_the_key_and_the_version_and_api_key_of_inverts_them() -> None:
    headers = ANTHROPIC.headers("sk-test")
    assert headers == {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
    assert ANTHROPIC.api_key_of(headers) == "sk-test"
    assert ANTHROPIC.api_key_of({"X-Api-Key": " sk-test "}) == "sk-test"
    assert ANTHROPIC.api_key_of({"Authorization": "Bearer sk-test"}) == "sk-test"
    assert ANTHROPIC.api_key_of({}) == ""


def test_request_body_moves_system_messages_to_a_system_string() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {
            "role": "system",
            "content": [{"type": "text", "text": "Answer in "}, {"text": "English."}],
        },
    ]
    body = ANTHROPIC.request_body("qwen-plus", messages, {}, include_usage=True)
    assert body == {
        "model": "qwen-plus",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "system": "You are terse.\n\nAnswer in English.",
    }
    assert ANTHROPIC.request_body("qwen-plus", messages, {}, include_usage=False) == body


def test_request_body_puts_params_at_the_top_level_over_what_it_built() -> None:
    system_blocks = [{"type": "text", "text": "Long.", "cache_control": {"type": "ephemeral"}}]
    params = {
        "max_tokens": 100,
        "thinking": {"type": "enabled", "budget_tokens": 50},
        "system": system_blocks,
    }
    messages = [{"role": "system", "content": "Short."}, {"role": "user", "content": "Hi"}]
    body = ANTHROPIC.request_body("qwen3-max", messages, params, include_usage=True)
    assert body["max_tokens"] == 100
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 50}
    assert body["system"] == system_blocks
    assert "system" not in ANTHROPIC.request_body(
        "qwen-plus", [{"role": "user", "content": "Hi"}], {}, include_usage=True
    )


def test_facts_count_the_system_prompt_as_a_message() -> None:
    body = ANTHROPIC.request_body(
        "qwen-plus",
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        {"max_tokens": 64},
        include_usage=True,
    )
    facts = ANTHROPIC.facts(body)
    assert facts.model == "qwen-plus"
    assert list(facts.messages) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
    ]
    assert (facts.max_tokens, facts.choices) == (64, 1)
    assert ANTHROPIC.facts({}) == ("", [], None, 1, None, None)


def test_error_bodies_read_the_anthropic_way() -> None:
    body = (
        b'{"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"},'
        b' "request_id": "req_test"}'
    )
    assert ANTHROPIC.error_fields(body) == ErrorFields("rate_limit_error", "Slow down", "req_test")
    error = ANTHROPIC.error_in_body(body)
    assert isinstance(error, InBandError)
    assert (error.code, error.error_message) == ("rate_limit_error", "Slow down")
    assert ANTHROPIC.error_in_body(b'{"type": "message"}') is None


def test_there_is_no_continuation_and_resume_says_why() -> None:
    decoder = ChatStreamDecoder(protocol="anthropic")
    decoder.feed(BASIC_STREAM[:600])
    result = decoder.result()
    assert result.content == "Hello"
    body = ANTHROPIC.request_body(
        "qwen-plus", [{"role": "user", "content": "Hi"}], {}, include_usage=True
    )
    assert ANTHROPIC.continuation(body, result) is None
    assert ANTHROPIC.resume.startswith("none: ")
    assert ANTHROPIC.stream_bytes_factor(body) == 1


def test_the_chat_completions_options_are_translated() -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    params = {
        "enable_thinking": True,
        "thinking_budget": 2048,
        "stop": "END",
        "tools": [weather],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    body = ANTHROPIC.request_body("qwen-plus", messages, params, include_usage=True)
    assert body["system"] == "Be brief."
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["stop_sequences"] == ["END"]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert not {"enable_thinking", "thinking_budget", "stop"} & body.keys()
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "c2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "rain"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "any"}, {"type": "any"}),
    ],
)
def test_tool_choice_spellings(choice: object, expected: object) -> None:
    body = ANTHROPIC.request_body("m", [], {"tool_choice": choice}, include_usage=True)
    assert body["tool_choice"] == expected


def test_thinking_off_and_its_own_spelling_win() -> None:
    off = ANTHROPIC.request_body("m", [], {"enable_thinking": False}, include_usage=True)
    assert off["thinking"] == {"type": "disabled"}
    own = {"enable_thinking": True, "thinking": {"type": "enabled", "budget_tokens": 5000}}
    body = ANTHROPIC.request_body("m", [], own, include_usage=True)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 5000}
    default = ANTHROPIC.request_body("m", [], {"enable_thinking": True}, include_usage=True)
    assert default["thinking"]["budget_tokens"] == DEFAULT_THINKING_BUDGET_TOKENS


def test_content_blocks_are_bounded() -> None:
    # Empty blocks add no chunk, so no chunk bound counts them: the reader does.
    start = 'event: message_start\ndata: {"type":"message_start","message":{"id":"m"}}\n\n'
    blocks = (
        json.dumps({"type": "content_block_start", "index": n, "content_block": {"type": "text"}})
        for n in range(MAX_ANSWER_PARTS + 1)
    )
    stream = start + "".join(f"event: content_block_start\ndata: {b}\n\n" for b in blocks)
    decoder = ChatStreamDecoder(protocol="anthropic")
    with pytest.raises(ProtocolError, match=f"more than {MAX_ANSWER_PARTS} content blocks"):
        decoder.feed(stream.encode())
        decoder.feed_eof()


def test_a_deep_tool_input_is_taken_as_sent_and_other_blocks_keep_none() -> None:
    deep = '{"n":' + "[" * 900 + "]" * 900 + "}"
    start = 'event: message_start\ndata: {"type":"message_start","message":{"id":"m"}}\n\n'
    block = (
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        '"content_block":{"type":"tool_use","id":"t","name":"f","input":' + deep + "}}\n\n"
    )
    rest = "".join(
        f"event: {kind}\ndata: {data}\n\n"
        for kind, data in (
            ("content_block_stop", '{"type":"content_block_stop","index":0}'),
            ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"tool_use"}}'),
            ("message_stop", '{"type":"message_stop"}'),
        )
    )
    result = decode((start + block + rest).encode(), "anthropic")
    assert result.complete
    assert result.tool_calls[0].function.arguments == deep


def test_request_body_leaves_the_callers_messages_as_they_are() -> None:
    results = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "a", "content": "1"}],
    }
    messages = [results, {"role": "tool", "tool_call_id": "b", "content": "2"}]
    for _ in range(3):
        body = ANTHROPIC.request_body("m", messages, {}, include_usage=True)
        assert len(body["messages"][0]["content"]) == 2
    assert len(results["content"]) == 1
