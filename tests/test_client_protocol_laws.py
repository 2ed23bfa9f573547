"""The client's laws under random faults, in every wire protocol, against the emulator.

Each hypothesis example asks one question (plain, with thinking, calling a tool, or under
an output bound; in English or Chinese; answers of 1 to 24 pieces) in one protocol, with
retries and resume on and a fake retry clock, while the emulator spoils the call's
requests one by one with random :class:`~qwen_sse.emulator.Fault` values: HTTP 429/5xx
refusals, connections dropped after N events or N bytes, in-band errors, a missing end
marker, a malformed frame, keep-alive comments mid-stream, CRLF or CR line endings, tiny
writes, an event over the client's size bound. The emulator's answer is a pure function of
the request (:func:`~qwen_sse.emulator.emulated_answer`), so the truth is known; a
continuation is answered with the truth's remainder. Whatever happens, in every protocol:

- ``complete`` implies content, reasoning, tool calls and finish reason equal the truth,
  and that the emulator sent the answer's end marker; a response the emulator finished
  without a frame the client must refuse is a complete answer;
- otherwise the raised error carries a partial that is never complete and whose content
  and reasoning are prefixes of the truth's (and its tool calls of the truth's calls);
- what the consumer was handed, joined, equals the final content, reasoning and tool-call
  arguments: nothing lost or doubled, retries and resumes included;
- ``attempts`` counts every request the emulator received;
- a protocol without a continuation never sends one (every request is the first one
  again); in compatible and native mode every continuation carries, as its partial
  assistant message, exactly the content handed to the consumer before it was sent: a
  prefix of the truth, never empty.

A huge event is always over the client's ``max_event_bytes``: one under it would be
delivered, and its ``x`` padding is not part of any answer. The keep-alive comments come
from a real pause of the emulator's (2 ms): no fake clock reaches the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import pytest
from hypothesis import event, given, settings, target
from hypothesis import strategies as st

from qwen_sse import protocols
from qwen_sse.chat import ChatResult
from qwen_sse.client import QwenClient
from qwen_sse.emulator import (
    EmulatedAnswer,
    Emulator,
    EmulatorConfig,
    Fault,
    RecordedRequest,
    emulated_answer,
)
from qwen_sse.errors import QwenSSEError
from qwen_sse.retry import RetryPolicy
from tests.fakesleep import FakeSleep

KEY = "sk-test"
MODEL = "qwen-plus"
MAX_EVENT_BYTES = 8 * 1024
RESUMABLE = frozenset({"compatible", "native"})
POLICY = RetryPolicy(resume=True, max_attempts=3, max_resumes=3)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
QUESTIONS = (
    "Tell me about streaming parsers.",
    "请介绍一下流式解析器。",
    "What is the weather in Zürich? Call get_weather.",
)
# The parameters of a question: none, thinking, a tool the answer may call, or an output
# bound that may cut the answer (finish reason "length").
PARAMS: tuple[dict[str, Any], ...] = (
    {},
    {"enable_thinking": True},
    {"tools": [WEATHER_TOOL]},
    {"max_tokens": 7},
)

_refusals = st.builds(
    Fault,
    status=st.sampled_from([429, 500, 503]),
    retry_after=st.sampled_from([None, "0"]),
)
_line_endings = st.sampled_from(["\n", "\r\n", "\r"])
_write_bytes = st.none() | st.integers(1, 64)
# How a stream goes wrong: each spoiler sets one Fault field. Cuts are what a resumable
# protocol continues; the others end the call, are retried before any output, or (a pause
# with keep-alive comments) must change nothing.
_CUTS: dict[str, st.SearchStrategy[Any]] = {
    "drop_after_events": st.integers(0, 64),
    "drop_after_bytes": st.integers(0, 16000),
}
_SPOILERS: dict[str, st.SearchStrategy[Any]] = {
    **_CUTS,
    "error_after_events": st.integers(0, 64),
    "no_done": st.just(True),
    "malformed_after_events": st.integers(0, 64),
    "huge_event_bytes": st.integers(MAX_EVENT_BYTES + 1, 2 * MAX_EVENT_BYTES),
    "stall_after_events": st.integers(0, 64),
}


def _streams(
    spoilers: Mapping[str, st.SearchStrategy[Any]], *, at_least: int
) -> st.SearchStrategy[Fault]:
    """200 streams spoiled in ``at_least`` to two of the ways of ``spoilers``, in any line
    ending, written in pieces of any size."""

    @st.composite
    def stream(draw: st.DrawFn) -> Fault:
        names = draw(
            st.lists(st.sampled_from(sorted(spoilers)), min_size=at_least, max_size=2, unique=True)
        )
        fields: dict[str, Any] = {name: draw(spoilers[name]) for name in names}
        if "stall_after_events" in fields:
            fields.update(stall_s=0.002, keepalive_every_s=0.001)
        fields.update(line_ending=draw(_line_endings), write_bytes=draw(_write_bytes))
        return Fault(**fields)

    return stream()


_any_faults = st.lists(_refusals | _streams(_SPOILERS, at_least=0), max_size=8)
_cuts_and_refusals = st.lists(_refusals | _streams(_CUTS, at_least=1), max_size=8)
_questions = st.sampled_from(QUESTIONS)
_answer_tokens = st.integers(1, 24)
_params = st.sampled_from(PARAMS)


def _truth(question: str, params: Mapping[str, Any], answer_tokens: int) -> EmulatedAnswer:
    """What the emulator answers the question with, in every protocol."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], **params}
    return emulated_answer(body, answer_tokens=answer_tokens)


