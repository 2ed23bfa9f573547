"""Tests of qwen_sse.cli.words: every library message a command-line user can meet comes out
naming the option to change, with no Python spelling left."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from qwen_sse.cli import main
from qwen_sse.cli.words import error_line, in_cli_words
from qwen_sse.config import Timeouts, check_transport_security, resolve_api_key, resolve_base_url
from qwen_sse.debugproxy import DebugProxy
from qwen_sse.emulator import FAULT_HEADER, EmulatorConfig, Fault
from qwen_sse.errors import ConfigurationError
from qwen_sse.retry import RetryPolicy

# What would tell a CLI user to edit Python: an argument's name, ``=True``, ``=...``, None.
PYTHON_SPELLING = re.compile(r"\b[a-z]+_[a-z_]+\b|=True|=\.\.\.|\bNone\b")

# The library's errors that a command can pass on, and the option each must name.
REACHABLE: list[tuple[Callable[[], object], str]] = [
    (
        lambda: check_transport_security("http://example.com/v1", allow_insecure_http=False),
        "pass --allow-insecure-http if this network is trusted",
    ),
    (
        lambda: resolve_api_key(None, {}),
        "set DASHSCOPE_API_KEY (or QWEN_API_KEY), or name the variable that holds it with "
        "--api-key-env",
    ),
    (lambda: resolve_base_url("ftp://host", None), "--base-url must be an http(s) URL"),
    (
        lambda: resolve_base_url("https://u:pw@example.com/v1", None),
        "--base-url must not carry a user name or password",
    ),
    (lambda: resolve_base_url("https://example.com:99999/v1", None), "--base-url must have a port"),
    (
        lambda: resolve_base_url(
            None, None, root="/api/v1", environ={"DASHSCOPE_BASE_URL": "http://h/v1"}
        ),
        "pass --base-url for this protocol",
    ),
    (lambda: RetryPolicy(max_attempts=0), "--max-attempts must be at least 1, got 0"),
    (
        lambda: Timeouts(connect_s=-1),
        "--connect-timeout must be positive, or 0 to switch it off, got -1",
    ),
    (lambda: Timeouts(first_token_s=-1), "--first-token-timeout must be positive"),
    (lambda: Timeouts(idle_s=-1), "--idle-timeout must be positive"),
    (lambda: Timeouts(total_s=-1), "--total-timeout must be positive"),
    (lambda: EmulatorConfig(answer_tokens=0), "--answer-tokens must be at least 1"),
    (lambda: EmulatorConfig(backlog=0), "--backlog must be at least 1"),
    (
        lambda: EmulatorConfig(context_cache_entries=-1),
        "--context-cache-entries must be at least 0",
    ),
    (
        lambda: DebugProxy("https://example.com", host="0.0.0.0"),
        "pass --allow-remote if that is meant",
    ),
]


@pytest.mark.parametrize(("raise_it", "words"), REACHABLE)
def test_every_reachable_message_names_its_option(
    raise_it: Callable[[], object], words: str
) -> None:
    # A ConfigurationError, or the emulator's ValueError: both are ValueErrors.
    with pytest.raises(ValueError, match=r"\w") as caught:
        raise_it()
    translated = in_cli_words(str(caught.value))
    assert words in translated
    assert PYTHON_SPELLING.findall(translated) == []


def test_the_detector_sees_python_spellings() -> None:
    error = ConfigurationError("refusing ...; pass allow_insecure_http=True if trusted")
    assert PYTHON_SPELLING.findall(str(error)) == ["allow_insecure_http", "=True"]
    assert PYTHON_SPELLING.findall("set DASHSCOPE_API_KEY, or --api-key-env NAME") == []


def test_commands_refuse_plain_http_in_their_words(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    for command in ("chat", "trace"):
        assert main([command, "--base-url", "http://example.com/v1", "hi"]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == (
            "qwen-sse: error: refusing to send the API key over plain http to example.com; use "
            "https, or pass --allow-insecure-http if this network is trusted"
        )
    assert main(["bench", "--base-url", "http://example.com/v1", "--requests", "1"]) == 2
    assert "pass --allow-insecure-http if" in capsys.readouterr().err


def test_a_base_url_from_the_environment_that_cannot_serve_a_protocol(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "http://127.0.0.1:9/v1")
    assert main(["chat", "--protocol", "anthropic", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qwen-sse: error: DASHSCOPE_BASE_URL (http://127.0.0.1:9/v1) is ")
    assert err.endswith("pass --base-url for this protocol\n")


def test_a_note_about_the_total_timeout_names_the_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault = Fault(status=503, retry_after="30")
    header = f"{FAULT_HEADER}: {fault.to_json()}"
    assert main(["chat", "--mock", "--header", header, "--total-timeout", "5", "hi"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("(not retried: waiting 30 s would pass --total-timeout 5)")


def test_an_error_line_is_one_line_in_the_command_lines_words() -> None:
    message = "refusing ...;\n  pass allow_insecure_http=True\r\nif trusted\t(really)"
    assert error_line("qwen-sse chat", ConfigurationError(message)) == (
        "qwen-sse chat: refusing ...; pass --allow-insecure-http if trusted (really)"
    )


def test_a_message_with_line_breaks_prints_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "two\nlines.sse"
    assert main(["decode", str(missing)]) == 2
    assert main(["replay", str(missing)]) == 2
    assert main(["tokens", "--messages", str(missing)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert all(f"{tmp_path}/two lines.sse" in line for line in lines)
