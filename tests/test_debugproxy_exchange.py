"""Tests of qwen_sse.debugproxy.exchange: one exchange's live lines, summary and recording,
from synthetic wires (no sockets: the view is handed what the server would hand it)."""

from __future__ import annotations

import io
import json
from typing import Any

from qwen_sse import protocols
from qwen_sse.debugproxy.exchange import ExchangeSummary, ExchangeView
from qwen_sse.debugproxy.secrets import Secrets
from qwen_sse.errors import StreamInterruptedError
from qwen_sse.recording import load_recording

KEY = "sk-test-proxy-1234"
BODY = {"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def frame(content: str | None, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return f"data: {json.dumps({'id': 'chatcmpl-x', 'choices': [choice]})}\n\n".encode()


def view(out: io.StringIO | None, **options: Any) -> ExchangeView:
    return ExchangeView(
        7,
        method="POST",
        path="/compatible-mode/v1/chat/completions",
        protocol=protocols.get("compatible"),
        secrets=Secrets({"Authorization": f"Bearer {KEY}"}),
        out=out,
        **options,
    )


def run(
    exchange: ExchangeView,
    reads: list[tuple[float, bytes]],
    *,
    status: int = 200,
    content_type: str = "text/event-stream",
    outcome: str = "ok",
) -> ExchangeSummary:
    exchange.request(
        url="https://upstream/compatible-mode/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        body=json.dumps(BODY).encode(),
    )
    exchange.response(
        status=status, headers={"Content-Type": content_type, "x-request-id": "rid-7"}, at_s=0.01
    )
    for at_s, data in reads:
        exchange.data(data, at_s)
    return exchange.end(at_s=reads[-1][0] if reads else 0.02, outcome=outcome)


def test_a_stream_has_a_start_line_and_a_summary_line() -> None:
    out = io.StringIO()
    reads = [(0.1 + n * 0.05, frame(f"w{n}")) for n in range(5)]
    reads.append((0.5, frame("", "stop") + b"data: [DONE]\n\n"))
    summary = run(view(out), reads)
    start, end = out.getvalue().splitlines()
    assert start == "[#7] POST /compatible-mode/v1/chat/completions (compatible, qwen-plus)"
    assert end.startswith("[#7] 200 compatible qwen-plus complete: 7 events, ")
    assert "head 10.0 ms, first byte 100.0 ms, first token 100.0 ms" in end
    assert "gaps p50 50.0 p90 50.0 p99 50.0 max 50.0 ms" in end
    assert end.endswith("request id rid-7, anomalies: none")
    assert summary.line() == end
    assert (summary.kind, summary.complete, summary.events) == ("stream", True, 7)
    assert summary.result is not None
    assert summary.result.content == "w0w1w2w3w4"
    assert summary.bytes == sum(len(data) for _, data in reads)


def test_anomalies_show_as_they_happen_and_in_the_summary() -> None:
    out = io.StringIO()
    summary = run(view(out, stall_ms=100), [(0.1, frame("a")), (0.9, frame("b", "stop"))])
    lines = out.getvalue().splitlines()
    assert lines[1] == "[#7] !! stall: 0.80 s without a byte"
    assert lines[2] == "[#7] !! missing-end: the stream ended without data: [DONE]"
    assert lines[3].endswith("anomalies: missing-end, stall")
    assert [anomaly.kind for anomaly in summary.anomalies] == ["stall", "missing-end"]


def test_an_error_status_and_a_whole_json_answer() -> None:
    error = b'{"error": {"code": "limit_requests", "message": "slow\\ndown"}}'
    summary = run(view(None), [(0.1, error)], status=429, content_type="application/json")
    assert (summary.kind, summary.error, summary.complete) == (
        "error",
        "limit_requests: slow down",
        None,
    )
    assert "429 compatible qwen-plus limit_requests: slow down" in summary.line()
    answer = b'{"id": "x", "choices": [{"message": {"content": "hi"}}]}'
    summary = run(view(None), [(0.1, answer)], content_type="application/json")
    assert (summary.kind, summary.anomalies, summary.result) == ("json", (), None)
    in_band = b'{"code": "DataInspectionFailed", "message": "bad"}'
    summary = run(view(None), [(0.1, in_band)], content_type="application/json")
    assert [anomaly.kind for anomaly in summary.anomalies] == ["in-band-error"]


def test_the_fault_and_the_cut_show(tmp_path: Any) -> None:
    path = tmp_path / "cut.jsonl"
    exchange = view(None, fault='{"drop_after_events":1}', recording=path.open("w"))
    exchange.request(url="https://u/x", headers={}, body=json.dumps(BODY).encode())
    exchange.response(status=200, headers={"content-type": "text/event-stream"}, at_s=0.0)
    exchange.data(frame("a"), 0.1)
    summary = exchange.end(
        at_s=0.2, outcome="fault", error=StreamInterruptedError(f"cut ({KEY} in a message)")
    )
    assert summary.line().endswith("anomalies: missing-end")
    assert (
        "200 compatible qwen-plus cut (sk-*************** in a message) (the proxy's fault): "
        "1 events" in summary.line()
    )
    [attempt] = load_recording(path)
    assert (attempt.error_type, attempt.outcome) == ("StreamInterruptedError", "error")
    assert attempt.error is not None
    assert KEY not in attempt.error
    assert KEY not in path.read_text()


class BrokenFile(io.StringIO):
    """A recording on a full disk: the third write fails."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes >= 3:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_a_recording_that_fails_stops_but_the_exchange_goes_on() -> None:
    out = io.StringIO()
    summary = run(
        view(out, recording=BrokenFile()),
        [(0.1, frame("a", "stop")), (0.2, b"data: [DONE]\n\n")],
    )
    assert "[#7] !! record-failed: the recording stopped: No space left on device" in (
        out.getvalue()
    )
    assert (summary.complete, [a.kind for a in summary.anomalies]) == (True, ["record-failed"])


def test_the_verbose_view_is_the_trace_view_prefixed_with_the_key_masked() -> None:
    out = io.StringIO()
    echo = f'data: {{"choices": [], "note": "{KEY}"}}\n\n'.encode()
    cut = echo.index(KEY.encode()) + 5
    run(view(out, verbose=True), [(0.1, echo[:cut]), (0.2, echo[cut:] + b"data: [DONE]\n\n")])
    text = out.getvalue()
    assert KEY not in text
    assert "[#7] === attempt 1: POST https://upstream/compatible-mode/v1/chat/completions" in text
    assert "[#7]   > Authorization: Bearer ***" in text
    assert "[#7]     -- event #1 message: " in text
    assert "sk-***************" in text
    assert all(line.startswith("[#7] ") for line in text.splitlines())


def test_only_max_stream_bytes_are_watched() -> None:
    summary = run(view(None, max_stream_bytes=20), [(0.1, frame("a", "stop"))])
    # Not "missing-end": the end was forwarded, not watched.
    assert [anomaly.kind for anomaly in summary.anomalies] == ["tee-limit"]
    assert summary.bytes == len(frame("a", "stop"))
