"""The client against a real third-party server: llama.cpp's, through llama-cpp-python.

The emulator was written with the client, so the two can agree on something wrong; this
suite checks ``chat``, ``stream_chat``, ``bench`` and ``trace`` against a server nobody here
wrote, loading the tiny random-weight model of ``tiny_model.py``. Run it with
``pytest -m interop`` (the main suite leaves it out).

What the server does, observed with llama-cpp-python 0.3.36 (the bytes are in the docstrings
of the tests that depend on them):

* a streamed answer is ``data: {json}`` frames, one token each, then ``data: [DONE]``; no
  usage chunk (``stream_options`` is ignored);
* when another request arrives during a stream (``interrupt_requests``, on by default), it
  sends ``data: [DONE]`` with no finish reason on any chunk and closes the connection
  without the chunked body's last chunk;
* a prompt longer than the context, like any failure inside the model call, is answered
  ``200 text/event-stream`` with an empty (properly terminated) chunked body; uvicorn then
  closes that keep-alive connection a few milliseconds later and drops, unanswered, a
  request already sent on it (the client sees ``Server disconnected`` or a reset). Each
  test therefore uses a client (a connection pool) of its own;
* a malformed body field is a 500 with ``{"error": {"message": ...}}``, the message spanning
  several lines (pydantic's text and a traceback excerpt);
* a wrong key is a 401 with ``{"detail": "Invalid API key"}``;
* a malformed ``grammar`` kills the server process (llama.cpp's grammar parser gives up
  after the 200 was sent), so no test sends one.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from qwen_sse import QwenClient
from qwen_sse.chat import ChatResult
from qwen_sse.cli import main
from qwen_sse.errors import (
    AuthenticationError,
    IncompleteStreamError,
    ServerError,
    StreamInterruptedError,
)
from qwen_sse.retry import NO_RETRIES
from tests.interop.conftest import API_KEY, MODEL, LlamaServer

pytestmark = pytest.mark.interop

HELLO = [{"role": "user", "content": "hello world"}]
ANSWER_GRAMMAR = 'root ::= "alpha beta gamma delta"'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris"]}},
            "required": ["city"],
        },
    },
}
# A prompt of about 3 tokens a character pair above the context: 6,000 tokens against 2,048.
OVERSIZED = [{"role": "user", "content": "zq" * 3000}]


def client_for(server: LlamaServer, api_key: str = API_KEY) -> QwenClient:
    return QwenClient(api_key=api_key, base_url=server.url, model=MODEL, retry=NO_RETRIES)


async def stream_text(client: QwenClient, **params: Any) -> tuple[list[str], ChatResult]:
    """Stream ``HELLO`` (or ``params["messages"]``); the content deltas and the result."""
    messages = params.pop("messages", HELLO)
    deltas: list[str] = []
    async with client.stream_chat(messages, **params) as stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
    return deltas, stream.result


# -- answers -------------------------------------------------------------------------------


async def test_a_streamed_answer_is_its_deltas_joined_and_ends_at_max_tokens(
    llama_server: LlamaServer,
) -> None:
    async with client_for(llama_server) as client:
        deltas, result = await stream_text(client, max_tokens=24, seed=7)
        again = await client.chat(HELLO, max_tokens=24, seed=7)
    assert result.complete
    assert result.finish_reason == "length"
    assert result.content == "".join(deltas)
    # A chunk a token, bar the few llama-cpp-python holds back while they could begin a stop
    # string (its chat template stops at "<|im_end|>").
    assert len(deltas) >= 12
    assert result.timing.ttft_s is not None
    assert re.fullmatch("[0-9a-f]{32}", result.request_id)  # uvicorn's x-request-id
    # The same seed gives the same answer, whichever way it is read.
    assert again.complete
    assert again.content == result.content
    assert again.finish_reason == "length"


async def test_a_grammar_bound_answer_ends_with_stop(llama_server: LlamaServer) -> None:
    async with client_for(llama_server) as client:
        deltas, result = await stream_text(client, max_tokens=60, grammar=ANSWER_GRAMMAR)
    assert result.complete
    assert result.content == "alpha beta gamma delta"
    assert "".join(deltas) == result.content
    assert result.finish_reason == "stop"


async def test_a_stop_sequence_cuts_the_answer_before_it(llama_server: LlamaServer) -> None:
    async with client_for(llama_server) as client:
        deltas, result = await stream_text(
            client, max_tokens=60, grammar=ANSWER_GRAMMAR, stop=[" gamma"]
        )
    assert result.complete
    assert result.content == "alpha beta"
    assert "".join(deltas) == "alpha beta"
    assert result.finish_reason == "stop"


async def test_a_forced_tool_call_is_joined_from_its_argument_pieces(
    llama_server: LlamaServer,
) -> None:
    """llama-cpp-python forces the call with a grammar built from the tool's JSON schema and
    streams the arguments a token at a time; every piece repeats the call's id and name (and
    the legacy ``function_call``), so joining names or ids would corrupt them."""
    async with client_for(llama_server) as client:
        _, result = await stream_text(
            client,
            max_tokens=60,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    assert result.complete
    assert result.finish_reason == "tool_calls"
    assert result.content == ""
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call.index == 0
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.id.startswith("call__0_get_weather_")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


# -- broken promises off the happy path ---------------------------------------------------


async def test_an_interrupted_stream_is_incomplete_not_complete(
    llama_server: LlamaServer,
) -> None:
    """A second request makes the server end the first stream early. Its wire (captured with
    a raw socket) ends, after the role chunk and none, one or a few tokens::

        data: {..."delta": {"content": "#"}, "logprobs": null, "finish_reason": null}]}\\n\\n\\r\\n
        e\\r\\ndata: [DONE]\\n\\n\\r\\n            <- then the connection closes, no 0\\r\\n\\r\\n

    No chunk carries a finish reason, so the answer is not complete: the client raises
    ``IncompleteStreamError`` carrying exactly the text that arrived.

    The first request asks for 1,500 tokens (seconds of work for the server); the second is
    sent as soon as the first token arrives, so it always lands while the first is running.
    """
    deltas: list[str] = []
    async with client_for(llama_server) as client:
        second: asyncio.Task[ChatResult] | None = None
        async with client.stream_chat(HELLO, max_tokens=1500, seed=11) as stream:
            with pytest.raises(IncompleteStreamError) as raised:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        deltas.append(chunk.choices[0].delta.content)
                        if second is None:
                            second = asyncio.create_task(client.chat(HELLO, max_tokens=4))
        assert second is not None
        second_result = await second
    partial = raised.value.partial
    assert partial is not None
    assert not partial.complete
    assert partial.finish_reason is None
    assert partial.content == "".join(deltas)
    assert deltas
    assert second_result.complete
    assert second_result.finish_reason == "length"


async def test_a_prompt_over_the_context_gets_an_empty_200_which_is_not_an_answer(
    llama_server: LlamaServer,
) -> None:
    """The server checks the prompt's length only after it started the event stream; the
    whole answer is (status line, headers, then the chunked body's last chunk at once)::

        HTTP/1.1 200 OK ... content-type: text/event-stream; charset=utf-8
        ... Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n

    A cleanly ended body without ``[DONE]`` is an incomplete stream, not a broken
    connection and never an (empty) answer."""
    async with client_for(llama_server) as client:
        with pytest.raises(IncompleteStreamError) as raised:
            await client.chat(OVERSIZED, max_tokens=8)
    assert not isinstance(raised.value, StreamInterruptedError)
    assert "[DONE]" in str(raised.value)
    assert "\n" not in str(raised.value)
    partial = raised.value.partial
    assert partial is not None
    assert not partial.complete
    assert partial.content == ""
    assert partial.timing.events == 0


async def test_a_malformed_parameter_is_a_500_with_the_servers_message(
    llama_server: LlamaServer,
) -> None:
    """``max_tokens: "many"``: llama-cpp-python's error handler turns pydantic's validation
    error into ``500 {"error": {"message": "1 validation error:\\n  {...}\\n\\n  File ...",
    "type": "internal_server_error", ...}}``."""
    async with client_for(llama_server) as client:
        with pytest.raises(ServerError) as raised:
            await client.chat(HELLO, max_tokens="many")
    error = raised.value
    assert error.status == 500
    assert "Input should be a valid integer" in str(error)
    assert "\n" not in str(error)
    assert "Input should be a valid integer" in error.body


async def test_a_wrong_key_is_a_401_with_the_servers_detail(llama_server: LlamaServer) -> None:
    """``401 {"detail":"Invalid API key"}``, FastAPI's error body."""
    wrong_key = "sk-test-wrong-0123456789"
    async with client_for(llama_server, api_key=wrong_key) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.chat(HELLO, max_tokens=4)
    error = raised.value
    assert error.status == 401
    assert str(error).startswith("HTTP 401")
    assert "Invalid API key" in str(error)
    assert wrong_key not in str(error)
    assert wrong_key not in repr(error)


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def cli_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWEN_API_KEY", raising=False)
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)


