"""Tests of ``qwen-sse proxy``: the real command in a subprocess between the official openai
SDK and the emulator, stopped as a user stops it; and its one-line refusals."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from qwen_sse.cli import main
from qwen_sse.emulator import Emulator, EmulatorConfig, emulated_answer

KEY = "sk-test-proxy-1234"
MODEL = "qwen-plus"
USER: list[Any] = [{"role": "user", "content": "Through the proxy."}]
FIRST_LINE = re.compile(r"^qwen-sse proxy: (http://127\.0\.0\.1:\d+) -> (http://\S+)$")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Running:
    process: asyncio.subprocess.Process
    base_url: str
    banner: str

    async def stop(self, signal_number: int = signal.SIGINT) -> tuple[int, str, str]:
        """Stop it as a user would; its exit status, the rest of its output, its errors."""
        self.process.send_signal(signal_number)
        out, err = await asyncio.wait_for(self.process.communicate(), timeout=30)
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), err.decode()


@asynccontextmanager
async def proxy(upstream: str, *args: str) -> AsyncIterator[Running]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qwen_sse",
        "proxy",
        "--upstream",
        upstream,
        "--listen",
        "127.0.0.1:0",
        "--exit-after-s",
        "60",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # A test run in the background inherits SIGINT ignored; the command must see it as a
        # user's Ctrl-C (see tests/test_cli_serve.py).
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        match = FIRST_LINE.match(first.strip())
        assert match, first
        banner = [first]
        while not banner[-1].startswith("stop with Ctrl-C"):
            banner.append((await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode())
        yield Running(process, match[1], "".join(banner))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_key=KEY, ttft_s=0, itl_s=0)) as served:
        yield served


def recordings(directory: Path) -> list[tuple[Path, str]]:
    return [(path, path.read_text("utf-8")) for path in sorted(directory.iterdir())]


def origin(emulator: Emulator) -> str:
    return emulator.base_url.removesuffix("/compatible-mode/v1")


@pytest.mark.timeout(90)
async def test_proxy_serves_records_and_ends_on_ctrl_c_with_the_totals(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = emulated_answer({"model": MODEL, "messages": USER})
    async with proxy(origin(emulator), "--record", str(tmp_path)) as running:
        assert f"compatible         {running.base_url}/compatible-mode/v1" in running.banner
        assert f"anthropic          {running.base_url}/apps/anthropic" in running.banner
        assert f"recording each exchange into {tmp_path}" in running.banner
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url=f"{running.base_url}/compatible-mode/v1", max_retries=0
        )
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        status, out, err = await running.stop()
    assert text == answer.content
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "[#1] POST /compatible-mode/v1/chat/completions (compatible, qwen-plus)"
    assert lines[1].startswith("[#1] 200 compatible qwen-plus complete: ")
    assert lines[-1] == (
        "qwen-sse proxy: 1 exchange; streams: 1 complete, 0 incomplete; outcomes: ok 1;"
        " anomalies: none"
    )
    [(recording, recorded)] = recordings(tmp_path)
    assert recording.name == "000001-compatible.jsonl"
    for text_seen in (running.banner, out, err, recorded):
        assert KEY not in text_seen
    assert await asyncio.to_thread(main, ["replay", str(recording)]) == 0
    replayed = capsys.readouterr().out
    assert "complete: yes" in replayed
    assert KEY not in replayed


@pytest.mark.timeout(90)
async def test_a_fault_reaches_the_application_and_sigterm_ends_it_too(
    emulator: Emulator,
) -> None:
    fault = '{"drop_after_events": 3, "model": "qwen-plus"}'
    async with proxy(origin(emulator), "--fault", fault) as running:
        assert 'fault: {"drop_after_events":3,"model":"qwen-plus"}' in running.banner
        client = openai.AsyncOpenAI(
            api_key=KEY, base_url=f"{running.base_url}/compatible-mode/v1", max_retries=0
        )
        with pytest.raises(openai.APIConnectionError):
            stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
            async for _ in stream:
                pass
        await client.close()
        status, out, err = await running.stop(signal.SIGTERM)
    assert (status, err) == (0, "")
    assert "[#1] !! missing-end: " in out
    assert '(compatible, qwen-plus; fault {"drop_after_events":3,"model":"qwen-plus"})' in out
    assert "200 compatible qwen-plus dropped by the proxy's fault: 3 events" in out
    assert out.splitlines()[-1] == (
        "qwen-sse proxy: 1 exchange; streams: 0 complete, 1 incomplete; outcomes: fault 1;"
        " anomalies: missing-end 1"
    )
    assert KEY not in out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--upstream", "http://example.com"],
            "qwen-sse proxy: refusing to send the API key over plain http to example.com; use "
            "https, or pass --allow-insecure-http if this network is trusted",
        ),
        (
            ["--upstream", "https://example.com", "--listen", "0.0.0.0:8001"],
            "qwen-sse proxy: refusing to listen on 0.0.0.0, off loopback: anyone who reaches it "
            "could send requests through it; pass --allow-remote if that is meant",
        ),
        (
            ["--upstream", "https://example.com", "--fault", '{"drop_after_events": -2}'],
            "qwen-sse proxy: invalid --fault: drop_after_events must be at least 0, got -2",
        ),
        (
            ["--upstream", "https://example.com", "--fault", "{oops"],
            "qwen-sse proxy: invalid --fault: the fault is not JSON: Expecting property name "
            "enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (
            ["--upstream", "https://user:secret@example.com"],
            "qwen-sse proxy: the upstream URL must not hold credentials: the application's own "
            "go through",
        ),
    ],
)
def test_bad_settings_are_one_line(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["proxy", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line]
    assert captured.out == ""


def test_bad_option_values_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    for args, words in [
        (["--listen", "nowhere"], "argument --listen: wants HOST:PORT, got 'nowhere'"),
        (["--listen", "127.0.0.1:70000"], "argument --listen: the port must be 0-65535"),
        (["--max-request-bytes", "0"], "argument --max-request-bytes: must be at least 1, got 0"),
        (["--stall-ms", "-1"], "argument --stall-ms: must not be negative, got -1"),
    ]:
        with pytest.raises(SystemExit) as caught:
            main(["proxy", "--upstream", "https://example.com", *args])
        assert caught.value.code == 2
        assert words in capsys.readouterr().err


def test_a_port_in_use_and_an_unwritable_record_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert (
            main(["proxy", "--upstream", "https://example.com", "--listen", f"127.0.0.1:{port}"])
            == 1
        )
    assert capsys.readouterr().err.splitlines() == [
        f"qwen-sse proxy: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["proxy", "--upstream", "https://example.com", "--listen", "127.0.0.1:0"]
    assert main([*args, "--record", str(blocker / "dir")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"qwen-sse proxy: cannot record into {blocker / 'dir'}: ")
