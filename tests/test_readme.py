"""The README's promises: two Quick start commands, the second run verbatim by CI, and
every python example, run for real (against the emulator and a redis-server of its own)."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.sdk.metrics import export as metrics_export
from opentelemetry.sdk.trace import export as trace_export

from qwen_sse import config
from qwen_sse.emulator import Emulator, EmulatorConfig, emulated_answer
from qwen_sse.errors import TokenLimitError
from qwen_sse.telemetry import (
    OPERATION_DURATION,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_CHUNK,
    TOKEN_USAGE,
)
from qwen_sse.tokens import count_tokens, message_token_count
from tests.redisserver import running_redis
from tests.served import served

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)]


def test_quick_start_is_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    assert 'qwen-sse chat --mock "你好"' in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_test_command_verbatim() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text("utf-8").splitlines()
    assert quick_start_commands()[1] in ci_lines


def test_no_figure_placeholder_is_left() -> None:
    assert "BENCHMARK_TABLES" not in (ROOT / "README.md").read_text("utf-8")


def python_examples() -> list[str]:
    readme = (ROOT / "README.md").read_text("utf-8")
    return re.findall(r"```python\n(.*?)```", readme, re.DOTALL)


def example(words: str) -> str:
    """The one README python example that contains ``words``."""
    (block,) = [block for block in python_examples() if words in block]
    return block


def test_every_python_example_is_run_below() -> None:
    ran = (
        "client.stream_chat(",
        'QwenClient(protocol="anthropic")',
        "RedisQuota(",
        "Telemetry(tracer_provider",
        "SSEDecoder(max_event_bytes",
        "count_tokens(",
    )
    assert len(python_examples()) == len(ran)
    for words in ran:
        example(words)


@pytest.fixture
async def dashscope(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Emulator]:
    """The emulator, standing in for the default region's endpoint; the key in the
    environment, as the examples expect."""
    async with Emulator(EmulatorConfig(api_key="sk-test", ttft_s=0, itl_s=0)) as emulator:
        origin = emulator.base_url.removesuffix(config.COMPATIBLE_ROOT)
        origins = {**config.REGION_ORIGINS, config.DEFAULT_REGION: origin}
        monkeypatch.setattr(config, "REGION_ORIGINS", origins)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
        monkeypatch.delenv("QWEN_API_KEY", raising=False)
        yield emulator


def run_example(code: str, namespace: dict[str, Any]) -> None:
    """Run an example as a script (it may call asyncio.run)."""
    exec(compile(code, "README.md", "exec"), namespace)


async def test_the_streaming_example_runs(
    dashscope: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    # In a thread: the example starts its own event loop, and this one serves it.
    await asyncio.to_thread(run_example, example("client.stream_chat("), {})
    streamed, thinking = dashscope.requests
    messages = [{"role": "user", "content": "你是谁？"}]
    assert streamed.body["messages"] == messages
    assert streamed.body["stream"] is True
    assert thinking.body["enable_thinking"] is True
    answer = emulated_answer(streamed.body)
    prompt_tokens = message_token_count(messages).tokens
    completion_tokens = count_tokens(answer.content)
    out = capsys.readouterr().out
    head = f"{answer.content}\n {prompt_tokens} {completion_tokens}\n"
    assert out.startswith(head)
    ttft_s, request_id = out[len(head) :].split()
    assert float(ttft_s) >= 0
    assert request_id == streamed.request_id
    assert [request.outcome for request in dashscope.requests] == ["completed", "completed"]


def test_the_streaming_example_runs_against_qwen_sse_serve_with_two_variables(
    tmp_path: Path,
) -> None:
    """The README's command, as written but for the port: the example, unchanged, in a
    fresh process, against the emulator served by ``qwen-sse serve``."""
    readme = (ROOT / "README.md").read_text("utf-8")
    (command,) = [line for line in readme.splitlines() if line.endswith(" python example.py")]
    *assignments, _, _ = command.split()
    variables = dict(assignment.split("=", 1) for assignment in assignments)
    assert sorted(variables) == ["DASHSCOPE_API_KEY", "DASHSCOPE_BASE_URL"]
    script = tmp_path / "example.py"
    script.write_text(example("client.stream_chat("), "utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("QWEN_API_KEY", "DASHSCOPE_API_KEY")}
    with served(variables["DASHSCOPE_API_KEY"]) as base_url:
        documented = variables["DASHSCOPE_BASE_URL"]
        assert documented.endswith(config.COMPATIBLE_ROOT)
        variables["DASHSCOPE_BASE_URL"] = base_url  # the port the test's server got
        env |= {**variables, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    messages = [{"role": "user", "content": "你是谁？"}]
    answer = emulated_answer({"model": "qwen-plus", "messages": messages}).content
    prompt_tokens = message_token_count(messages).tokens
    head = f"{answer}\n {prompt_tokens} {count_tokens(answer)}\n"
    assert done.stdout.startswith(head)
    assert done.stderr == ""


async def test_the_protocol_example_runs(
    dashscope: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    await asyncio.to_thread(run_example, example('QwenClient(protocol="anthropic")'), {})
    (request,) = dashscope.requests
    assert request.path == "/apps/anthropic/v1/messages"
    assert request.body["thinking"]["type"] == "enabled"
    assert request.outcome == "completed"
    out = capsys.readouterr().out
    assert out.rstrip().endswith("True")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of its own, on a free loopback port, stopped after the test."""
    with running_redis(tmp_path) as url:
        yield url


