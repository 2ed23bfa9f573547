"""The emulator in a child process: it serves with the timing asked for, then goes away."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

from qwen_sse.bench.mock import MOCK_API_KEY, MockServer
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
        process = server._process
        assert process is not None
        assert process.is_alive()
    assert not process.is_alive()
    parts = urlsplit(base_url)
    with socket.socket() as probe:
        assert probe.connect_ex((parts.hostname, parts.port)) != 0


def test_closing_twice_is_harmless() -> None:
    server = MockServer(EmulatorConfig())
    with server:
        pass
    server.close()
