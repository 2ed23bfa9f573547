"""The completion rule end to end, over real loopback sockets: an answer is complete only when
every choice received its finish reason and the protocol's end marker arrived.

A scripted raw server (tests/rawserver.py) plays what the emulator never does: llama.cpp's
server ending an interrupted stream with ``data: [DONE]`` and no finish reason, a stream cut
after its finish reason but before ``[DONE]``, a native stream that never finishes. Each is
checked through the client (``chat``, ``stream_chat``, retry, resume), ``qwen-sse chat``,
``qwen-sse trace`` and the load generator.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import jsonschema
import pytest

from qwen_sse.bench.metrics import summarize
from qwen_sse.bench.runner import ShardPlan, Target, run_shard
from qwen_sse.bench.schedule import ClosedLoop
from qwen_sse.bench.schema import SUMMARY_SCHEMA
from qwen_sse.bench.workload import SyntheticWorkload
from qwen_sse.cli import main
from qwen_sse.client import QwenClient
from qwen_sse.errors import IncompleteStreamError
from qwen_sse.retry import NO_RETRIES, RetryPolicy
from tests.fakesleep import FakeSleep
from tests.rawserver import frame, http_response, raw_server, sse_body

KEY = "sk-test"
HELLO = [{"role": "user", "content": "hi"}]
ROLE = frame([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
USAGE = frame([], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
INTERRUPTED_MESSAGE = "stream ended with data: [DONE] but choice 0 has no finish_reason"


def text(content: str, finish_reason: str | None = None) -> str:
    return frame([{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}])


def response(body: bytes) -> bytes:
    # The raw server closes every connection after its answer: say so, or the client would
    # send its next request on a pooled connection the server has already closed.
    return http_response(body, headers=("x-request-id: r-ok", "connection: close"))


def answering(*responses: bytes) -> Callable[[asyncio.StreamWriter, int], Awaitable[None]]:
    """A handler that writes ``responses[n - 1]`` to the n-th connection."""

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(responses[n - 1])
        await writer.drain()

    return handler


# llama.cpp's server when another request interrupts this one: text, no finish reason, [DONE].
INTERRUPTED = response(sse_body([ROLE, text("half "), text("an answer")]))
# The same, interrupted before any text.
INTERRUPTED_EMPTY = response(sse_body([ROLE]))
WHOLE = response(sse_body([ROLE, text("whole", "stop")]))
# The finish reason and usage arrived, then the connection closed cleanly without [DONE].
CUT_BEFORE_DONE = response(sse_body([ROLE, text("all of it", "stop"), USAGE], done=False))


async def test_chat_raises_on_done_without_a_finish_reason() -> None:
    async with (
        raw_server(answering(INTERRUPTED)) as server,
        QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(HELLO)
    assert str(caught.value).startswith(INTERRUPTED_MESSAGE + " (4 events, ")
    partial = caught.value.partial
    assert partial is not None
    assert (partial.content, partial.finish_reason, partial.complete) == (
        "half an answer",
        None,
        False,
    )
    assert partial.request_id == "r-ok"


async def test_stream_chat_yields_the_text_then_raises_and_is_not_complete() -> None:
    received: list[str] = []
    async with (
        raw_server(answering(INTERRUPTED)) as server,
        QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen,
        qwen.stream_chat(HELLO) as stream,
    ):
        with pytest.raises(IncompleteStreamError) as caught:
            async for chunk in stream:
                received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "half an answer"
    assert stream.result.complete is False
    assert stream.result.content == "half an answer"
    assert caught.value.partial is not None
    assert caught.value.partial.complete is False


async def test_done_without_a_finish_reason_before_any_text_is_retried() -> None:
    sleep = FakeSleep()
    async with (
        raw_server(answering(INTERRUPTED_EMPTY, WHOLE)) as server,
        QwenClient(KEY, server.url, retry=RetryPolicy(max_attempts=2), sleep=sleep) as qwen,
    ):
        result = await qwen.chat(HELLO)
    assert (result.content, result.finish_reason, result.complete) == ("whole", "stop", True)
    assert result.attempts == 2
    assert len(server.requests) == 2
    assert len(sleep.delays) == 1


async def test_done_without_a_finish_reason_before_any_text_fails_without_retries() -> None:
    async with (
        raw_server(answering(INTERRUPTED_EMPTY)) as server,
        QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(HELLO)
    assert str(caught.value).startswith(INTERRUPTED_MESSAGE)
    assert caught.value.partial is not None
    assert (caught.value.partial.content, caught.value.partial.complete) == ("", False)


async def test_done_without_a_finish_reason_after_text_is_resumed() -> None:
    continuation = response(sse_body([ROLE, text("and the rest", "stop"), USAGE]))
    policy = RetryPolicy(max_attempts=1, resume=True)
    async with (
        raw_server(answering(INTERRUPTED, continuation)) as server,
        QwenClient(KEY, server.url, retry=policy, sleep=FakeSleep()) as qwen,
    ):
        result = await qwen.chat(HELLO)
    assert (result.content, result.finish_reason, result.complete) == (
        "half an answerand the rest",
        "stop",
        True,
    )
    assert result.resumes == 1
    assert server.requests[1].json()["messages"][-1] == {
        "role": "assistant",
        "content": "half an answer",
        "partial": True,
    }


async def test_done_without_a_finish_reason_in_a_read_of_its_own_is_resumed() -> None:
    # [DONE] comes only after the caller has seen the text: the read that carries it
    # completes no chunk, so the decoder raises at once instead of holding the error.
    text_seen = asyncio.Event()
    cut = INTERRUPTED.index(b"data: [DONE]")
    continuation = response(sse_body([ROLE, text(" rest", "stop")]))

    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(INTERRUPTED[:cut])
            await writer.drain()
            await text_seen.wait()
            writer.write(INTERRUPTED[cut:])
        else:
            writer.write(continuation)
        await writer.drain()

    received: list[str] = []
    policy = RetryPolicy(max_attempts=1, resume=True)
    async with (
        raw_server(handler) as server,
        QwenClient(KEY, server.url, retry=policy) as qwen,
        qwen.stream_chat(HELLO) as stream,
    ):
        async for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
            if "".join(received) == "half an answer":
                text_seen.set()
    assert "".join(received) == "half an answer rest"
    result = stream.result
    assert (result.content, result.finish_reason, result.complete) == (
        "half an answer rest",
        "stop",
        True,
    )
    assert (result.resumes, len(server.requests)) == (1, 2)


async def test_a_cut_after_the_finish_reason_but_before_done_is_not_complete() -> None:
    # With resume on, too: the answer is whole, only its end marker was lost, so it is not
    # continued (that would bill a request and could append to a finished answer).
    policy = RetryPolicy(max_attempts=1, resume=True)
    async with (
        raw_server(answering(CUT_BEFORE_DONE)) as server,
        QwenClient(KEY, server.url, retry=policy) as qwen,
    ):
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(HELLO)
    assert str(caught.value).startswith("stream ended without data: [DONE] after 3 events")
    partial = caught.value.partial
    assert partial is not None
    assert (partial.content, partial.finish_reason, partial.complete) == (
        "all of it",
        "stop",
        False,
    )
    assert partial.usage is not None
    assert partial.usage.total_tokens == 5
    assert len(server.requests) == 1


async def test_a_native_stream_that_never_finishes_is_incomplete() -> None:
    def native(content: str) -> str:
        body = {
            "output": {"choices": [{"message": {"content": content}, "finish_reason": "null"}]},
            "usage": {"input_tokens": 3, "output_tokens": 1},
            "request_id": "rid-native",
        }
        return f"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(body)}\n\n"

    body = (native("half") + native(" way")).encode()
    async with (
        raw_server(answering(response(body))) as server,
        QwenClient(KEY, server.url, protocol="native", retry=NO_RETRIES) as qwen,
    ):
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(HELLO)
    assert str(caught.value).startswith(
        "stream ended without a finish reason for every choice after 2 events"
    )
    assert caught.value.partial is not None
    assert (caught.value.partial.content, caught.value.partial.complete) == ("half way", False)


async def test_reasoning_text_is_the_first_token() -> None:
    reasoning = frame([{"index": 0, "delta": {"reasoning_content": "think"}}])
    answer = response(sse_body([ROLE, reasoning, reasoning, text("done", "stop")]))
    async with (
        raw_server(answering(answer)) as server,
        QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        result = await qwen.chat(HELLO)
    assert result.reasoning_content == "thinkthink"
    # Every text-bearing chunk is timed, reasoning included, and the first starts TTFT.
    assert len(result.timing.token_times_s) == 3
    assert result.timing.ttft_s == result.timing.token_times_s[0]


# --- the command line and the load generator ---


async def chat_against(
    answer: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``qwen-sse chat`` (one attempt) against a server that sends ``answer``: its exit
    status, stdout and stderr."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    async with raw_server(answering(answer)) as server:
        args = ["chat", "--base-url", server.url, "--max-attempts", "1", "hi"]
        status = await asyncio.to_thread(main, args)
    out, err = capsys.readouterr()
    return status, out, err


async def test_qwen_sse_chat_exits_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = await chat_against(INTERRUPTED_EMPTY, monkeypatch, capsys)
    assert status == 1
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"qwen-sse: error: {INTERRUPTED_MESSAGE} (2 events, ")


async def test_qwen_sse_chat_says_the_text_shown_is_incomplete(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = await chat_against(INTERRUPTED, monkeypatch, capsys)
    assert status == 1
    assert out == "half an answer"
    error_line, note = err.splitlines()
    assert error_line.startswith(f"qwen-sse: error: {INTERRUPTED_MESSAGE} (4 events, ")
    assert note == "qwen-sse: the answer above is incomplete (14 characters received)"


async def test_qwen_sse_trace_flags_done_without_a_finish_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    async with raw_server(answering(INTERRUPTED)) as server:
        args = ["trace", "--base-url", server.url, "--max-attempts", "1", "hi"]
        status = await asyncio.to_thread(main, args)
    out, err = capsys.readouterr()
    assert status == 1
    assert (
        "    !! end-without-finish: the answer is truncated: stream ended with data: [DONE] but"
        in out
    )
    assert "complete: no" in out
    assert "anomalies: end-without-finish\n" in out
    assert f"qwen-sse: error: {INTERRUPTED_MESSAGE}" in err


async def test_bench_counts_a_done_without_a_finish_reason_as_failed_and_says_why() -> None:
    plan = ShardPlan(
        shape=ClosedLoop(concurrency=1),
        slots=[0],
        indices=[0, 1, 2],
        workload=SyntheticWorkload(input_tokens=20, output_tokens=3),
    )
    responses = (INTERRUPTED_EMPTY, WHOLE, INTERRUPTED)
    async with raw_server(answering(*responses)) as server:
        target = Target(base_url=server.url, model="qwen-plus", api_key=KEY)
        shard = await run_shard(plan, target)
    empty, whole, partial = sorted(shard.records, key=lambda record: record.index)
    assert (whole.ok, whole.finish_reason) == (True, "stop")
    for record in (empty, partial):
        assert (record.ok, record.error_type) == (False, "IncompleteStreamError")
        assert record.error is not None
        assert record.error.startswith(INTERRUPTED_MESSAGE)
    assert empty.output_tokens == 0
    assert partial.ttft_s is not None  # what arrived before the cut is measured
    summary = summarize(shard.records, percentiles=[50])
    assert (summary["completed"], summary["failed"]) == (1, 2)
    assert summary["errors"] == {"IncompleteStreamError": 2}
    assert summary["error_examples"]["IncompleteStreamError"].startswith(INTERRUPTED_MESSAGE)


async def test_qwen_sse_bench_reports_why_such_answers_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    summary_path = tmp_path / "summary.json"
    async with raw_server(answering(INTERRUPTED, WHOLE, INTERRUPTED_EMPTY)) as server:
        args = [
            "bench",
            "--base-url",
            server.url,
            "--concurrency",
            "1",
            "--requests",
            "3",
            "--input-tokens",
            "16",
            "--output-tokens",
            "4",
            "--quiet",
            "--json",
            str(summary_path),
        ]
        status = await asyncio.to_thread(main, args)
    out, err = capsys.readouterr()
    assert status == 0, err
    lines = out.splitlines()
    assert f"{'Successful requests:':<40} 1" in lines
    assert f"{'Failed requests:':<40} 2" in lines
    row = lines.index(f"{'IncompleteStreamError:':<40} 2")
    # Two messages (their sizes differ), each with its count.
    messages = lines[row + 1 : row + 3]
    assert all(line.startswith(f"  1 × {INTERRUPTED_MESSAGE} (") for line in messages)
    assert any("(4 events, " in line for line in messages)
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["errors"] == {"IncompleteStreamError": 2}
    assert summary["error_examples"]["IncompleteStreamError"].startswith(INTERRUPTED_MESSAGE)


async def test_a_requested_choice_that_never_arrived_is_a_truncated_answer() -> None:
    # n=2 asked for two choices; a stream that finishes choice 0 and ends is not complete,
    # whichever protocol: natively, choice 0 finishing first must not end the stream.
    only_first = response(sse_body([ROLE, text("one", "stop")]))
    async with (
        raw_server(answering(only_first)) as server,
        QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen,
    ):
        with pytest.raises(IncompleteStreamError) as caught:
            await qwen.chat(HELLO, n=2)
    assert str(caught.value).startswith(
        "stream ended with data: [DONE] but choice 1 has no finish_reason"
    )
    assert caught.value.partial is not None
    assert caught.value.partial.content == "one"
    assert not caught.value.partial.complete

    def native(index: int, content: str) -> str:
        message = {"role": "assistant", "content": content}
        choice = {"index": index, "message": message, "finish_reason": "stop"}
        return json.dumps({"output": {"choices": [choice]}, "request_id": "r-1"})

    sequential = "".join(
        f"id:{n}\nevent:result\ndata:{body}\n\n"
        for n, body in enumerate([native(0, "one"), native(1, "two")], 1)
    ).encode()
    async with (
        raw_server(answering(response(sequential))) as server,
        QwenClient(KEY, server.url, protocol="native", retry=NO_RETRIES) as qwen,
    ):
        result = await qwen.chat(HELLO, n=2)
    assert result.complete
    assert [choice.content for choice in result.choices] == ["one", "two"]
