"""Tests of the ``qwen-sse`` entry point (qwen_sse.cli): what every command shares: the log
on stderr, that no option takes a key, --version, help for every option, and errors on one
line (usage errors and failures no command expected included)."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import qwen_sse
from qwen_sse import cli
from qwen_sse.cli import build_parser, main
from qwen_sse.cli.chat import RefuseKeyValue, env_var_name
from qwen_sse.emulator import FAULT_HEADER, Fault


def test_retries_show_on_stderr_and_the_logging_is_restored_after(
    capsys: pytest.CaptureFixture[str],
) -> None:
    package = logging.getLogger("qwen_sse")
    before = (package.level, package.handlers[:])
    header = f"{FAULT_HEADER}: {Fault(status=503, retry_after_ms='1').to_json()}"
    assert main(["chat", "--mock", "--header", header, "--max-attempts", "2", "hi"]) == 1
    err = capsys.readouterr().err
    assert " WARNING qwen_sse.client: retrying in 0.00 s (attempt 2 of 2): HTTP 503" in err
    assert "qwen_sse.wirelog" not in err
    assert (package.level, package.handlers) == before


def test_qwen_sse_log_shows_every_attempt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QWEN_SSE_LOG", "info")
    assert main(["chat", "--mock", "--max-tokens", "3", "hi"]) == 0
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "wirelog" in line]
    assert " INFO qwen_sse.wirelog: call " in line
    assert "/compatible-mode/v1/chat/completions -> 200, request id " in line
    assert line.endswith(": ok")


def test_an_unknown_log_switch_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QWEN_SSE_LOG", "loud")
    assert main(["chat", "--mock", "hi"]) == 2
    assert capsys.readouterr().err == "qwen-sse: QWEN_SSE_LOG='loud' is not one of debug, info\n"


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    found = {option: action for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= {f"{name} {o}": a for o, a in _options(sub).items()}
    return found


def test_no_option_takes_a_key() -> None:
    """A key on the command line stays in the shell history and shows in ``ps``: options
    name the variable that holds it, and ``--api-key`` exists only to refuse one."""
    with_key = {o: a for o, a in _options(build_parser()).items() if "key" in o.split()[-1]}
    commands = {o.split()[0] for o in with_key}
    assert {"chat", "trace", "bench", "serve"} <= commands
    for option, action in with_key.items():
        name = option.split()[-1]
        if name == "--api-key":
            assert isinstance(action, RefuseKeyValue)
        elif name == "--api-key-env":
            assert action.type is env_var_name
        else:
            assert name == "--any-key"
            assert action.nargs == 0


ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qwen_sse", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=True,
    )
    assert done.stdout == f"qwen-sse {cli.version()}\n"
    assert done.stderr == ""


def test_version_is_the_installed_one_else_the_source_trees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def installed(name: str) -> str:
        assert name == "qwen-sse"
        return "9.8.7"

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", installed)
    assert cli.version() == "9.8.7"
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.version() == qwen_sse.__version__


def test_every_option_has_help() -> None:
    undocumented = [
        option
        for option, action in _options(build_parser()).items()
        if not action.help or not action.help.strip()
    ]
    # --api-key exists only to be refused, so help leaves it out (SUPPRESS is its help).
    assert undocumented == []


def test_a_usage_error_is_one_line_pointing_at_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tokens", "--model"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "qwen-sse tokens: error: argument --model: expected one argument "
        "(see qwen-sse tokens --help)\n"
    )


def test_a_failure_no_command_expected_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(cli.tokens, "run", broken)
    assert main(["tokens", "x"]) == 1
    assert capsys.readouterr().err == (
        "qwen-sse tokens: unexpected RuntimeError: first line second line (please report it; "
        "QWEN_SSE_LOG=debug shows the traceback)\n"
    )
    monkeypatch.setenv("QWEN_SSE_LOG", "debug")
    assert main(["tokens", "x"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err  # asked for
    assert 'raise RuntimeError("first line' in err
