"""Tests of qwen_sse.wirelog: a line per attempt, headers at debug, content only when asked,
never the key; against the emulator and a raw server on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest

from qwen_sse.client import QwenClient
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault
from qwen_sse.errors import AuthenticationError, QwenSSEError
from qwen_sse.retry import NO_RETRIES, RetryPolicy
from qwen_sse.wirelog import enable_from_env, log_to_stderr, wanted
from tests.fakesleep import FakeSleep
from tests.rawserver import frame, http_response, raw_server

KEY = "sk-test-not-a-real-key-0123456789"
HELLO = [{"role": "user", "content": "你好，介绍一下你自己"}]
CONTENT_LOGGER = "qwen_sse.wirelog.content"
ATTEMPT = re.compile(r"^call \d+ attempt (\d+): (.*)$")


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Each test leaves the package's loggers as it found them."""
    package = logging.getLogger("qwen_sse")
    content = logging.getLogger(CONTENT_LOGGER)
    handlers, level, content_level = package.handlers[:], package.level, content.level
    yield
    package.handlers[:] = handlers
    package.setLevel(level)
    content.setLevel(content_level)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=0.0)) as server:
        yield server


def client(server: Emulator, **options: Any) -> QwenClient:
    return QwenClient(KEY, server.base_url, sleep=FakeSleep(), **options)


