"""The summary table and the JSON, JSONL and CSV files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import msgspec

from qwen_sse.bench.metrics import RequestRecord, Slo
from qwen_sse.bench.report import (
    format_summary,
    format_sweep,
    saturation_banner,
    write_csv,
    write_json,
    write_jsonl,
)
from qwen_sse.bench.schema import CSV_COLUMNS
from tests.bench_documents import made_up_result


def test_the_table_reads_like_vllms() -> None:
    summary = made_up_result(slo=Slo(ttft_ms=120)).summary
    text = format_summary(summary)
    lines = text.splitlines()
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[-1] == "=" * 50
    for label in (
        "Successful requests:                     38",
        "Failed requests:                         2",
        "Request throughput (req/s):",
        "Request goodput (req/s):",
        "  under SLOs:                            ttft <= 120 ms",
        "Output token throughput (tok/s):",
        "Total token throughput (tok/s):",
        "---------------Time to First Token----------------",
        "Median TTFT (ms):",
        "P99 ITL (ms):",
        "-----Time per Output Token (excl. 1st token)------",
        "----------------End-to-end Latency----------------",
        "RateLimitError:                          2",
        "Event-loop lag p50/p90/p99/max (ms):     0.3 / 0.3 / 0.3 / 0.3",
        "Receive lag p50/p90/p99/max (ms):        0.1 / 0.1 / 0.1 / 0.1",
        "CPU of the busiest worker:               25% of a core",
        "Output tokens counted by:                server usage (38)",
        "Client limited the figures:              no",
        "Load:                                    closed loop, concurrency 4, ramp-up 0.5 s",
    ):
        assert label in text, label
    assert saturation_banner(summary) == []


def test_a_saturated_client_opens_the_report_with_a_warning() -> None:
    summary = made_up_result(lag_ms=25).summary
    text = format_summary(summary)
    banner = saturation_banner(summary)
    assert text.startswith("\n".join(banner))
    assert "!! CLIENT SATURATED" in banner[1]
    assert any("event-loop lag p90 25.0 ms exceeds 10 ms" in line for line in banner)
    assert any("receive lag p90 12.5 ms exceeds 10 ms" in line for line in banner)
    assert "Client limited the figures:              YES, see the warning above" in text


def test_a_run_without_successes_is_not_judged() -> None:
    # The monitors saw a late loop, but no request succeeded: no figure to distort.
    summary = made_up_result(requests=5, failed=5, lag_ms=25).summary
    text = format_summary(summary)
    assert saturation_banner(summary) == []
    assert "Client limited the figures:              no (no request succeeded" in text
    assert "Event-loop lag p50/p90/p99/max (ms):     - / - / - / -" in text


def test_an_open_loop_report_shows_its_arrivals_rate_and_queue() -> None:
    text = format_summary(made_up_result(open_loop=True).summary)
    assert "open loop, 20 req/s gamma (burstiness 0.5), at most 4 in flight" in text
    assert "Send rate achieved (req/s):" in text
    assert "Mean queue wait for a slot (ms):" in text
    # Among the client's figures, after the lags, before the CPU.
    lines = text.splitlines()
    queue = next(i for i, line in enumerate(lines) if line.startswith("Mean queue wait"))
    assert lines[queue - 1].startswith("Schedule lag mean/p50/P99 (ms):")
    assert lines[queue + 1].startswith("CPU of the busiest worker:")


def test_a_sweep_table() -> None:
    run = made_up_result().summary
    sweep = {
        "kind": "rates",
        "levels": [1.0, 2.0],
        "runs": [run, run],
        "saturated_at": 2.0,
        "stop_reason": "throughput fell short",
    }
    lines = format_sweep(sweep).splitlines()
    assert lines[0].split()[:3] == ["req/s", "req/s", "tok/s"]
    assert len(lines) == 5
    assert lines[-1] == "stopped at 2: throughput fell short"
    sweep["saturated_at"] = None
    assert format_sweep(sweep).endswith("no saturation within the levels given")


def test_files_round_trip(tmp_path: Path) -> None:
    result = made_up_result()
    write_json(tmp_path / "s.json", result.summary)
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(result.summary))
    write_jsonl(tmp_path / "r.jsonl", result.records)
    lines = (tmp_path / "r.jsonl").read_bytes().splitlines()
    assert [msgspec.json.decode(line, type=RequestRecord) for line in lines] == result.records
    write_csv(tmp_path / "r.csv", result.records)
    with (tmp_path / "r.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(result.records)
    failed, ok = rows[0], rows[-1]
    assert (failed["ok"], failed["error_type"], failed["status"], failed["ttft_s"]) == (
        "False",
        "RateLimitError",
        "429",
        "",
    )
    assert ok["itl_count"] == "9"
    assert float(ok["itl_max_s"]) >= float(ok["itl_mean_s"]) > 0


def test_each_error_type_comes_with_the_first_message_of_its_kind_on_one_line() -> None:
    summary = made_up_result().summary
    assert summary["error_examples"] == {"RateLimitError": "HTTP 429 limit_requests"}
    lines = format_summary(summary).splitlines()
    row = lines.index(f"{'RateLimitError:':<40} 2")
    assert lines[row + 1] == "  e.g. HTTP 429 limit_requests"
    long_message = "first line\nsecond line " + "x" * 300
    summary["error_examples"] = {"RateLimitError": long_message}
    lines = format_summary(summary).splitlines()
    example = lines[lines.index(f"{'RateLimitError:':<40} 2") + 1]
    assert example.startswith("  e.g. first line second line xxx")
    assert example.endswith("…")
    assert len(example) == len("  e.g. ") + 160
