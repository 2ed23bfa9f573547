"""Tests of qwen_sse.sse: every WHATWG parsing rule, under every chunking and line ending."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qwen_sse.errors import EventTooLargeError
from qwen_sse.sse import (
    MAX_RETRY_MS,
    ServerSentEvent,
    SSEComment,
    SSEDecoder,
    SSEEncoder,
    encode_comment,
)
from tests.chunkings import LINE_ENDINGS, every_chunking, with_line_ending

Expected = list[tuple[str, str, str, int | None]]


def decode_pieces(pieces: list[bytes], decoder: SSEDecoder | None = None) -> list[ServerSentEvent]:
    decoder = decoder or SSEDecoder()
    events: list[ServerSentEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    events += decoder.feed_eof()
    return events


def as_tuples(events: list[ServerSentEvent]) -> Expected:
    return [(e.data, e.event, e.id, e.retry) for e in events]


# (name, stream written with LF line endings, expected (data, event, id, retry) tuples)
CASES: list[tuple[str, str, Expected]] = [
    ("one event", "data: hello\n\n", [("hello", "message", "", None)]),
    (
        "two events",
        "data: a\n\ndata: b\n\n",
        [("a", "message", "", None), ("b", "message", "", None)],
    ),
    (
        "data lines join with LF",
        "data: a\ndata: b\ndata: c\n\n",
        [("a\nb\nc", "message", "", None)],
    ),
    ("no space after colon", "data:x\n\n", [("x", "message", "", None)]),
    ("only one space stripped", "data:  x\n\n", [(" x", "message", "", None)]),
    ("tab is not stripped", "data:\tx\n\n", [("\tx", "message", "", None)]),
    ("colon inside value", "data: a:b: c\n\n", [("a:b: c", "message", "", None)]),
    ("line without colon is a field with empty value", "data\n\n", [("", "message", "", None)]),
    ("empty data line keeps one LF", "data: a\ndata:\n\n", [("a\n", "message", "", None)]),
    ("two empty data lines", "data\ndata\n\n", [("\n", "message", "", None)]),
    ("comment ignored", ": keep-alive\ndata: x\n: more\n\n", [("x", "message", "", None)]),
    ("comment alone dispatches nothing", ":c\n\n", []),
    ("event type", "event: add\ndata: 1\n\n", [("1", "add", "", None)]),
    (
        "event type resets after dispatch",
        "event: add\ndata: 1\n\ndata: 2\n\n",
        [("1", "add", "", None), ("2", "message", "", None)],
    ),
    (
        "empty data buffer dispatches nothing and clears type",
        "event: x\n\ndata: y\n\n",
        [("y", "message", "", None)],
    ),
    ("empty event value means message", "event:\ndata: y\n\n", [("y", "message", "", None)]),
    (
        "field names are case-sensitive",
        "Data: no\nDATA: no\ndata: yes\n\n",
        [("yes", "message", "", None)],
    ),
    ("unknown field ignored", "foo: bar\ndata: x\n\n", [("x", "message", "", None)]),
    (
        "id persists",
        "id: 7\ndata: a\n\ndata: b\n\n",
        [("a", "message", "7", None), ("b", "message", "7", None)],
    ),
    ("id after data applies", "data: a\nid: 3\n\n", [("a", "message", "3", None)]),
    (
        "empty id resets",
        "id: 7\ndata: a\n\nid\ndata: b\n\n",
        [("a", "message", "7", None), ("b", "message", "", None)],
    ),
    (
        "empty id value with colon resets",
        "id: 7\ndata: a\n\nid:\ndata: b\n\n",
        [("a", "message", "7", None), ("b", "message", "", None)],
    ),
    (
        "id with NUL ignored",
        "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [("a", "message", "1", None), ("b", "message", "1", None)],
    ),
    ("id without data still updates", "id: 5\n\ndata: a\n\n", [("a", "message", "5", None)]),
    ("id keeps spaces after the first", "id:  x \ndata: a\n\n", [("a", "message", " x ", None)]),
    ("retry digits", "retry: 1500\ndata: a\n\n", [("a", "message", "", 1500)]),
    (
        "retry only on its own event",
        "retry: 10\ndata: a\n\ndata: b\n\n",
        [("a", "message", "", 10), ("b", "message", "", None)],
    ),
    ("retry with letters ignored", "retry: 10a\ndata: a\n\n", [("a", "message", "", None)]),
    ("retry negative ignored", "retry: -1\ndata: a\n\n", [("a", "message", "", None)]),
    ("retry with two spaces ignored", "retry:  5\ndata: a\n\n", [("a", "message", "", None)]),
    ("retry empty ignored", "retry\ndata: a\n\n", [("a", "message", "", None)]),
    (
        "retry without data dispatches nothing",
        "retry: 5\n\ndata: a\n\n",
        [("a", "message", "", None)],
    ),
    ("last retry in block wins", "retry: 5\nretry: 6\ndata: a\n\n", [("a", "message", "", 6)]),
    ("unterminated final event discarded", "data: a\n\ndata: b\n", [("a", "message", "", None)]),
    ("unterminated final line discarded", "data: a\n\ndata: b", [("a", "message", "", None)]),
    (
        "U+2028 and U+0085 do not end lines",
        "data: a\u2028b\u0085c\n\n",
        [("a\u2028b\u0085c", "message", "", None)],
    ),
    ("BOM dropped", "\ufeffdata: a\n\n", [("a", "message", "", None)]),
    ("only one BOM dropped", "\ufeff\ufeffdata: a\n\ndata: b\n\n", [("b", "message", "", None)]),
    ("BOM later is content", "data: \ufeffa\n\n", [("\ufeffa", "message", "", None)]),
    ("multi-byte text", "data: 通义千问🙂\n\n", [("通义千问🙂", "message", "", None)]),
    ("leading blank lines", "\n\n\ndata: a\n\n", [("a", "message", "", None)]),
    (
        "many blank lines between events",
        "data: a\n\n\n\ndata: b\n\n",
        [("a", "message", "", None), ("b", "message", "", None)],
    ),
    (
        "json with [DONE]",
        'data: {"a": 1}\n\ndata: [DONE]\n\n',
        [('{"a": 1}', "message", "", None), ("[DONE]", "message", "", None)],
    ),
    (
        "native DashScope frame",
        'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"x":1}\n\n',
        [('{"x":1}', "result", "1", None)],
    ),
]


@pytest.mark.parametrize("line_ending", LINE_ENDINGS, ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize(("name", "stream", "expected"), CASES, ids=[c[0] for c in CASES])
def test_case_under_every_chunking(
    name: str, stream: str, expected: Expected, line_ending: str
) -> None:
    data = with_line_ending(stream, line_ending).encode()
    for label, pieces in every_chunking(data):
        assert as_tuples(decode_pieces(pieces)) == expected, f"{name} [{label}]"


INVALID_UTF8_CASES = [
    (b"data: a\xffb\n\n", "a\ufffdb"),
    (b"data: \xe6\x88\n\n", "\ufffd"),  # a truncated 3-byte sequence is one U+FFFD
    (b"data: \xe6\x88\xe6\x88\x91\n\n", "\ufffd我"),
    (b"data: \xc0\xaf\n\n", "\ufffd\ufffd"),  # overlong encodings are invalid
]


@pytest.mark.parametrize(("stream", "expected"), INVALID_UTF8_CASES)
def test_invalid_utf8_becomes_replacement_character(stream: bytes, expected: str) -> None:
    for label, pieces in every_chunking(stream):
        assert [e.data for e in decode_pieces(pieces)] == [expected], label


def test_mixed_line_endings_in_one_stream() -> None:
    data = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    for label, pieces in every_chunking(data):
        assert [e.data for e in decode_pieces(pieces)] == ["a\nb\nc", "d"], label


def test_cr_then_lf_split_across_reads_is_one_line_break() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The LF completes the CRLF begun in the previous read: it is not a blank line.
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [ServerSentEvent("a\nb")]


def test_event_ending_in_cr_is_dispatched_in_the_same_feed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r\r") == [ServerSentEvent("x")]
    # The LF that turns out to complete the CRLF is swallowed, not a second blank line.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: y\r") == []
    assert decoder.feed(b"\n\r\n") == [ServerSentEvent("y")]


def test_empty_feed_keeps_pending_cr_state() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == [ServerSentEvent("a")]


def test_bom_split_across_reads_is_dropped() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb") == []
    assert decoder.feed(b"\xbfdata: a\n\n") == [ServerSentEvent("a")]


def test_partial_bom_then_other_bytes_is_kept_as_text() -> None:
    events = decode_pieces([b"\xef\xbb", b"data: a\n\n"])
    assert events == []  # the line is "\ufffd\ufffd" + "data: a": an unknown field name
    assert decode_pieces([b"\xef\xbbdata\n\n"]) == []


def test_comments_are_observable_in_order() -> None:
    data = b":HTTP_STATUS/200\ndata: a\n\n: keep-alive\n:\n"
    for label, pieces in every_chunking(data):
        decoder = SSEDecoder()
        items: list[ServerSentEvent | SSEComment] = []
        for piece in pieces:
            items += decoder.feed_with_comments(piece)
        assert items == [
            SSEComment("HTTP_STATUS/200"),
            ServerSentEvent("a"),
            SSEComment(" keep-alive"),
            SSEComment(""),
        ], label


def test_feed_frames_gives_type_and_raw_bytes() -> None:
    decoder = SSEDecoder()
    frames = decoder.feed_frames(b"event: e\ndata: \xe4\xbd\xa0\ndata: b\n\nid: 4\ndata: c\n\n")
    assert frames == [("e", "你\nb".encode()), ("message", b"c")]
    assert decoder.last_event_id == "4"


def test_last_event_id_and_reconnection_time_persist() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 42\nretry: 3000\n\n")
    assert decoder.last_event_id == "42"
    assert decoder.reconnection_time_ms == 3000
    decoder.feed(b"data: partial")
    assert decoder.feed_eof() == []
    assert decoder.last_event_id == "42"
    # After feed_eof a new stream starts: its BOM is dropped again, the ID carries over.
    assert decoder.feed(b"\xef\xbb\xbfdata: n\n\n") == [ServerSentEvent("n", id="42")]


def test_in_event_and_pending_bytes_report_unterminated_input() -> None:
    decoder = SSEDecoder()
    assert not decoder.in_event
    decoder.feed(b"data: a\n")
    assert decoder.in_event
    assert decoder.pending_bytes == 0
    decoder.feed(b"\ndata: b")
    assert decoder.in_event
    assert decoder.pending_bytes == len(b"data: b")


def test_max_event_bytes_bounds_a_line_without_terminator() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    decoder.feed(b"data: ok\n\n")
    with pytest.raises(EventTooLargeError) as caught:
        for _ in range(100):
            decoder.feed(b"x" * 100)
    assert caught.value.max_event_bytes == 1024
    assert caught.value.event_bytes > 1024
    assert decoder.pending_bytes <= 1024 + 100
    assert "max_event_bytes=1024" in str(caught.value)


def test_max_event_bytes_counts_data_lines_and_keeps_earlier_events() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    stream = b"data: first\n\n" + b"data: 0123456789\n" * 10
    with pytest.raises(EventTooLargeError) as caught:
        decoder.feed(stream)
    assert caught.value.events == [ServerSentEvent("first")]


def test_event_exactly_at_the_limit_is_accepted() -> None:
    # Data "abc" costs 3 bytes plus its LF: 4 bytes held.
    decoder = SSEDecoder(max_event_bytes=4)
    assert decoder.feed(b"data: abc\n\n") == [ServerSentEvent("abc")]


def test_large_event_in_small_pieces() -> None:
    payload = b"z" * (4 * 1024 * 1024)
    data = b"data: " + payload + b"\n\n"
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for start in range(0, len(data), 1024):
        events += decoder.feed(data[start : start + 1024])
    assert len(events) == 1
    assert len(events[0].data) == len(payload)


def test_invalid_max_event_bytes() -> None:
    with pytest.raises(ValueError, match="max_event_bytes"):
        SSEDecoder(max_event_bytes=0)


# --- A literal transcription of the WHATWG algorithm, to test the decoder against. ---


def reference_decode(data: bytes) -> Expected:
    text = data.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    lines = re.split("\r\n|\r|\n", text)
    lines.pop()  # the last piece has no line terminator: discarded at end of stream
    events: Expected = []
    data_buffer, event_type, last_id, id_buffer, retry = "", "", "", "", None
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data_buffer == "":
                event_type, retry = "", None
                continue
            events.append((data_buffer.removesuffix("\n"), event_type or "message", last_id, retry))
            data_buffer, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data_buffer += value + "\n"
        elif field == "event":
            event_type = value
        elif field == "id" and "\x00" not in value:
            id_buffer = value
        elif field == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events


_line_parts = st.sampled_from(
    [
        "data",
        "data:",
        "data: ",
        "data:  ",
        "event:",
        "event: ",
        "id: ",
        "id",
        "retry: ",
        "retry:",
        ":",
        "Data: ",
        "x: ",
        "",
    ]
)
_values = st.text(st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["1", "42", "", "a\x00b", "\ufeff", "通义", "-3", " 7"]
)
_endings = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts: list[bytes] = []
    if draw(st.booleans()):
        parts.append(b"\xef\xbb\xbf")
    for _ in range(draw(st.integers(0, 12))):
        value = draw(_values).replace("\r", "").replace("\n", "")
        line = (draw(_line_parts) + value).encode()
        if draw(st.integers(0, 9)) == 0:
            line += draw(st.sampled_from([b"\xff", b"\xe6\x88", b"\xc3"]))
        parts.append(line + draw(_endings).encode())
        if draw(st.booleans()):
            parts.append(draw(_endings).encode())
    return b"".join(parts)


@given(streams(), st.lists(st.integers(0, 200), max_size=8))
@settings(max_examples=400, deadline=None)
def test_any_chunking_matches_the_reference_algorithm(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    expected = reference_decode(data)
    assert as_tuples(decode_pieces([data])) == expected
    assert as_tuples(decode_pieces(pieces)) == expected


# --- Encoder ---


_no_breaks = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
_events = st.builds(
    ServerSentEvent,
    data=st.text(st.characters(codec="utf-8", exclude_characters="\r")),
    event=_no_breaks.filter(bool),
    id=_no_breaks.map(lambda s: s.replace("\x00", "")),
    retry=st.none() | st.integers(0, 10**9),
)


@given(st.lists(_events, max_size=6), _endings, st.lists(st.integers(0, 500), max_size=5))
@settings(max_examples=300, deadline=None)
def test_encode_then_decode_round_trips(
    events: list[ServerSentEvent], line_ending: str, cuts: list[int]
) -> None:
    encoder = SSEEncoder(line_ending)
    data = b"".join(encoder.encode_event(event) for event in events)
    bounds = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    assert decode_pieces(pieces) == events


def test_encoder_writes_the_expected_bytes() -> None:
    encoder = SSEEncoder()
    assert encoder.encode("a\nb", event="add", id="1", retry=5) == (
        b"event: add\nid: 1\nretry: 5\ndata: a\ndata: b\n\n"
    )
    assert encoder.encode("c", id="1") == b"data: c\n\n"  # the ID in force is not repeated
    assert encoder.encode("d", id="") == b"id\ndata: d\n\n"  # an empty id resets
    assert encoder.comment("ping") == b":ping\n"
    assert encode_comment("x", "\r\n") == b":x\r\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": "a\rb"}, "data cannot contain CR"),
        ({"data": "a", "event": "x\ny"}, "event type cannot contain"),
        ({"data": "a", "id": "1\n"}, "id cannot contain"),
        ({"data": "a", "id": "1\x00"}, "NUL"),
        ({"data": "a", "retry": -1}, "retry"),
    ],
)
def test_encoder_rejects_what_no_stream_can_carry(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SSEEncoder().encode(**kwargs)  # type: ignore[arg-type]


def test_encoder_rejects_unknown_line_ending() -> None:
    with pytest.raises(ValueError, match="line_ending"):
        SSEEncoder("\n\r")
    with pytest.raises(ValueError, match="comment"):
        encode_comment("a\nb")


@given(
    st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40),
        max_size=80,
    ),
    st.lists(st.integers(0, 4000), max_size=6),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_plain_data_streams_under_any_chunking(
    values: list[str], cuts: list[int], with_id: bool
) -> None:
    # Streams of nothing but "data: x" events take the decoder's fast path; they must
    # decode exactly as the reference algorithm says, whatever the read boundaries.
    head = "id: 9\n\n" if with_id else ""
    data = (head + "".join(f"data: {value}\n\n" for value in values)).encode()
    bounds = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    expected = reference_decode(data)
    assert as_tuples(decode_pieces(pieces)) == expected
    decoder = SSEDecoder()
    frames = [frame for piece in pieces for frame in decoder.feed_frames(piece)]
    assert frames == [("message", d.encode()) for d, _, _, _ in expected]


def test_an_enormous_retry_is_clamped_not_a_crash() -> None:
    digits = "9" * 5000
    events = decode_pieces([f"retry: {digits}\ndata: a\n\nretry: 007\ndata: b\n\n".encode()])
    # The documented clamp, spelled out: a constant compared with itself proves nothing.
    assert [e.retry for e in events] == [2**63 - 1, 7]
    assert MAX_RETRY_MS == 2**63 - 1


# --- The fast path (reads of 512 bytes or more) must see fields fed in an earlier read ---

_FAST_PATH_MIN_BYTES = 512
_field_lines = st.sampled_from(["event: foo", "event:bar", "retry: 7", "retry:1500", "id: 3"])
_padding_value = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=100, max_size=150
)


@st.composite
def field_then_big_read(draw: st.DrawFn) -> list[bytes]:
    """Reads of an LF-only stream whose events carry ``event:``/``retry:``/``id:`` fields,
    cut inside an event (after a field or a first ``data:`` line), so that the next read
    (512 bytes or more: the rest of the event, then plain ``data:`` events) reaches the
    decoder's fast path while a field or data line of the event is pending."""
    pieces: list[bytes] = []
    current = b""
    for _ in range(draw(st.integers(1, 3))):
        fields = draw(st.lists(_field_lines, max_size=3))
        values = draw(st.lists(st.sampled_from(["x", "", "通义"]), min_size=1, max_size=2))
        lines = [f"{field}\n".encode() for field in fields]
        lines += [f"data: {value}\n".encode() for value in values]
        cut = draw(st.integers(1, len(lines) - 1)) if len(lines) > 1 else 1
        current += b"".join(lines[:cut])
        pieces.append(current)
        padding = draw(st.lists(_padding_value, min_size=5, max_size=8))
        current = b"".join(lines[cut:]) + b"\n"
        current += "".join(f"data: {value}\n\n" for value in padding).encode()
        assert len(current) >= _FAST_PATH_MIN_BYTES
    pieces.append(current)
    return pieces


