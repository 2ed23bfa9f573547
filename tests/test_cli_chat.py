"""Tests of ``qwen-sse chat``: streaming to the terminal, JSON lines, and error lines."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from qwen_sse import protocols
from qwen_sse.chunks import (
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    DeltaChoice,
)
from qwen_sse.cli import main
from qwen_sse.cli.chat import AnswerPrinter
from qwen_sse.emulator import FAULT_HEADER, Fault, emulated_answer
from tests.forwardproxy import forward_proxy
from tests.rawserver import frame, http_response, raw_server, sse_answer, sse_body
from tests.served import served


def mock_answer(prompt: str, **params: object) -> str:
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": prompt}], **params}
    return emulated_answer(body).content


def test_mock_chat_streams_the_answer_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "你好"]) == 0
    out, err = capsys.readouterr()
    assert out == mock_answer("你好") + "\n"
    summary = err.strip().splitlines()[-1]
    assert "prompt +" in summary
    assert "first token" in summary
    assert "tokens/s" in summary


def test_thinking_is_shown_apart_from_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--thinking", "hello"]) == 0
    out, _ = capsys.readouterr()
    answer = emulated_answer(
        {
            "model": "qwen-plus",
            "messages": [{"role": "user", "content": "hello"}],
            "enable_thinking": True,
        }
    )
    assert out == f"[thinking] {answer.reasoning}\n\n{answer.content}\n"


def test_json_lines_are_wire_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--json", "--param", "top_k=3", "hi"]) == 0
    chunks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text == mock_answer("hi")


def test_http_error_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--model", "qwen-nonexistent", "hi"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("qwen-sse: error: HTTP 404 model_not_found:")
    assert "request id" in line


def test_missing_key_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("QWEN_API_KEY", raising=False)
    assert main(["chat", "hi"]) == 2
    assert "DASHSCOPE_API_KEY" in capsys.readouterr().err


SERVED_KEY = "sk-test-chat-0123456789abcdef"


@pytest.mark.parametrize("protocol", protocols.NAMES)
def test_two_environment_variables_point_chat_at_a_served_emulator(
    protocol: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with served(SERVED_KEY) as base_url:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", SERVED_KEY)
        assert main(["chat", "--protocol", protocol, "你好"]) == 0
    out, err = capsys.readouterr()
    assert out == mock_answer("你好") + "\n"
    assert SERVED_KEY not in err


def test_the_key_from_the_variable_api_key_env_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-not-this-one")
    monkeypatch.setenv("OPENAI_API_KEY", SERVED_KEY)
    with served(SERVED_KEY) as base_url:
        assert main(["chat", "--base-url", base_url, "hi"]) == 1
        assert "HTTP 401" in capsys.readouterr().err
        args = ["chat", "--base-url", base_url, "--api-key-env", "OPENAI_API_KEY", "hi"]
        assert main(args) == 0
    assert capsys.readouterr().out == mock_answer("hi") + "\n"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["chat", "--api-key-env", "OPENAI_API_KEY", "hi"]) == 2
    assert capsys.readouterr().err == (
        "qwen-sse: error: no API key: set OPENAI_API_KEY, or name the variable that holds it "
        "with --api-key-env\n"
    )


def test_bad_param_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--param", "novalue", "hi"]) == 2
    assert "KEY=JSON" in capsys.readouterr().err


def test_invalid_retry_option_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--max-attempts", "0", "hi"]) == 2
    assert "qwen-sse: error: --max-attempts must be at least 1, got 0" in capsys.readouterr().err


def test_native_mock_chat_gives_the_same_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--native", "你好"]) == 0
    out, err = capsys.readouterr()
    assert out == mock_answer("你好") + "\n"
    assert "prompt +" in err.strip().splitlines()[-1]


def test_native_json_lines_are_the_decoded_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--native", "--json", "--max-tokens", "3", "hi"]) == 0
    chunks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 3 + ["length"]
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
    assert text == mock_answer("hi", max_tokens=3)
    assert chunks[-1]["usage"]["total_tokens"] > 0


# --- --audio: a spoken answer (Qwen-Omni, compatible mode) written as a WAV file ---

# Three samples of a 24 kHz tone's start (16-bit little-endian), five times over: 30 bytes.
SPEECH_PCM = struct.pack("<3h", 0, 12_000, -12_000) * 5
SPEECH_B64 = base64.b64encode(SPEECH_PCM).decode()


def omni_stream(audio_pieces: list[str], transcript: list[str]) -> bytes:
    """What Qwen-Omni sends for modalities text+audio: the text as audio.transcript
    (content null), then the base64 PCM in pieces, then the finish reason and usage."""
    frames = [frame([{"index": 0, "delta": {"role": "assistant", "content": None}}])]
    frames += [
        frame([{"index": 0, "delta": {"content": None, "audio": {"transcript": text}}}])
        for text in transcript
    ]
    frames += [
        frame(
            [
                {
                    "index": 0,
                    "delta": {"audio": {"data": piece, "id": "audio_1", "expires_at": 1}},
                }
            ]
        )
        for piece in audio_pieces
    ]
    frames.append(frame([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    frames.append(frame([], usage={"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}))
    return http_response(sse_body(frames))


def serving(response: bytes) -> Any:
    async def handler(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(response)
        await writer.drain()

    return raw_server(handler)


async def chat_cli(*argv: str) -> int:
    # main() runs its own event loop; the raw server needs this one to keep serving.
    return await asyncio.to_thread(main, ["chat", *argv])


async def test_audio_is_asked_for_and_written_as_a_playable_wav(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    out_wav = tmp_path / "answer.wav"
    pieces = [SPEECH_B64[:7], SPEECH_B64[7:25], SPEECH_B64[25:]]  # cut across quanta
    async with serving(omni_stream(pieces, ["我是", "通义千问。"])) as server:
        status = await chat_cli(
            "--base-url",
            server.url,
            "--model",
            "qwen3-omni-flash",
            "--audio",
            str(out_wav),
            "你是谁",
        )
    out, err = capsys.readouterr()
    assert status == 0, err
    sent = server.requests[0].json()
    assert sent["modalities"] == ["text", "audio"]
    assert sent["audio"] == {"voice": "Cherry", "format": "wav"}
    assert out == "我是通义千问。\n"  # the transcript, streamed as the answer
    assert f"wrote 0.00 s of audio to {out_wav}" in err
    assert out_wav.read_bytes()[:4] == b"RIFF"
    with wave.open(str(out_wav), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        assert wav.getnframes() == len(SPEECH_PCM) // 2
        assert wav.readframes(wav.getnframes()) == SPEECH_PCM


async def test_no_audio_is_one_clear_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    out_wav = tmp_path / "answer.wav"
    async with serving(sse_answer("just text")) as server:
        status = await chat_cli("--base-url", server.url, "--audio", str(out_wav), "hi")
    out, err = capsys.readouterr()
    assert status == 1
    assert out == "just text\n"
    (line,) = [line for line in err.splitlines() if line.startswith("qwen-sse chat:")]
    assert line.startswith(f"qwen-sse chat: no audio arrived, so {out_wav} was not written")
    assert not out_wav.exists()


async def test_an_unwritable_wav_is_one_clear_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    async with serving(omni_stream([SPEECH_B64], ["hi"])) as server:
        status = await chat_cli("--base-url", server.url, "--audio", str(tmp_path), "hi")
    assert status == 1
    err = capsys.readouterr().err
    assert f"qwen-sse chat: cannot write {tmp_path}: Is a directory" in err
    assert "Traceback" not in err


async def test_the_audio_of_a_cut_answer_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    out_wav = tmp_path / "answer.wav"
    audio = {"data": SPEECH_B64[:20], "id": "audio_1"}  # 15 bytes: 7 whole samples
    body = sse_body([frame([{"index": 0, "delta": {"audio": audio}}])], done=False)
    async with serving(http_response(body)) as server:
        status = await chat_cli(
            "--base-url", server.url, "--max-attempts", "1", "--audio", str(out_wav), "hi"
        )
    assert status == 1
    err = capsys.readouterr().err
    assert "qwen-sse: error: stream ended without data: [DONE]" in err
    assert f"wrote 0.00 s of audio to {out_wav}" in err
    with wave.open(str(out_wav), "rb") as wav:
        assert wav.readframes(wav.getnframes()) == SPEECH_PCM[:14]


@pytest.mark.parametrize("protocol", protocols.NAMES)
def test_mock_chat_speaks_every_protocol(capsys: pytest.CaptureFixture[str], protocol: str) -> None:
    assert main(["chat", "--mock", "--protocol", protocol, "你好"]) == 0
    out, err = capsys.readouterr()
    assert out == mock_answer("你好") + "\n"
    assert "first token" in err.strip().splitlines()[-1]


def test_an_unknown_protocol_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--mock", "--protocol", "grpc", "hi"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'grpc'" in err
    assert "anthropic" in err


async def test_proxy_sends_the_request_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    async with serving(sse_answer("via the proxy")) as server, forward_proxy() as seen:
        status = await chat_cli("--base-url", server.url, "--proxy", seen.url, "hi")
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out == "via the proxy\n"
    [head] = seen.heads
    assert head.startswith(f"POST {server.url}/chat/completions ".encode())


def test_mock_ignores_the_proxy_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A proxy elsewhere could not reach the in-process emulator (and must not see the key).
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert main(["chat", "--mock", "你好"]) == 0
    assert capsys.readouterr().out == mock_answer("你好") + "\n"


def test_a_remote_proxy_for_plain_http_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    monkeypatch.setenv("HTTP_PROXY", "http://user:hunter22@proxy.invalid:3128")
    assert main(["chat", "--base-url", "http://127.0.0.1:9/v1", "hi"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "through the proxy http://proxy.invalid:3128 (from HTTP_PROXY)" in line
    assert "hunter22" not in line


# --- the console script, as a user runs it: in a pipe, or on a terminal ---

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}


def console(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """``qwen-sse ARGV`` in a subprocess, stdout and stderr in pipes of their own."""
    return subprocess.run(
        [sys.executable, "-m", "qwen_sse", *argv],
        capture_output=True,
        env=CONSOLE_ENV,
        timeout=120,
        check=False,
    )


def on_a_terminal(*argv: str) -> str:
    """What ``qwen-sse ARGV`` shows on a terminal (a pseudo-terminal holds stdout and
    stderr, as on a console), line endings as the terminal sends them back."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "qwen_sse", *argv],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=CONSOLE_ENV,
    )
    os.close(follower)
    shown = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                piece = os.read(leader, 4096)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not piece:
                break
            shown += piece
    finally:
        os.close(leader)
        process.wait(timeout=60)
    return shown.decode("utf-8").replace("\r\n", "\n")


