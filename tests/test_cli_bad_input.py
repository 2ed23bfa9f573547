"""Every subcommand given bad input, as a user would meet it: the real console script in a
subprocess answers with one line on stderr (never a traceback), nothing on stdout, and
the exit status the README promises (2 for bad options or input, 1 for failures)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from qwen_sse.config import API_KEY_ENV_VARS
from tests.served import served

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-bad-input"
TOOLS = '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]'
BINARY = bytes(range(256)) * 4  # not UTF-8 (0x80 cannot start a character)


class Case(NamedTuple):
    """``argv`` after ``qwen-sse`` ({tmp}, {url} and {busy_port} are filled in), ``stdin``,
    the exit status, a piece of the one stderr line, and whether the key is set."""

    argv: list[str]
    stdin: bytes
    status: int
    says: str
    key: bool = False


CASES: dict[str, Case] = {
    # -- the command itself --
    "no-command": Case([], b"", 2, "required: COMMAND"),
    "unknown-command": Case(["chatt"], b"", 2, "invalid choice: 'chatt'"),
    # -- chat: --param --
    "chat-param-model": Case(
        ["chat", "--mock", "--param", 'model="qwen-max"', "hi"],
        b"",
        2,
        "--param model: the command sets this itself (--model)",
    ),
    "chat-param-messages": Case(
        ["chat", "--mock", "--param", "messages=1", "hi"], b"", 2, "--param messages:"
    ),
    "chat-param-stream": Case(
        ["chat", "--mock", "--param", "stream=false", "hi"], b"", 2, "--param stream:"
    ),
    "chat-param-client-argument": Case(
        ["chat", "--mock", "--param", "timeouts=1", "hi"], b"", 2, "--idle-timeout"
    ),
    "chat-param-stream-options": Case(
        ["chat", "--mock", "--param", "stream_options={}", "hi"],
        b"",
        2,
        "--param stream_options: the command sets this itself (the compatible protocol",
    ),
    "chat-param-anthropic-system": Case(
        ["chat", "--mock", "--protocol", "anthropic", "--param", 'system="x"', "hi"],
        b"",
        2,
        "--param system:",
    ),
    "chat-param-responses-input": Case(
        ["chat", "--mock", "--protocol", "responses", "--param", "input=[]", "hi"],
        b"",
        2,
        "--param input:",
    ),
    "chat-param-and-its-option": Case(
        ["chat", "--mock", "--max-tokens", "5", "--param", "max_tokens=6", "hi"],
        b"",
        2,
        "--param max_tokens: the command sets this itself (--max-tokens)",
    ),
    "chat-param-bare-word": Case(
        ["chat", "--mock", "--param", "top_k=abc", "hi"],
        b"",
        2,
        "--param top_k: 'abc' is not JSON (a string needs its quotes: --param top_k='\"abc\"')",
    ),
    "chat-param-broken-json": Case(
        ["chat", "--mock", "--param", "x={", "hi"], b"", 2, "--param x: '{' is not JSON"
    ),
    "chat-param-nan": Case(
        ["chat", "--mock", "--param", "temperature=NaN", "hi"], b"", 2, "'NaN' is not JSON"
    ),
    "chat-param-no-equals": Case(
        ["chat", "--mock", "--param", "top_k", "hi"], b"", 2, "--param wants KEY=JSON"
    ),
    "chat-binary-stdin": Case(
        ["chat", "--mock", "-"], BINARY, 2, "stdin is not UTF-8 text (invalid start byte"
    ),
    "chat-bad-number": Case(
        ["chat", "--mock", "--max-tokens", "many", "hi"], b"", 2, "invalid int value: 'many'"
    ),
    "chat-unknown-protocol": Case(
        ["chat", "--mock", "--protocol", "grpc", "hi"], b"", 2, "invalid choice: 'grpc'"
    ),
    "chat-no-prompt": Case(["chat", "--mock"], b"", 2, "required: prompt"),
    "chat-bad-header": Case(
        ["chat", "--mock", "--header", "no-colon", "hi"], b"", 2, "--header wants NAME:VALUE"
    ),
    "chat-key-on-the-command-line": Case(
        ["chat", "--api-key", "sk-x", "hi"], b"", 2, "no option takes the key itself"
    ),
    "chat-no-key": Case(["chat", "hi"], b"", 2, "set DASHSCOPE_API_KEY"),
    "chat-negative-timeout": Case(
        ["chat", "--mock", "--idle-timeout", "-1", "hi"], b"", 2, "--idle-timeout must be"
    ),
    "chat-wrong-path": Case(
        ["chat", "--base-url", "{url}/nowhere", "hi"],
        b"",
        1,
        "HTTP 404: Not Found (POST {url}/nowhere/chat/completions)",
        key=True,
    ),
    "chat-multi-line-message": Case(
        [
            "chat",
            "--mock",
            "--max-attempts",
            "1",
            "--header",
            'X-Emulator-Fault: {"status": 400, "message": "first line\\nsecond line"}',
            "hi",
        ],
        b"",
        1,
        "first line second line",
    ),
    "chat-tools-not-json": Case(
        ["chat", "--mock", "--param", f"tools={TOOLS[:-1]}", "hi"],
        b"",
        2,
        "--param tools:",
    ),
    # -- trace --
    "trace-param-model": Case(
        ["trace", "--mock", "--param", "model=1", "hi"], b"", 2, "--param model:"
    ),
    "trace-binary-stdin": Case(["trace", "--mock", "-"], BINARY, 2, "stdin is not UTF-8"),
    "trace-record-in-a-missing-directory": Case(
        ["trace", "--mock", "--record", "{tmp}/missing/x.rec", "hi"],
        b"",
        2,
        "cannot write {tmp}/missing/x.rec: No such file or directory",
    ),
    "trace-record-to-a-directory": Case(
        ["trace", "--mock", "--record", "{tmp}", "hi"], b"", 2, "Is a directory"
    ),
    "trace-bad-number": Case(
        ["trace", "--mock", "--stall-ms", "long", "hi"], b"", 2, "invalid float value"
    ),
    # -- replay --
    "replay-binary": Case(["replay", "{tmp}/binary"], b"", 2, "is not UTF-8 text"),
    "replay-sse": Case(
        ["replay", "{tmp}/saved.sse"],
        b"",
        2,
        "looks like a saved SSE stream, not a qwen-sse recording (JSON lines written by "
        "qwen-sse trace --record): decode it with qwen-sse decode {tmp}/saved.sse",
    ),
    "replay-empty-file": Case(["replay", "{tmp}/empty"], b"", 2, "{tmp}/empty is empty"),
    "replay-no-attempt": Case(
        ["replay", "{tmp}/header-only.rec"], b"", 2, "is an empty recording: it holds no attempt"
    ),
    "replay-malformed-record": Case(
        ["replay", "{tmp}/malformed.rec"],
        b"",
        2,
        "malformed.rec:3: a malformed response record (ValueError",
    ),
    "replay-missing": Case(
        ["replay", "{tmp}/nothing.rec"], b"", 2, "cannot read recording {tmp}/nothing.rec"
    ),
    "replay-directory": Case(["replay", "{tmp}"], b"", 2, "Is a directory"),
    "replay-name-with-a-line-break": Case(
        ["replay", "{tmp}/two\nlines"], b"", 2, "{tmp}/two lines: No such file"
    ),
    "replay-unknown-protocol": Case(
        ["replay", "--protocol", "x", "{tmp}/binary"], b"", 2, "invalid choice: 'x'"
    ),
    # -- serve --
    "serve-replay-binary": Case(
        ["serve", "--port", "0", "--replay", "{tmp}/binary"], b"", 2, "is not UTF-8 text"
    ),
    "serve-replay-sse": Case(
        ["serve", "--port", "0", "--replay", "{tmp}/saved.sse"], b"", 2, "qwen-sse decode"
    ),
    "serve-replay-no-response": Case(
        ["serve", "--port", "0", "--replay", "{tmp}/header-only.rec"],
        b"",
        2,
        "{tmp}/header-only.rec: the recording has no response to replay",
    ),
    "serve-replay-missing": Case(
        ["serve", "--replay", "{tmp}/nothing.rec"], b"", 2, "cannot read recording"
    ),
    "serve-negative-delay": Case(
        ["serve", "--ttft-ms", "-1"], b"", 2, "--ttft-ms: must not be negative"
    ),
    "serve-bad-port": Case(["serve", "--port", "eighty"], b"", 2, "invalid int value"),
    "serve-fault-not-json": Case(
        ["serve", "--port", "0", "--fault", "{"], b"", 2, "--fault '{': Input data was truncated"
    ),
    "serve-fault-unknown-field": Case(
        ["serve", "--port", "0", "--fault", '{"nope": 1}'], b"", 2, "unknown field `nope`"
    ),
    "serve-zero-answer": Case(
        ["serve", "--port", "0", "--answer-tokens", "0"], b"", 2, "--answer-tokens must be"
    ),
    "serve-busy-port": Case(
        ["serve", "--port", "{busy_port}"], b"", 1, "cannot listen on 127.0.0.1:{busy_port}"
    ),
    # -- decode --
    "decode-missing": Case(["decode", "{tmp}/nothing.sse"], b"", 2, "cannot read"),
    "decode-directory": Case(["decode", "{tmp}"], b"", 2, "Is a directory"),
    "decode-binary-stdin": Case(["decode"], BINARY, 1, "stream ended without data: [DONE]"),
    "decode-request-missing": Case(
        ["decode", "--request", "{tmp}/nothing.json", "{tmp}/saved.sse"],
        b"",
        2,
        "--request {tmp}/nothing.json",
    ),
    "decode-request-not-json": Case(
        ["decode", "--request", "{tmp}/saved.sse", "{tmp}/saved.sse"], b"", 2, "Expecting value"
    ),
    "decode-request-not-an-object": Case(
        ["decode", "--request", "{tmp}/list.json", "{tmp}/saved.sse"],
        b"",
        2,
        "not a JSON object",
    ),
    "decode-unknown-protocol": Case(
        ["decode", "--protocol", "x", "{tmp}/saved.sse"], b"", 2, "invalid choice"
    ),
    # -- tokens --
    "tokens-binary-stdin": Case(["tokens", "-"], BINARY, 2, "stdin is not UTF-8 text"),
    "tokens-messages-missing": Case(
        ["tokens", "--messages", "{tmp}/nothing.json"], b"", 2, "cannot read"
    ),
    "tokens-messages-directory": Case(["tokens", "--messages", "{tmp}"], b"", 2, "Is a directory"),
    "tokens-messages-binary": Case(
        ["tokens", "--messages", "{tmp}/binary"], b"", 2, "is not UTF-8 text"
    ),
    "tokens-messages-not-json": Case(
        ["tokens", "--messages", "{tmp}/saved.sse"], b"", 2, "is not valid JSON"
    ),
    "tokens-messages-and-text": Case(
        ["tokens", "--messages", "{tmp}/list.json", "text"], b"", 2, "neither a TEXT"
    ),
    # -- bench (refused before anything is sent) --
    "bench-param-model": Case(["bench", "--mock", "--param", "model=1"], b"", 2, "--param model:"),
    "bench-param-max-tokens": Case(
        ["bench", "--mock", "--param", "max_tokens=3"], b"", 2, "(--output-tokens"
    ),
    "bench-param-not-json": Case(
        ["bench", "--mock", "--param", "top_k=abc"], b"", 2, "'abc' is not JSON"
    ),
    "bench-bad-number": Case(
        ["bench", "--mock", "--concurrency", "lots"], b"", 2, "invalid int value"
    ),
    "bench-unknown-protocol": Case(
        ["bench", "--mock", "--protocol", "x"], b"", 2, "invalid choice: 'x'"
    ),
    "bench-prompts-missing": Case(
        ["bench", "--mock", "--prompts", "{tmp}/nothing.jsonl"], b"", 2, "cannot read"
    ),
    "bench-prompts-directory": Case(
        ["bench", "--mock", "--prompts", "{tmp}"], b"", 2, "Is a directory"
    ),
    "bench-prompts-binary": Case(
        ["bench", "--mock", "--prompts", "{tmp}/binary"], b"", 2, "is not UTF-8 text"
    ),
    "bench-bad-goodput": Case(
        ["bench", "--mock", "--goodput", "ttft:soon"], b"", 2, "is not a number"
    ),
    "bench-negative-mock-delay": Case(
        ["bench", "--mock", "--mock-itl-ms", "-5"], b"", 2, "must not be negative"
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "binary").write_bytes(BINARY)
    (tmp / "empty").write_bytes(b"")
    (tmp / "saved.sse").write_text('data: {"choices": []}\n\ndata: [DONE]\n\n')
    header = '{"format": "qwen-sse-recording", "version": 1}\n'
    (tmp / "header-only.rec").write_text(header)
    (tmp / "malformed.rec").write_text(
        header
        + '{"type": "request", "attempt": 1, "url": "http://h/v1/chat/completions"}\n'
        + '{"type": "response", "attempt": 1, "at_ms": 1, "status": "two hundred"}\n'
    )
    (tmp / "list.json").write_text("[]")
    return tmp


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """An emulator started as a user starts it, accepting KEY; its origin."""
    with served(KEY) as base_url:
        yield base_url.removesuffix("/compatible-mode/v1")


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_no_traceback(
    case: Case, files: Path, url: str, busy_port: int
) -> None:
    def filled(text: str) -> str:
        for name, value in (("tmp", files), ("url", url), ("busy_port", busy_port)):
            text = text.replace(f"{{{name}}}", str(value))
        return text

    env = {name: value for name, value in os.environ.items() if name not in API_KEY_ENV_VARS}
    env["PYTHONPATH"] = str(ROOT)
    if case.key:
        env["DASHSCOPE_API_KEY"] = KEY
    done = subprocess.run(
        [sys.executable, "-m", "qwen_sse", *map(filled, case.argv)],
        input=case.stdin,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    err = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert filled(case.says) in lines[0]
    assert lines[0].startswith("qwen-sse")
    assert done.stdout == b""
    assert done.returncode == case.status, err