def _calls(result: ChatResult) -> list[tuple[str, str]]:
    return [(call.function.name, call.function.arguments) for call in result.tool_calls]


def _check_partial(partial: ChatResult, truth: EmulatedAnswer) -> None:
    assert not partial.complete
    assert truth.content.startswith(partial.content), (partial.content, truth.content)
    assert truth.reasoning.startswith(partial.reasoning_content)
    calls = _calls(partial)
    assert len(calls) <= len(truth.tool_calls)
    for (name, arguments), (true_name, true_arguments) in zip(
        calls, truth.tool_calls, strict=False
    ):
        assert name in ("", true_name)
        assert true_arguments.startswith(arguments)


def _partial_prefix(messages: Sequence[Any], first: Sequence[Any]) -> str | None:
    """The partial assistant text a continuation of ``first`` carries, None if ``messages``
    are not ``first`` continued by one."""
    if len(messages) != len(first) + 1 or list(messages[:-1]) != list(first):
        return None
    last = messages[-1]
    if (
        not isinstance(last, dict)
        or last.get("role") != "assistant"
        or last.get("partial") is not True
    ):
        return None
    content = last.get("content")
    return content if isinstance(content, str) else None


def _check_requests(protocol: str, call: _Call, truth: EmulatedAnswer) -> None:
    """Every request is the first again (a retry) or, where the protocol can resume, a
    continuation carrying exactly the content the consumer had been handed before it was
    sent: a prefix of the truth, never empty."""
    wire = protocols.get(protocol)
    first = call.bodies[0]
    for number, body in enumerate(call.bodies):
        if body == first:
            continue
        assert protocol in RESUMABLE, f"{protocol} sent a request that is not the first: {body}"
        prefix = _partial_prefix(wire.facts(body).messages, wire.facts(first).messages)
        assert prefix is not None, body
        assert prefix, "a continuation of nothing"
        assert truth.content.startswith(prefix), (prefix, truth.content)
        assert prefix == call.content_before(number)


class _Call(NamedTuple):
    """How one call ended: the final result, or the raised error's partial (``raised``);
    what the consumer was handed: each content delta with the number of requests sent
    when it arrived, the reasoning and each tool call's arguments, joined; the body of
    every request the emulator received, and what it did with the last one.
    """

    outcome: ChatResult
    raised: bool
    contents: list[tuple[int, str]]
    reasoning: str
    arguments: list[str]
    bodies: list[Any]
    last: RecordedRequest

    @property
    def content(self) -> str:
        return "".join(text for _, text in self.contents)

    def content_before(self, request: int) -> str:
        """The content handed to the consumer before request ``request`` (from 0) was sent."""
        return "".join(text for sent, text in self.contents if sent <= request)


class _Example(NamedTuple):
    """One call: its protocol, the faults of its requests, the question and its parameters,
    and the length of the emulator's answers."""

    protocol: str
    faults: list[Fault]
    question: str
    params: dict[str, Any]
    answer_tokens: int


