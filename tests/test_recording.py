"""Tests of qwen_sse.recording: the file format, and serving a recording back."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import pytest

from qwen_sse.errors import ConfigurationError, StreamInterruptedError
from qwen_sse.recording import FORMAT, RecordedAttempt, Recorder, ReplayServer, load_recording


def write_sample(path: Path) -> None:
    buffer = io.StringIO()
    recorder = Recorder(buffer)
    recorder.request(
        method="POST",
        url="http://127.0.0.1:1/compatible-mode/v1/chat/completions",
        headers={"Authorization": "Bearer ***"},
        body=b'{"model": "qwen-plus"}',
    )
    recorder.response(status=200, headers={"content-type": "text/event-stream"}, at_s=0.005)
    recorder.data(b'data: {"a": "\xe9\x80', 0.020)  # ends inside a UTF-8 character
    recorder.data(b'\x9a"}\n\ndata: [DONE]\n\n', 0.060)
    recorder.end(at_s=0.061, outcome="ok", error=None)
    path.write_text(buffer.getvalue(), "utf-8")


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "call.jsonl"
    write_sample(path)
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert lines[0] == FORMAT
    assert [line.get("type") for line in lines[1:]] == [
        "request",
        "response",
        "data",
        "data",
        "end",
    ]
    # Each read is split inside a character, so neither is valid UTF-8 on its own.
    assert "base64" in lines[3]
    assert "base64" in lines[4]
    (attempt,) = load_recording(path)
    assert attempt.status == 200
    assert attempt.body == {"model": "qwen-plus"}
    assert attempt.pieces == [
        (0.02, b'data: {"a": "\xe9\x80'),
        (0.06, b'\x9a"}\n\ndata: [DONE]\n\n'),
    ]
    assert attempt.data.decode() == 'data: {"a": "通"}\n\ndata: [DONE]\n\n'
    assert attempt.outcome == "ok"


def test_errors_are_recorded_with_their_type(tmp_path: Path) -> None:
    buffer = io.StringIO()
    recorder = Recorder(buffer)
    recorder.request(method="POST", url="u", headers={}, body=b"not json")
    recorder.end(at_s=0.1, outcome="error", error=StreamInterruptedError("connection lost"))
    path = tmp_path / "r.jsonl"
    path.write_text(buffer.getvalue())
    (attempt,) = load_recording(path)
    assert attempt.body == "not json"
    assert attempt.error_type == "StreamInterruptedError"
    assert attempt.error == "connection lost"


HEADER = '{"format": "qwen-sse-recording", "version": 1}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "bad.jsonl is empty: not a qwen-sse recording"),
        ("\n  \n", "bad.jsonl is empty: not a qwen-sse recording"),
        ('{"format": "other"}\n', "not a qwen-sse recording"),
        (HEADER + "not json\n", ":2: not a JSON line"),
        (HEADER + '{"type": "weird"}\n', r"bad.jsonl:2: unknown record type 'weird'"),
        (
            b'{"format": "qwen-sse-recording"}\n\xff\xfe',
            "not a qwen-sse recording: it is not UTF-8 text \\(invalid start byte at byte 33\\)",
        ),
        (
            'data: {"choices": []}\n\ndata: [DONE]\n\n',
            "bad.jsonl looks like a saved SSE stream, not a qwen-sse recording .*: decode it "
            "with qwen-sse decode .*bad.jsonl",
        ),
        (": keep-alive\n\nevent: message_stop\n", "looks like a saved SSE stream"),
        (
            HEADER + '{"type": "response", "attempt": 1, "status": "two hundred"}\n',
            r"bad.jsonl:2: a malformed response record \(ValueError: ",
        ),
        (HEADER + '{"type": "response", "attempt": 1}\n', r":2: a malformed response record"),
        (HEADER + '{"type": "data", "attempt": [1]}\n', r":2: a malformed data record"),
        (HEADER + '{"type": "data", "base64": "%%%"}\n', r":2: a malformed data record"),
        (HEADER + '{"type": "data", "text": "\\ud800"}\n', r":2: a malformed data record"),
        (HEADER + '{"type": "request", "headers": [1]}\n', r":2: a malformed request record"),
        (HEADER + '{"type": "end", "at_ms": "soon"}\n', r":2: a malformed end record"),
    ],
)
def test_bad_files_name_what_is_wrong(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        load_recording(path)


def test_a_recording_of_no_attempt_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "none.jsonl"
    path.write_text(HEADER)
    assert load_recording(path) == []


def test_missing_file() -> None:
    with pytest.raises(ConfigurationError, match="cannot read recording"):
        load_recording("/nonexistent/recording.jsonl")


async def test_replay_server_keeps_bytes_boundaries_and_timing(tmp_path: Path) -> None:
    path = tmp_path / "call.jsonl"
    write_sample(path)
    attempts = load_recording(path)
    async with ReplayServer(attempts) as server, aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with session.post(f"{server.base_url}/chat/completions", json={}) as response:
            assert response.status == 200
            assert response.headers["content-type"] == "text/event-stream"
            reads: list[tuple[float, bytes]] = []
            async for piece in response.content.iter_any():
                reads.append((loop.time() - started, piece))
    assert b"".join(piece for _, piece in reads) == attempts[0].data
    assert [piece for _, piece in reads] == [piece for _, piece in attempts[0].pieces]
    # The gap between the two reads is the recorded one (40 ms), never shorter.
    assert reads[1][0] - reads[0][0] >= 0.035


async def test_replay_server_breaks_a_connection_that_broke() -> None:
    attempt = RecordedAttempt(
        attempt=1,
        status=200,
        response_headers={"content-type": "text/event-stream"},
        pieces=[(0.0, b"data: {}\n\n")],
        outcome="error",
        error="connection lost",
        error_type="StreamInterruptedError",
    )
    async with (
        ReplayServer([attempt]) as server,
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/x", json={}) as response,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


def test_a_recording_without_responses_cannot_be_served() -> None:
    with pytest.raises(ConfigurationError, match="no response"):
        ReplayServer([RecordedAttempt(attempt=1)])
