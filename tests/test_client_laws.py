"""The client's laws under random server behaviour, against a scripted server on loopback.

Each hypothesis example scripts a server attempt by attempt: HTTP 429/5xx answers, streams
cut at any byte (as a clean end of the body or as a broken chunked encoding), ``[DONE]``
with and without a finish reason, a missing ``[DONE]``, in-band errors, usage chunks. The
server knows the one true answer; a continuation request (DashScope's partial mode) is
answered from where its assistant prefix ends. Whatever happens, the laws hold:

- ``complete`` implies the content equals the truth exactly;
- otherwise the raised error carries a partial whose content is a prefix of the truth;
- what the consumer was handed, joined, equals the final content: nothing lost or doubled;
- every continuation the client sends carries a prefix of the truth.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_sse.client import QwenClient
from qwen_sse.errors import QwenSSEError
from qwen_sse.retry import RetryPolicy
from tests.rawserver import RawRequest, frame, http_response, raw_server

KEY = "sk-test"
QUESTION = [{"role": "user", "content": "Tell me about streaming parsers"}]
TRUTH = "Streaming parsers read input in pieces; 流式解析器逐块读取输入，从不等待整个文档。"
PIECE_CHARS = 5


@dataclass(frozen=True)
class Refusal:
    """An HTTP error answer before any stream."""

    status: int
    retry_after: str | None


@dataclass(frozen=True)
class Stream:
    """A streamed answer of the remaining truth, spoiled in the ways its fields say."""

    finish: bool  # the last text chunk carries finish_reason "stop"
    usage: bool  # a usage chunk follows the last text chunk
    done: bool  # data: [DONE] ends the body
    cut_at: int | None  # the body stops after this many bytes
    broken: bool  # the cut breaks the chunked encoding instead of ending the body cleanly
    error_after: int | None  # an in-band error frame replaces the events from this one on
    pieces_sent: int | None  # only this many text pieces are sent (then no finish reason)


Behaviour = Refusal | Stream

_behaviours = st.one_of(
    st.builds(Refusal, st.sampled_from([429, 500, 503]), st.sampled_from([None, "0"])),
    st.builds(
        Stream,
        finish=st.booleans(),
        usage=st.booleans(),
        done=st.booleans(),
        cut_at=st.none() | st.integers(0, 2500),
        broken=st.booleans(),
        error_after=st.none() | st.integers(0, 20),
        pieces_sent=st.none() | st.integers(0, 12),
    ),
)

_WHOLE = Stream(
    finish=True,
    usage=True,
    done=True,
    cut_at=None,
    broken=False,
    error_after=None,
    pieces_sent=None,
)


def _prefix_of(request: RawRequest) -> str:
    """The assistant text a continuation request carries ("" for a first request)."""
    messages = request.json()["messages"]
    last = messages[-1]
    if last.get("role") == "assistant" and last.get("partial"):
        return str(last.get("content") or "")
    return ""


def _events(behaviour: Stream, remaining: str) -> list[str]:
    pieces = [remaining[i : i + PIECE_CHARS] for i in range(0, len(remaining), PIECE_CHARS)]
    # A server never sends a finish reason for an answer it stopped early (llama.cpp's
    # interrupted streams end with [DONE] and none).
    finishes = behaviour.finish and (
        behaviour.pieces_sent is None or behaviour.pieces_sent >= len(pieces)
    )
    if behaviour.pieces_sent is not None:
        pieces = pieces[: behaviour.pieces_sent]
    events = [frame([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    for number, piece in enumerate(pieces or [""]):
        last = number == max(0, len(pieces) - 1)
        finish = "stop" if last and finishes else None
        events.append(frame([{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]))
    if behaviour.usage:
        usage = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
        events.append(frame([], usage=usage))
    if behaviour.error_after is not None and behaviour.error_after < len(events):
        error = {"code": "InternalError", "message": "the model failed", "type": "server"}
        events = [*events[: behaviour.error_after], json.dumps({"error": error})]
    elif behaviour.done:
        events.append("[DONE]")
    return events


def _stream_response(behaviour: Stream, remaining: str) -> bytes:
    body = "".join(f"data: {event}\n\n" for event in _events(behaviour, remaining)).encode()
    head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: r-law\r\n"
    cut = len(body) if behaviour.cut_at is None else min(behaviour.cut_at, len(body))
    if behaviour.broken and behaviour.cut_at is not None:
        # A chunk that announces more than arrives: the connection breaks mid-body.
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + (
            f"{len(body):x}\r\n".encode() + body[:cut]
        )
    return (head + "connection: close\r\n\r\n").encode() + body[:cut]


@given(st.lists(_behaviours, max_size=5), st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_complete_is_exact_and_a_partial_is_a_prefix(script: list[Behaviour], resume: bool) -> None:
    async def no_sleep(delay_s: float) -> None:
        pass

    async def scenario() -> None:
        prefixes: list[str] = []

        async def handler(writer: asyncio.StreamWriter, n: int) -> None:
            prefix = _prefix_of(server.requests[n - 1])
            prefixes.append(prefix)
            behaviour = script[n - 1] if n <= len(script) else _WHOLE
            if isinstance(behaviour, Refusal):
                headers = ["x-request-id: r-refused"]
                if behaviour.retry_after is not None:
                    headers.append(f"retry-after: {behaviour.retry_after}")
                body = json.dumps({"error": {"code": "Throttling", "message": "slow down"}})
                status = f"{behaviour.status} Refused"
                writer.write(
                    http_response(
                        body.encode(),
                        status=status,
                        content_type="application/json",
                        headers=headers,
                    )
                )
            else:
                remaining = TRUTH[len(prefix) :] if TRUTH.startswith(prefix) else "!!"
                writer.write(_stream_response(behaviour, remaining))
            await writer.drain()

        policy = RetryPolicy(resume=resume, max_attempts=3, max_resumes=4)
        delivered: list[str] = []
        async with (
            raw_server(handler) as server,
            QwenClient(KEY, server.url, retry=policy, sleep=no_sleep) as qwen,
        ):
            stream = qwen.stream_chat(QUESTION)
            try:
                async with stream:
                    async for chunk in stream:
                        if chunk.choices:
                            delivered.append(chunk.choices[0].delta.content or "")
                outcome = stream.result
            except QwenSSEError as error:
                # Every call here starts, so every error carries what arrived before it.
                assert error.partial is not None, error
                outcome = error.partial
                assert not outcome.complete, error
        assert all(TRUTH.startswith(prefix) for prefix in prefixes), prefixes
        assert "".join(delivered) == outcome.content
        if outcome.complete:
            assert outcome.content == TRUTH
            assert outcome.finish_reason == "stop"
        else:
            assert TRUTH.startswith(outcome.content)

    asyncio.run(scenario())
