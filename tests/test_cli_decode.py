"""Tests of ``qwen-sse decode``: offline decoding of saved streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_sse.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_decode_prints_answer_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", str(FIXTURES / "compat-plain-zh.sse")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "我是来自阿里云的超大规模语言模型，我叫通义千问。"
    assert "prompt_tokens=22 completion_tokens=17 total_tokens=39" in err


def test_decode_events_shows_comments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--events", str(FIXTURES / "native-plain.sse")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"comment": {"text": "HTTP_STATUS/200"}}
    events = [line["event"] for line in lines if "event" in line]
    assert events[0]["event"] == "result"
    assert events[0]["id"] == "1"


def test_decode_json_prints_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--json", str(FIXTURES / "compat-plain-en.sse")]) == 0
    chunks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("error" not in chunk for chunk in chunks)


def test_truncated_stream_prints_what_arrived_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (FIXTURES / "compat-plain-zh.sse").read_bytes()
    cut = tmp_path / "cut.sse"
    cut.write_bytes(data[: len(data) // 2])
    assert main(["decode", str(cut)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("我是")
    assert "without data: [DONE]" in err


def test_unreadable_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "/nonexistent/stream.sse"]) == 2
    assert "cannot read /nonexistent/stream.sse" in capsys.readouterr().err


def test_done_without_a_finish_reason_prints_what_arrived_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # How llama.cpp's server ends an interrupted stream: text, no finish reason, [DONE].
    frames = [
        {"id": "chatcmpl-x", "choices": [{"index": 0, "delta": {"content": text}}]}
        for text in ("half ", "an answer")
    ]
    body = "".join(f"data: {json.dumps(frame)}\n\n" for frame in frames) + "data: [DONE]\n\n"
    saved = tmp_path / "interrupted.sse"
    saved.write_text(body)
    assert main(["decode", str(saved)]) == 1
    out, err = capsys.readouterr()
    assert out == "half an answer\n"
    summary, error = err.splitlines()
    assert summary == "finish_reason=None events=3"
    assert error == (
        "qwen-sse decode: stream ended with data: [DONE] but choice 0 has no finish_reason"
        f" (3 events, {len(body)} bytes)"
    )


def test_decode_reads_each_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--protocol", "anthropic", str(FIXTURES / "anthropic-basic.sse")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "Hello!"
    assert "finish_reason=stop" in err
    assert main(["decode", "--protocol", "native", str(FIXTURES / "native-plain.sse")]) == 0
    assert "finish_reason=stop" in capsys.readouterr().err


def test_decode_checks_the_stream_against_its_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One choice of the two that n=2 asked for: the answer is cut, whatever [DONE] says.
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": "qwen-plus", "messages": [], "n": 2}))
    stream = str(FIXTURES / "compat-plain-en.sse")
    assert main(["decode", stream]) == 0
    capsys.readouterr()
    assert main(["decode", "--request", str(request), stream]) == 1
    assert "choice 1 has no finish_reason" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["decode", "--request", str(bad), stream]) == 2
    assert "not a JSON object" in capsys.readouterr().err


def test_decode_names_the_anthropic_end_marker_when_it_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (FIXTURES / "anthropic-basic.sse").read_text("utf-8")
    cut = tmp_path / "cut.sse"
    cut.write_text(text[: text.index("event: message_stop")], "utf-8")
    assert main(["decode", "--protocol", "anthropic", str(cut)]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == "Hello!"
    assert "stream ended without message_stop" in err