@given(field_then_big_read())
@settings(max_examples=200, deadline=None)
def test_a_field_from_an_earlier_read_holds_when_a_big_read_takes_the_fast_path(
    pieces: list[bytes],
) -> None:
    expected = reference_decode(b"".join(pieces))
    assert as_tuples(decode_pieces(pieces)) == expected
    decoder = SSEDecoder()
    frames = [frame for piece in pieces for frame in decoder.feed_frames(piece)]
    assert frames == [(event, data.encode()) for data, event, _, _ in expected]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (b"event: foo\n", ("x", "foo", "", None)),
        (b"retry: 250\n", ("x", "message", "", 250)),
        (b"data: a\n", ("a\nx", "message", "", None)),
    ],
    ids=["event", "retry", "data"],
)
def test_a_pending_field_then_a_big_read(
    field: bytes, expected: tuple[str, str, str, int | None]
) -> None:
    big = b"data: x\n\n" + b"data: " + b"p" * _FAST_PATH_MIN_BYTES + b"\n\n"
    events = as_tuples(decode_pieces([field, big]))
    assert events == [expected, ("p" * _FAST_PATH_MIN_BYTES, "message", "", None)]


# --- the bytes between two events are bounded too: a flood of them costs time ---


@pytest.mark.parametrize(
    "filler",
    [b"\n", b"\r\n", b": keep-alive\n", b"event: x\n", b"id: 7\n", b"retry: 5\n", b"unknown\n"],
    ids=["LF", "CRLF", "comment", "event", "id", "retry", "unknown"],
)
def test_lines_between_events_are_bounded_under_every_chunking(filler: bytes) -> None:
    counted = len(filler.removesuffix(b"\r\n").removesuffix(b"\n")) + 1  # a line break is 1
    flood = filler * (64 // counted + 1)  # just over 64
    data = b"data: first\n\n" + flood + b"data: second\n\n"
    for label, pieces in every_chunking(data):
        decoder = SSEDecoder(max_event_bytes=64)
        events: list[ServerSentEvent] = []
        with pytest.raises(EventTooLargeError) as caught:
            for piece in pieces:
                events += decoder.feed(piece)
        events += caught.value.events
        assert [event.data for event in events] == ["first"], label
        assert caught.value.event_bytes > 64
        assert "no SSE event in" in str(caught.value)


def test_lines_between_events_up_to_the_bound_are_accepted_under_every_chunking() -> None:
    # 63 blank lines and a 1-byte comment line (with their line breaks): exactly 64 bytes.
    data = b"data: first\n\n" + b"\n" * 62 + b":\n" + b"data: second\n\n"
    for label, pieces in every_chunking(data):
        decoder = SSEDecoder(max_event_bytes=64)
        events = [event for piece in pieces for event in decoder.feed(piece)]
        assert [event.data for event in events] == ["first", "second"], label


def test_the_count_between_events_starts_again_at_every_event() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    block = b": ping\n" * 8 + b"data: x\n\n"  # 56 bytes of comments before each event
    for _ in range(1000):
        assert decoder.feed(block) == [ServerSentEvent("x")]


def test_a_flood_of_line_breaks_stops_within_max_event_bytes() -> None:
    decoder = SSEDecoder(max_event_bytes=1024 * 1024)
    decoder.feed(b"data: first\n\n")
    fed = 0
    with pytest.raises(EventTooLargeError):
        while True:
            decoder.feed(b"\n" * 65_536)
            fed += 65_536
    assert fed <= 1024 * 1024


def test_a_huge_single_feed_is_parsed_in_slices_with_the_same_result() -> None:
    # 3 MiB of events in one call, as decode() of a saved stream does.
    data = b"".join(f"data: {n}\n\n".encode() for n in range(300_000))
    assert len(data) > 3 * 1024 * 1024
    events = SSEDecoder().feed(data)
    assert [event.data for event in events] == [str(n) for n in range(300_000)]


_SHORT_LINES = st.sampled_from(
    [b"", b"", b":", b": ping", b"event: x", b"id: 1", b"retry: 5", b"data: ab", b"data: c"]
)


def _between_events_reference(lines: list[bytes], limit: int) -> tuple[list[str], bool]:
    """The bound as documented: the non-data lines since the last dispatch, each costing
    its length plus one, may not pass ``limit`` (checked at dispatch and at the end)."""
    events: list[str] = []
    data: list[bytes] = []
    gap = 0
    for line in lines:
        if line.startswith(b"data: "):
            data.append(line[6:])
        elif not line and data:
            if gap > limit:
                return events, True
            events.append(b"\n".join(data).decode())
            data, gap = [], 0
        else:
            gap += len(line) + 1
    return events, gap > limit


def _data_bytes_held(lines: list[bytes]) -> Iterator[int]:
    held = 0
    for line in lines:
        if line.startswith(b"data: "):
            held += len(line) - 5
            yield held
        elif not line:
            held = 0


@given(st.lists(_SHORT_LINES, max_size=60), st.integers(16, 48), st.data())
@settings(max_examples=300, deadline=None)
def test_the_bound_between_events_does_not_depend_on_the_chunking(
    lines: list[bytes], limit: int, data: st.DataObject
) -> None:
    # Events small enough that the bound on one event never applies, under any chunking.
    assume(all(held + len(b"data: ab") < limit for held in _data_bytes_held(lines)))
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=8)))
    pieces = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    decoder = SSEDecoder(max_event_bytes=limit)
    events: list[ServerSentEvent] = []
    raised = False
    try:
        for piece in pieces:
            events += decoder.feed(piece)
    except EventTooLargeError as error:
        raised = True
        events += error.events
    assert ([event.data for event in events], raised) == _between_events_reference(lines, limit)
