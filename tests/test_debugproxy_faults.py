"""Tests of qwen_sse.debugproxy.faults: the --fault vocabulary, which exchanges a fault takes,
and where it cuts each protocol's real stream (the emulator's bytes), under any split into
reads and every line ending."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from qwen_sse import protocols
from qwen_sse.chat import ChatStreamDecoder
from qwen_sse.debugproxy.faults import FaultCutter, FaultPicker, ProxyFault, Step, parse_fault
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault
from qwen_sse.errors import IncompleteStreamError
from tests.chunkings import every_chunking

MESSAGES = [{"role": "user", "content": "Cut me."}]
ENDINGS = {"\n": rb"\n\n", "\r\n": rb"\r\n\r\n", "\r": rb"\r\r"}


async def _fetch(emulator: Emulator, name: str, line_ending: str) -> tuple[dict[str, Any], bytes]:
    protocol = protocols.get(name)
    body = protocol.request_body("qwen-plus", MESSAGES, {"max_tokens": 4}, include_usage=True)
    headers = {**protocol.headers("sk-test"), **Fault(line_ending=line_ending).header()}  # type: ignore[arg-type]
    url = emulator.base_url_for(protocol) + protocol.path
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as r,
    ):
        assert r.status == 200
        return body, await r.read()


async def _fetch_all() -> dict[tuple[str, str], tuple[dict[str, Any], bytes]]:
    async with Emulator(EmulatorConfig(ttft_s=0, itl_s=0)) as emulator:
        return {
            (name, ending): await _fetch(emulator, name, ending)
            for name in protocols.NAMES
            for ending in ENDINGS
        }


@pytest.fixture(scope="module")
def streams() -> dict[tuple[str, str], tuple[dict[str, Any], bytes]]:
    """Each protocol's stream of one short answer, as the emulator sends it, per line ending."""
    return asyncio.run(_fetch_all())


def blocks(data: bytes, line_ending: str) -> list[bytes]:
    """The stream's events, each with its lines and the blank line that ends it."""
    ends = [match.end() for match in re.finditer(ENDINGS[line_ending], data)]
    return [data[a:b] for a, b in zip([0, *ends], ends, strict=False)]


