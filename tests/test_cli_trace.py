"""Tests of ``qwen-sse trace``: the wire of a call against the emulator, faults flagged."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_sse import protocols
from qwen_sse.cli import main
from qwen_sse.emulator import FAULT_HEADER, Fault
from tests.served import served

SECRET = "sk-test-trace-secret-0123456789abcdef"


def trace_with(
    fault: Fault, capsys: pytest.CaptureFixture[str], *extra: str, status: int = 0
) -> str:
    header = f"{FAULT_HEADER}: {fault.to_json()}"
    assert (
        main(["trace", "--mock", "--max-tokens", "6", "--header", header, *extra, "hi"]) == status
    )
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("fault", "anomaly", "status"),
    [
        (Fault(stall_after_events=3, stall_s=0.4, keepalive_every_s=0.1), "!! stall:", 0),
        (Fault(no_done=True), "!! missing-end:", 1),
        (Fault(error_after_events=3), "!! in-band-error:", 1),
        (Fault(malformed_after_events=3), "!! broken-json:", 1),
    ],
    ids=["stall", "no-done", "in-band-error", "malformed"],
)
def test_each_fault_shows_its_anomaly(
    fault: Fault, anomaly: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    out = trace_with(fault, capsys, "--stall-ms", "250", "--max-attempts", "1", status=status)
    assert anomaly in out
    assert "=== summary" in out


def test_keep_alives_and_line_endings_are_visible(capsys: pytest.CaptureFixture[str]) -> None:
    fault = Fault(stall_after_events=2, stall_s=0.25, keepalive_every_s=0.05, line_ending="\r\n")
    out = trace_with(fault, capsys, "--stall-ms", "1000")
    assert ": comment ' keep-alive'" in out
    assert "\\r\\n" in out
    assert "anomalies: none" in out


def test_a_clean_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--mock", "--max-tokens", "4", "你好"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("=== attempt 1: POST http://127.0.0.1:")
    assert "  > Authorization: Bearer ***" in out
    assert "< HTTP 200" in out
    assert re.search(r"\[\s+\d+\.\d ms\] \+\d+ B", out)
    assert "event #1 message:" in out
    assert "[DONE]" in out
    assert "first byte" in out
    assert "anomalies: none" in out


@pytest.fixture
def served_with_secret_key() -> Iterator[str]:
    """``qwen-sse serve`` in a subprocess that accepts only SECRET; yields its base URL."""
    with served(SECRET) as base_url:
        yield base_url


def test_no_trace_or_recording_contains_the_key(
    served_with_secret_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", SECRET)
    record = tmp_path / "call.jsonl"
    args = ["trace", "--base-url", served_with_secret_key, "--record", str(record), "hi"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "complete: yes" in out
    assert main(["replay", str(record)]) == 0
    replayed, _ = capsys.readouterr()
    for text in (out, err, record.read_text("utf-8"), replayed):
        assert SECRET not in text
        assert SECRET[10:] not in text
    assert "Bearer ***" in record.read_text("utf-8")


def test_the_key_from_another_variable_with_the_wire_log_on(
    served_with_secret_key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-wrong")
    monkeypatch.setenv("OTHER_KEY", SECRET)
    monkeypatch.setenv("QWEN_SSE_LOG", "debug")
    monkeypatch.setenv("QWEN_SSE_LOG_CONTENT", "1")
    args = ["trace", "--base-url", served_with_secret_key, "--api-key-env", "OTHER_KEY", "hi"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "complete: yes" in out
    assert " INFO qwen_sse.wirelog: call " in err
    assert "-> 200, request id " in err
    assert "Authorization: Bearer ***" in err
    assert "data: [DONE]" in err
    for text in (out, err):
        assert SECRET not in text
        assert SECRET[10:] not in text


def test_an_unwritable_recording_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--mock", "--record", "/nonexistent/dir/r.jsonl", "hi"]) == 2
    assert "cannot write /nonexistent/dir/r.jsonl" in capsys.readouterr().err


def test_a_native_trace_against_the_emulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--native", "--mock", "--max-tokens", "4", "hi"]) == 0
    out = capsys.readouterr().out
    assert "POST http://127.0.0.1:" in out
    assert "/api/v1/services/aigc/text-generation/generation" in out
    assert "  > X-DashScope-SSE: enable" in out
    assert "    | id:1\\n" in out
    assert "    | event:result\\n" in out
    assert ": comment 'HTTP_STATUS/200'" in out
    assert "event #1 result id=1:" in out
    assert "event #5 result id=5:" in out
    assert '"finish_reason":"length"' in out
    assert "[DONE]" not in out
    assert "complete: yes" in out
    assert "anomalies: none" in out


def test_a_native_error_frame_shows_as_an_in_band_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = trace_with(
        Fault(error_after_events=2), capsys, "--native", "--max-attempts", "1", status=1
    )
    assert "    | event:error\\n" in out
    assert ": comment 'HTTP_STATUS/400'" in out
    assert "event #3 error id=3:" in out
    assert "!! in-band-error:" in out
    assert "DataInspectionFailed" in out
    assert "!! missing-end" not in out


@pytest.mark.parametrize("protocol", protocols.NAMES)
def test_every_protocol_traces_clean_and_flags_a_missing_end(
    protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", "--mock", "--protocol", protocol, "--max-tokens", "4", "你好"]) == 0
    out = capsys.readouterr().out
    wire = protocols.get(protocol)
    assert f"{wire.root}{wire.path}" in out.splitlines()[0]
    assert "anomalies: none" in out
    assert "complete: yes" in out
    cut = trace_with(Fault(no_done=True), capsys, "--protocol", protocol, status=1)
    assert f"!! missing-end: the stream ended without {wire.end_marker}" in cut
