"""Tests of qwen_sse.protocols.responses: the OpenAI Responses protocol, under every chunking.

The example streams follow the event shapes of OpenAI's "Responses streaming events"
reference and "Streaming API responses" guide (developers.openai.com) and the event list
of Alibaba Cloud Model Studio's "OpenAI Responses API reference" (DashScope's thinking
text as ``response.reasoning_text.delta``, Qwen Cloud's "Thinking" page's as
``response.reasoning_summary_text.delta``); ids, texts and token counts are made up.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_sse import protocols
from qwen_sse.chat import ChatResult, ChatStreamDecoder, ToolCall, ToolCallFunction, decode
from qwen_sse.chunks import ChatCompletionChunk, CompletionTokensDetails, PromptTokensDetails
from qwen_sse.errors import InBandError, IncompleteStreamError, ProtocolError, QwenSSEError
from qwen_sse.protocols.base import MAX_ANSWER_PARTS
from qwen_sse.protocols.responses import RESPONSES, ResponsesReader
from qwen_sse.sse import SSEDecoder
from qwen_sse.tokens import message_token_count
from tests.chunkings import every_chunking

RESPONSE_ID = "resp_0b4d6c1e-0000-4000-8000-000000000001"
MODEL = "qwen3-max"
CREATED_AT = 1767225600

Event = tuple[str, dict[str, Any]]


def response(status: str, **extra: Any) -> dict[str, Any]:
    body = {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED_AT,
        "status": status,
        "model": MODEL,
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
        "tools": [],
    }
    body.update(extra)
    return body


def created() -> list[Event]:
    return [
        ("response.created", {"response": response("in_progress")}),
        ("response.in_progress", {"response": response("in_progress")}),
    ]


def message(item_id: str, index: int, *deltas: str) -> list[Event]:
    """A message output item streaming ``deltas``, with every event around them."""
    text = "".join(deltas)
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant"}
    part = {"type": "output_text", "text": "", "annotations": []}
    return [
        ("response.output_item.added", {"output_index": index, "item": {**item, "content": []}}),
        ("response.content_part.added", {**where, "part": part}),
        *[("response.output_text.delta", {**where, "delta": d}) for d in deltas],
        ("response.output_text.done", {**where, "text": text}),
        ("response.content_part.done", {**where, "part": {**part, "text": text}}),
        (
            "response.output_item.done",
            {
                "output_index": index,
                "item": {**item, "status": "completed", "content": [{**part, "text": text}]},
            },
        ),
    ]


def reasoning(
    item_id: str, index: int, *deltas: str, kind: str = "response.reasoning_text"
) -> list[Event]:
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    item = {"id": item_id, "type": "reasoning", "summary": []}
    return [
        ("response.output_item.added", {"output_index": index, "item": item}),
        *[(f"{kind}.delta", {**where, "delta": d}) for d in deltas],
        (f"{kind}.done", {**where, "text": "".join(deltas)}),
        ("response.output_item.done", {"output_index": index, "item": item}),
    ]


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def function_call(
    item_id: str, index: int, call_id: str, name: str, *deltas: str, announced: str = ""
) -> list[Event]:
    """A function-call item: added (with ``announced`` arguments), its argument ``deltas``,
    then the two events that repeat the full arguments."""
    arguments = announced + "".join(deltas)
    where = {"item_id": item_id, "output_index": index}
    return [
        (
            "response.output_item.added",
            {
                "output_index": index,
                "item": call_item(item_id, call_id, name, announced, "in_progress"),
            },
        ),
        *[("response.function_call_arguments.delta", {**where, "delta": d}) for d in deltas],
        ("response.function_call_arguments.done", {**where, "arguments": arguments}),
        (
            "response.output_item.done",
            {
                "output_index": index,
                "item": call_item(item_id, call_id, name, arguments, "completed"),
            },
        ),
    ]


USAGE = {
    "input_tokens": 21,
    "input_tokens_details": {"cached_tokens": 8},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 4},
    "total_tokens": 30,
}


def completed(usage: dict[str, Any] | None = USAGE) -> Event:
    return ("response.completed", {"response": response("completed", usage=usage)})


def incomplete(reason: str | None, usage: dict[str, Any] | None = USAGE) -> Event:
    details = None if reason is None else {"reason": reason}
    return (
        "response.incomplete",
        {"response": response("incomplete", usage=usage, incomplete_details=details)},
    )


def error_event(code: str, text: str) -> Event:
    return ("error", {"code": code, "message": text, "param": None})


def failed(code: str, text: str) -> Event:
    return (
        "response.failed",
        {"response": response("failed", error={"code": code, "message": text})},
    )


def encode(kind: str, fields: dict[str, Any], number: int) -> bytes:
    body = {"type": kind, "sequence_number": number, **fields}
    return f"event: {kind}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


def stream(events: list[Event]) -> bytes:
    return b"".join(encode(kind, fields, n) for n, (kind, fields) in enumerate(events))


def run(pieces: list[bytes], request: dict[str, Any] | None = None) -> ChatResult:
    decoder = ChatStreamDecoder(protocol="responses", request=request)
    for piece in pieces:
        decoder.feed(piece)
    decoder.feed_eof()
    return decoder.result()


def failure(pieces: list[bytes]) -> QwenSSEError:
    decoder = ChatStreamDecoder(protocol="responses")
    with pytest.raises(QwenSSEError) as caught:
        for piece in pieces:
            decoder.feed(piece)
        decoder.feed_eof()
    return caught.value


def chunks_of(events: list[Event]) -> list[ChatCompletionChunk]:
    out: list[ChatCompletionChunk] = []
    consumed, error = ResponsesReader().read(SSEDecoder().feed_frames(stream(events)), out)
    assert error is None
    assert consumed == len(events)
    return out


EXPECTED_USAGE_DETAILS = (PromptTokensDetails(cached_tokens=8), CompletionTokensDetails(4))

TEXT = [*created(), *message("msg_1", 0, "Hello", ", wor", "ld — 你好!"), completed()]
REASONING_THEN_TEXT = [
    *created(),
    *reasoning("rs_1", 0, "The user greets", " me; 回答简短。"),
    *message("msg_1", 1, "Hi", " there."),
    completed(),
]
SUMMARY_REASONING = [
    *created(),
    *reasoning("rs_1", 0, "Think", "ing.", kind="response.reasoning_summary_text"),
    *message("msg_1", 1, "Done."),
    completed(),
]
ONE_CALL = [
    *created(),
    *function_call("fc_1", 0, "call_a1", "get_weather", '{"city": ', '"Paris"}'),
    completed(),
]
TWO_CALLS = [
    *created(),
    *message("msg_1", 0, "Checking both."),
    *function_call("fc_1", 1, "call_a1", "get_weather", '{"city": "Paris"}'),
    *function_call("fc_2", 2, "call_b2", "get_time", '{"zone"', ': "CET"}'),
    completed(),
]
CUT_BY_LIMIT = [
    *created(),
    *message("msg_1", 0, "A long", " answer"),
    incomplete("max_output_tokens"),
]
ERROR_AFTER_TEXT = [
    *created(),
    *message("msg_1", 0, "Partly")[:3],
    error_event("data_inspection_failed", "Output data may contain inappropriate content."),
]
FAILED = [
    *created(),
    *message("msg_1", 0, "Some", " text")[:4],
    failed("server_error", "The model failed to generate a response."),
]


def calls(*specs: tuple[str, str, str]) -> tuple[ToolCall, ...]:
    return tuple(
        ToolCall(index=n, id=call_id, type="function", function=ToolCallFunction(name, args))
        for n, (call_id, name, args) in enumerate(specs)
    )


COMPLETE_STREAMS: list[tuple[str, list[Event], dict[str, Any]]] = [
    ("text", TEXT, {"content": "Hello, world — 你好!", "finish_reason": "stop"}),
    (
        "reasoning then text",
        REASONING_THEN_TEXT,
        {
            "reasoning_content": "The user greets me; 回答简短。",
            "content": "Hi there.",
            "finish_reason": "stop",
        },
    ),
    (
        "reasoning summary",
        SUMMARY_REASONING,
        {"reasoning_content": "Thinking.", "content": "Done.", "finish_reason": "stop"},
    ),
    (
        "one function call",
        ONE_CALL,
        {
            "tool_calls": calls(("call_a1", "get_weather", '{"city": "Paris"}')),
            "finish_reason": "tool_calls",
        },
    ),
    (
        "two function calls",
        TWO_CALLS,
        {
            "content": "Checking both.",
            "tool_calls": calls(
                ("call_a1", "get_weather", '{"city": "Paris"}'),
                ("call_b2", "get_time", '{"zone": "CET"}'),
            ),
            "finish_reason": "tool_calls",
        },
    ),
    (
        "cut by max_output_tokens",
        CUT_BY_LIMIT,
        {"content": "A long answer", "finish_reason": "length"},
    ),
]


def check(result: ChatResult, expected: dict[str, Any]) -> None:
    assert result.complete
    assert (result.id, result.model) == (RESPONSE_ID, MODEL)
    assert result.content == expected.get("content", "")
    assert result.reasoning_content == expected.get("reasoning_content", "")
    assert result.tool_calls == expected.get("tool_calls", ())
    assert result.finish_reason == expected["finish_reason"]
    assert len(result.choices) == 1
    assert result.choices[0].role == "assistant"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (21, 9)
    assert result.usage.total_tokens == 30
    usage_details = (result.usage.prompt_tokens_details, result.usage.completion_tokens_details)
    assert usage_details == EXPECTED_USAGE_DETAILS


@pytest.mark.parametrize(("name", "events", "expected"), COMPLETE_STREAMS)
def test_a_whole_stream_decodes_the_same_under_every_chunking(
    name: str, events: list[Event], expected: dict[str, Any]
) -> None:
    data = stream(events)
    whole = run([data])
    check(whole, expected)
    for label, pieces in every_chunking(data):
        assert run(pieces) == whole, label


@pytest.mark.parametrize(("name", "events", "expected"), COMPLETE_STREAMS)
def test_decode_reads_a_saved_stream(
    name: str, events: list[Event], expected: dict[str, Any]
) -> None:
    check(decode(stream(events), "responses"), expected)


def test_the_chunks_mirror_compatible_mode() -> None:
    chunks = chunks_of(TEXT)
    first, *middle, finish, usage = chunks
    assert (first.id, first.model, first.created) == (RESPONSE_ID, MODEL, CREATED_AT)
    assert first.object == "chat.completion.chunk"
    assert first.choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in middle] == ["Hello", ", wor", "ld — 你好!"]
    assert all(c.choices[0].delta.role is None for c in middle)
    assert finish.choices[0].finish_reason == "stop"
    assert finish.usage is None
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.total_tokens == 30


def test_a_function_call_is_named_once_then_streams_argument_fragments() -> None:
    tool_calls = [c.choices[0].delta.tool_calls for c in chunks_of(TWO_CALLS) if c.choices]
    deltas = [(d.index, d.id, d.type, d.function) for calls in tool_calls if calls for d in calls]
    assert [(index, call_id, kind) for index, call_id, kind, _ in deltas] == [
        (0, "call_a1", "function"),
        (0, None, None),
        (1, "call_b2", "function"),
        (1, None, None),
        (1, None, None),
    ]
    functions = [function for *_, function in deltas]
    assert [f.name if f else None for f in functions] == ["get_weather", None, "get_time"] + [
        None
    ] * 2
    assert [f.arguments if f else None for f in functions] == [
        None,
        '{"city": "Paris"}',
        None,
        '{"zone"',
        ': "CET"}',
    ]


@pytest.mark.parametrize(
    "events",
    [
        # Arguments on the added item and no fragments: emitted once, not again by the .done events.
        function_call("fc_1", 0, "call_a1", "f", announced='{"a": 1}'),
        # No fragments at all: the .done event's arguments are the whole of them.
        [
            (
                "response.output_item.added",
                {"output_index": 0, "item": call_item("fc_1", "call_a1", "f", "", "in_progress")},
            ),
            (
                "response.function_call_arguments.done",
                {"item_id": "fc_1", "output_index": 0, "arguments": '{"a": 1}'},
            ),
            (
                "response.output_item.done",
                {
                    "output_index": 0,
                    "item": call_item("fc_1", "call_a1", "f", '{"a": 1}', "completed"),
                },
            ),
        ],
        # Only output_item.done has them.
        [
            (
                "response.output_item.added",
                {"output_index": 0, "item": call_item("fc_1", "call_a1", "f", "", "in_progress")},
            ),
            (
                "response.output_item.done",
                {
                    "output_index": 0,
                    "item": call_item("fc_1", "call_a1", "f", '{"a": 1}', "completed"),
                },
            ),
        ],
        # Fragments named by output_index alone, then the item without its arguments.
        [
            (
                "response.output_item.added",
                {"output_index": 0, "item": call_item("fc_1", "call_a1", "f", "", "in_progress")},
            ),
            ("response.function_call_arguments.delta", {"output_index": 0, "delta": '{"a"'}),
            ("response.function_call_arguments.delta", {"output_index": 0, "delta": ": 1}"}),
            (
                "response.output_item.done",
                {"output_index": 0, "item": {"id": "fc_1", "type": "function_call"}},
            ),
        ],
    ],
    ids=["announced", "done-only", "item-done-only", "by-output-index"],
)
def test_function_call_arguments_arrive_exactly_once(events: list[Event]) -> None:
    data = stream([*created(), *events, completed()])
    expected = calls(("call_a1", "f", '{"a": 1}'))
    for label, pieces in every_chunking(data):
        assert run(pieces).tool_calls == expected, label


@pytest.mark.parametrize(
    ("reason", "finish_reason"),
    [
        ("max_output_tokens", "length"),
        ("content_filter", "content_filter"),
        ("some_new_reason", "some_new_reason"),
        (None, "incomplete"),
    ],
)
def test_an_incomplete_response_is_a_whole_answer_with_its_reason(
    reason: str | None, finish_reason: str
) -> None:
    result = decode(stream([*created(), *message("m", 0, "x"), incomplete(reason)]), "responses")
    assert result.complete
    assert (result.content, result.finish_reason) == ("x", finish_reason)


def test_an_end_without_usage_adds_no_usage_chunk() -> None:
    chunks = chunks_of([*created(), *message("m", 0, "x"), incomplete("max_output_tokens", None)])
    assert chunks[-1].choices[0].finish_reason == "length"
    assert (
        decode(stream([*created(), *message("m", 0, "x"), completed(None)]), "responses").usage
        is None
    )


def test_usage_without_total_is_summed() -> None:
    usage = {"input_tokens": 5, "output_tokens": 2}
    result = decode(stream([*created(), *message("m", 0, "x"), completed(usage)]), "responses")
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 2)
    assert result.usage.total_tokens == 7
    assert result.usage.prompt_tokens_details is None


# --- A truncated answer is never complete, and keeps what arrived. ---


@pytest.mark.parametrize(("name", "events", "expected"), COMPLETE_STREAMS)
def test_a_stream_cut_at_any_event_keeps_what_arrived(
    name: str, events: list[Event], expected: dict[str, Any]
) -> None:
    for kept in range(len(events)):
        data = stream(events[:kept])
        with pytest.raises(IncompleteStreamError) as caught:
            decode(data, "responses")
        partial = caught.value.partial
        assert partial is not None
        assert not partial.complete
        assert partial.finish_reason is None
        assert partial.content == "".join(
            f["delta"] for k, f in events[:kept] if k == "response.output_text.delta"
        )
        assert partial.reasoning_content == "".join(
            f["delta"]
            for k, f in events[:kept]
            if k.startswith("response.reasoning") and k.endswith(".delta")
        )
        received = "".join(
            f["delta"] for k, f in events[:kept] if k == "response.function_call_arguments.delta"
        )
        assert "".join(call.function.arguments for call in partial.tool_calls) == received
        assert "response.completed (or response.incomplete)" in str(caught.value)


@pytest.mark.parametrize(("name", "events", "expected"), COMPLETE_STREAMS)
def test_a_stream_cut_at_any_byte_is_never_complete(
    name: str, events: list[Event], expected: dict[str, Any]
) -> None:
    data = stream(events)
    for cut in range(len(data)):
        with pytest.raises(IncompleteStreamError) as caught:
            decode(data[:cut], "responses")
        assert caught.value.partial is not None
        assert not caught.value.partial.complete


# --- The server's errors are typed and keep what arrived. ---


def test_an_error_event_after_text_is_an_in_band_error_with_the_partial() -> None:
    data = stream(ERROR_AFTER_TEXT)
    for label, pieces in every_chunking(data):
        error = failure(pieces)
        assert isinstance(error, InBandError), label
        assert error.code == "data_inspection_failed"
        assert error.error_message == "Output data may contain inappropriate content."
        assert error.request_id == RESPONSE_ID
        assert error.partial is not None
        assert (error.partial.content, error.partial.complete) == ("Partly", False)


def test_a_failed_response_is_an_in_band_error_with_the_partial() -> None:
    data = stream(FAILED)
    for label, pieces in every_chunking(data):
        error = failure(pieces)
        assert isinstance(error, InBandError), label
        assert (error.code, error.request_id) == ("server_error", RESPONSE_ID)
        assert error.error_message == "The model failed to generate a response."
        assert error.partial is not None
        assert (error.partial.content, error.partial.complete) == ("Some text", False)


@pytest.mark.parametrize(
    ("frame", "code", "text"),
    [
        (
            b'event: error\ndata: {"code": "Throttling", "message": "slow down"}\n\n',
            "Throttling",
            "slow down",
        ),
        (b'data: {"type": "error", "code": 429, "message": "m", "param": null}\n\n', "429", "m"),
        (
            b'data: {"type": "error", "error": {"code": "c", "message": "m", "type": "t"}}\n\n',
            "c",
            "m",
        ),
        (b'data: {"type": "error", "code": "c", "error": "m"}\n\n', "c", "m"),
        (
            b'data: {"type": "response.failed", "response": {"id": "resp_x"}}\n\n',
            "",
            "response.failed without an error",
        ),
    ],
)
def test_error_events_in_their_shapes(frame: bytes, code: str, text: str) -> None:
    for data in (frame, stream(created()) + frame):
        error = failure([data])
        assert isinstance(error, InBandError)
        assert (error.code, error.error_message) == (code, text)
        assert "\n" not in str(error)


def test_the_error_names_the_response_even_without_response_created() -> None:
    error = failure([b'data: {"type": "error", "code": "c", "message": "m"}\n\n'])
    assert isinstance(error, InBandError)
    assert error.request_id == ""
    failed_frame = {"type": "response.failed", "response": {"id": "resp_x", "error": {"code": "c"}}}
    error = failure([f"data: {json.dumps(failed_frame)}\n\n".encode()])
    assert isinstance(error, InBandError)
    assert error.request_id == "resp_x"


# --- What cannot be read is a ProtocolError with one clear line. ---

ADDED_MESSAGE = message("msg_1", 0, "x")[0]
ARGS = '{"a": 1}'


@pytest.mark.parametrize(
    ("events", "says"),
    [
        (
            [
                *created(),
                (
                    "response.output_text.delta",
                    {"item_id": "msg_9", "output_index": 0, "delta": "x"},
                ),
            ],
            "response.output_text.delta for item 'msg_9', "
            "which no response.output_item.added announced",
        ),
        (
            [("response.output_text.delta", {"item_id": "msg_1", "output_index": 0, "delta": "x"})],
            "response.output_text.delta before response.created",
        ),
        (
            [ADDED_MESSAGE, *created()],
            "response.output_item.added before response.created",
        ),
        ([completed()], "response.completed before response.created"),
        (
            [
                *created(),
                ("response.function_call_arguments.delta", {"output_index": 3, "delta": "{"}),
            ],
            "response.function_call_arguments.delta for item at output_index 3, which no",
        ),
        (
            [
                *created(),
                ADDED_MESSAGE,
                ("response.function_call_arguments.delta", {"item_id": "msg_1", "delta": "{"}),
            ],
            "response.function_call_arguments.delta for item 'msg_1', a 'message' item",
        ),
        (
            [*created(), ("response.function_call_arguments.delta", {"delta": "{"})],
            "response.function_call_arguments.delta names no item",
        ),
        (
            [
                *created(),
                *message("msg_1", 0, "x"),
                ("response.output_text.delta", {"item_id": "msg_1", "delta": "y"}),
            ],
            "response.output_text.delta for item 'msg_1' after its response.output_item.done",
        ),
        (
            [*created(), ADDED_MESSAGE, ADDED_MESSAGE],
            "response.output_item.added announces item 'msg_1' a second time",
        ),
        ([*created(), *created()], "response.created came twice"),
        (
            [*created(), ("response.output_item.added", {"output_index": 0})],
            "response.output_item.added has no item",
        ),
        (
            [
                *created(),
                *function_call("fc_1", 0, "c", "f", '{"a": 1}')[:2],
                (
                    "response.function_call_arguments.done",
                    {"item_id": "fc_1", "arguments": '{"b": 2}'},
                ),
            ],
            "response.function_call_arguments.done gives item 'fc_1' arguments that do not extend",
        ),
        (
            # Arguments announced with the item and streamed again would be doubled.
            [
                *created(),
                *function_call("fc_1", 0, "c", "f", '{"a": 1}', announced='{"a": 1}')[:2],
                ("response.function_call_arguments.done", {"item_id": "fc_1", "arguments": ARGS}),
            ],
            "response.function_call_arguments.done gives item 'fc_1' "
            "arguments that do not extend the 16 characters",
        ),
        (
            [*created(), ("response.content_part.added", {"item_id": "msg_2", "output_index": 1})],
            "response.content_part.added for item 'msg_2', which no",
        ),
    ],
)
def test_events_out_of_order_are_one_clear_protocol_error(events: list[Event], says: str) -> None:
    data = stream(events)
    error = failure([data])
    assert isinstance(error, ProtocolError)
    assert says in str(error)
    assert "\n" not in str(error)
    assert error.frame  # the offending frame is kept
    assert error.partial is not None
    assert not error.partial.complete


def test_a_protocol_error_keeps_the_text_before_it() -> None:
    bad = ("response.output_text.delta", {"item_id": "msg_9", "delta": "!"})
    error = failure([stream([*created(), *message("msg_1", 0, "kept")[:3], bad])])
    assert isinstance(error, ProtocolError)
    assert error.partial is not None
    assert error.partial.content == "kept"


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (b"data: {not json\n\n", "not valid JSON"),
        (b'data: {"type": "response.output_text.delta", "delta": 5}\n\n', "wrong type"),
        (b'data: {"type": "x", "a": ' + b"[" * 10_000 + b"\n\n", "data frame"),
        (b"data: []\n\n", "event has a field of the wrong type"),
    ],
)
def test_unreadable_frames_are_protocol_errors(frame: bytes, says: str) -> None:
    error = failure([stream(created()) + frame])
    assert isinstance(error, ProtocolError)
    assert says in str(error)


def test_unknown_events_are_consumed_whatever_their_shape() -> None:
    extra: list[Event] = [
        ("response.web_search_call.searching", {"item_id": "ws_1", "output_index": 5}),
        ("response.some_future_event", {"delta": {"x": 1}, "item": [1, 2], "response": "?"}),
        ("keepalive", {}),
    ]
    text = message("msg_1", 0, "a", "b")
    plain = decode(stream([*created(), *text, completed()]), "responses")
    busy = decode(stream([*created(), *text[:3], *extra, *text[3:], completed()]), "responses")
    assert busy.timing.events == plain.timing.events + len(extra)
    assert msgspec.structs.replace(busy, timing=plain.timing) == plain


def test_other_output_items_are_tracked_but_add_nothing() -> None:
    search_item = {
        "id": "ws_1",
        "type": "web_search_call",
        "status": "completed",
        "action": {"query": "q"},
    }
    events = [
        *created(),
        ("response.output_item.added", {"output_index": 0, "item": search_item}),
        ("response.output_item.done", {"output_index": 0, "item": search_item}),
        *message("msg_1", 1, "found"),
        completed(),
    ]
    result = decode(stream(events), "responses")
    assert (result.content, result.tool_calls, result.finish_reason) == ("found", (), "stop")


def test_nothing_after_the_end_marker_is_read() -> None:
    out: list[ChatCompletionChunk] = []
    frames = SSEDecoder().feed_frames(stream([*TEXT, *message("msg_2", 1, "late")]))
    reader = ResponsesReader()
    consumed, error = reader.read(frames, out)
    assert (consumed, error, reader.ended) == (len(TEXT), None, True)


# --- Re-chunking never changes the answer. ---

_STREAMS = [stream(events) for _, events, _ in COMPLETE_STREAMS] + [
    stream(ERROR_AFTER_TEXT),
    stream(FAILED),
]


def outcome(pieces: list[bytes]) -> tuple[ChatResult, str]:
    decoder = ChatStreamDecoder(protocol="responses")
    try:
        for piece in pieces:
            decoder.feed(piece)
        decoder.feed_eof()
    except QwenSSEError as error:
        assert error.partial is not None
        return error.partial, f"{type(error).__name__}: {error}"
    return decoder.result(), ""


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *bounds, len(data)])]


@given(st.sampled_from(_STREAMS), st.lists(st.integers(0, 4000), max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_rechunking_gives_the_same_outcome(data: bytes, cuts: list[int]) -> None:
    assert outcome(split(data, cuts)) == outcome([data])


@given(
    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=6),
    st.lists(st.text(min_size=1, max_size=6), max_size=4),
    st.lists(st.integers(0, 3000), max_size=8),
)
@settings(max_examples=200, deadline=None)
def test_the_answer_is_the_deltas_joined(
    texts: list[str], fragments: list[str], cuts: list[int]
) -> None:
    events = [*created(), *message("msg_1", 0, *texts)]
    if fragments:
        events += function_call("fc_1", 1, "call_1", "f", *fragments)
    events.append(completed())
    result = run(split(stream(events), cuts))
    assert result.complete
    assert result.content == "".join(texts)
    assert [c.function.arguments for c in result.tool_calls] == (
        ["".join(fragments)] if fragments else []
    )


# --- The request side. ---


def test_the_protocol_is_registered() -> None:
    assert protocols.get("responses") is RESPONSES
    assert "responses" in protocols.NAMES
    assert (RESPONSES.root, RESPONSES.path) == ("/compatible-mode/v1", "/responses")
    assert repr(RESPONSES) == "<wire protocol responses>"


def test_headers_carry_a_bearer_key_and_read_back() -> None:
    headers = RESPONSES.headers("sk-test")
    assert headers == {"Authorization": "Bearer sk-test"}
    assert RESPONSES.api_key_of(headers) == "sk-test"
    assert RESPONSES.api_key_of({}) == ""


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?", "name": "ann"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 °C"},
    {
        "role": "assistant",
        "content": "18 °C.",
        "tool_calls": [{"id": "call_2", "function": {"name": "f", "arguments": "{}"}}],
    },
    {"type": "function_call_output", "call_id": "call_2", "output": {"ok": True}},
]


def test_the_body_takes_chat_messages_as_input_items() -> None:
    body = RESPONSES.request_body(
        "qwen3-max", CHAT, {"enable_thinking": True, "max_tokens": 64}, include_usage=True
    )
    assert body == {
        "model": "qwen3-max",
        "input": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "18 °C"},
            {"role": "assistant", "content": "18 °C."},
            {"type": "function_call", "call_id": "call_2", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_2", "output": {"ok": True}},
        ],
        "stream": True,
        "enable_thinking": True,
        "max_output_tokens": 64,
    }
    assert RESPONSES.request_body("m", [], {}, include_usage=False) == {
        "model": "m",
        "input": [],
        "stream": True,
    }


def test_a_given_max_output_tokens_wins_over_max_tokens() -> None:
    body = RESPONSES.request_body(
        "m", [], {"max_tokens": 5, "max_output_tokens": 9}, include_usage=True
    )
    assert (body["max_output_tokens"], "max_tokens" in body) == (9, False)


def test_a_tool_result_in_text_parts_goes_as_its_text_and_anything_else_as_json() -> None:
    parts = [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]
    tool = {"role": "tool", "tool_call_id": "c", "content": parts}
    [item] = RESPONSES.request_body("m", [tool], {}, include_usage=True)["input"]
    assert item["output"] == "xy"
    other = {"role": "tool", "tool_call_id": "c", "content": {"temperature": 21}}
    [item] = RESPONSES.request_body("m", [other], {}, include_usage=True)["input"]
    assert item["output"] == '{"temperature":21}'


def test_an_event_named_only_by_its_event_line_is_checked_like_any_other() -> None:
    # No "type" in the JSON, a field of the wrong type: an error, never a silent skip.
    fields = b'{"item_id": "msg_1", "output_index": "0", "delta": "x"}'
    bad = b"event: response.output_text.delta\ndata: " + fields + b"\n\n"
    data = stream([*created(), *message("msg_1", 0, "Hello ")])
    decoder = ChatStreamDecoder(protocol="responses")
    decoder.feed(data)
    with pytest.raises(ProtocolError, match="output_index"):
        decoder.feed(bad)
        decoder.feed_eof()


def test_a_done_text_adds_what_the_deltas_lacked_and_a_contradicting_one_fails() -> None:
    def done(text: str) -> Event:
        return (
            "response.output_text.done",
            {"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": text},
        )

    added = (
        "response.output_item.added",
        {"output_index": 0, "item": {"type": "message", "id": "msg_1"}},
    )
    delta = (
        "response.output_text.delta",
        {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "The answer is"},
    )
    longer = stream([*created(), added, delta, done("The answer is 42."), completed()])
    for label, pieces in every_chunking(longer):
        assert run(pieces).content == "The answer is 42.", label
    other = stream([*created(), added, delta, done("Another answer"), completed()])
    decoder = ChatStreamDecoder(protocol="responses")
    with pytest.raises(ProtocolError, match="does not extend the 13 characters"):
        decoder.feed(other)
        decoder.feed_eof()


def test_facts_read_the_body_back_as_chat_messages() -> None:
    body = RESPONSES.request_body("qwen3-max", CHAT, {"max_tokens": 64}, include_usage=True)
    facts = RESPONSES.facts(body)
    assert (facts.model, facts.max_tokens, facts.choices) == ("qwen3-max", 64, 1)
    assert facts.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "content": "18 °C"},
        {
            "role": "assistant",
            "content": "18 °C.",
            "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "content": ""},
    ]
    assert message_token_count(facts.messages).tokens > 0


@pytest.mark.parametrize(
    ("body", "messages", "max_tokens"),
    [
        ({"model": "m", "input": "Hi"}, [{"role": "user", "content": "Hi"}], None),
        (
            {"model": "m", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 7},
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            7,
        ),
        (
            {
                "model": "m",
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Hi"}],
                    },
                    {"type": "reasoning", "summary": []},
                ],
            },
            [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hi"}],
                }
            ],
            None,
        ),
        ({"model": "m", "max_output_tokens": "7"}, [], None),
    ],
)
def test_facts_of_a_responses_body(
    body: dict[str, Any], messages: list[Any], max_tokens: int | None
) -> None:
    facts = RESPONSES.facts(body)
    assert (facts.model, facts.messages, facts.max_tokens, facts.choices) == (
        "m",
        messages,
        max_tokens,
        1,
    )


def test_a_broken_answer_cannot_be_continued() -> None:
    so_far = decode(stream(TEXT), "responses")
    assert RESPONSES.continuation({"model": "m", "input": "Hi"}, so_far) is None
    assert "no prefix continuation" in RESPONSES.resume


def test_error_bodies_read_as_elsewhere() -> None:
    body = b'{"error": {"code": "invalid_api_key", "message": "bad key"}, "request_id": "r1"}'
    assert RESPONSES.error_fields(body) == ("invalid_api_key", "bad key", "r1")
    error = RESPONSES.error_in_body(body)
    assert isinstance(error, InBandError)
    assert (error.code, error.request_id) == ("invalid_api_key", "r1")
    assert RESPONSES.error_in_body(b"<html>") is None


def test_a_request_body_sets_up_the_decoder() -> None:
    body = RESPONSES.request_body(
        "qwen3-max", [{"role": "user", "content": "Hi"}], {}, include_usage=True
    )
    assert RESPONSES.stream_bytes_factor(body) == 1
    assert run([stream(TEXT)], request=body).content == "Hello, world — 你好!"


def test_chat_completions_tools_take_the_responses_shape() -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
    }
    params = {"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}}
    body = RESPONSES.request_body("qwen-plus", [], params, include_usage=True)
    assert body["tools"] == [
        {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
    ]
    assert body["tool_choice"] == {"type": "function", "name": "f"}
    web = {"type": "web_search"}
    assert RESPONSES.request_body("m", [], {"tools": [web]}, include_usage=True)["tools"] == [web]


def test_output_items_are_bounded() -> None:
    # Items that carry no text yet add no chunk, so no chunk bound counts them: the reader does.
    items = [
        (
            "response.output_item.added",
            {"output_index": n, "item": {"type": "message", "id": f"m{n}"}},
        )
        for n in range(MAX_ANSWER_PARTS + 1)
    ]
    data = stream([*created(), *items])
    decoder = ChatStreamDecoder(protocol="responses")
    with pytest.raises(ProtocolError, match=f"more than {MAX_ANSWER_PARTS} output items"):
        decoder.feed(data)
        decoder.feed_eof()
