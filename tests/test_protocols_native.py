"""Tests of qwen_sse.protocols.native: DashScope's native frames decode to the same chunks
and result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwen_sse.chat import (
    DEFAULT_MAX_STREAM_BYTES,
    ChatResult,
    ChatStreamDecoder,
    ChoiceResult,
    decode,
)
from qwen_sse.errors import (
    InBandError,
    IncompleteStreamError,
    ProtocolError,
    QwenSSEError,
    StreamLimitError,
)
from qwen_sse.protocols.native import (
    CUMULATIVE_STREAM_BYTES_FACTOR,
    NATIVE,
    NATIVE_MULTIMODAL,
    native_request_body,
)
from tests.chunkings import every_chunking

FIXTURE = Path(__file__).parent / "fixtures" / "native-plain.sse"


def native_decoder(*, incremental: bool = True, **options: Any) -> ChatStreamDecoder:
    """A decoder of the native protocol for a request with ``incremental_output``."""
    request = {"parameters": {"incremental_output": incremental}}
    return ChatStreamDecoder(protocol="native", request=request, **options)


def run(pieces: list[bytes], *, incremental: bool = True) -> ChatResult:
    decoder = native_decoder(incremental=incremental)
    for piece in pieces:
        decoder.feed(piece)
    decoder.feed_eof()
    return decoder.result()


def failure(data: bytes) -> QwenSSEError:
    decoder = native_decoder()
    with pytest.raises(QwenSSEError) as caught:
        decoder.feed(data)
        decoder.feed_eof()
    return caught.value


def frame(content: str, finish: str = "null", output_tokens: int = 1, **message: Any) -> str:
    body = {
        "output": {
            "choices": [
                {
                    "message": {"content": content, "role": "assistant", **message},
                    "finish_reason": finish,
                }
            ]
        },
        "usage": {
            "input_tokens": 5,
            "output_tokens": output_tokens,
            "total_tokens": 5 + output_tokens,
        },
        "request_id": "rid-native",
    }
    return json.dumps(body, ensure_ascii=False)


def native_stream(*frames: str, event: str = "result", status: int = 200) -> bytes:
    return "".join(
        f"id:{n}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:{f}\n\n"
        for n, f in enumerate(frames, 1)
    ).encode()


def test_fixture_decodes_under_every_chunking() -> None:
    data = FIXTURE.read_bytes()
    expected = "".join(
        json.loads(line[5:])["output"]["choices"][0]["message"]["content"]
        for line in data.decode().splitlines()
        if line.startswith("data:")
    )
    for label, pieces in every_chunking(data):
        result = run(pieces)
        assert result.complete, label
        assert result.content == expected, label
        assert result.finish_reason == "stop"
        assert result.usage is not None
        assert (
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.usage.total_tokens,
        ) == (26, 66, 92)
        assert result.request_id == "d30a9914-ac97-9102-b746-ce0cb35e3fa2"


def test_cumulative_output_is_turned_into_deltas() -> None:
    data = native_stream(frame("我是"), frame("我是通义"), frame("我是通义千问。", "stop", 3))
    decoder = native_decoder(incremental=False)
    chunks = decoder.feed(data)
    assert [c.choices[0].delta.content for c in chunks] == ["我是", "通义", "千问。"]
    assert decoder.done
    assert decoder.result().content == "我是通义千问。"


def test_cumulative_output_that_does_not_extend_is_a_protocol_error() -> None:
    decoder = native_decoder(incremental=False)
    with pytest.raises(ProtocolError, match="does not extend"):
        decoder.feed(native_stream(frame("abc"), frame("xyz")))
        decoder.feed_eof()


def test_reasoning_content_in_native_frames() -> None:
    data = native_stream(
        frame("", reasoning_content="想一想"),
        frame("答案", finish="stop", output_tokens=4),
    )
    result = run([data])
    assert result.reasoning_content == "想一想"
    assert result.content == "答案"


def test_text_result_format() -> None:
    body = {"output": {"text": "hello", "finish_reason": "stop"}, "request_id": "r"}
    result = run([native_stream(json.dumps(body))])
    assert result.content == "hello"
    assert result.finish_reason == "stop"


def test_error_frame_becomes_an_in_band_error_with_partial() -> None:
    error_frame = json.dumps(
        {
            "code": "DataInspectionFailed",
            "message": "Output data may contain inappropriate content.",
            "request_id": "rid-native",
        }
    )
    data = native_stream(frame("部分")) + native_stream(error_frame, event="error", status=400)
    error = failure(data)
    assert isinstance(error, InBandError)
    assert error.code == "DataInspectionFailed"
    assert error.request_id == "rid-native"
    assert error.partial is not None
    assert error.partial.content == "部分"


def test_stream_without_a_finish_reason_is_incomplete() -> None:
    error = failure(native_stream(frame("half"), frame(" way")))
    assert isinstance(error, IncompleteStreamError)
    assert error.partial is not None
    assert error.partial.content == "half way"


def test_malformed_frame() -> None:
    error = failure(native_stream(frame("ok"), '{"output": '))
    assert isinstance(error, ProtocolError)


def test_request_body() -> None:
    messages: list[object] = [{"role": "user", "content": "hi"}]
    body = native_request_body("qwen-plus", messages, {"enable_thinking": False})
    assert body == {
        "model": "qwen-plus",
        "input": {"messages": messages},
        "parameters": {
            "result_format": "message",
            "incremental_output": True,
            "enable_thinking": False,
        },
    }


def test_null_finish_reasons_then_a_clean_end_are_incomplete_under_every_chunking() -> None:
    data = native_stream(frame("half"), frame(" way", output_tokens=2))
    for label, pieces in every_chunking(data):
        decoder = native_decoder()
        for piece in pieces:
            decoder.feed(piece)
        assert not decoder.done, label
        with pytest.raises(IncompleteStreamError) as caught:
            decoder.feed_eof()
        assert str(caught.value) == (
            f"stream ended without a finish reason for every choice after 2 events and "
            f"{len(data)} bytes"
        ), label
        partial = caught.value.partial
        assert partial is not None
        assert (partial.content, partial.finish_reason, partial.complete) == (
            "half way",
            None,
            False,
        ), label


def two_choices(first: tuple[str, str], second: tuple[str, str]) -> str:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        for i, (text, finish) in enumerate((first, second))
    ]
    return json.dumps({"output": {"choices": choices}, "request_id": "rid-native"})


def test_with_several_choices_the_answer_ends_when_every_one_has_finished() -> None:
    early = native_stream(two_choices(("a", "stop"), ("b", "null")))
    error = failure(early)
    assert isinstance(error, IncompleteStreamError)
    assert error.partial is not None
    assert [c.finish_reason for c in error.partial.choices] == ["stop", None]
    whole = native_stream(
        two_choices(("a", "stop"), ("b", "null")), two_choices(("", "null"), ("c", "length"))
    )
    for label, pieces in every_chunking(whole):
        result = run(pieces)
        assert result.complete, label
        assert [(c.content, c.finish_reason) for c in result.choices] == [
            ("a", "stop"),
            ("bc", "length"),
        ], label


def test_cumulative_frames_get_a_byte_bound_that_grows_with_their_square() -> None:
    text = "".join(f"{n:03d}" for n in range(200))
    frames = [frame(text[: 3 * k]) for k in range(1, 200)] + [frame(text, "stop", 200)]
    data = native_stream(*frames)
    limit = len(data) // 8  # repeated text makes up most of these bytes
    for label, pieces in (("whole", [data]), ("1 KiB reads", _reads(data, 1024))):
        cumulative = native_decoder(incremental=False, max_stream_bytes=limit)
        assert cumulative.max_stream_bytes == limit * CUMULATIVE_STREAM_BYTES_FACTOR
        for piece in pieces:
            cumulative.feed(piece)
        cumulative.feed_eof()
        assert cumulative.result().complete, label
        assert cumulative.result().content == text
        # The same bytes read as incremental frames: the bound is max_stream_bytes itself.
        incremental = native_decoder(max_stream_bytes=limit)
        with pytest.raises(StreamLimitError) as caught:
            for piece in pieces:
                incremental.feed(piece)
            incremental.feed_eof()
        assert caught.value.limit == "max_stream_bytes"
        assert caught.value.limit_value == limit


def test_the_longest_cumulative_answer_fits_the_default_byte_bound() -> None:
    # Without incremental output (thinking needs it), the longest answer is 65,536 tokens;
    # one token per frame is the most bytes. A token is 1.4 CJK characters on average,
    # 9 bytes even if each came escaped as \uXXXX.
    tokens, bytes_per_token = 65_536, 9
    overhead = len(native_stream(frame("", output_tokens=tokens)))
    total = tokens * overhead + bytes_per_token * tokens * (tokens + 1) // 2
    assert total < DEFAULT_MAX_STREAM_BYTES * CUMULATIVE_STREAM_BYTES_FACTOR


def test_a_failure_inside_a_native_frame_is_a_sticky_protocol_error() -> None:
    decoder = native_decoder(incremental=False)
    good = frame("kept")
    with pytest.raises(ProtocolError):
        decoder.feed(native_stream(good, frame("other")))
        decoder.feed_eof()
    with pytest.raises(ProtocolError):
        decoder.feed(native_stream(frame("kept more", "stop")))
    assert not decoder.result().complete
    assert decoder.result().content == "kept"


def test_native_streams_are_bounded_in_characters_and_chunks() -> None:
    data = native_stream(*[frame("0123456789") for _ in range(5)], frame("", "stop"))
    chars = native_decoder(max_answer_chars=25)
    with pytest.raises(StreamLimitError) as caught:
        for piece in _reads(data, 1):
            chars.feed(piece)
    assert caught.value.limit == "max_answer_chars"
    assert caught.value.partial is not None
    assert caught.value.partial.content == "0123456789" * 3
    chunks = native_decoder(max_answer_chunks=2)
    with pytest.raises(StreamLimitError) as caught:
        for piece in _reads(data, 1):
            chunks.feed(piece)
    assert caught.value.limit == "max_answer_chunks"


def _reads(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def test_native_choices_count_against_max_answer_chunks() -> None:
    choices = [
        {"index": n, "message": {"content": "", "role": "assistant"}, "finish_reason": "null"}
        for n in range(100)
    ]
    data = native_stream(json.dumps({"output": {"choices": choices}}))
    decoder = native_decoder(max_answer_chunks=50)
    with pytest.raises(StreamLimitError) as caught:
        decoder.feed(data)
        decoder.feed_eof()
    assert caught.value.limit == "max_answer_chunks"
    assert caught.value.observed == 101


def tool_frame(arguments: str, finish: str = "null") -> str:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }
    return frame("", finish, tool_calls=[call])


def test_cumulative_tool_call_arguments_are_not_doubled() -> None:
    # With incremental_output false DashScope repeats every tool call's arguments so far.
    data = native_stream(
        tool_frame('{"ci'),
        tool_frame('{"city": "Pa'),
        tool_frame('{"city": "Paris"}', "tool_calls"),
    )
    for label, pieces in every_chunking(data):
        result = run(pieces, incremental=False)
        assert result.complete, label
        (call,) = result.tool_calls
        assert (call.id, call.function.name) == ("call_1", "get_weather"), label
        assert call.function.arguments == '{"city": "Paris"}', label
    shrinking = native_stream(tool_frame('{"city": "Pa'), tool_frame('{"x'))
    decoder = native_decoder(incremental=False)
    with pytest.raises(ProtocolError, match="cumulative tool call 0 arguments of choice 0"):
        decoder.feed(shrinking)
        decoder.feed_eof()


def test_search_sources_and_plugin_usage_reach_the_result() -> None:
    first = json.loads(frame("据报道"))
    first["output"]["search_info"] = {
        "search_results": [
            {
                "index": 1,
                "title": "天气预报",
                "url": "https://example.com/weather",
                "site_name": "Example",
                "icon": "https://example.com/icon.png",
            }
        ]
    }
    last = json.loads(frame("，晴。", "stop", 4))
    last["usage"]["plugins"] = {"search": {"count": 1, "strategy": "standard"}}
    data = native_stream(
        json.dumps(first, ensure_ascii=False), json.dumps(last, ensure_ascii=False)
    )
    for label, pieces in every_chunking(data):
        result = run(pieces)
        assert result.complete, label
        assert result.content == "据报道，晴。"
        assert [(s.index, s.title, s.site_name) for s in result.search_results] == [
            (1, "天气预报", "Example")
        ]
        assert result.usage is not None
        assert result.usage.plugins == {"search": {"count": 1, "strategy": "standard"}}


def test_multimodal_content_parts_decode_as_text() -> None:
    parts = [
        frame("").replace('"content": ""', '"content": [{"text": "图中"}]'),
        frame("").replace('"content": ""', '"content": [{"text": "是一只"}, {"text": "猫"}]'),
        frame("", "stop", 4).replace('"content": ""', '"content": []'),
    ]
    data = native_stream(*parts)
    for label, pieces in every_chunking(data):
        decoder = ChatStreamDecoder(protocol="native-multimodal")
        for piece in pieces:
            decoder.feed(piece)
        decoder.feed_eof()
        result = decoder.result()
        assert result.complete, label
        assert result.content == "图中是一只猫", label
    cumulative = native_stream(
        frame("").replace('"content": ""', '"content": [{"text": "图中"}]'),
        frame("", "stop").replace('"content": ""', '"content": [{"text": "图中是猫"}]'),
    )
    request = native_request_body("qwen3-vl-plus", [], {"incremental_output": False})
    assert decode(cumulative, "native-multimodal", request=request).content == "图中是猫"


def test_native_continuation_is_partial_mode_under_input_messages() -> None:
    body = native_request_body("qwen-plus", [{"role": "user", "content": "hi"}], {})
    so_far = ChatResult(choices=(ChoiceResult(content="Hel"),))
    continued = NATIVE.continuation(body, so_far)
    assert continued is not None
    assert continued["input"]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hel", "partial": True},
    ]
    assert continued["parameters"] == body["parameters"]
    thinking = native_request_body("qwen-plus", [], {"enable_thinking": True})
    assert NATIVE.continuation(thinking, so_far) is None
    assert NATIVE_MULTIMODAL.continuation(body, so_far) is None