def endpoint(server: LlamaServer) -> list[str]:
    return ["--base-url", server.url, "--model", MODEL, "--max-attempts", "1"]


@pytest.mark.usefixtures("cli_key")
def test_cli_chat_prints_the_answer(
    llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["chat", *endpoint(llama_server), "--param", f"grammar={json.dumps(ANSWER_GRAMMAR)}"]
    assert main([*args, "hi"]) == 0
    assert capsys.readouterr().out.strip() == "alpha beta gamma delta"


@pytest.mark.usefixtures("cli_key")
def test_cli_chat_fails_on_the_empty_200(
    llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", *endpoint(llama_server), "--max-tokens", "4", "zq" * 3000]) == 1
    err = capsys.readouterr().err
    assert "[DONE]" in err


@pytest.mark.usefixtures("cli_key")
def test_cli_trace_shows_a_clean_stream(
    llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", *endpoint(llama_server), "--max-tokens", "6", "hi"]) == 0
    out = capsys.readouterr().out
    assert "< HTTP 200" in out
    assert "  > Authorization: Bearer ***" in out
    assert API_KEY not in out
    assert "data: [DONE]" in out
    assert "anomalies: none" in out


@pytest.mark.usefixtures("cli_key")
def test_cli_trace_flags_the_empty_200(
    llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", *endpoint(llama_server), "--max-tokens", "4", "zq" * 3000]) == 1
    out = capsys.readouterr().out
    assert "< HTTP 200" in out
    assert "!! missing-end:" in out


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]


@pytest.mark.usefixtures("cli_key")
def test_cli_bench_one_at_a_time_completes_every_request(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    summary, records = tmp_path / "summary.json", tmp_path / "requests.jsonl"
    args = ["bench", *endpoint(llama_server), "--concurrency", "1", "--requests", "3"]
    args += ["--input-tokens", "16", "--output-tokens", "8", "--quiet"]
    assert main([*args, "--json", str(summary), "--jsonl", str(records)]) == 0
    figures = json.loads(summary.read_text("utf-8"))
    assert figures["completed"] == 3
    assert figures["failed"] == 0
    rows = read_records(records)
    assert [row["ok"] for row in rows] == [True, True, True]
    assert [row["finish_reason"] for row in rows] == ["length", "length", "length"]
    assert all(row["output_tokens"] > 0 for row in rows)


@pytest.mark.usefixtures("cli_key")
def test_cli_bench_never_counts_an_interrupted_stream_as_a_success(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    """Two requests at a time: the server interrupts a stream whenever the other request
    arrives, so some answers end with ``[DONE]`` and no finish reason. Whichever those are,
    every success has its finish reason and every other request failed as incomplete."""
    summary, records = tmp_path / "summary.json", tmp_path / "requests.jsonl"
    args = ["bench", *endpoint(llama_server), "--concurrency", "2", "--requests", "6"]
    args += ["--input-tokens", "16", "--output-tokens", "64", "--quiet"]
    main([*args, "--json", str(summary), "--jsonl", str(records)])
    figures = json.loads(summary.read_text("utf-8"))
    rows = read_records(records)
    assert len(rows) == 6
    assert figures["completed"] + figures["failed"] == 6
    assert figures["completed"] == sum(row["ok"] for row in rows)
    for row in rows:
        if row["ok"]:
            assert row["finish_reason"] == "length", row
        else:
            assert row["error_type"] == "IncompleteStreamError", row
            assert row["finish_reason"] is None, row