def attempt_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The INFO lines of qwen_sse.wirelog, without their call and attempt prefix."""
    lines = []
    for record in caplog.records:
        if record.name == "qwen_sse.wirelog" and record.levelno == logging.INFO:
            match = ATTEMPT.match(record.getMessage())
            assert match, record.getMessage()
            lines.append(match.group(2))
    return lines


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def assert_no_piece_of_the_key(text: str) -> None:
    """Not the key, nor any ten characters of it (a key cut in two leaves both halves)."""
    pieces = {KEY[start : start + 10] for start in range(len(KEY) - 9)}
    assert [piece for piece in pieces if piece in text] == []


async def test_nothing_is_logged_unless_asked(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    assert not wanted()
    async with client(emulator) as qwen:
        await qwen.chat(HELLO)
    assert [r for r in caplog.records if r.name.startswith("qwen_sse")] == []


def test_importing_the_package_configures_no_logging() -> None:
    """A library adds a NullHandler to its own logger and leaves the root logger alone:
    without a configuration of the application's, a warning shows nowhere."""
    code = (
        "import logging, qwen_sse.client\n"
        "logging.getLogger('qwen_sse.client').warning('hidden')\n"
        "print(logging.getLogger().handlers, logging.getLogger('qwen_sse').handlers)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stderr == ""
    assert done.stdout.strip() == "[] [<NullHandler (NOTSET)>]"


async def test_info_is_one_line_per_attempt_and_the_retry_with_its_reason_and_delay(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.schedule(Fault(status=503, retry_after="2"))
    with caplog.at_level(logging.INFO, logger="qwen_sse"):
        async with client(emulator) as qwen:
            result = await qwen.chat(HELLO)
    refused, served = emulator.requests
    url = emulator.base_url + "/chat/completions"
    failed, ok = attempt_lines(caplog)
    assert failed.startswith(f"POST {url} -> 503, request id {refused.request_id}, headers ")
    assert re.search(r", \d+ bytes, 0 events, \d+\.\d{3} s: error: ServerError: HTTP 503", failed)
    assert "first token" not in failed
    assert re.fullmatch(
        rf"POST {re.escape(url)} -> 200, request id {served.request_id}, "
        rf"headers \d+\.\d{{3}} s, first token \d+\.\d{{3}} s, "
        rf"{result.timing.bytes_received} bytes, {result.timing.events} events, "
        r"\d+\.\d{3} s: ok",
        ok,
    )
    (retry,) = [r for r in caplog.records if r.name == "qwen_sse.client"]
    assert retry.levelno == logging.WARNING
    assert retry.getMessage().startswith("retrying in 2.00 s (attempt 2 of 3): HTTP 503")
    assert not any(r.levelno == logging.DEBUG for r in caplog.records)


async def test_a_resumed_stream_logs_each_attempt_with_its_own_events(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.schedule(Fault(drop_after_events=4))
    with caplog.at_level(logging.INFO, logger="qwen_sse"):
        async with client(emulator, retry=RetryPolicy(resume=True)) as qwen:
            result = await qwen.chat(HELLO)
    assert result.resumes == 1
    cut, continued = attempt_lines(caplog)
    assert ", 4 events, " in cut
    assert "first token" in cut
    assert ": error: StreamInterruptedError: connection lost mid-stream" in cut
    assert f", {result.timing.events - 4} events, " in continued
    assert "first token" in continued
    assert continued.endswith(": ok")
    (resume,) = [r.getMessage() for r in caplog.records if r.name == "qwen_sse.client"]
    assert resume.startswith("resuming a broken stream at once after ")
    assert "connection lost mid-stream" in resume


async def test_an_attempt_without_a_response_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def refuse(writer: asyncio.StreamWriter, n: int) -> None:
        writer.close()

    async with raw_server(refuse, read_request=False) as server:
        with caplog.at_level(logging.INFO, logger="qwen_sse"):
            async with QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen:
                with pytest.raises(QwenSSEError):
                    await qwen.chat(HELLO)
    (line,) = attempt_lines(caplog)
    assert line.startswith(f"POST {server.url}/chat/completions -> no response, 0 bytes, ")
    assert ": error: TransportError: " in line


async def test_debug_adds_the_headers_without_the_key_and_no_content(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="qwen_sse"):
        async with client(emulator) as qwen:
            result = await qwen.chat(HELLO)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    sent, received = debug
    assert "> POST " in sent
    assert "Authorization: Bearer ***" in sent
    assert "Content-Type: application/json" in sent
    assert re.search(
        r"< 200 after \d+\.\d{3} s; headers: .*Content-Type: text/event-stream", received
    )
    assert re.search(rf"(?i)x-request-id: {result.request_id}(;|$)", received)
    logged = everything_logged(caplog)
    assert_no_piece_of_the_key(logged)
    assert result.content[:8] not in logged
    assert "你好" not in logged


async def test_content_only_when_its_logger_is_on(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="qwen_sse"),
        caplog.at_level(logging.DEBUG, logger=CONTENT_LOGGER),
    ):
        async with client(emulator) as qwen:
            result = await qwen.chat(HELLO)
    content = [r.getMessage() for r in caplog.records if r.name == CONTENT_LOGGER]
    body = content[0].split(": > ", 1)[1]
    assert json.loads(body)["messages"] == HELLO
    received = [line.split(" s: ", 1)[1] for line in content[1:]]
    assert received[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in received)
    answer = "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in (json.loads(line[6:]) for line in received[:-1])
        if chunk["choices"]
    )
    assert answer == result.content
    assert_no_piece_of_the_key(everything_logged(caplog))


class _NotifyingTap:
    """The application's tap: counts what it is shown and says when data came."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.data_came = asyncio.Event()

    def request(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        self.calls.append("request")

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        self.calls.append("response")

    def data(self, chunk: bytes, at_s: float) -> None:
        self.calls.append("data")
        self.data_came.set()

    def end(self, *, at_s: float, outcome: str, error: QwenSSEError | None) -> None:
        self.calls.append("end")


async def test_a_server_that_echoes_the_key_never_gets_it_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The key echoed in a header, in a frame, and in a frame split by the read boundary
    in the middle of the key: at every level, content included, only ``sk-***`` shows."""
    tap = _NotifyingTap()
    cut = len("sk-test-not-a-")
    echoed = frame([{"index": 0, "delta": {"content": f"echo Bearer {KEY}"}}])
    split = frame([{"index": 0, "delta": {"content": f"split {KEY}"}, "finish_reason": "stop"}])
    head, tail = split.split(KEY[cut:])

    async def echo(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
            + f"x-request-id: {KEY}\r\nx-echo: Bearer {KEY}\r\n\r\n".encode()
            + f"data: {echoed}\n\ndata: {head}{KEY[:cut]}".encode()
        )
        await writer.drain()
        await tap.data_came.wait()  # the client has read up to the middle of the key
        writer.write(f"{KEY[cut:]}{tail}\n\ndata: [DONE]\n\n".encode())
        await writer.drain()

    async with raw_server(echo) as server:
        with (
            caplog.at_level(logging.DEBUG, logger="qwen_sse"),
            caplog.at_level(logging.DEBUG, logger=CONTENT_LOGGER),
        ):
            async with QwenClient(KEY, server.url, retry=NO_RETRIES, wire_tap=tap) as qwen:
                result = await qwen.chat(HELLO)
    assert result.complete
    assert KEY in result.content  # the answer is the application's, as received
    assert tap.calls[:2] == ["request", "response"]
    assert tap.calls.count("data") >= 2
    assert tap.calls[-1] == "end"
    logged = everything_logged(caplog)
    assert_no_piece_of_the_key(logged)
    assert "request id sk-***" in logged
    assert "x-echo: Bearer sk-***" in logged
    assert "echo Bearer sk-***" in logged
    assert "split sk-***" in logged


async def test_an_error_body_that_echoes_the_key_is_scrubbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = json.dumps({"error": {"code": "invalid_api_key", "message": f"bad key {KEY}"}})

    async def refuse(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            http_response(body.encode(), status="401 Unauthorized", content_type="application/json")
        )
        await writer.drain()

    async with raw_server(refuse) as server:
        with (
            caplog.at_level(logging.DEBUG, logger="qwen_sse"),
            caplog.at_level(logging.DEBUG, logger=CONTENT_LOGGER),
        ):
            async with QwenClient(KEY, server.url, retry=NO_RETRIES) as qwen:
                with pytest.raises(AuthenticationError):
                    await qwen.chat(HELLO)
    (line,) = attempt_lines(caplog)
    assert "-> 401" in line
    assert "bad key sk-***" in line
    logged = everything_logged(caplog)
    assert_no_piece_of_the_key(logged)
    assert '"message": "bad key sk-***"' in logged


# --- the environment switch ---------------------------------------------------------------


# What QWEN_SSE_LOG (and QWEN_SSE_LOG_CONTENT) set -> (headers shown, content shown).
SWITCHES: list[tuple[dict[str, str], tuple[bool, bool]]] = [
    ({"QWEN_SSE_LOG": "info"}, (False, False)),
    ({"QWEN_SSE_LOG": "INFO", "QWEN_SSE_LOG_CONTENT": "1"}, (False, False)),
    ({"QWEN_SSE_LOG": "debug"}, (True, False)),
    ({"QWEN_SSE_LOG": "debug", "QWEN_SSE_LOG_CONTENT": "1"}, (True, True)),
]


@pytest.mark.parametrize(("env", "shown"), SWITCHES)
async def test_qwen_sse_log_writes_to_stderr(
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    shown: tuple[bool, bool],
) -> None:
    headers, content = shown
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    async with client(emulator) as qwen:  # the client applies the switch as it is built
        result = await qwen.chat(HELLO)
    err = capsys.readouterr().err
    assert_no_piece_of_the_key(err)
    (attempt,) = [line for line in err.splitlines() if " INFO qwen_sse.wirelog: " in line]
    assert f" -> 200, request id {result.request_id}, " in attempt
    assert f", {result.timing.events} events, " in attempt
    assert attempt.endswith(": ok")
    assert ("Authorization: Bearer ***" in err) is headers
    assert ("data: [DONE]" in err) is content
    assert (HELLO[0]["content"] in err) is content


def test_the_switch_is_applied_once_and_never_to_the_root_logger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    root_state = (root.level, root.handlers[:])
    monkeypatch.setenv("QWEN_SSE_LOG", "info")
    enable_from_env()
    enable_from_env()
    log_to_stderr(logging.INFO)
    package = logging.getLogger("qwen_sse")
    assert package.level == logging.INFO
    assert len([h for h in package.handlers if not isinstance(h, logging.NullHandler)]) == 1
    assert (root.level, root.handlers) == root_state
    assert wanted()


def test_an_unknown_switch_value_is_ignored_with_a_warning() -> None:
    package = logging.getLogger("qwen_sse")
    level, handlers = package.level, package.handlers[:]
    with pytest.warns(RuntimeWarning, match="QWEN_SSE_LOG='verbose' is not one of debug, info"):
        enable_from_env({"QWEN_SSE_LOG": "verbose"})
    assert (package.level, package.handlers) == (level, handlers)


def test_an_unset_switch_leaves_the_application_s_configuration_alone() -> None:
    package = logging.getLogger("qwen_sse")
    package.setLevel(logging.ERROR)
    enable_from_env({})
    assert package.level == logging.ERROR
