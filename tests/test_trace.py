"""Tests of qwen_sse.trace: the trace view and each anomaly it flags, on synthetic wires."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from qwen_sse.trace import TraceView

HEADERS = {"content-type": "text/event-stream", "x-request-id": "rid-trace"}


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-rid-trace",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


def usage_chunk(completion_tokens: int) -> bytes:
    usage = {"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 99}
    return f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()


def trace(
    reads: list[tuple[float, bytes]], *, protocol: str = "compatible"
) -> tuple[TraceView, str]:
    out = io.StringIO()
    view = TraceView(out, protocol=protocol, stall_ms=500)
    view.request(
        method="POST", url="http://x/v1", headers={"Authorization": "Bearer ***"}, body=b"{}"
    )
    view.response(status=200, headers=HEADERS, at_s=0.01)
    for at_s, data in reads:
        view.data(data, at_s)
    view.end(at_s=reads[-1][0] if reads else 0.0, outcome="ok", error=None)
    out.write(view.summary())
    return view, out.getvalue()


def kinds(view: TraceView) -> list[str]:
    return [anomaly.kind for anomaly in view.anomalies]


def test_a_clean_stream_has_no_anomalies_and_a_full_summary() -> None:
    view, text = trace(
        [
            (0.10, chunk("")),
            (0.20, chunk("你好")),
            (0.25, chunk("世界") + chunk("", "stop")),
            (0.30, usage_chunk(2) + b"data: [DONE]\n\n"),
        ]
    )
    assert kinds(view) == []
    assert "event #2 message:" in text
    assert "first byte 100.0 ms, first token 200.0 ms" in text
    assert "usage: prompt 5, completion 2" in text
    assert "request id rid-trace" in text
    assert "anomalies: none" in text
    assert "complete: yes" in text


def test_line_endings_and_comments_are_shown() -> None:
    _, text = trace([(0.1, b": keep-alive\r\n" + chunk("a").replace(b"\n", b"\r"))])
    assert "| : keep-alive\\r\\n" in text
    assert ": comment ' keep-alive'" in text
    assert '"content":"a"' in text
    assert "\\r" in text


def test_stall() -> None:
    view, _ = trace([(0.1, chunk("a")), (1.5, chunk("b", "stop") + b"data: [DONE]\n\n")])
    assert kinds(view) == ["stall"]
    assert view.anomalies[0].at_ms == 1500


def test_missing_done() -> None:
    view, _ = trace([(0.1, chunk("a", "stop"))])
    assert kinds(view) == ["missing-end"]


def test_native_streams_need_no_done() -> None:
    frame = {
        "output": {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]},
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    data = f"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(frame)}\n\n".encode()
    view, text = trace([(0.1, data)], protocol="native")
    assert kinds(view) == []
    assert "comment 'HTTP_STATUS/200'" in text


def test_in_band_error() -> None:
    error = b'data: {"error": {"code": "data_inspection_failed", "message": "m"}}\n\n'
    view, _ = trace([(0.1, chunk("a")), (0.2, error)])
    assert "in-band-error" in kinds(view)


def test_joined_frames() -> None:
    joined = b'data: {"choices": []}\ndata: {"choices": []}\n\n'
    view, _ = trace([(0.1, joined + b"data: [DONE]\n\n")])
    assert kinds(view) == ["joined-frames"]


def test_json_broken_by_a_raw_line_feed() -> None:
    broken = b'data: {"choices": [{"delta":\n{"content": "x"}}]}\n\n'
    view, _ = trace([(0.1, broken + b"data: [DONE]\n\n")])
    assert kinds(view) == ["stray-line", "broken-json"]
    assert "raw line feed" in view.anomalies[1].detail


def test_non_utf8_bytes_but_not_a_character_split_across_reads() -> None:
    text_chunk = chunk("通义", "stop")
    cut = text_chunk.index("通".encode()) + 1
    view, _ = trace([(0.1, text_chunk[:cut]), (0.2, text_chunk[cut:] + b"data: [DONE]\n\n")])
    assert kinds(view) == []
    view, _ = trace([(0.1, b'data: {"x": "\xff"}\n\n' + b"data: [DONE]\n\n")])
    assert "non-utf8" in kinds(view)


def test_usage_that_contradicts_the_text() -> None:
    view, _ = trace(
        [(0.1, chunk("three words here", "stop") + usage_chunk(40) + b"data: [DONE]\n\n")]
    )
    assert kinds(view) == ["usage-mismatch"]
    assert "completion_tokens is 40" in view.anomalies[0].detail


def test_summary_has_gap_percentiles() -> None:
    reads = [(0.1 + n * 0.05, chunk(f"w{n}")) for n in range(10)]
    reads.append((0.7, chunk("", "stop") + b"data: [DONE]\n\n"))
    _, text = trace(reads)
    assert "inter-token gaps ms: p50 50.0" in text


def test_done_without_a_finish_reason() -> None:
    # llama.cpp's server ends an interrupted stream so: text, no finish reason, [DONE].
    view, text = trace([(0.1, chunk("half")), (0.2, chunk(" an answer") + b"data: [DONE]\n\n")])
    assert kinds(view) == ["end-without-finish"]
    assert view.anomalies[0].at_ms == 200
    assert view.anomalies[0].detail.startswith(
        "the answer is truncated: stream ended with "
        "data: [DONE] but choice 0 has no finish_reason (3 events,"
    )
    assert "complete: no" in text
    assert "anomalies: end-without-finish" in text


def test_done_as_the_only_event_is_flagged() -> None:
    view, _ = trace([(0.1, b"data: [DONE]\n\n")])
    assert kinds(view) == ["end-without-finish"]
    assert "no choice arrived" in view.anomalies[0].detail


def test_a_native_stream_without_a_finish_reason() -> None:
    frame = {
        "output": {"choices": [{"message": {"content": "hi"}, "finish_reason": "null"}]},
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    data = f"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(frame)}\n\n".encode()
    view, text = trace([(0.1, data)], protocol="native")
    assert kinds(view) == ["missing-end"]
    assert "complete: no" in text


def test_json_nested_too_deep_is_flagged_not_raised() -> None:
    # A wire tap must not raise: the trace shows such a frame as broken JSON.
    deep = "[" * 100_000 + "]" * 100_000
    for lines in ([deep], [deep, deep]):  # one frame, two joined by a single LF
        wire = "".join(f"data: {line}\n" for line in lines) + "\n"
        view, text = trace([(0.1, wire.encode())])
        assert kinds(view)[0] == "broken-json"
        assert "event #1 message:" in text


FIXTURES = Path(__file__).parent / "fixtures"


def anthropic_events(text: str) -> list[bytes]:
    """The events of Anthropic's documented text stream, each with its blank line; its
    ``output_tokens`` (15, Claude's count for "Hello!") made Qwen's (2), so that only the
    anomaly under test shows."""
    text = text.replace('"output_tokens": 15', '"output_tokens": 2')
    return [block + b"\n\n" for block in text.encode().split(b"\n\n") if block.strip()]


def test_usage_that_contradicts_an_anthropic_text_is_flagged() -> None:
    raw = (FIXTURES / "anthropic-basic.sse").read_text("utf-8")
    events = [block + b"\n\n" for block in raw.encode().split(b"\n\n") if block.strip()]
    view, _ = trace([(0.1 + n / 100, e) for n, e in enumerate(events)], protocol="anthropic")
    assert kinds(view) == ["usage-mismatch"]
    assert "is 15 but the streamed text is 2 tokens" in view.anomalies[0].detail


def test_a_documented_anthropic_stream_is_clean() -> None:
    events = anthropic_events((FIXTURES / "anthropic-basic.sse").read_text("utf-8"))
    view, text = trace([(0.1 + n / 100, e) for n, e in enumerate(events)], protocol="anthropic")
    assert kinds(view) == []
    assert "complete: yes" in text


def test_an_anthropic_content_block_never_stopped_is_flagged() -> None:
    events = anthropic_events((FIXTURES / "anthropic-basic.sse").read_text("utf-8"))
    unstopped = [e for e in events if not e.startswith(b"event: content_block_stop")]
    view, text = trace([(0.1 + n / 100, e) for n, e in enumerate(unstopped)], protocol="anthropic")
    assert kinds(view) == ["protocol-error"]
    assert "content block 0 was never stopped" in view.anomalies[0].detail
    assert "complete: no" in text


def test_an_anthropic_stream_without_message_stop_is_missing_its_end() -> None:
    events = anthropic_events((FIXTURES / "anthropic-basic.sse").read_text("utf-8"))
    cut = [e for e in events if not e.startswith(b"event: message_stop")]
    view, _ = trace([(0.1 + n / 100, e) for n, e in enumerate(cut)], protocol="anthropic")
    assert kinds(view) == ["missing-end"]
    assert view.anomalies[0].detail == "the stream ended without message_stop"


def test_a_responses_delta_before_its_item_is_flagged() -> None:
    created = {"type": "response.created", "response": {"id": "r1", "output": []}}
    delta = {"type": "response.output_text.delta", "item_id": "msg_9", "delta": "hi"}
    reads = [
        (0.1, f"event: response.created\ndata: {json.dumps(created)}\n\n".encode()),
        (0.2, f"event: response.output_text.delta\ndata: {json.dumps(delta)}\n\n".encode()),
    ]
    view, _ = trace(reads, protocol="responses")
    assert kinds(view) == ["protocol-error"]
    assert "response.output_text.delta" in view.anomalies[0].detail


def error_trace(body: bytes) -> str:
    """The summary of one attempt answered HTTP 500 with ``body`` (handed over whole, as
    the client hands an error body to its tap, even an empty one)."""
    out = io.StringIO()
    view = TraceView(out, stall_ms=500)
    view.request(method="POST", url="http://x/v1", headers={}, body=b"{}")
    view.response(status=500, headers={"content-type": "application/json"}, at_s=0.0109)
    view.data(body, 0.0109)
    view.end(at_s=0.0109, outcome="error", error=None)
    return view.summary()


def test_an_empty_body_has_no_first_byte() -> None:
    summary = error_trace(b"")
    assert "attempts 1, 0 B, 0 events" in summary
    assert "no body, first token -" in summary
    assert "first byte" not in summary


def test_an_error_body_counts_its_bytes() -> None:
    body = b'{"error": {"message": "boom"}}'
    summary = error_trace(body)
    assert f"attempts 1, {len(body)} B, 0 events" in summary
    assert "first byte 10.9 ms, first token -" in summary


QUIET_WIRES = [
    [(0.1, chunk("a")), (1.5, chunk("b", "stop") + b"data: [DONE]\n\n")],
    [(0.1, b'data: {"choices": []}\ndata: {"choices": []}\n\n' + b"data: [DONE]\n\n")],
    [(0.1, b'data: {"choices": [{"delta":\n{"content": "x"}}]}\n\n' + b"data: [DONE]\n\n")],
    [(0.1, b'data: {"x": "\xff"}\n\n' + b": keep-alive\n\n" + b"data: [DONE]\n\n")],
    [(0.1, chunk("half")), (0.2, chunk(" an answer") + b"data: [DONE]\n\n")],
    [(0.1, chunk("three words here", "stop") + usage_chunk(40) + b"data: [DONE]\n\n")],
    [(0.1, chunk("a")), (0.2, b'data: {"error": {"code": "c", "message": "m"}}\n\n')],
    [(0.1, chunk("a", "stop"))],
    # Lines the quiet view's fast path must not pass: an unknown field, half a field name,
    # a line cut by a read, CR line endings, a character split across reads.
    [(0.1, b"datax: 1\n" + chunk("a", "stop") + b"data: [DONE]\n\n")],
    [(0.1, b"dat\n\n" + chunk("a", "stop")), (0.2, b"retry: 5\nid: 3\ndata: [DONE]\n\n")],
    [(0.1, chunk("a")[:9]), (0.2, b"x" + chunk("a")[9:]), (0.3, b"data: [DONE]\n\n")],
    [(0.1, b"x: 1\r" + chunk("a", "stop").replace(b"\n", b"\r") + b"data: [DONE]\n\n")],
    [(0.1, chunk("通义", "stop")[:-12]), (0.2, b"\xff" + chunk("通义", "stop")[-12:])],
]


def test_a_quiet_view_prints_nothing_and_checks_the_same() -> None:
    """Without an output (the debugging proxy's tee) the view flags the same anomalies,
    at the same times, and decodes the same result."""
    for reads in QUIET_WIRES:
        loud, _ = trace(reads)
        quiet = TraceView(None, stall_ms=500)
        quiet.request(method="POST", url="http://x/v1", headers={}, body=b"{}")
        quiet.response(status=200, headers=HEADERS, at_s=0.01)
        for at_s, data in reads:
            quiet.data(data, at_s)
        quiet.end(at_s=reads[-1][0], outcome="ok", error=None)
        assert quiet.anomalies == loud.anomalies
        assert quiet.anomalies, reads
        assert quiet.result == loud.result
        assert quiet.summary() == loud.summary()