async def _ask(example: _Example) -> _Call:
    protocol = example.protocol
    config = EmulatorConfig(api_key=KEY, ttft_s=0, itl_s=0, answer_tokens=example.answer_tokens)
    contents: list[tuple[int, str]] = []
    reasoning: list[str] = []
    arguments: dict[int, list[str]] = {}
    raised = False
    async with Emulator(config) as emulator:
        emulator.schedule(*example.faults)
        async with QwenClient(
            KEY,
            emulator.base_url_for(protocol),
            protocol=protocol,
            retry=POLICY,
            sleep=FakeSleep(),
            max_event_bytes=MAX_EVENT_BYTES,
        ) as client:
            question = [{"role": "user", "content": example.question}]
            stream = client.stream_chat(question, MODEL, **example.params)
            try:
                async with stream:
                    async for chunk in stream:
                        for choice in chunk.choices:
                            delta = choice.delta
                            contents.append((len(emulator.requests), delta.content or ""))
                            reasoning.append(delta.reasoning_content or "")
                            for call in delta.tool_calls or ():
                                fragment = call.function.arguments if call.function else None
                                arguments.setdefault(call.index, []).append(fragment or "")
                outcome = stream.result
            except QwenSSEError as error:
                raised = True
                # Every call here reaches the server, so every error carries a partial.
                assert error.partial is not None, repr(error)
                outcome = error.partial
        bodies = [request.body for request in emulator.requests]
        last = emulator.requests[-1]
    return _Call(
        outcome,
        raised,
        contents,
        "".join(reasoning),
        ["".join(arguments[index]) for index in sorted(arguments)],
        bodies,
        last,
    )


def _check_laws(example: _Example) -> None:
    protocol = example.protocol
    truth = _truth(example.question, example.params, example.answer_tokens)
    call = asyncio.run(_ask(example))
    outcome = call.outcome
    event("complete" if outcome.complete else "raised")
    event(f"resumes: {outcome.resumes}")
    # Steer the search towards long chains of retries and resumes.
    target(float(outcome.attempts + outcome.resumes))
    assert call.content == outcome.content
    assert call.reasoning == outcome.reasoning_content
    assert call.arguments == [arguments for _, arguments in _calls(outcome)]
    # A complete answer is one whose end marker the emulator sent (a drop after exactly
    # every byte of the body counts); a response the emulator finished is a complete
    # answer, unless it carried a frame the client must refuse.
    fault = call.last.fault or Fault()
    if outcome.complete:
        assert call.last.outcome in ("completed", "dropped"), (call.last.outcome, fault)
    elif fault.malformed_after_events is None and fault.huge_event_bytes is None:
        assert call.last.outcome != "completed", fault
    if outcome.complete:
        assert not call.raised
        assert outcome.content == truth.content
        assert outcome.reasoning_content == truth.reasoning
        assert _calls(outcome) == list(truth.tool_calls)
        assert outcome.finish_reason == truth.finish_reason
    else:
        assert call.raised, "an incomplete answer was returned without an error"
        _check_partial(outcome, truth)
    _check_requests(protocol, call, truth)
    assert outcome.attempts == len(call.bodies)  # every request the emulator received
    if protocol not in RESUMABLE:
        assert outcome.resumes == 0


@pytest.mark.parametrize("protocol", protocols.NAMES)
@given(faults=_any_faults, question=_questions, params=_params, answer_tokens=_answer_tokens)
@settings(max_examples=100, deadline=None)
def test_every_protocol_keeps_the_laws_under_random_faults(
    protocol: str, faults: list[Fault], question: str, params: dict[str, Any], answer_tokens: int
) -> None:
    _check_laws(_Example(protocol, faults, question, params, answer_tokens))


@pytest.mark.parametrize("protocol", protocols.NAMES)
@given(faults=_cuts_and_refusals, question=_questions, params=_params, answer_tokens=_answer_tokens)
@settings(max_examples=100, deadline=None)
def test_every_protocol_keeps_the_laws_through_cuts_retries_and_resumes(
    protocol: str, faults: list[Fault], question: str, params: dict[str, Any], answer_tokens: int
) -> None:
    """Only refusals and cut connections: the faults a call survives by retrying and,
    where the protocol can, resuming, so that long chains of both are exercised."""
    _check_laws(_Example(protocol, faults, question, params, answer_tokens))