def some_chunkings(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """Whole, byte by byte, and twenty random splits into up to ten reads (seeded)."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(15)
    for number in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 9)))
        points = [0, *cuts, len(data)]
        yield f"random#{number}", [data[a:b] for a, b in itertools.pairwise(points)]


def cut(fault: ProxyFault, pieces: list[bytes], reader: Any = None) -> list[Step]:
    cutter = FaultCutter(fault, reader)
    steps: list[Step] = []
    for piece in pieces:
        steps += cutter.feed(piece)
        if cutter.finished:
            break
    return steps + cutter.feed_eof()


def forwarded(steps: list[Step]) -> bytes:
    return b"".join(step for step in steps if isinstance(step, bytes))


def controls(steps: list[Step]) -> list[str]:
    return [step for step in steps if isinstance(step, str)]


# -- the vocabulary -------------------------------------------------------------------------------


def test_parse_fault_takes_the_emulators_names_and_the_selection() -> None:
    fault = parse_fault(
        '{"drop_after_events": 5, "fraction": 0.5, "seed": 3, "model": "qwen-plus"}'
    )
    assert fault == ProxyFault(drop_after_events=5, fraction=0.5, seed=3, model="qwen-plus")
    assert fault.cuts_at_events
    assert fault.describe() == (
        '{"drop_after_events":5,"model":"qwen-plus","fraction":0.5,"seed":3}'
    )
    assert not parse_fault('{"drop_after_bytes": 10}').cuts_at_events
    assert not parse_fault('{"stall_after_events": 0, "stall_s": 1}').cuts_at_events
    assert parse_fault('{"no_done": true}').cuts_at_events


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "the fault is not JSON"),
        ("[1]", "the fault must be a JSON object"),
        ('{"status": 200}', "status must be an HTTP error status (400-599), got 200"),
        ('{"drop_after_events": -1}', "drop_after_events must be at least 0, got -1"),
        ('{"stall_s": -1}', "stall_s must not be negative"),
        ('{"fraction": 1.5}', "fraction must be between 0 and 1, got 1.5"),
        ('{"whatever": 1}', "unknown field `whatever`"),
        ('{"line_ending": "\\r", "write_bytes": 3}', "cannot inject line_ending, write_bytes"),
    ],
)
def test_parse_fault_refuses_in_one_line(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=r".") as caught:
        parse_fault(text)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_picker_takes_the_model_then_a_seeded_fraction() -> None:
    assert FaultPicker(None).pick("qwen-plus") is None
    always = ProxyFault(no_done=True)
    assert FaultPicker(always).pick("anything") is always
    for_plus = ProxyFault(no_done=True, model="qwen-plus")
    picker = FaultPicker(for_plus)
    assert picker.pick("qwen-max") is None
    assert picker.pick("qwen-plus") is for_plus
    assert FaultPicker(ProxyFault(no_done=True, fraction=0.0)).pick("qwen-plus") is None

    half = ProxyFault(no_done=True, fraction=0.5, seed=7)
    draws = random.Random(7)
    expected = [draws.random() < 0.5 for _ in range(40)]
    for _ in range(2):  # the same seed, the same choices
        picker = FaultPicker(half)
        assert [picker.pick("qwen-plus") is half for _ in range(40)] == expected
    assert 5 < sum(expected) < 35


# -- cuts in real streams --------------------------------------------------------------------------


@pytest.mark.parametrize("name", protocols.NAMES)
@pytest.mark.parametrize("line_ending", list(ENDINGS))
def test_drop_after_events_forwards_exactly_those_events(
    streams: dict[tuple[str, str], tuple[dict[str, Any], bytes]], name: str, line_ending: str
) -> None:
    _, data = streams[(name, line_ending)]
    events = blocks(data, line_ending)
    assert len(events) > 4
    for count in (0, 1, 3):
        expected = b"".join(events[:count])
        for label, pieces in some_chunkings(data):
            steps = cut(ProxyFault(drop_after_events=count), pieces)
            assert forwarded(steps) == expected, (count, label)
            assert controls(steps) == ["drop"], (count, label)


def test_drop_after_events_under_every_chunking(
    streams: dict[tuple[str, str], tuple[dict[str, Any], bytes]],
) -> None:
    _, data = streams[("compatible", "\n")]
    expected = b"".join(blocks(data, "\n")[:2])
    for label, pieces in every_chunking(data):
        steps = cut(ProxyFault(drop_after_events=2), pieces)
        assert forwarded(steps) == expected, label


@pytest.mark.parametrize("name", protocols.NAMES)
@pytest.mark.parametrize("line_ending", list(ENDINGS))
def test_no_done_withholds_the_protocols_end_marker(
    streams: dict[tuple[str, str], tuple[dict[str, Any], bytes]], name: str, line_ending: str
) -> None:
    """The reader of each protocol names the end marker: the last event of these streams
    ([DONE], message_stop, response.completed, the native frame that finishes)."""
    body, data = streams[(name, line_ending)]
    protocol = protocols.get(name)
    expected = b"".join(blocks(data, line_ending)[:-1])
    for label, pieces in some_chunkings(data):
        steps = cut(ProxyFault(no_done=True), pieces, protocol.reader(body))
        assert forwarded(steps) == expected, label
        assert controls(steps) == ["end"], label
    decoder = ChatStreamDecoder(protocol=protocol, request=body)
    decoder.feed(expected)
    with pytest.raises(IncompleteStreamError):
        decoder.feed_eof()


def test_no_done_forwards_events_whole_and_comments_at_once() -> None:
    """Bytes of an event wait until it is whole; a keep-alive between events does not."""
    cutter = FaultCutter(ProxyFault(no_done=True), protocols.get("compatible").reader({}))
    assert cutter.feed(b": keep-alive\n\n") == [b": keep-alive\n\n"]
    assert cutter.feed(b'data: {"choices": []}') == []
    assert cutter.feed(b"\n\ndata: [DO") == [b'data: {"choices": []}\n\n']
    assert cutter.feed(b"NE]\n\n") == ["end"]
    assert cutter.finished


@pytest.mark.parametrize("name", protocols.NAMES)
def test_stall_after_events_pauses_at_that_boundary(
    streams: dict[tuple[str, str], tuple[dict[str, Any], bytes]], name: str
) -> None:
    _, data = streams[(name, "\r\n")]
    events = blocks(data, "\r\n")
    for label, pieces in some_chunkings(data):
        steps = cut(ProxyFault(stall_after_events=2, stall_s=1), pieces)
        assert forwarded(steps) == data, label
        assert controls(steps) == ["stall"], label
        before = steps[: steps.index("stall")]
        assert forwarded(before) == b"".join(events[:2]), label


def test_stall_before_the_first_byte_and_byte_cuts_need_no_parsing(
    streams: dict[tuple[str, str], tuple[dict[str, Any], bytes]],
) -> None:
    _, data = streams[("anthropic", "\n")]
    pieces = [data[:100], data[100:]]
    assert cut(ProxyFault(stall_after_events=0, stall_s=1), pieces) == ["stall", *pieces]
    for label, chunks in every_chunking(data):
        steps = cut(ProxyFault(drop_after_bytes=333), chunks)
        assert forwarded(steps) == data[:333], label
        assert controls(steps) == ["drop"], label
    assert cut(ProxyFault(drop_after_bytes=0), pieces) == ["drop"]
    assert cut(ProxyFault(drop_after_bytes=len(data) + 1), pieces) == pieces


def test_a_read_goes_whole_between_cuts(
    streams: dict[tuple[str, str], tuple[dict[str, Any], bytes]],
) -> None:
    _, data = streams[("compatible", "\n")]
    first, second = blocks(data, "\n")[0], b"".join(blocks(data, "\n")[1:])
    steps = cut(ProxyFault(stall_after_events=1, stall_s=1), [data])
    assert steps == [first, "stall", second]


def test_an_event_over_the_bound_turns_event_cuts_off() -> None:
    cutter = FaultCutter(ProxyFault(drop_after_events=5), max_event_bytes=64)
    huge = b"data: " + b"x" * 100 + b"\n\n"
    steps = cutter.feed(b"data: 1\n\n" + huge)
    assert forwarded(steps) == b"data: 1\n\n" + huge
    assert cutter.feed(b"data: 2\n\n") == [b"data: 2\n\n"]
    assert not cutter.finished
