"""The emulator's ``GET /metrics`` over loopback: what it counts, in the format and the names a
Prometheus scraper (and ``bench --metrics-url``) reads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from qwen_sse.bench.prometheus import Exposition, parse
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault
from qwen_sse.emulator.metrics import CONTENT_TYPE, METRICS_PATH

KEY = "sk-test"
BODY = {
    "model": "qwen-plus",
    "messages": [{"role": "user", "content": "Tell me about streaming."}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
# Until the test says otherwise: a stream that stalls after its first event.
STALL = Fault(stall_after_events=1, stall_s=3600)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(ttft_s=0.0, itl_s=0.0, api_key=KEY)) as emulator:
        yield emulator


def origin(emu: Emulator) -> str:
    return f"http://127.0.0.1:{emu.port}"


async def metrics(session: aiohttp.ClientSession, emu: Emulator) -> Exposition:
    async with session.get(origin(emu) + METRICS_PATH) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE
        return parse(await response.text())


def values(page: Exposition) -> dict[str, float]:
    return {
        sample.name + "".join(f"{{{k}={v}}}" for k, v in sample.labels): sample.value
        for sample in page.samples
    }


async def wait_for(session: aiohttp.ClientSession, emu: Emulator, name: str, value: float) -> None:
    """Scrape until ``name`` reads ``value`` (a handler ends after its client has gone)."""
    for _ in range(500):
        if values(await metrics(session, emu)).get(name) == value:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{name} never read {value}")


async def test_requests_running_are_those_being_answered(emu: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        streams = []
        for _ in range(3):
            response = await session.post(
                emu.base_url + "/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {KEY}", **STALL.header()},
            )
            # Its first event is here: the server is answering it, and stalls.
            assert (await response.content.readuntil(b"\n\n")).startswith(b"data:")
            streams.append(response)
        page = await metrics(session, emu)
        assert page.types["vllm:num_requests_running"] == "gauge"
        shown = values(page)
        assert shown["vllm:num_requests_running"] == 3
        assert shown["qwen_emulator_streams_active"] == 3
        assert shown["vllm:num_requests_waiting"] == 0
        assert shown["qwen_emulator_requests_total"] == 3
        for response in streams:
            response.close()  # the clients go away
        await wait_for(session, emu, "vllm:num_requests_running", 0)
        shown = values(await metrics(session, emu))
        assert shown["qwen_emulator_responses_total{code=cancelled}"] == 3
        assert shown["qwen_emulator_streams_active"] == 0


async def test_tokens_and_responses_count_what_was_answered(emu: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        prompt = completion = 0
        for _ in range(2):
            async with session.post(
                emu.base_url + "/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {KEY}"},
            ) as response:
                text = await response.text()
            usage = [
                json.loads(line[5:])["usage"]
                for line in text.splitlines()
                if line.startswith("data: {") and '"usage":{' in line
            ][-1]
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
        refused = await session.post(
            emu.base_url + "/chat/completions", json=BODY, headers={"Authorization": "Bearer no"}
        )
        assert refused.status == 401
        models = await session.get(
            emu.base_url + "/models", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert models.status == 200
        page = await metrics(session, emu)
        assert page.types["vllm:generation_tokens_total"] == "counter"
        shown = values(page)
        assert shown["vllm:prompt_tokens_total"] == prompt
        assert shown["vllm:generation_tokens_total"] == completion > 0
        # The refused request is a request, not an answer; the model list is neither.
        assert shown["qwen_emulator_requests_total"] == 3
        assert shown["qwen_emulator_responses_total{code=200}"] == 2
        assert shown["qwen_emulator_responses_total{code=401}"] == 1
        assert shown["vllm:num_requests_running"] == 0


async def test_the_page_wants_no_key_and_only_get(emu: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        page = await metrics(session, emu)  # no Authorization header
        assert {name for name, kind in page.types.items() if kind == "gauge"} == {
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "qwen_emulator_streams_active",
        }
        assert set(page.helps) == set(page.types)
        async with session.post(origin(emu) + METRICS_PATH) as response:
            assert response.status == 405
        async with session.post(origin(emu) + "/v1/nowhere", json=BODY) as response:
            assert response.status == 404
        # Neither was a chat request.
        shown = values(await metrics(session, emu))
        assert shown["qwen_emulator_requests_total"] == 0
        assert not [name for name in shown if name.startswith("qwen_emulator_responses_total")]
