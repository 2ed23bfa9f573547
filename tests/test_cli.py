"""Tests of the ``qwen-sse`` entry point (qwen_sse.cli): what every command shares: the log
on stderr and that no option takes a key."""

from __future__ import annotations

import argparse
import logging

import pytest

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
