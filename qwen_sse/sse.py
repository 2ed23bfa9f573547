"""Server-Sent Events framing: the WHATWG event-stream parser and its exact inverse.

Core module (sans-I/O): bytes in, typed events out. Imports nothing from aiohttp, asyncio,
os, time, random or logging.

The decoder follows "Parsing an event stream" of the WHATWG HTML standard to the letter:

* one UTF-8 BOM at the very start of the stream is dropped, only one;
* lines end at CRLF, LF, or a lone CR, and at nothing else (not U+2028, not U+0085); a CR
  ends its line at once, and a LF arriving first in the next ``feed`` is swallowed, so an
  event is never held back waiting for the next read;
* lines are split on bytes, then decoded as UTF-8 with U+FFFD for invalid sequences
  (equivalent to decoding first, since CR and LF never occur inside a UTF-8 sequence);
* ``:`` starts a comment; otherwise the field name is the text before the first colon and
  the value the text after it, minus one leading U+0020 (never a tab, never two);
* field names are case-sensitive; ``id`` with a NUL is ignored, an empty ``id`` resets the
  last event ID; ``retry`` counts only when it is ASCII digits; unknown fields are ignored;
* a blank line dispatches: the last event ID is updated even when nothing is dispatched,
  an empty data buffer dispatches nothing, one trailing LF is removed from the data;
* at end of stream an unterminated event is discarded.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from qwen_sse.errors import EventTooLargeError

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "MAX_RETRY_MS",
    "SSEComment",
    "SSEDecoder",
    "SSEEncoder",
    "ServerSentEvent",
    "encode_comment",
]

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_DIGITS = re.compile(rb"[0-9]+")

_SIMPLE_MIN_BYTES = 512
# Larger feeds (a whole saved stream) are parsed in slices of this size, so that splitting
# a flood of line breaks never builds a list of more than this many lines.
_SLICE_BYTES = 1 << 20

# What SSEDecoder._feed emits: events; events and comments; (type, data bytes) frames.
_EVENTS, _EVENTS_AND_COMMENTS, _FRAMES = range(3)


class ServerSentEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event.

    ``event`` is "message" unless an ``event`` field set it; ``id`` is the last event ID in
    force at dispatch ("" if none); ``retry`` is the reconnection time in milliseconds, set
    only when this event's block carried a valid ``retry`` field.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEComment(msgspec.Struct, frozen=True, gc=False):
    """A comment line (``:`` and what follows, without the colon): keep-alives, status."""

    text: str


MAX_RETRY_MS = 2**63 - 1
"""``retry`` values above this (292 million years) are clamped to it: Python refuses to
parse integers of more than 4300 digits, and no reconnection waits that long anyway."""


def _retry_ms(digits: bytes) -> int:
    significant = digits.lstrip(b"0")
    return MAX_RETRY_MS if len(significant) > 19 else min(int(digits), MAX_RETRY_MS)


def _decode(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", "replace")


class SSEDecoder:
    """Incremental, spec-exact event-stream parser.

    ``feed(data)`` returns the events completed by ``data``; any split of the same bytes
    into ``feed`` calls yields the same events. ``feed_eof()`` ends the stream, discarding
    an unterminated event, and resets the parser for a new stream (the last event ID
    persists, as it does for a reconnecting ``EventSource``).

    ``max_event_bytes`` bounds the memory one event may hold (its unterminated line plus
    its buffered field values), and also the bytes of the lines between two dispatched
    events other than data lines (blank lines, comments, other fields: each line's bytes
    plus one for its line break), which bounds the work a flood of them causes. Past
    either ``feed`` raises :class:`~qwen_sse.errors.EventTooLargeError`, whose ``events``
    holds what the same call completed before the overflow (events, or frames from
    :meth:`feed_frames`), and the decoder must not be fed again. Whether a stream
    overflows does not depend on how it is split into ``feed`` calls; where it is noticed
    may (at the latest at the end of the read that passes the bound).

    ``last_event_id`` and ``reconnection_time_ms`` (the last valid ``retry``, even from a
    block that dispatched nothing) are what a reconnecting client sends and waits.
    """

    __slots__ = (
        "_at_stream_start",
        "_data",
        "_data_bytes",
        "_event_type",
        "_gap_bytes",
        "_id_buffer",
        "_pending",
        "_retry",
        "_skip_lf",
        "last_event_id",
        "max_event_bytes",
        "reconnection_time_ms",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes <= 0:
            raise ValueError(f"max_event_bytes must be positive, got {max_event_bytes}")
        self.max_event_bytes = max_event_bytes
        self.last_event_id = ""
        self.reconnection_time_ms: int | None = None
        self._id_buffer = ""
        self._at_stream_start = True
        self._pending = bytearray()
        self._skip_lf = False
        self._data: list[bytes] = []
        self._data_bytes = 0
        self._event_type = ""
        self._retry: int | None = None
        self._gap_bytes = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unterminated line held until its line break arrives."""
        return len(self._pending)

    @property
    def in_event(self) -> bool:
        """True while an undispatched event or an unterminated line is buffered."""
        return bool(self._pending or self._data or self._event_type or self._retry is not None)

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Parse ``data``; return the events it completed, in order. Comments are skipped."""
        out: list[Any] = []
        self._feed(data, out, _EVENTS)
        return out

    def feed_with_comments(self, data: bytes) -> list[ServerSentEvent | SSEComment]:
        """Like :meth:`feed`, with each comment line as an :class:`SSEComment`, in order."""
        out: list[Any] = []
        self._feed(data, out, _EVENTS_AND_COMMENTS)
        return out

    def feed_frames(self, data: bytes) -> list[tuple[str, bytes]]:
        """Like :meth:`feed`, but each event as ``(type, data)`` with data as UTF-8 bytes.

        For consumers that parse the data themselves straight from bytes (JSON decoders):
        it saves decoding to ``str`` and building an event object. Invalid UTF-8 is passed
        through unreplaced; ids and ``retry`` are tracked exactly as by :meth:`feed`.
        """
        out: list[Any] = []
        self._feed(data, out, _FRAMES)
        return out

    def feed_eof(self) -> list[ServerSentEvent]:
        """End the stream. An unterminated event is discarded, so this returns ``[]``.

        The parser is reset to the start of a new stream (BOM handling included); the last
        event ID is kept.
        """
        self._pending = bytearray()
        self._data = []
        self._data_bytes = 0
        self._event_type = ""
        self._retry = None
        self._at_stream_start = True
        self._skip_lf = False
        self._gap_bytes = 0
        return []

    def _feed(self, data: bytes, out: list[Any], mode: int) -> None:
        if not data:
            return
        if len(data) > _SLICE_BYTES:
            for start in range(0, len(data), _SLICE_BYTES):
                self._feed(data[start : start + _SLICE_BYTES], out, mode)
            return
        if self._at_stream_start:
            # Hold the first bytes until we know whether they are a BOM.
            head = bytes(self._pending) + bytes(data)
            if len(head) < 3 and _BOM.startswith(head):
                self._pending = bytearray(head)
                return
            self._at_stream_start = False
            self._pending = bytearray()
            data = head[3:] if head.startswith(_BOM) else head
            if not data:
                return
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
                if not data:
                    return
        # Small reads hold at most an event or two: the fast path would not pay for its checks.
        if (
            len(data) >= _SIMPLE_MIN_BYTES
            and mode != _EVENTS_AND_COMMENTS
            and self._feed_simple(data, out, mode)
        ):
            self._gap_bytes = 0  # nothing but events: no line after the last dispatch
            return
        if b"\r" in data:
            lines = _LINE_BREAK.split(data)
            # A CR at the very end already ended its line; its LF may come in the next read.
            self._skip_lf = data[-1] == 0x0D
        else:
            lines = data.split(b"\n")
        tail = lines.pop()
        if lines:
            if self._pending:
                lines[0] = bytes(self._pending) + lines[0]
                self._pending = bytearray()
            self._process(lines, out, mode)
        if tail:
            self._pending += tail
            size = len(self._pending) + self._data_bytes
            if size > self.max_event_bytes:
                raise self._too_large(size, out)

    def _feed_simple(self, data: bytes, out: list[Any], mode: int) -> bool:
        """The common case in C-speed list operations, or False to take the general path.

        It applies when no event is half-built and the read (with any unterminated line
        before it) is nothing but ``data: <one line>`` events separated by blank lines,
        LF-only, ending in at most part of one line. Such a read means exactly: one event
        per ``data:`` line, type "message", no retry, the last event ID unchanged.
        """
        if self._data or self._event_type or self._retry is not None or b"\r" in data:
            return False
        if b"\n" not in data:
            # Nothing completes: the general path appends to the pending line without
            # copying it, which keeps a huge event fed in small pieces linear.
            return False
        if self._pending:
            data = bytes(self._pending) + data
        if len(data) > self.max_event_bytes:
            return False
        lines = data.split(b"\n")
        tail = lines.pop()
        # Event lines at even places, blank lines at odd ones, and nothing else.
        if not lines or len(lines) % 2 or any(lines[1::2]):
            return False
        values = [line[6:] for line in lines[::2] if line.startswith(b"data: ")]
        if len(values) * 2 != len(lines):
            return False
        self._pending = bytearray(tail)
        self.last_event_id = event_id = self._id_buffer
        if mode == _FRAMES:
            out += [("message", value) for value in values]
        else:
            out += [
                ServerSentEvent(value.decode("utf-8", "replace"), "message", event_id, None)
                for value in values
            ]
        return True

    def _too_large(
        self, size: int, out: list[Any], *, between_events: bool = False
    ) -> EventTooLargeError:
        error = EventTooLargeError(
            max_event_bytes=self.max_event_bytes, event_bytes=size, between_events=between_events
        )
        error.events = [item for item in out if not isinstance(item, SSEComment)]
        return error

    def _process(self, lines: list[bytes], out: list[Any], mode: int) -> None:
        # The hot loop: buffers live in locals and are written back once at the end.
        data = self._data
        data_bytes = self._data_bytes
        event_type = self._event_type
        retry = self._retry
        id_buffer = self._id_buffer
        # Bytes of the lines since the last dispatch that are not data lines: a flood of
        # them costs time (not memory), and is bounded by max_event_bytes too.
        gap = self._gap_bytes
        limit = self.max_event_bytes
        append = out.append
        try:
            for line in lines:
                if not line:
                    self.last_event_id = id_buffer
                    if data:
                        if gap > limit:
                            raise self._too_large(gap, out, between_events=True)
                        gap = 0
                        raw = data[0] if len(data) == 1 else b"\n".join(data)
                        if mode == _FRAMES:
                            append((event_type or "message", raw))
                        else:
                            append(
                                ServerSentEvent(
                                    raw.decode("utf-8", "replace"),
                                    event_type or "message",
                                    id_buffer,
                                    retry,
                                )
                            )
                        data = []
                        data_bytes = 0
                    else:
                        gap += 1
                    event_type = ""
                    retry = None
                    continue
                if line.startswith(b"data: "):
                    field = b"data"
                    value = line[6:]
                elif line[0] == 0x3A:
                    gap += len(line) + 1
                    if mode == _EVENTS_AND_COMMENTS:
                        append(SSEComment(_decode(line[1:])))
                    continue
                else:
                    colon = line.find(b":")
                    if colon < 0:
                        field = line
                        value = b""
                    else:
                        field = line[:colon]
                        value = line[colon + 1 :]
                        if value.startswith(b" "):
                            value = value[1:]
                if field == b"data":
                    data.append(value)
                    data_bytes += len(value) + 1
                    if data_bytes > limit:
                        raise self._too_large(data_bytes, out)
                    continue
                gap += len(line) + 1
                if field == b"event":
                    event_type = _decode(value)
                elif field == b"id":
                    if b"\x00" not in value:
                        id_buffer = _decode(value)
                elif field == b"retry" and _DIGITS.fullmatch(value):
                    retry = self.reconnection_time_ms = _retry_ms(value)
            if gap > limit:
                raise self._too_large(gap, out, between_events=True)
        finally:
            self._gap_bytes = gap
            self._data = data
            self._data_bytes = data_bytes
            self._event_type = event_type
            self._retry = retry
            self._id_buffer = id_buffer


def _check_no_line_break(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {name} cannot contain CR or LF: {value!r}")


class SSEEncoder:
    """Serialises events so that :class:`SSEDecoder` gives them back exactly.

    It tracks the last event ID it wrote, so a sequence of decoded events re-encodes to a
    stream that decodes to the same sequence. ``line_ending`` is ``"\\n"``, ``"\\r\\n"``
    or ``"\\r"``. Values that no event stream can carry raise ``ValueError``: CR in data,
    CR or LF in an event type or id, NUL in an id.
    """

    __slots__ = ("_last_id", "line_ending")

    def __init__(self, line_ending: str = "\n") -> None:
        if line_ending not in ("\n", "\r\n", "\r"):
            raise ValueError(f"line_ending must be LF, CRLF or CR, got {line_ending!r}")
        self.line_ending = line_ending
        self._last_id = ""

    def encode(
        self,
        data: str,
        *,
        event: str = "message",
        id: str | None = None,
        retry: int | None = None,
    ) -> bytes:
        """One event as bytes, ending with its blank line. ``id=None`` keeps the last ID."""
        if "\r" in data:
            raise ValueError(f"SSE data cannot contain CR: {data!r}")
        eol = self.line_ending
        parts: list[str] = []
        if event != "message":
            _check_no_line_break("event type", event)
            parts.append(f"event: {event}{eol}")
        if id is not None and id != self._last_id:
            _check_no_line_break("id", id)
            if "\x00" in id:
                raise ValueError(f"SSE id cannot contain NUL: {id!r}")
            parts.append(f"id: {id}{eol}" if id else f"id{eol}")
            self._last_id = id
        if retry is not None:
            if retry < 0:
                raise ValueError(f"SSE retry must be a non-negative integer, got {retry}")
            parts.append(f"retry: {retry}{eol}")
        for line in data.split("\n"):
            parts.append(f"data: {line}{eol}")
        parts.append(eol)
        return "".join(parts).encode("utf-8")

    def encode_event(self, event: ServerSentEvent) -> bytes:
        """Encode a decoded event (the inverse of :meth:`SSEDecoder.feed`)."""
        return self.encode(event.data, event=event.event, id=event.id, retry=event.retry)

    def comment(self, text: str = "") -> bytes:
        """A comment line, e.g. a keep-alive; decoders other than ours ignore it."""
        return encode_comment(text, self.line_ending)


def encode_comment(text: str = "", line_ending: str = "\n") -> bytes:
    """One comment line (``:`` + text); ``text`` may not contain CR or LF."""
    _check_no_line_break("comment", text)
    return f":{text}{line_ending}".encode()
