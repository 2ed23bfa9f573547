"""Tests of qwen_sse.chat: stream semantics and accumulation, under every chunking."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qwen_sse
from qwen_sse.chat import (
    DEFAULT_MAX_ANSWER_CHARS,
    DEFAULT_MAX_ANSWER_CHUNKS,
    DEFAULT_MAX_STREAM_BYTES,
    AudioResult,
    ChatAccumulator,
    ChatResult,
    ChatStreamDecoder,
    ToolCall,
    ToolCallFunction,
)
from qwen_sse.chunks import ChatCompletionChunk, SearchResult, decode_chunk
from qwen_sse.errors import (
    EventTooLargeError,
    InBandError,
    IncompleteStreamError,
    ProtocolError,
    QwenSSEError,
    StreamLimitError,
    TransportError,
)
from qwen_sse.protocols.compatible import CompatibleProtocol, CompatibleReader
from qwen_sse.sse import SSEDecoder
from tests.chunkings import LINE_ENDINGS, every_chunking, with_line_ending

FIXTURES = Path(__file__).parent / "fixtures"
CHUNK_ID = "chatcmpl-0b4d6c1e-0000-4000-8000-000000000001"


def frame(choices: list[dict[str, Any]] | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "qwen-plus",
        "choices": choices if choices is not None else [],
        "usage": None,
        "system_fingerprint": None,
    }
    body.update(extra)
    return json.dumps(body, ensure_ascii=False)


def delta_frame(index: int = 0, finish_reason: str | None = None, **delta: Any) -> str:
    return frame(
        [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    )


def stream(*frames: str, done: bool = True, line_ending: str = "\n") -> bytes:
    text = "".join(f"data: {f}\n\n" for f in frames) + ("data: [DONE]\n\n" if done else "")
    return with_line_ending(text, line_ending).encode()


def run(pieces: list[bytes]) -> ChatResult:
    decoder = ChatStreamDecoder()
    for piece in pieces:
        decoder.feed(piece)
    decoder.feed_eof()
    return decoder.result()


def failure(pieces: list[bytes]) -> QwenSSEError:
    decoder = ChatStreamDecoder()
    with pytest.raises(QwenSSEError) as caught:
        for piece in pieces:
            decoder.feed(piece)
        decoder.feed_eof()
    return caught.value


@pytest.mark.parametrize(
    ("name", "content", "usage"),
    [
        ("compat-plain-zh.sse", "我是来自阿里云的超大规模语言模型，我叫通义千问。", (22, 17, 39)),
        (
            "compat-plain-en.sse",
            "I am a large-scale language model from Alibaba Cloud, and my name is Qwen.",
            None,
        ),
    ],
)
def test_fixture_streams_decode_under_every_chunking(
    name: str, content: str, usage: tuple[int, int, int] | None
) -> None:
    data = (FIXTURES / name).read_bytes()
    for label, pieces in every_chunking(data):
        result = run(pieces)
        assert result.complete, label
        assert result.content == content, label
        assert result.finish_reason == "stop", label
        assert result.request_id == "428b414f-fdd4-94c6-b179-8f576ad653a8"
        if usage is not None:
            assert result.usage is not None
            got = (result.usage.prompt_tokens, result.usage.completion_tokens)
            assert (*got, result.usage.total_tokens) == usage, label


def test_english_fixture_usage() -> None:
    result = run([(FIXTURES / "compat-plain-en.sse").read_bytes()])
    assert result.usage is not None
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


TOOL_STREAM_FRAMES = [
    delta_frame(role="assistant", content=""),
    delta_frame(
        tool_calls=[
            {
                "index": 0,
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": '},
            }
        ]
    ),
    # Continuations repeat "id": "" and "type", omit name; some carry "function": {}.
    delta_frame(
        tool_calls=[{"index": 0, "id": "", "type": "function", "function": {"arguments": '"杭州"'}}]
    ),
    delta_frame(tool_calls=[{"index": 0, "id": "", "type": "function", "function": {}}]),
    frame(
        [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}}]
    ),  # no finish_reason or logprobs keys at all
    delta_frame(
        tool_calls=[
            {
                "index": 1,
                "id": "call_def",
                "type": "function",
                "function": {"name": "get_time", "arguments": ""},
            }
        ]
    ),
    delta_frame(tool_calls=[{"index": 1, "id": "", "function": {"arguments": "{}"}}]),
    delta_frame(finish_reason="tool_calls", content=""),
    frame([], usage={"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}),
]


@pytest.mark.parametrize("line_ending", LINE_ENDINGS, ids=["LF", "CRLF", "CR"])
def test_tool_call_continuations_under_every_chunking(line_ending: str) -> None:
    data = stream(*TOOL_STREAM_FRAMES, line_ending=line_ending)
    for label, pieces in every_chunking(data):
        result = run(pieces)
        assert result.tool_calls == (
            ToolCall(
                0, "call_abc", "function", ToolCallFunction("get_weather", '{"city": "杭州"}')
            ),
            ToolCall(1, "call_def", "function", ToolCallFunction("get_time", "{}")),
        ), label
        assert result.finish_reason == "tool_calls"
        assert result.content == ""
        assert result.usage is not None
        assert result.usage.total_tokens == 18


def test_tool_call_id_and_name_are_never_concatenated_or_overwritten_by_empty() -> None:
    data = stream(
        delta_frame(tool_calls=[{"index": 0, "id": "call_1", "function": {"name": "f"}}]),
        delta_frame(tool_calls=[{"index": 0, "id": "", "function": {"name": ""}}]),
        delta_frame(tool_calls=[{"index": 0, "id": None, "function": {"name": None}}]),
        delta_frame(finish_reason="tool_calls"),
    )
    (call,) = run([data]).tool_calls
    assert (call.id, call.function.name, call.type) == ("call_1", "f", "function")


def test_reasoning_phase_then_content() -> None:
    data = stream(
        delta_frame(role="assistant", content=None, reasoning_content=""),
        delta_frame(content=None, reasoning_content="用户"),
        delta_frame(content=None, reasoning_content="在问好。"),
        delta_frame(content=None, reasoning_content=None),  # both null: still the same phase
        delta_frame(content="你好", reasoning_content=None),
        delta_frame(content="！"),
        delta_frame(finish_reason="stop", content=""),
    )
    for label, pieces in every_chunking(data):
        result = run(pieces)
        assert result.reasoning_content == "用户在问好。", label
        assert result.content == "你好！", label
        assert result.choices[0].role == "assistant"


def test_multiple_choices_accumulate_separately() -> None:
    data = stream(
        delta_frame(0, content="A"),
        delta_frame(1, content="x"),
        delta_frame(0, content="B"),
        delta_frame(1, "length", content="y"),
        delta_frame(0, "stop", content=""),
    )
    result = run([data])
    assert [(c.index, c.content, c.finish_reason) for c in result.choices] == [
        (0, "AB", "stop"),
        (1, "xy", "length"),
    ]
    assert result.content == "AB"


IN_BAND_ERROR = (
    '{"error": {"message": "Output data may contain inappropriate content.", '
    '"type": "data_inspection_failed", "code": "data_inspection_failed"}, '
    f'"id": "{CHUNK_ID}"}}'
)


def test_in_band_error_after_content_keeps_the_partial() -> None:
    data = stream(delta_frame(content="第一"), delta_frame(content="段"), IN_BAND_ERROR, done=False)
    for label, pieces in every_chunking(data):
        error = failure(pieces)
        assert isinstance(error, InBandError), label
        assert error.code == "data_inspection_failed"
        assert error.error_message == "Output data may contain inappropriate content."
        assert error.request_id == CHUNK_ID.removeprefix("chatcmpl-")
        assert error.partial is not None
        assert error.partial.content == "第一段"
        assert not error.partial.complete


def test_chunks_before_a_failure_are_returned_and_the_error_comes_next() -> None:
    decoder = ChatStreamDecoder()
    chunks = decoder.feed(stream(delta_frame(content="a"), IN_BAND_ERROR, done=False))
    assert [c.choices[0].delta.content for c in chunks] == ["a"]
    assert isinstance(decoder.error, InBandError)
    with pytest.raises(InBandError):
        decoder.feed(b"data: [DONE]\n\n")
    with pytest.raises(InBandError):
        decoder.feed_eof()


def test_error_as_first_frame_raises_at_once() -> None:
    decoder = ChatStreamDecoder()
    with pytest.raises(InBandError) as caught:
        decoder.feed(stream(IN_BAND_ERROR, done=False))
    assert caught.value.partial is not None
    assert caught.value.partial.content == ""


def test_stream_without_done_is_incomplete_with_partial() -> None:
    data = stream(delta_frame(content="half "), delta_frame(content="an answer"), done=False)
    for label, pieces in every_chunking(data):
        error = failure(pieces)
        assert isinstance(error, IncompleteStreamError), label
        assert error.partial is not None
        assert error.partial.content == "half an answer"
        assert not error.partial.complete
        assert "without data: [DONE]" in str(error)


def test_truncation_inside_an_event_says_what_was_discarded() -> None:
    data = stream(delta_frame(content="kept"), done=False) + b'data: {"choices":[{"delta":{"con'
    error = failure([data])
    assert isinstance(error, IncompleteStreamError)
    assert "unterminated event" in str(error)
    assert error.partial is not None
    assert error.partial.content == "kept"


def test_malformed_json_mid_stream() -> None:
    data = stream(delta_frame(content="ok"), '{"choices": [', delta_frame(content="lost"))
    error = failure([data])
    assert isinstance(error, ProtocolError)
    assert error.frame == b'{"choices": ['
    assert error.partial is not None
    assert error.partial.content == "ok"


def test_oversized_event_keeps_earlier_chunks() -> None:
    decoder = ChatStreamDecoder(max_event_bytes=512)
    data = stream(delta_frame(content="small"), delta_frame(content="x" * 2000))
    chunks = decoder.feed(data)
    assert len(chunks) == 1
    with pytest.raises(EventTooLargeError) as caught:
        decoder.feed_eof()
    assert caught.value.partial is not None
    assert caught.value.partial.content == "small"


def test_bytes_after_done_are_ignored_and_counted() -> None:
    decoder = ChatStreamDecoder()
    decoder.feed(
        stream(delta_frame(content="a", finish_reason="stop"))
        + stream(delta_frame(content="b", finish_reason="stop"))
    )
    decoder.feed(b"data: more\n\n")
    assert decoder.feed_eof() == []
    assert decoder.result().content == "a"
    assert decoder.bytes_after_done == len(b"data: more\n\n")


def test_timing_uses_the_first_text_not_the_role_chunk() -> None:
    decoder = ChatStreamDecoder(started_at_s=100.0)
    decoder.feed(stream(delta_frame(role="assistant", content=""), done=False), now_s=100.5)
    decoder.feed(stream(delta_frame(content="a"), done=False), now_s=101.0)
    decoder.feed(stream(delta_frame(content="b"), done=False), now_s=101.25)
    decoder.feed(stream(delta_frame(finish_reason="stop", content="")), now_s=101.5)
    timing = decoder.result(now_s=102.0).timing
    assert timing.ttft_s == pytest.approx(1.0)
    assert timing.token_times_s == pytest.approx((1.0, 1.25))
    assert timing.inter_token_gaps_s == pytest.approx((0.25,))
    assert timing.total_s == pytest.approx(2.0)
    assert timing.events == 5
    assert timing.bytes_received > 0


def test_feed_events_accepts_parsed_events() -> None:
    sse = SSEDecoder()
    decoder = ChatStreamDecoder()
    chunks = decoder.feed_events(sse.feed(stream(delta_frame(content="hé", finish_reason="stop"))))
    assert [c.choices[0].delta.content for c in chunks] == ["hé"]
    assert decoder.done


def test_outside_failure_carries_the_partial() -> None:
    decoder = ChatStreamDecoder()
    decoder.feed(stream(delta_frame(content="so far"), done=False))
    error = decoder.fail(TransportError("connection reset"))
    assert error.partial is not None
    assert error.partial.content == "so far"
    # The first failure wins: a later one does not replace it.
    assert decoder.fail(TransportError("again")) is error


def test_accumulator_is_usable_alone() -> None:
    accumulator = ChatAccumulator(request_id="req-1")
    for text in ("a", "b"):
        accumulator.add(decode_chunk(delta_frame(content=text)))
    result = accumulator.result(complete=False)
    assert result.content == "ab"
    assert result.request_id == "req-1"
    assert result.id == CHUNK_ID


def test_errors_with_partials_pickle() -> None:
    error = failure([stream(delta_frame(content="p"), IN_BAND_ERROR, done=False)])
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert clone.partial == error.partial


def test_empty_result_properties() -> None:
    result = ChatResult()
    assert (result.content, result.reasoning_content, result.tool_calls) == ("", "", ())
    assert result.finish_reason is None
    assert not result.complete


# --- No content is lost or duplicated, wherever the stream is cut. ---

_texts = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=8)


@given(_texts, st.data())
@settings(max_examples=200, deadline=None)
def test_any_cut_yields_a_prefix_of_the_answer_or_the_whole(
    pieces: list[str], data: st.DataObject
) -> None:
    full = "".join(pieces)
    body = stream(*(delta_frame(content=p) for p in pieces))
    cut = data.draw(st.integers(0, len(body)))
    decoder = ChatStreamDecoder()
    streamed: list[ChatCompletionChunk] = []
    try:
        for part in (body[:cut][: cut // 2], body[:cut][cut // 2 :]):
            streamed += decoder.feed(part)
        decoder.feed_eof()
    except IncompleteStreamError as error:
        assert error.partial is not None
        assert full.startswith(error.partial.content)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == error.partial.content
    else:
        assert cut == len(body)
        assert decoder.result().content == full


@pytest.mark.parametrize(
    "error_frame",
    [
        '{"error": {"message": "m", "code": "c"}, "choices": null}',
        '{"error": {"message": "m", "code": "c"}, "choices": [{"delta": {"content": "x"}}]}',
        '{"error": "m", "code": "c"}',
        '{"object": "x", "error": {"message": "m", "code": "c", "type": "t"}}',
    ],
    ids=["choices-null", "with-choices", "string-error", "other-keys"],
)
def test_every_frame_is_checked_for_an_error_key(error_frame: str) -> None:
    error = failure([stream(delta_frame(content="a"), error_frame, done=False)])
    assert isinstance(error, InBandError)
    assert error.error_message == "m"
    assert error.partial is not None
    assert error.partial.content == "a"


def test_an_error_frame_before_an_oversized_event_stays_the_reported_error() -> None:
    decoder = ChatStreamDecoder(max_event_bytes=300)
    data = stream(delta_frame(content="hi"), IN_BAND_ERROR, delta_frame(content="x" * 1000))
    chunks = decoder.feed(data)
    assert [c.choices[0].delta.content for c in chunks] == ["hi"]
    with pytest.raises(InBandError):
        decoder.feed_eof()


# --- an answer is complete only with every choice's finish reason and [DONE] ---

USAGE_FRAME = frame([], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})


@pytest.mark.parametrize("line_ending", LINE_ENDINGS, ids=["LF", "CRLF", "CR"])
def test_done_without_a_finish_reason_is_incomplete_under_every_chunking(
    line_ending: str,
) -> None:
    # llama.cpp's server ends an interrupted stream this way: text, no finish reason, [DONE].
    data = stream(
        delta_frame(role="assistant", content=""),
        delta_frame(content="half "),
        delta_frame(content="an answer"),
        line_ending=line_ending,
    )
    for label, pieces in every_chunking(data):
        error = failure(pieces)
        assert type(error) is IncompleteStreamError, label
        # Under CRLF the event is dispatched at the final CR, before its LF is fed.
        cr_first = line_ending == "\r\n" and pieces[-1] == b"\n"
        received = len(data) - 1 if cr_first else len(data)
        assert str(error) == (
            f"stream ended with data: [DONE] but choice 0 has no finish_reason"
            f" (4 events, {received} bytes)"
        ), label
        assert error.partial is not None
        assert error.partial.content == "half an answer", label
        assert error.partial.finish_reason is None
        assert error.partial.complete is False
        assert error.partial.timing.events == 4, label


def test_done_as_the_only_event_is_incomplete() -> None:
    data = stream()
    for label, pieces in every_chunking(data):
        error = failure(pieces)
        assert type(error) is IncompleteStreamError, label
        assert str(error) == (
            f"stream ended with data: [DONE] but no choice arrived (1 events, {len(data)} bytes)"
        ), label
        assert error.partial is not None
        assert error.partial.complete is False


def test_usage_then_done_without_any_choice_is_incomplete() -> None:
    error = failure([stream(USAGE_FRAME)])
    assert isinstance(error, IncompleteStreamError)
    assert "but no choice arrived" in str(error)
    assert error.partial is not None
    assert error.partial.usage is not None
    assert error.partial.usage.total_tokens == 5


def test_a_usage_only_chunk_after_the_finish_chunk_is_normal() -> None:
    data = stream(delta_frame(content="whole", finish_reason="stop"), USAGE_FRAME)
    for label, pieces in every_chunking(data):
        result = run(pieces)
        assert result.complete, label
        assert (result.content, result.finish_reason) == ("whole", "stop"), label


def test_with_several_choices_every_one_needs_its_finish_reason() -> None:
    finished_0 = delta_frame(index=0, content="a", finish_reason="stop")
    unfinished_1 = delta_frame(index=1, content="b")
    unfinished_2 = delta_frame(index=2, content="c")
    error = failure([stream(finished_0, unfinished_1)])
    assert isinstance(error, IncompleteStreamError)
    assert "but choice 1 has no finish_reason" in str(error)
    assert error.partial is not None
    assert [c.content for c in error.partial.choices] == ["a", "b"]
    error = failure([stream(unfinished_2, finished_0, unfinished_1)])
    assert "but choices 1, 2 have no finish_reason" in str(error)
    whole = stream(
        finished_0,
        unfinished_1,
        delta_frame(index=1, finish_reason="length"),
        USAGE_FRAME,
    )
    for label, pieces in every_chunking(whole):
        result = run(pieces)
        assert result.complete, label
        assert [(c.content, c.finish_reason) for c in result.choices] == [
            ("a", "stop"),
            ("b", "length"),
        ], label


def test_done_without_a_finish_reason_shows_as_error_and_refuses_more_input() -> None:
    decoder = ChatStreamDecoder()
    # The chunk before [DONE] is delivered; the error waits in ``error`` meanwhile.
    chunks = decoder.feed(stream(delta_frame(content="kept")))
    assert [c.choices[0].delta.content for c in chunks] == ["kept"]
    assert isinstance(decoder.error, IncompleteStreamError)
    assert decoder.done is False
    assert decoder.result().complete is False
    with pytest.raises(IncompleteStreamError) as later:
        decoder.feed(stream(delta_frame(content="late", finish_reason="stop")))
    assert later.value is decoder.error
    with pytest.raises(IncompleteStreamError):
        decoder.feed_eof()


def test_a_cut_after_the_finish_reason_but_before_done_is_incomplete() -> None:
    # The answer's text and finish reason are whole, but the end marker never came.
    data = stream(
        delta_frame(role="assistant", content=""),
        delta_frame(content="all of it"),
        delta_frame(content="", finish_reason="stop"),
        USAGE_FRAME,
        done=False,
    )
    for label, pieces in every_chunking(data):
        error = failure(pieces)
        assert type(error) is IncompleteStreamError, label
        assert str(error).startswith("stream ended without data: [DONE] after 4 events"), label
        assert error.partial is not None
        assert error.partial.complete is False, label
        assert error.partial.content == "all of it", label
        assert error.partial.finish_reason == "stop", label
        assert error.partial.usage is not None
        assert error.partial.usage.total_tokens == 5


def test_reasoning_text_starts_the_time_to_first_token() -> None:
    decoder = ChatStreamDecoder(started_at_s=50.0)
    decoder.feed(stream(delta_frame(role="assistant", content=""), done=False), now_s=50.5)
    decoder.feed(stream(delta_frame(reasoning_content="think"), done=False), now_s=51.0)
    assert decoder.result().timing.ttft_s == pytest.approx(1.0)
    decoder.feed(stream(delta_frame(content="answer"), done=False), now_s=52.0)
    decoder.feed(stream(delta_frame(content="", finish_reason="stop")), now_s=52.5)
    timing = decoder.result(now_s=53.0).timing
    assert timing.ttft_s == pytest.approx(1.0)
    assert timing.token_times_s == pytest.approx((1.0, 2.0))


def test_reasoning_only_first_text_starts_the_accumulator_timer() -> None:
    accumulator = ChatAccumulator(started_at_s=10.0)
    accumulator.add(decode_chunk(delta_frame(role="assistant", content="")), now_s=10.25)
    assert not accumulator.has_text
    accumulator.add(decode_chunk(delta_frame(reasoning_content="hm")), now_s=10.75)
    assert accumulator.has_text
    assert accumulator.result(complete=False).timing.ttft_s == pytest.approx(0.75)


@given(
    pieces=st.lists(st.text(max_size=8), max_size=5),
    finish=st.booleans(),
    usage=st.booleans(),
    done=st.booleans(),
    cut=st.integers(0, 2000),
    reads=st.lists(st.integers(0, 2000), max_size=4),
)
@settings(max_examples=300, deadline=None)
def test_complete_only_with_the_finish_reason_and_done_else_a_prefix_of_the_truth(
    *, pieces: list[str], finish: bool, usage: bool, done: bool, cut: int, reads: list[int]
) -> None:
    frames = [delta_frame(role="assistant", content="")]
    frames += [delta_frame(content=piece) for piece in pieces]
    if finish:
        frames.append(delta_frame(content="", finish_reason="stop"))
    if usage:
        frames.append(USAGE_FRAME)
    whole = stream(*frames, done=done)
    data = whole[:cut]
    bounds = sorted({min(r, len(data)) for r in reads})
    chunks = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    truth = "".join(pieces)
    decoder = ChatStreamDecoder()
    try:
        for piece in chunks:
            decoder.feed(piece)
        decoder.feed_eof()
    except IncompleteStreamError as error:
        assert error.partial is not None
        assert error.partial.complete is False
        assert truth.startswith(error.partial.content)
        assert not (finish and done and data == whole)
    else:
        result = decoder.result()
        assert result.complete
        assert (result.content, result.finish_reason) == (truth, "stop")
        assert finish
        assert done
        assert data == whole


# --- bounds: nothing a server sends makes the decoder grow or spin without end ---


def _limit_failure(decoder: ChatStreamDecoder, pieces: list[bytes]) -> StreamLimitError:
    with pytest.raises(StreamLimitError) as caught:
        for piece in pieces:
            decoder.feed(piece)
        decoder.feed_eof()
    return caught.value


def test_bytes_past_max_stream_bytes_are_not_decoded_under_every_chunking() -> None:
    frames = [delta_frame(content=f"piece {n};") for n in range(4)]
    data = stream(*frames)  # the [DONE] lies past the bound
    limit = len(stream(*frames[:2], done=False)) + 10  # inside the third event
    for label, pieces in every_chunking(data):
        decoder = ChatStreamDecoder(max_stream_bytes=limit)
        error = _limit_failure(decoder, pieces)
        assert error.limit == "max_stream_bytes", label
        assert error.limit_value == limit
        assert error.observed > limit
        assert error.partial is not None
        assert error.partial.content == "piece 0;piece 1;", label
        assert not error.partial.complete
        assert str(error).count("\n") == 0
        assert f"max_stream_bytes={limit}" in str(error)


def test_a_stream_that_ends_exactly_at_max_stream_bytes_is_complete() -> None:
    data = stream(delta_frame(content="all", finish_reason="stop"))
    decoder = ChatStreamDecoder(max_stream_bytes=len(data))
    decoder.feed(data)
    decoder.feed_eof()
    assert decoder.result().complete
    assert decoder.result().content == "all"


def test_bytes_after_done_in_the_read_that_passes_the_bound_are_not_an_error() -> None:
    data = stream(delta_frame(content="all", finish_reason="stop"))
    decoder = ChatStreamDecoder(max_stream_bytes=len(data))
    decoder.feed(data + b"data: junk\n\n")
    decoder.feed_eof()
    assert decoder.result().complete
    assert decoder.bytes_after_done == len(b"data: junk\n\n")


def test_max_answer_chars_stops_the_stream_after_the_read_that_passes_it() -> None:
    frames = [delta_frame(content="0123456789") for _ in range(6)]
    decoder = ChatStreamDecoder(max_answer_chars=25)
    pieces = [stream(f, done=False) for f in frames] + [b"data: [DONE]\n\n"]
    delivered: list[str] = []
    with pytest.raises(StreamLimitError) as caught:
        for piece in pieces:
            delivered += [c.choices[0].delta.content or "" for c in decoder.feed(piece)]
        decoder.feed_eof()
    error = caught.value
    assert error.limit == "max_answer_chars"
    assert error.observed == 30  # the third chunk passed 25; the fourth was never decoded
    assert error.partial is not None
    assert error.partial.content == "0123456789" * 3 == "".join(delivered)
    with pytest.raises(StreamLimitError):  # the decoder refuses further input
        decoder.feed(b"data: [DONE]\n\n")
    assert not decoder.result().complete


def test_characters_of_reasoning_and_tool_arguments_count_too() -> None:
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}
    frames = [
        delta_frame(reasoning_content="r" * 10),
        delta_frame(tool_calls=[{**call, "function": {"name": "f", "arguments": "a" * 10}}]),
        delta_frame(content="c" * 10),
    ]
    for limit, passed_at in ((15, 2), (25, 3)):
        decoder = ChatStreamDecoder(max_answer_chars=limit)
        pieces = [stream(f, done=False) for f in frames] + [stream(delta_frame(content="x"))]
        error = _limit_failure(decoder, pieces)
        assert error.limit == "max_answer_chars"
        assert error.observed == 10 * passed_at


def test_max_answer_chunks_bounds_chunks_without_text_too() -> None:
    # Role-only chunks carry no text; they still cost a little memory each.
    decoder = ChatStreamDecoder(max_answer_chunks=4)
    pieces = [stream(delta_frame(role="assistant"), done=False) for _ in range(10)]
    error = _limit_failure(decoder, pieces)
    assert error.limit == "max_answer_chunks"
    assert error.observed == 5  # four chunks and their one choice
    assert decoder.events == 4


def test_a_resumed_answer_is_bounded_as_a_whole() -> None:
    accumulator = ChatAccumulator(max_answer_chars=15)
    first = ChatStreamDecoder(accumulator=accumulator)
    first.feed(stream(delta_frame(content="0123456789"), done=False))
    second = ChatStreamDecoder(accumulator=accumulator)
    with pytest.raises(StreamLimitError) as caught:
        second.feed(stream(delta_frame(content="0123456789"), done=False))
        second.feed(stream(delta_frame(content="", finish_reason="stop")))
    assert caught.value.observed == 20


def test_bounds_can_be_turned_off_and_must_be_positive() -> None:
    decoder = ChatStreamDecoder(
        max_stream_bytes=None, max_answer_chars=None, max_answer_chunks=None
    )
    assert decoder.max_stream_bytes is None
    assert decoder.accumulator.max_answer_chars is None
    assert decoder.accumulator.max_answer_chunks is None
    decoder.feed(stream(delta_frame(content="ok", finish_reason="stop")))
    assert decoder.result().complete
    with pytest.raises(ValueError, match="max_stream_bytes"):
        ChatStreamDecoder(max_stream_bytes=0)
    with pytest.raises(ValueError, match="max_answer_chars"):
        ChatStreamDecoder(max_answer_chars=-1)
    with pytest.raises(ValueError, match="max_answer_chunks"):
        ChatAccumulator(max_answer_chunks=0)


def _nested(depth: int) -> str:
    """A chunk whose (free-form) ``logprobs`` object nests ``depth`` levels deep."""
    inner = '{"a":' * depth + "1" + "}" * depth
    return (
        '{"id":"chatcmpl-x","choices":[{"index":0,"delta":{"content":"lost"},'
        f'"logprobs":{inner},"finish_reason":null}}]}}'
    )


def test_json_nested_too_deep_is_a_protocol_error_with_the_partial_under_every_chunking() -> None:
    deep = _nested(1000)
    data = stream(delta_frame(content="kept"), deep, delta_frame(content="after"))
    for label, pieces in every_chunking(data):
        decoder = ChatStreamDecoder()
        with pytest.raises(ProtocolError) as caught:
            for piece in pieces:
                decoder.feed(piece)
            decoder.feed_eof()
        error = caught.value
        assert type(error) is ProtocolError, label
        assert isinstance(error.__cause__, RecursionError)
        assert error.frame == deep.encode()
        assert error.partial is not None
        assert error.partial.content == "kept", label
        assert "could not be decoded" in str(error)
        assert str(error).count("\n") == 0
        # Sticky: the rest of the stream, [DONE] included, never makes it complete.
        with pytest.raises(ProtocolError):
            decoder.feed(stream(delta_frame(content="more", finish_reason="stop")))
        with pytest.raises(ProtocolError):
            decoder.feed_eof()
        assert not decoder.result().complete
        assert decoder.result().content == "kept"


def test_an_error_frame_nested_too_deep_is_a_protocol_error() -> None:
    inner = '{"a":' * 1000 + "1" + "}" * 1000
    deep = '{"error": {"message": "m", "code": "c", "detail": ' + inner + '}, "choices": 7}'
    decoder = ChatStreamDecoder()
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(stream(delta_frame(content="kept"), deep))
        decoder.feed_eof()
    assert caught.value.partial is not None
    assert caught.value.partial.content == "kept"


# The largest documented answer: 131,072 answer tokens after 81,920 reasoning tokens.
ANSWER_TOKENS = 131_072
REASONING_TOKENS = 81_920


def test_the_largest_documented_answer_completes_under_the_default_bounds() -> None:
    # DashScope sends one token (or a few) per chunk; one per chunk is the most chunks and
    # the most bytes. The chunks carry every field DashScope puts in them.
    reasoning = stream(delta_frame(reasoning_content="思考"), done=False)
    content = stream(delta_frame(content=" word"), done=False)
    data = b"".join(
        (
            stream(delta_frame(role="assistant", content=""), done=False),
            reasoning * REASONING_TOKENS,
            content * ANSWER_TOKENS,
            stream(delta_frame(content="", finish_reason="stop"), frame(usage=USAGE)),
        )
    )
    decoder = ChatStreamDecoder()
    view = memoryview(data)
    for start in range(0, len(data), 65_536):
        decoder.feed(bytes(view[start : start + 65_536]))
    decoder.feed_eof()
    result = decoder.result()
    assert result.complete
    assert len(result.content) == 5 * ANSWER_TOKENS
    assert len(result.reasoning_content) == 2 * REASONING_TOKENS
    assert len(result.timing.token_times_s) == ANSWER_TOKENS + REASONING_TOKENS
    # ... with the margins the defaults promise.
    assert len(data) * 12 < DEFAULT_MAX_STREAM_BYTES
    assert decoder.accumulator.chunks * 4 < DEFAULT_MAX_ANSWER_CHUNKS


USAGE = {"prompt_tokens": 1, "completion_tokens": 212_992, "total_tokens": 212_993}


def test_no_answer_of_the_largest_documented_size_can_reach_max_answer_chars() -> None:
    # Even if every token were the longest in Qwen's vocabulary.
    with gzip.open(VOCABULARY) as lines:
        longest_chars = max(
            len(base64.b64decode(line.split()[0]).decode("utf-8", "replace")) for line in lines
        )
    assert longest_chars == 128
    assert (ANSWER_TOKENS + REASONING_TOKENS) * longest_chars * 2 < DEFAULT_MAX_ANSWER_CHARS


VOCABULARY = Path(qwen_sse.__file__).parent / "data" / "qwen.tiktoken.gz"


def test_an_answer_that_ends_in_the_read_that_passes_a_bound_is_complete() -> None:
    data = stream(delta_frame(content="0123456789"), delta_frame(content="!", finish_reason="stop"))
    decoder = ChatStreamDecoder(max_answer_chars=5, max_answer_chunks=1)
    decoder.feed(data)
    decoder.feed_eof()
    assert decoder.result().complete
    assert decoder.result().content == "0123456789!"


def test_each_new_choice_and_tool_call_counts_against_max_answer_chunks() -> None:
    # One chunk may name thousands of choice or tool-call indexes, each a state the
    # accumulator keeps: without counting them a stream of a few such chunks grows without
    # end under the chunk bound.
    many_choices = frame([{"index": n, "delta": {}} for n in range(100)])
    decoder = ChatStreamDecoder(max_answer_chunks=50)
    error = _limit_failure(decoder, [stream(many_choices, done=False)])
    assert error.limit == "max_answer_chunks"
    assert error.observed == 101  # one chunk, a hundred new choices
    calls = [{"index": n} for n in range(100)]
    many_calls = delta_frame(tool_calls=calls)
    decoder = ChatStreamDecoder(max_answer_chunks=50)
    error = _limit_failure(decoder, [stream(many_calls, done=False)])
    assert error.limit == "max_answer_chunks"
    assert error.observed == 102  # one chunk, one choice, a hundred tool calls
    # A normal answer's few choices and calls leave the default bound's margin intact.
    decoder = ChatStreamDecoder(max_answer_chunks=4)
    decoder.feed(stream(delta_frame(tool_calls=[{"index": 0}], finish_reason="tool_calls")))
    assert decoder.result().complete


def test_an_oversized_tail_after_done_in_the_same_read_is_ignored() -> None:
    # Bytes after [DONE] are counted and otherwise ignored, even when the read that
    # carried [DONE] goes on past max_event_bytes without a line break.
    answer = stream(delta_frame(content="all", finish_reason="stop"), done=False)
    tail = b"data: [DONE]\n\n" + b"x" * 2 * len(answer)
    for reads in ([answer, tail], [answer + tail]):
        decoder = ChatStreamDecoder(max_event_bytes=len(answer))
        for read in reads:
            decoder.feed(read)
        decoder.feed_eof()
        assert decoder.result().complete
        assert decoder.result().content == "all"


def test_an_empty_finish_reason_is_no_finish_reason() -> None:
    # Some compatible servers fill finish_reason with "" until the end (as DashScope's
    # native protocol does with "null"): an interrupted stream of them is not complete.
    frames = [delta_frame(content="half ", finish_reason=""), delta_frame(finish_reason="")]
    error = failure([stream(*frames)])
    assert isinstance(error, IncompleteStreamError)
    assert str(error).startswith("stream ended with data: [DONE] but choice 0 has no finish")
    assert error.partial is not None
    assert error.partial.finish_reason is None
    result = run([stream(*frames, delta_frame(content="done", finish_reason="stop"))])
    assert result.complete
    assert (result.content, result.finish_reason) == ("half done", "stop")


# --- Qwen-Omni audio: base64 pieces folded per choice, decoded by result() ---

PCM = bytes(range(30))  # 15 samples of 16-bit PCM; base64 is 40 characters, no padding
PCM_B64 = base64.b64encode(PCM).decode()


def audio_frame(index: int = 0, **audio: Any) -> str:
    return delta_frame(index, audio=audio)


def audio_result(*frames: str) -> ChatResult:
    return run([stream(*frames, delta_frame(finish_reason="stop"))])


def test_audio_folds_pieces_and_transcript_under_every_chunking() -> None:
    # The way Qwen-Omni speaks: the text in audio.transcript, content null, then the data
    # in pieces that split base64 quanta anywhere; id and expires_at repeat on each.
    cuts = [0, 7, 8, 21, 40]
    data = stream(
        delta_frame(role="assistant", content=None, audio={"transcript": "我是"}),
        delta_frame(content=None, audio={"transcript": "通义千问。"}),
        *(
            audio_frame(data=PCM_B64[start:end], id="audio_1", expires_at=1_745_000_000)
            for start, end in itertools.pairwise(cuts)
        ),
        delta_frame(finish_reason="stop", audio={"data": "", "id": "audio_2"}),
    )
    for label, pieces in every_chunking(data):
        result = run(pieces)
        assert result.complete, label
        assert result.audio == AudioResult(
            id="audio_1", data=PCM, transcript="我是通义千问。", expires_at=1_745_000_000
        ), label
        assert result.content == "", label  # a transcript is not content
        assert result.choices[0].audio is result.audio


def test_audio_is_none_without_audio_and_the_duration_follows_the_pcm() -> None:
    assert run([stream(delta_frame(content="hi", finish_reason="stop"))]).audio is None
    assert ChatResult().audio is None
    one_second = AudioResult(data=bytes(48_000))
    assert one_second.duration_s == 1.0
    assert (AudioResult.sample_rate_hz, AudioResult.sample_width_bytes) == (24_000, 2)


def test_audio_of_several_choices_stays_apart() -> None:
    data = stream(
        audio_frame(0, data=PCM_B64[:20], transcript="a"),
        audio_frame(1, data=base64.b64encode(b"other").decode()),
        audio_frame(0, data=PCM_B64[20:], transcript="b"),
        delta_frame(0, finish_reason="stop"),
        delta_frame(1, finish_reason="stop"),
    )
    decoder = ChatStreamDecoder(request={"n": 2})
    decoder.feed(data)
    decoder.feed_eof()
    first, second = (choice.audio for choice in decoder.result().choices)
    assert first is not None
    assert second is not None
    assert (first.data, first.transcript) == (PCM, "ab")
    assert (second.data, second.transcript) == (b"other", "")


def test_pieces_that_carry_their_own_padding_decode_one_by_one() -> None:
    chunks = [b"a", b"bc", b"defg", b"\x00\xff"]
    frames = [audio_frame(data=base64.b64encode(chunk).decode()) for chunk in chunks]
    assert base64.b64encode(b"a").decode().endswith("==")
    audio = audio_result(*frames).audio
    assert audio is not None
    assert (audio.data, audio.invalid_pieces) == (b"".join(chunks), 0)


def test_pieces_that_are_not_base64_are_left_out_and_counted() -> None:
    # Unpadded pieces that split quanta, one of them broken: the rest still decodes.
    pieces = [PCM_B64[:6], "not base64!", PCM_B64[6:16], "QQ=x", "é", PCM_B64[16:]]
    audio = audio_result(*(audio_frame(data=p) for p in pieces)).audio
    assert audio is not None
    assert (audio.data, audio.invalid_pieces) == (PCM, 3)
    # Padding that ends a quantum early is bad too: "QQ=" is three characters.
    audio = audio_result(*(audio_frame(data=p) for p in ("QUJD", "QQ=", "QUJD"))).audio
    assert audio is not None
    assert (audio.data, audio.invalid_pieces) == (b"ABCABC", 1)


def test_a_cut_stream_keeps_the_whole_quanta_of_its_audio_in_the_partial() -> None:
    error = failure([stream(audio_frame(data=PCM_B64[:10]), done=False)])
    assert isinstance(error, IncompleteStreamError)
    assert error.partial is not None
    audio = error.partial.audio
    assert audio is not None
    assert (audio.data, audio.invalid_pieces) == (PCM[:6], 1)  # 8 characters, 2 left over


_chunk_bytes = st.lists(st.binary(max_size=20), min_size=1, max_size=8)


@given(_chunk_bytes, st.data())
@settings(max_examples=200, deadline=None)
def test_audio_decodes_to_its_bytes_however_the_base64_is_cut(
    chunks: list[bytes], data: st.DataObject
) -> None:
    whole = b"".join(chunks)
    text = base64.b64encode(whole).decode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    split = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    self_padded = [base64.b64encode(chunk).decode() for chunk in chunks]
    for pieces in (split, self_padded):
        accumulator = ChatAccumulator()
        for piece in pieces:
            accumulator.add(decode_chunk(audio_frame(data=piece)))
        audio = accumulator.result(complete=False).audio
        assert audio is not None
        assert (audio.data, audio.invalid_pieces) == (whole, 0)


def test_audio_counts_against_max_answer_chars_and_transcripts_too() -> None:
    # A server that streams audio without end is stopped like one that streams text.
    frames = [audio_frame(data=PCM_B64) for _ in range(10)]  # 40 characters each
    decoder = ChatStreamDecoder(max_answer_chars=100)
    error = _limit_failure(decoder, [stream(f, done=False) for f in frames])
    assert error.limit == "max_answer_chars"
    assert error.observed == 120  # stopped after the read that passed the bound
    assert error.partial is not None
    assert error.partial.audio is not None
    assert error.partial.audio.data == PCM * 3
    assert decoder.accumulator.chars == 120
    decoder = ChatStreamDecoder(max_answer_chars=5)
    error = _limit_failure(decoder, [stream(audio_frame(transcript="abc"), done=False)] * 3)
    assert error.observed == 6


def test_audio_starts_the_time_to_first_token() -> None:
    # An answer spoken with no content still meets the first-token deadline.
    decoder = ChatStreamDecoder(started_at_s=10.0)
    decoder.feed(stream(delta_frame(role="assistant"), done=False), now_s=10.5)
    assert not decoder.accumulator.has_text
    decoder.feed(stream(audio_frame(transcript="我"), done=False), now_s=11.0)
    decoder.feed(stream(audio_frame(data=PCM_B64), done=False), now_s=11.25)
    assert decoder.accumulator.has_text
    timing = decoder.result().timing
    assert (timing.ttft_s, timing.token_times_s) == (1.0, (1.0, 1.25))


def test_signature_and_search_results_reach_the_result() -> None:
    signed = {
        "id": "x",
        "choices": [
            {"index": 0, "delta": {"reasoning_content": "hm", "reasoning_signature": "c2ln"}}
        ],
        "search_results": [{"index": 1, "title": "T", "url": "https://example.com/a"}],
    }
    finish = {
        "id": "x",
        "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}],
    }
    stream = b"".join(f"data: {json.dumps(frame)}\n\n".encode() for frame in (signed, finish))
    for _, pieces in every_chunking(stream + b"data: [DONE]\n\n"):
        decoder = ChatStreamDecoder()
        for piece in pieces:
            decoder.feed(piece)
        result = decoder.result()
        assert result.complete
        assert result.reasoning_signature == "c2ln"
        assert result.search_results == (
            SearchResult(index=1, title="T", url="https://example.com/a"),
        )


def test_a_null_string_finish_reason_is_no_finish_reason() -> None:
    # DashScope's native frames say "null" until the end; its compatible mode does at times.
    quoted = frame([{"index": 0, "delta": {"content": "a"}, "finish_reason": "null"}])
    final = frame([{"index": 0, "delta": {"content": "b"}, "finish_reason": "stop"}])
    for label, pieces in every_chunking(stream(quoted, final)):
        decoder = ChatStreamDecoder()
        chunks = [chunk for piece in pieces for chunk in decoder.feed(piece)]
        assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"], label
        assert decoder.result().complete, label
    cut = ChatStreamDecoder()
    cut.feed(stream(quoted))
    with pytest.raises(IncompleteStreamError, match="choice 0 has no finish_reason"):
        cut.feed_eof()


def test_a_reader_that_breaks_its_contract_still_gives_one_clear_error() -> None:
    class Broken(CompatibleReader):
        def read(
            self, frames: Sequence[tuple[str, bytes]], out: list[ChatCompletionChunk]
        ) -> tuple[int, QwenSSEError | None]:
            raise KeyError("a bug")

    class BrokenProtocol(CompatibleProtocol):
        def reader(self, body: Mapping[str, Any]) -> CompatibleReader:
            return Broken()

    decoder = ChatStreamDecoder(protocol=BrokenProtocol())
    with pytest.raises(ProtocolError, match="data frame could not be decoded") as caught:
        decoder.feed(stream(delta_frame(content="hi")))
    assert caught.value.partial is not None
    assert not caught.value.partial.complete
