"""The emulator in a child process: it serves with the timing asked for, then goes away."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from qwen_sse.bench.mock import (
    MOCK_API_KEY,
    MockServer,
    ServedTiming,
    served_medians_s,
    served_pools_s,
)
from qwen_sse.chat import ChatResult
from qwen_sse.client import QwenClient
from qwen_sse.emulator import EmulatorConfig


async def chat(base_url: str) -> float | None:
    async with QwenClient("any-key-at-all", base_url) as client:
        result = await client.chat([{"role": "user", "content": "hi"}], max_tokens=3)
    assert result.complete
    return result.timing.ttft_s


def test_the_mock_serves_any_key_then_stops() -> None:
    assert MOCK_API_KEY
    with MockServer(EmulatorConfig(api_key="sk-strict", ttft_s=0.05, itl_s=0.0)) as server:
        base_url = server.base_url
        ttft_s = asyncio.run(chat(base_url))
        assert ttft_s is not None
        assert ttft_s >= 0.05
        process = server._child.process
        assert process is not None
        assert process.is_alive()
    assert not process.is_alive()
    parts = urlsplit(base_url)
    with socket.socket() as probe:
        assert probe.connect_ex((parts.hostname, parts.port)) != 0


def test_closing_twice_is_harmless() -> None:
    server = MockServer(EmulatorConfig())
    with server:
        process = server._child.process
        assert process is not None
        assert process.is_alive()
    # It stopped when told (exit status 0), not because it was terminated.
    assert process.exitcode == 0
    server.close()
    assert server._child.process is None
    assert process.exitcode == 0


async def chat_result(base_url: str) -> ChatResult:
    async with QwenClient("sk-test", base_url) as client:
        return await client.chat([{"role": "user", "content": "hi"}], max_tokens=3)


def test_the_mock_tells_when_it_wrote_each_piece() -> None:
    config = EmulatorConfig(ttft_s=0.05, itl_s=0.01)
    with MockServer(config, timings=True) as server:
        first = asyncio.run(chat_result(server.base_url))
        second = asyncio.run(chat_result(server.base_url))
        timings = server.timings()
        assert server.timings() == []  # taken once
    assert [timing.request_id for timing in timings] == [first.request_id, second.request_id]
    for timing, result in zip(timings, (first, second), strict=True):
        written = timing.text_written_at_s
        assert len(written) == 3
        assert written == sorted(written)
        served_ttft_s = written[0] - timing.arrived_at_s
        assert served_ttft_s >= 0.05
        # One clock for both processes: the client sent before the server saw the request
        # and read the first piece after it was written, so it can only see more.
        assert result.timing.ttft_s is not None
        assert result.timing.ttft_s >= served_ttft_s


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")
def test_the_mock_serves_on_uvloop_when_it_is_installed() -> None:
    with MockServer(EmulatorConfig(ttft_s=0, itl_s=0)) as server:
        assert server.event_loop == "uvloop"
        assert asyncio.run(chat_result(server.base_url)).complete
    # The served truth needs a fine clock: uvloop's counts milliseconds.
    with MockServer(EmulatorConfig(), timings=True) as server:
        assert server.event_loop == "asyncio"


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")
def test_the_mock_keeps_timings_on_uvloop_to_the_millisecond_when_asked() -> None:
    config = EmulatorConfig(ttft_s=0.05, itl_s=0.01)
    with MockServer(config, timings=True, uvloop_timings=True) as server:
        assert server.event_loop == "uvloop"
        result = asyncio.run(chat_result(server.base_url))
        (timing,) = server.timings()
    assert timing.request_id == result.request_id
    assert len(timing.text_written_at_s) == 3
    # The arrival is known to a millisecond of uvloop's clock (two with a coarse kernel
    # clock; 3 ms here to spare): the client, which sent the request before it arrived,
    # sees at most that much less.
    served_ttft_s = timing.text_written_at_s[0] - timing.arrived_at_s
    assert served_ttft_s >= 0.05 - 0.003
    assert result.timing.ttft_s is not None
    assert result.timing.ttft_s >= served_ttft_s - 0.003


def test_the_mock_serves_on_asyncios_loop_without_uvloop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "uvloop.py").write_text("raise ImportError('uvloop is hidden by this test')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned child's path starts with it
    with MockServer(EmulatorConfig(ttft_s=0, itl_s=0)) as server:
        assert server.event_loop == "asyncio"
        assert asyncio.run(chat_result(server.base_url)).complete


def test_timings_are_refused_unless_asked_for() -> None:
    with MockServer(EmulatorConfig()) as server, pytest.raises(RuntimeError, match="timings"):
        server.timings()


def test_served_medians_follow_the_load_generators_definitions() -> None:
    timings = [
        ServedTiming("a", 10.0, [10.5, 10.6, 10.8]),  # TTFT 0.5, gaps 0.1 and 0.2
        ServedTiming("b", 20.0, [20.25, 20.55]),  # TTFT 0.25, gap 0.3
        ServedTiming("c", 30.0, [30.75]),  # TTFT 0.75, no gap
        ServedTiming("d", 40.0, []),  # nothing written: no figure
    ]
    ttft_s, itl_s = served_medians_s(timings)
    assert ttft_s == pytest.approx(0.5)
    assert itl_s == pytest.approx(0.2)
    assert served_medians_s([]) == (None, None)
    ttfts, itls = served_pools_s(timings)
    assert ttfts == pytest.approx([0.5, 0.25, 0.75])
    assert itls == pytest.approx([0.1, 0.2, 0.3])


def test_the_mock_says_which_process_serves() -> None:
    server = MockServer(EmulatorConfig())
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.pid
    with server:
        assert server._child.process is not None
        assert server.pid == server._child.process.pid
        # The process that serves: it is the one whose CPU a benchmark reads and pins.
        assert Path(f"/proc/{server.pid}/stat").exists() or sys.platform != "linux"