async def test_the_limiter_example_runs_against_redis(
    dashscope: Emulator, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = example("RedisQuota(")
    documented = "redis://127.0.0.1:6379/0"
    assert documented in code
    namespace: dict[str, Any] = {}
    run_example(code.replace(documented, redis_url), namespace)
    messages = [{"role": "user", "content": "你好"}]
    await asyncio.to_thread(asyncio.run, namespace["ask"](messages))
    (request,) = dashscope.requests
    assert request.body["model"] == "qwen-max"
    assert request.outcome == "completed"
    assert float(capsys.readouterr().out) >= 0
    # The quota was kept in Redis, where every process shares it.
    store = redis.Redis.from_url(redis_url)
    try:
        assert store.dbsize() > 0
    finally:
        store.close()


async def test_the_telemetry_example_prints_the_span_and_the_metrics(
    dashscope: Emulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The console exporters default to the sys.stdout of when their module was imported,
    # maybe before capsys replaced it: the example gets ones that write to today's.
    class SpanToStdout(trace_export.ConsoleSpanExporter):
        def __init__(self) -> None:
            super().__init__(out=sys.stdout)

    class MetricsToStdout(metrics_export.ConsoleMetricExporter):
        def __init__(self) -> None:
            super().__init__(out=sys.stdout)

    monkeypatch.setattr(trace_export, "ConsoleSpanExporter", SpanToStdout)
    monkeypatch.setattr(metrics_export, "ConsoleMetricExporter", MetricsToStdout)
    await asyncio.to_thread(run_example, example("Telemetry(tracer_provider"), {})
    (request,) = dashscope.requests
    assert request.body["temperature"] == 0.7
    assert request.outcome == "completed"
    out = capsys.readouterr().out
    assert '"name": "chat qwen-plus"' in out
    assert '"gen_ai.request.temperature": 0.7' in out
    for metric in (TOKEN_USAGE, OPERATION_DURATION, TIME_TO_FIRST_CHUNK, TIME_PER_OUTPUT_TOKEN):
        assert f'"name": "{metric}"' in out
    assert "sk-test" not in out


def test_the_decoder_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pieces = [b"event: update\nid: 7\nretry: 150", b"0\ndata: one\n\ndata: t", b"wo\n\ndata: cut"]
    run_example(example("SSEDecoder(max_event_bytes"), {"pieces_from_anywhere": pieces})
    assert capsys.readouterr().out == "update 7 1500 one\nmessage 7 None two\n"


def test_the_token_example_gives_the_counts_it_documents() -> None:
    code = example("count_tokens(")
    tree = ast.parse(code)
    lines = code.splitlines()
    namespace: dict[str, Any] = {"messages": [{"role": "user", "content": "你好" * 100_000}]}
    checked = 0
    for statement in tree.body:
        single = ast.Module(body=[statement], type_ignores=[])
        comment = lines[(statement.end_lineno or statement.lineno) - 1].partition("#")[2]
        if isinstance(statement, ast.Expr) and (number := re.match(r"\s*(\d+)\b", comment)):
            value = eval(compile(ast.Expression(statement.value), "README.md", "eval"), namespace)
            assert value == int(number[1]), ast.unparse(statement)
            checked += 1
        elif "raises TokenLimitError" in comment:
            with pytest.raises(TokenLimitError):
                exec(compile(single, "README.md", "exec"), namespace)
            checked += 1
        else:
            exec(compile(single, "README.md", "exec"), namespace)
    assert checked == 3
