"""Tests of ``qwen-sse chat``: streaming to the terminal, JSON lines, and error lines."""

from __future__ import annotations

import json

import pytest

from qwen_sse.cli import main
from qwen_sse.emulator import emulated_answer


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


def test_bad_param_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--param", "novalue", "hi"]) == 2
    assert "KEY=JSON" in capsys.readouterr().err


def test_invalid_retry_option_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--mock", "--max-attempts", "0", "hi"]) == 2
    assert "max_attempts must be at least 1" in capsys.readouterr().err


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
