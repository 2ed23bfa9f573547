"""Tests of ``qwen-sse serve``: the real command in a subprocess, answering over loopback."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest

from qwen_sse import protocols
from qwen_sse.chat import ChatStreamDecoder
from qwen_sse.cli import build_parser, main
from qwen_sse.client import QwenClient
from qwen_sse.emulator import EmulatorConfig, emulated_answer
from qwen_sse.retry import NO_RETRIES

BODY = {
    "model": "qwen-plus",
    "messages": [{"role": "user", "content": "你好"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
URL_LINE = re.compile(r"DashScope emulator at (http://127\.0\.0\.1:\d+/compatible-mode/v1)$")


class Served:
    def __init__(self, process: asyncio.subprocess.Process, base_url: str, banner: str) -> None:
        self.process = process
        self.base_url = base_url
        self.banner = banner


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@asynccontextmanager
async def serve(*args: str) -> AsyncIterator[Served]:
    """Run the command on a free port; yield once it prints its URL; stop it afterwards."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qwen_sse",
        "serve",
        "--port",
        "0",
        "--ttft-ms",
        "0",
        "--itl-ms",
        "0",
        "--exit-after-s",
        "60",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Ctrl-C reaches a command started from a terminal with SIGINT's default action. A
        # test run started in the background (``pytest ... &``, CI runners) inherits SIGINT
        # ignored, and Python keeps it ignored: the command must see it as a user would.
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        match = URL_LINE.search(first.strip())
        assert match, first
        rest = [
            (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
            # One line a protocol, then "event loop: ...", "accepting ..." and "try: curl ...".
            for _ in range(len(protocols.NAMES) + 3)
        ]
        yield Served(process, match[1], first + "".join(rest))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def post(base_url: str, key: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url}/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp,
    ):
        return resp.status, await resp.read()


@pytest.mark.timeout(60)
async def test_serve_answers_a_request_and_stops_on_ctrl_c() -> None:
    async with serve() as served:
        status, body = await post(served.base_url, "sk-test")
        assert status == 200
        decoder = ChatStreamDecoder()
        decoder.feed(body)
        decoder.feed_eof()
        assert decoder.result().content == emulated_answer(BODY).content
        assert "curl -N" in served.banner
        origin = served.base_url.removesuffix("/compatible-mode/v1")
        for protocol in protocols.PROTOCOLS.values():
            assert f"POST {origin}{protocol.root}{protocol.path}" in served.banner
        assert f"{served.base_url}/chat/completions" in served.banner
        assert "Bearer sk-test" in served.banner

        assert (await post(served.base_url, "sk-wrong"))[0] == 401

        served.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(served.process.wait(), timeout=30) == 0
        assert served.process.stderr is not None
        assert await served.process.stderr.read() == b""


def _listen_backlog(port: int) -> tuple[int, int] | None:
    """The listen backlog of the socket listening on ``port``, as ``ss`` reads it from the
    kernel (its Send-Q column for a listening socket), and the kernel's cap on any backlog;
    None without ``ss``."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    listing = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(listing[2]), int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.timeout(60)
async def test_serve_listens_with_the_backlog_asked_for() -> None:
    for args, backlog in (([], EmulatorConfig().backlog), (["--backlog", "300"], 300)):
        async with serve(*args) as served:
            assert f"listen backlog: {backlog} connections" in served.banner
            port = int(served.base_url.split(":")[2].split("/")[0])
            read = _listen_backlog(port)
            if read is None:
                pytest.skip("no ss here to read a listening socket's backlog")
            listening, somaxconn = read
            assert listening == min(backlog, somaxconn)


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Child processes find a uvloop that cannot be imported."""
    (tmp_path / "uvloop.py").write_text("raise ImportError('uvloop is hidden by this test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join((str(tmp_path), *sys.path)))


@pytest.mark.timeout(60)
@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")
async def test_serve_runs_on_uvloop_when_it_is_installed() -> None:
    async with serve() as served:
        assert "event loop: uvloop;" in served.banner
        assert (await post(served.base_url, "sk-test"))[0] == 200


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("without_uvloop")
async def test_serve_runs_on_asyncios_loop_without_uvloop() -> None:
    async with serve() as served:
        assert "event loop: asyncio;" in served.banner
        status, body = await post(served.base_url, "sk-test")
        assert status == 200
        assert ChatStreamDecoder().feed(body)


@pytest.mark.timeout(60)
async def test_serve_reports_context_cache_hits_unless_switched_off() -> None:
    system = {"role": "system", "content": "You answer questions about the sea. " * 40}
    for args, hit in (((), True), (("--context-cache-entries", "0"), False)):
        async with serve(*args) as served:
            client = QwenClient("sk-test", served.base_url, retry=NO_RETRIES)
            async with client:
                for question in ("Why is the sea salty?", "How deep is it?"):
                    result = await client.chat(
                        [system, {"role": "user", "content": question}], max_tokens=2
                    )
        assert result.usage is not None
        details = result.usage.prompt_tokens_details
        if hit:
            assert details is not None
            assert details.cached_tokens is not None
            assert details.cached_tokens >= 256
        else:
            assert details is None


@pytest.mark.timeout(60)
async def test_serve_any_key_and_default_fault() -> None:
    async with serve("--any-key", "--fault", '{"status": 429, "retry_after": "1"}') as served:
        status, body = await post(served.base_url, "sk-whatever")
        assert status == 429
        assert json.loads(body)["error"]["code"] == "limit_requests"
        assert "any bearer key" in served.banner


@pytest.mark.timeout(60)
async def test_serve_exits_by_itself_after_exit_after_s() -> None:
    async with serve("--exit-after-s", "0.2") as served:
        assert await asyncio.wait_for(served.process.wait(), timeout=30) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--fault", "{not json"],
        ["--fault", '{"status": 200}'],
        ["--fault", '{"unknown_field": 1}'],
        ["--answer-tokens", "0"],
    ],
)
def test_serve_rejects_invalid_settings(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *args]) == 2
    assert "qwen-sse serve: invalid setting" in capsys.readouterr().err