# --- tool calls: each shown with its name and arguments as they stream ---

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
TOOLS = json.dumps([WEATHER, CLOCK])
ASK_BOTH = "get_weather and get_time for Paris, please"


def emulated_calls(prompt: str, **params: object) -> list[tuple[str, str]]:
    """The ``(name, arguments)`` of each call the emulator answers ``prompt`` with."""
    body = {
        "model": "qwen-plus",
        "messages": [{"role": "user", "content": prompt}],
        "tools": json.loads(TOOLS),
        **params,
    }
    return list(emulated_answer(body).tool_calls)


@pytest.mark.parametrize("protocol", protocols.NAMES)
def test_every_tool_call_is_a_line_with_its_name_and_arguments(protocol: str) -> None:
    done = console(
        "chat",
        "--mock",
        "--protocol",
        protocol,
        "--param",
        f"tools={TOOLS}",
        "--param",
        "parallel_tool_calls=true",
        ASK_BOTH,
    )
    assert done.returncode == 0, done.stderr
    calls = emulated_calls(ASK_BOTH, parallel_tool_calls=True)
    assert [name for name, _ in calls] == ["get_weather", "get_time"]
    assert done.stdout.decode() == "".join(
        f"→ tool call {name}({arguments})\n" for name, arguments in calls
    )
    assert "finish tool_calls" in done.stderr.decode().splitlines()[-1]


