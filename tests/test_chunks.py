"""Tests of qwen_sse.chunks: typed decoding of data frames and error frames."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from qwen_sse.chunks import (
    ChatCompletionChunk,
    CompletionTokensDetails,
    ErrorBody,
    InputOutputUsage,
    PromptTokensDetails,
    Usage,
    decode_chunk,
    decode_error_frame,
    encode_chunk,
)
from qwen_sse.errors import ProtocolError

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_frames(name: str) -> list[str]:
    text = (FIXTURES / name).read_text("utf-8")
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block.strip()]


def test_first_fixture_chunk_decodes_every_field() -> None:
    chunk = decode_chunk(fixture_frames("compat-plain-zh.sse")[0])
    assert chunk.id == "chatcmpl-428b414f-fdd4-94c6-b179-8f576ad653a8"
    assert chunk.object == "chat.completion.chunk"
    assert chunk.created == 1726132850
    assert chunk.model == "qwen-plus"
    assert chunk.system_fingerprint is None
    assert chunk.usage is None
    (choice,) = chunk.choices
    assert choice.index == 0
    assert choice.finish_reason is None
    assert choice.logprobs is None
    assert choice.delta.role == "assistant"
    assert choice.delta.content == ""
    assert choice.delta.reasoning_content is None
    assert choice.delta.tool_calls is None


def test_usage_chunk_has_no_choices() -> None:
    chunk = decode_chunk(fixture_frames("compat-plain-zh.sse")[-2])
    assert chunk.choices == []
    assert chunk.usage is not None
    assert (chunk.usage.prompt_tokens, chunk.usage.completion_tokens) == (22, 17)
    assert chunk.usage.total_tokens == 39


def test_usage_details() -> None:
    chunk = decode_chunk(
        b'{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14,'
        b'"prompt_tokens_details":{"cached_tokens":3},'
        b'"completion_tokens_details":{"reasoning_tokens":6}}}'
    )
    assert chunk.usage is not None
    assert chunk.usage.prompt_tokens_details is not None
    assert chunk.usage.prompt_tokens_details.cached_tokens == 3
    assert chunk.usage.completion_tokens_details is not None
    assert chunk.usage.completion_tokens_details.reasoning_tokens == 6


def test_missing_keys_read_as_null_and_unknown_keys_are_ignored() -> None:
    chunk = decode_chunk('{"choices":[{"delta":{}}],"brand_new_field":{"x":[1,2]}}')
    assert chunk == ChatCompletionChunk(choices=chunk.choices)
    (choice,) = chunk.choices
    assert choice.index == 0
    assert choice.finish_reason is None
    assert choice.delta.content is None
    assert decode_chunk("{}").choices == []
    assert decode_chunk('{"choices":[{"index":0}]}').choices[0].delta.content is None


def test_tool_call_delta_with_empty_function() -> None:
    chunk = decode_chunk(
        '{"choices":[{"index":0,"delta":{"tool_calls":['
        '{"index":0,"id":"","type":"function","function":{}}]}}]}'
    )
    (call,) = chunk.choices[0].delta.tool_calls or []
    assert call.id == ""
    assert call.function is not None
    assert call.function.name is None
    assert call.function.arguments is None


def test_wrong_type_names_the_field_path_and_keeps_the_frame() -> None:
    frame = '{"choices":[{"delta":{"content":5}}]}'
    with pytest.raises(ProtocolError) as caught:
        decode_chunk(frame)
    assert "$.choices[0].delta.content" in str(caught.value)
    assert caught.value.frame == frame


def test_malformed_json_is_a_protocol_error_with_the_frame() -> None:
    frame = b'{"choices":[{"delta":{"content":"cut'
    with pytest.raises(ProtocolError, match="not valid JSON") as caught:
        decode_chunk(frame)
    assert caught.value.frame == frame


def test_long_frames_are_previewed_in_the_message_but_kept_whole() -> None:
    frame = "{" + "x" * 5000
    with pytest.raises(ProtocolError) as caught:
        decode_chunk(frame)
    assert len(str(caught.value)) < 600
    assert caught.value.frame == frame


def test_error_frame_is_recognised() -> None:
    frame = (
        '{"error": {"message": "Output data may contain inappropriate content.", '
        '"type": "data_inspection_failed", "code": "data_inspection_failed"}, '
        '"id": "chatcmpl-abc"}'
    )
    assert decode_error_frame(frame) == (
        ErrorBody(
            message="Output data may contain inappropriate content.",
            type="data_inspection_failed",
            code="data_inspection_failed",
        ),
        "chatcmpl-abc",
    )


def test_error_frame_as_bytes_with_string_error_and_request_id() -> None:
    assert decode_error_frame(b'{"error": "overloaded", "request_id": "r-1"}') == (
        ErrorBody(message="overloaded"),
        "r-1",
    )


def test_content_mentioning_error_is_not_an_error_frame() -> None:
    frame = '{"choices":[{"delta":{"content":"the \\"error\\" key"}}],"id":"x"}'
    assert decode_error_frame(frame) is None
    assert decode_error_frame('{"choices":[{"delta":{"content":"\\"error\\""}}]}') is None
    assert decode_error_frame('{"id":"x"}') is None
    assert decode_error_frame('{"error": null}') is None


def test_error_frame_with_broken_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_error_frame('{"error": {"message": ')


def test_encode_chunk_round_trips_without_the_error_key() -> None:
    frame = fixture_frames("compat-plain-zh.sse")[1]
    chunk = decode_chunk(frame)
    encoded = encode_chunk(chunk)
    assert b'"error"' not in encoded
    assert decode_chunk(encoded) == chunk


def test_input_output_usage_maps_to_the_shared_usage() -> None:
    decoded = msgspec.json.decode(
        b'{"input_tokens": 5, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 2},'
        b' "output_tokens_details": {"reasoning_tokens": 3}, "plugins": {"search": {"count": 1}}}',
        type=InputOutputUsage,
    )
    assert decoded.usage() == Usage(
        prompt_tokens=5,
        completion_tokens=7,
        total_tokens=12,  # summed when the server gives none
        prompt_tokens_details=PromptTokensDetails(cached_tokens=2),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=3),
        plugins={"search": {"count": 1}},
    )
    assert InputOutputUsage(1, 2, total_tokens=9).usage().total_tokens == 9