def test_invalid_settings_are_named_by_their_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--answer-tokens", "0"]) == 2
    assert "--answer-tokens must be at least 1, got 0" in capsys.readouterr().err
    for option in ("--ttft-ms", "--itl-ms", "--jitter-ms"):
        with pytest.raises(SystemExit) as caught:
            build_parser().parse_args(["serve", option, "-5"])
        assert caught.value.code == 2
        assert f"argument {option}: must not be negative, got -5" in capsys.readouterr().err


@pytest.mark.parametrize("typed", ["sk-test-typed", "sktesttyped"])
def test_a_key_typed_as_an_option_is_refused_unseen(
    typed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (["--api-key", typed], [f"--api-key={typed}"], ["--api-key-env", typed + "!"]):
        with pytest.raises(SystemExit) as caught:
            build_parser().parse_args(["serve", *args])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert typed not in err
        assert "--api-key-env" in err


@pytest.mark.timeout(60)
async def test_serve_accepts_the_key_its_variable_holds_and_never_shows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "sk-test-served-0123456789abcdef"
    monkeypatch.setenv("SERVED_KEY", key)  # the command inherits this environment
    async with serve("--api-key-env", "SERVED_KEY") as served:
        assert (await post(served.base_url, key))[0] == 200
        assert (await post(served.base_url, "sk-test"))[0] == 401
        assert key not in served.banner
        assert "accepting the bearer key in $SERVED_KEY" in served.banner
        assert '-H "Authorization: Bearer $SERVED_KEY"' in served.banner


def test_an_unset_key_variable_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SERVED_KEY", raising=False)
    assert main(["serve", "--api-key-env", "SERVED_KEY", "--exit-after-s", "0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "qwen-sse serve: invalid setting: no API key: set SERVED_KEY, or name the variable "
        "that holds it with --api-key-env"
    )


def test_a_backlog_below_1_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--backlog", "0", "--exit-after-s", "0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "qwen-sse serve: invalid setting: --backlog must be at least 1, got 0"


def test_serve_port_in_use_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["serve", "--port", str(port), "--exit-after-s", "0"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_defaults_mirror_the_emulator_config() -> None:
    args = build_parser().parse_args(["serve"])
    defaults = EmulatorConfig()
    assert (args.host, args.port, args.api_key_env, args.any_key) == (
        "127.0.0.1",
        8000,
        None,
        False,
    )
    assert defaults.api_key == "sk-test"  # what serve accepts by default
    assert args.ttft_ms == defaults.ttft_s * 1000
    assert args.itl_ms == defaults.itl_s * 1000
    assert args.answer_tokens == defaults.answer_tokens
    assert args.backlog == defaults.backlog
    assert args.context_cache_entries == defaults.context_cache_entries
    assert args.func.__module__ == "qwen_sse.cli.serve"


@pytest.mark.timeout(60)
async def test_the_official_sdks_stream_from_the_served_emulator() -> None:
    # The Responses and Messages SDKs, which nobody here wrote, against the command itself.
    question = [{"role": "user", "content": "你好"}]
    expected = emulated_answer({"model": "qwen-plus", "messages": question}).content
    async with serve() as served:
        origin = served.base_url.removesuffix("/compatible-mode/v1")
        oai = openai.AsyncOpenAI(api_key="sk-test", base_url=served.base_url, max_retries=0)
        async with oai.responses.stream(model="qwen-plus", input="你好") as responses:
            final = await responses.get_final_response()
        await oai.close()
        assert final.output_text == expected
        claude = anthropic.AsyncAnthropic(
            api_key="sk-test", base_url=origin + "/apps/anthropic", max_retries=0
        )
        async with claude.messages.stream(
            model="qwen-plus",
            max_tokens=1024,
            messages=question,  # type: ignore[arg-type]
        ) as messages:
            message = await messages.get_final_message()
        await claude.close()
        assert [block.text for block in message.content if block.type == "text"] == [expected]
        assert message.stop_reason == "end_turn"