def test_tool_calls_read_the_same_on_a_terminal() -> None:
    shown = on_a_terminal("chat", "--mock", "--param", f"tools={TOOLS}", ASK_BOTH)
    ((name, arguments),) = emulated_calls(ASK_BOTH)
    assert f"\n→ tool call {name}({arguments})\n" in shown
    assert "\x1b[" not in shown  # no styling on the call's line (only reasoning is dimmed)


def delta_chunk(delta: ChoiceDelta, index: int = 0) -> ChatCompletionChunk:
    return ChatCompletionChunk(choices=[DeltaChoice(index=index, delta=delta)])


def call_piece(
    index: int, name: str | None = None, arguments: str | None = None, **fields: str
) -> ChatCompletionChunk:
    function = (
        None
        if name is None and arguments is None
        else ChoiceDeltaToolCallFunction(name=name, arguments=arguments)
    )
    call = ChoiceDeltaToolCall(index=index, function=function, **fields)
    return delta_chunk(ChoiceDelta(tool_calls=[call]))


def test_a_tool_call_shows_piece_by_piece_as_it_arrives() -> None:
    out = io.StringIO()
    printer = AnswerPrinter(out, terminal=False)
    printer.chunk(delta_chunk(ChoiceDelta(content="Let me look.")))
    printer.chunk(call_piece(0, id="call-0", type="function"))
    assert out.getvalue() == "Let me look."  # an id alone: the call shows with its name
    printer.chunk(call_piece(0, name="get_weather", arguments=""))
    assert out.getvalue() == "Let me look.\n→ tool call get_weather("
    printer.chunk(call_piece(0, arguments='{"city": '))
    assert out.getvalue().endswith('→ tool call get_weather({"city": ')
    printer.chunk(delta_chunk(ChoiceDelta(content="other choice"), index=1))
    printer.chunk(call_piece(0, arguments='"Paris"}'))
    printer.chunk(call_piece(1, name="get_time", arguments="{}"))
    assert out.getvalue().endswith('"Paris"})\n→ tool call get_time({}')
    printer.end()
    assert out.getvalue() == (
        'Let me look.\n→ tool call get_weather({"city": "Paris"})\n→ tool call get_time({})\n'
    )


