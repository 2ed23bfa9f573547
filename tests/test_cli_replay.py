"""Tests of ``qwen-sse replay`` and ``serve --replay``: recordings decode and play back
exactly as they were received."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
from pathlib import Path

import pytest

from qwen_sse import protocols
from qwen_sse.chunks import encode_chunk
from qwen_sse.cli import main
from qwen_sse.client import QwenClient
from qwen_sse.emulator import Emulator, EmulatorConfig
from qwen_sse.recording import Recorder, ReplayServer, load_recording
from qwen_sse.retry import NO_RETRIES

KEY = "sk-test"
HELLO = [{"role": "user", "content": "你好"}]


async def record_live(
    path: Path, *, itl_s: float = 0.0, protocol: str = "compatible", name_it: bool = True
) -> list[str]:
    """One live call against the emulator, recorded (naming its protocol unless not
    ``name_it``, as recordings did before they named it); returns its chunks as JSON lines."""
    config = EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=itl_s, answer_tokens=12)
    with path.open("w", encoding="utf-8") as file:
        async with Emulator(config) as server:
            client = QwenClient(
                KEY,
                server.base_url_for(protocol),
                protocol=protocol,
                wire_tap=Recorder(file, protocol=protocol if name_it else ""),
                retry=NO_RETRIES,
            )
            async with client, client.stream_chat(HELLO) as stream:
                return [encode_chunk(chunk).decode() async for chunk in stream]


async def test_a_recording_replays_to_exactly_the_live_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "live.jsonl"
    live = await record_live(path)
    status = await asyncio.to_thread(main, ["replay", "--json", str(path)])
    assert status == 0
    assert capsys.readouterr().out.splitlines() == live


@pytest.mark.parametrize("protocol", protocols.NAMES)
@pytest.mark.parametrize("name_it", [True, False], ids=["named", "by-url"])
async def test_every_protocol_replays_to_its_live_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], protocol: str, name_it: bool
) -> None:
    path = tmp_path / "live.jsonl"
    live = await record_live(path, protocol=protocol, name_it=name_it)
    assert (load_recording(path)[0].protocol == protocol) is name_it
    assert await asyncio.to_thread(main, ["replay", "--json", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == live
    assert await asyncio.to_thread(main, ["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "complete: yes" in out
    assert "anomalies: none" in out


async def test_replay_shows_the_trace_view(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "live.jsonl"
    await record_live(path)
    assert await asyncio.to_thread(main, ["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "=== attempt 1: POST" in out
    assert "complete: yes" in out
    assert "anomalies: none" in out


class ReadTimes:
    """A wire tap keeping every read and its arrival time."""

    def __init__(self) -> None:
        self.reads: list[tuple[float, bytes]] = []

    def request(self, **_: object) -> None:
        pass

    def response(self, **_: object) -> None:
        pass

    def data(self, chunk: bytes, at_s: float) -> None:
        self.reads.append((at_s, chunk))

    def end(self, **_: object) -> None:
        pass


async def test_serving_a_recording_reproduces_its_timing_and_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "paced.jsonl"
    await record_live(path, itl_s=0.04)
    (attempt,) = load_recording(path)
    recorded = [at for at, _ in attempt.pieces]
    taps = ReadTimes()
    async with ReplayServer([attempt]) as server:
        client = QwenClient(KEY, server.base_url, wire_tap=taps, retry=NO_RETRIES)
        async with client:
            result = await client.chat(HELLO)
    assert result.complete
    # The same bytes, and no piece sooner than it came when recorded (both count from the
    # request's send): the replay keeps the original timing. How much later a piece comes
    # depends on the machine's load, and a late read may take two pieces at once.
    assert b"".join(chunk for _, chunk in taps.reads) == b"".join(p for _, p in attempt.pieces)
    # The recording carries the stream's pace: the last of 12 tokens is due 11 gaps of
    # 40 ms after the request arrived, and nothing is read before it is written, however
    # late the machine runs (an unpaced recording would end at once).
    assert recorded[-1] >= 0.04 * 11
    read_ends = list(itertools.accumulate(len(chunk) for _, chunk in taps.reads))
    piece_ends = itertools.accumulate(len(piece) for _, piece in attempt.pieces)
    for recorded_at_s, end in zip(recorded, piece_ends, strict=True):
        read = bisect.bisect_left(read_ends, end)
        assert taps.reads[read][0] >= recorded_at_s


def test_a_file_that_is_not_a_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"not": "a recording"}) + "\n")
    assert main(["replay", str(path)]) == 2
    assert "not a qwen-sse recording" in capsys.readouterr().err