def test_reasoning_then_a_tool_call() -> None:
    out = io.StringIO()
    printer = AnswerPrinter(out, terminal=False)
    printer.chunk(delta_chunk(ChoiceDelta(reasoning_content="The user wants weather.")))
    printer.chunk(call_piece(0, name="get_weather", arguments="{}"))
    printer.end()
    assert out.getvalue() == "[thinking] The user wants weather.\n→ tool call get_weather({})\n"


def test_a_tool_call_cut_short_stays_open_and_counts_as_received() -> None:
    out = io.StringIO()
    printer = AnswerPrinter(out, terminal=False)
    printer.chunk(call_piece(0, name="get_weather", arguments='{"ci'))
    printer.interrupted()
    assert out.getvalue() == '→ tool call get_weather({"ci'  # in a pipe: what arrived
    on_terminal = io.StringIO()
    printer = AnswerPrinter(on_terminal, terminal=True)
    printer.chunk(call_piece(0, name="get_weather", arguments='{"ci'))
    printer.interrupted()
    assert on_terminal.getvalue() == '→ tool call get_weather({"ci\n'


def test_on_a_terminal_the_error_of_a_cut_answer_starts_its_own_line() -> None:
    fault = f"{FAULT_HEADER}: {Fault(drop_after_events=4).to_json()}"
    shown = on_a_terminal("chat", "--mock", "--max-attempts", "1", "--header", fault, "hi")
    assert "\nqwen-sse: error: " in shown
    assert "\nqwen-sse: the answer above is incomplete (" in shown


# --- --mock says where the answer comes from ---

EMULATED = "qwen-sse chat: the answer comes from the built-in emulator (--mock), not from a model"


def test_mock_says_the_answer_is_emulated_before_the_answer() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qwen_sse", "chat", "--mock", "hi"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one pipe: the order they were written in
        env=CONSOLE_ENV,
        timeout=120,
        check=True,
    )
    lines = done.stdout.decode().splitlines()
    assert lines[0] == EMULATED
    assert lines[1] == mock_answer("hi")
    assert "prompt +" in lines[2]


def test_only_mock_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "--mock", "--json", "hi"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == EMULATED
    with served(SERVED_KEY) as base_url:
        monkeypatch.setenv("DASHSCOPE_API_KEY", SERVED_KEY)
        assert main(["chat", "--base-url", base_url, "hi"]) == 0
    assert "emulator" not in capsys.readouterr().err


# --- --param: JSON values only, and never a field the command sets itself ---


def test_param_values_are_json_in_the_body_sent(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["trace", "--mock", "--param", "top_k=3", "--param", 'stop=["\\n"]']
    assert main([*argv, "--param", "max_tokens=2", "--param", 'user="u-1"', "hi"]) == 0
    (body,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  > {")]
    sent = json.loads(body.removeprefix("  > "))
    assert (sent["top_k"], sent["stop"], sent["max_tokens"], sent["user"]) == (3, ["\n"], 2, "u-1")


@pytest.mark.parametrize(
    ("protocol", "field"),
    [
        (protocol.name, field)
        for protocol in protocols.PROTOCOLS.values()
        for field in sorted({"model", "messages", "stream", *protocol.built_fields})
    ],
)
def test_param_refuses_every_field_the_command_builds(
    protocol: str, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "--mock", "--protocol", protocol, "--param", f"{field}=1", "hi"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"qwen-sse chat: --param {field}: the command sets this itself (")
    assert err.count("\n") == 1
