"""The summary table and the JSON, JSONL and CSV files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import msgspec

from qwen_sse.bench.benchmark import compose
from qwen_sse.bench.compare import compare
from qwen_sse.bench.metrics import RequestRecord, Slo
from qwen_sse.bench.repeat import combine
from qwen_sse.bench.report import (
    JsonlWriter,
    format_comparison,
    format_repeat,
    format_summary,
    format_sweep,
    repeat_banner,
    saturation_banner,
    write_csv,
    write_json,
)
from qwen_sse.bench.runner import ShardResult
from qwen_sse.bench.schema import CSV_COLUMNS, SWEEP_SCHEMA_ID
from qwen_sse.bench.server_metrics import Reading, summarize
from tests.bench_documents import (
    TARGET,
    made_up_config,
    made_up_load,
    made_up_record,
    made_up_result,
    made_up_server_metrics,
)


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
    assert format_sweep(sweep).endswith("stopped: throughput fell short")
    sweep["stop_reason"] = None
    assert format_sweep(sweep).endswith("no saturation within the levels given")


def test_files_round_trip(tmp_path: Path) -> None:
    result = made_up_result()
    write_json(tmp_path / "s.json", result.summary)
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(result.summary))
    with JsonlWriter(tmp_path / "r.jsonl") as out:
        for count, record in enumerate(result.records, 1):
            out.write(record)
            # On disk as soon as written: a run killed now keeps it.
            assert len((tmp_path / "r.jsonl").read_bytes().splitlines()) == count
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


def failures(*messages: tuple[str, str, str]) -> dict[str, Any]:
    """The summary of a run whose failures are ``(type, message, request id)``."""
    result = made_up_result(failed=0)
    records = list(result.records)
    for number, (kind, message, request_id) in enumerate(messages):
        records.append(
            msgspec.structs.replace(
                made_up_record(100 + number, ok=False),
                error_type=kind,
                error=f"{message} (request id {request_id})" if request_id else message,
                request_id=request_id,
            )
        )
    return compose(
        made_up_config(), TARGET, [ShardResult(worker=0, records=records, load=made_up_load(0.3))]
    ).summary


def test_errors_are_grouped_by_type_and_message_without_request_ids() -> None:
    summary = failures(
        ("AuthenticationError", "HTTP 401 invalid_api_key: Incorrect API key provided.", "r1"),
        ("AuthenticationError", "HTTP 401 invalid_api_key: Incorrect API key provided.", "r2"),
        ("ServerError", "HTTP 500: boom", ""),
        ("AuthenticationError", "HTTP 401 invalid_api_key: Incorrect API key provided.", "r3"),
        ("ServerError", "HTTP 503: overloaded", "r4"),
        ("ServerError", "HTTP 500: boom", "r5"),
    )
    assert summary["error_groups"] == [
        {
            "type": "AuthenticationError",
            "message": "HTTP 401 invalid_api_key: Incorrect API key provided.",
            "count": 3,
        },
        {"type": "ServerError", "message": "HTTP 500: boom", "count": 2},
        {"type": "ServerError", "message": "HTTP 503: overloaded", "count": 1},
    ]
    # The keys of earlier consumers stay as they were.
    assert summary["errors"] == {"AuthenticationError": 3, "ServerError": 3}
    assert summary["error_examples"]["ServerError"] == "HTTP 500: boom"
    text = format_summary(summary)
    errors = text[text.index("Errors-") :].splitlines()[1:7]
    assert errors == [
        f"{'AuthenticationError:':<40} 3",
        "  HTTP 401 invalid_api_key: Incorrect API key provided.",
        f"{'ServerError:':<40} 3",
        "  2 × HTTP 500: boom",
        "  1 × HTTP 503: overloaded",
        "-------------Client (load generator)--------------",
    ]


def test_an_error_message_shows_on_one_line_cut_to_its_limit() -> None:
    summary = failures(("RateLimitError", "first line\nsecond line " + "x" * 300, ""))
    lines = format_summary(summary).splitlines()
    example = lines[lines.index(f"{'RateLimitError:':<40} 1") + 1]
    assert example.startswith("  first line second line xxx")
    assert example.endswith("…")
    assert len(example) == len("  ") + 160


def test_many_messages_of_one_type_show_the_most_frequent_and_say_how_many_more() -> None:
    summary = failures(*[("ServerError", f"HTTP 500: boom {n}", "") for n in range(8)])
    lines = format_summary(summary).splitlines()
    row = lines.index(f"{'ServerError:':<40} 8")
    assert lines[row + 1 : row + 7] == [
        *[f"  1 × HTTP 500: boom {n}" for n in range(5)],
        "  … and 3 other messages (see --json)",
    ]


def test_a_stopped_run_says_why_and_counts_the_cancelled_apart() -> None:
    result = made_up_result(failed=0)
    cut = msgspec.structs.replace(
        made_up_record(99, ok=False), cancelled=True, error_type="CancelledError"
    )
    summary = compose(
        made_up_config(),
        TARGET,
        [ShardResult(worker=0, records=[*result.records, cut], load=made_up_load(0.3))],
        stopped="interrupted by SIGINT",
    ).summary
    assert (summary["completed"], summary["failed"], summary["cancelled"]) == (40, 0, 1)
    assert summary["errors"] == {}
    assert summary["stop_reason"] == "interrupted by SIGINT"
    text = format_summary(summary)
    assert f"{'Stopped early:':<40} interrupted by SIGINT" in text
    assert f"{'Cancelled at the stop:':<40} 1" in text
    assert "Stopped early" not in format_summary(result.summary)


def test_a_repeat_report_gives_every_figure_as_mean_plus_minus_half_width() -> None:
    runs = [made_up_result(requests=n, slo=Slo(ttft_ms=120)).summary for n in (40, 30, 20)]
    document = combine(runs)
    text = format_repeat(document)
    lines = text.splitlines()
    assert lines[0] == "======== Serving Benchmark Result, 3 runs ========"
    assert lines[-1] == "=" * 50
    figures = document["figures"]

    def shown(key: str) -> str:
        figure = figures[key]
        return f"{figure['mean']:.2f} ± {figure['half_width']:.2f}"

    for line in (
        f"{'Load:':<40} closed loop, concurrency 4, ramp-up 0.5 s",
        f"{'Each figure:':<40} mean ± 95% CI across runs (Student t)",
        f"{'Successful requests:':<40} {shown('completed')}",
        f"{'Failed requests:':<40} 2 ± 0",  # a count every run agrees on
        f"{'Request throughput (req/s):':<40} {shown('request_throughput')}",
        f"{'Request goodput (req/s):':<40} {shown('request_goodput')}",
        f"{'  under SLOs:':<40} ttft <= 120 ms",
        f"{'Mean TTFT (ms):':<40} {shown('mean_ttft_ms')}",
        f"{'P99 E2EL (ms):':<40} {shown('p99_e2el_ms')}",
        f"{'RateLimitError:':<40} 6",  # over all runs
        f"{'Client limited the figures:':<40} no",
    ):
        assert line in lines, line
    runs_at = lines.index("-" * 23 + "Runs" + "-" * 23)
    assert lines[runs_at + 1].split()[:3] == ["run", "req/s", "tok/s"]
    assert [line.split()[0] for line in lines[runs_at + 2 : runs_at + 5]] == ["1", "2", "3"]
    assert repeat_banner(document) == []


def test_a_repeat_in_which_the_client_saturated_says_so_with_each_runs_reasons() -> None:
    runs = [made_up_result().summary, made_up_result(lag_ms=25).summary]
    document = combine(runs)
    banner = repeat_banner(document)
    text = format_repeat(document)
    assert text.startswith("\n".join(banner))
    assert banner[1] == "!! CLIENT SATURATED in run 2 of 2:"
    assert any(line.startswith("!! - run 2: event-loop lag p90 25.0 ms") for line in banner)
    assert f"{'Client limited the figures:':<40} YES in run 2, see the warning above" in text
    run_lines = [line.split() for line in text.splitlines() if line.startswith("       ")]
    assert [(words[0], words[-1]) for words in run_lines] == [("1", "ok"), ("2", "SATURATED")]


def test_a_comparison_of_repeats_marks_the_significant_differences() -> None:
    base = made_up_result().summary
    a = combine([{**base, "median_ttft_ms": v} for v in (100.0, 101.0, 99.0)])
    b = combine([{**base, "median_ttft_ms": v} for v in (150.0, 149.0, 151.0)])
    lines = format_comparison(compare(a, b, names=("a.json", "b.json"))).splitlines()
    assert lines[:3] == [
        "A = a.json: 3 runs, qwen-plus, closed loop, concurrency 4, ramp-up 0.5 s",
        "B = b.json: 3 runs, qwen-plus, closed loop, concurrency 4, ramp-up 0.5 s",
        "Figures: mean ± 95% CI across runs; significant: Welch's t-test, p < 0.05",
    ]
    assert lines[3].split() == ["figure", "A", "B", "B", "vs", "A", "significant"]
    # t(0.975, 2) * 1 / sqrt(3) = 2.48 either side.
    assert (
        f"{'TTFT median (ms)':<24} {'100.00 ± 2.48':>18} {'150.00 ± 2.48':>18} {'+50.0%':>8}  "
        "YES (p<0.001), A better"
    ) in lines
    same = next(line for line in lines if line.startswith("Requests/s"))
    assert same.endswith("+0.0%  no (p=1.000)")
    assert next(line for line in lines if line.startswith("Failed requests")).split()[2:5] == [
        "2",
        "±",
        "0",
    ]
    assert not any(line.startswith("!!") for line in lines)
    saturated = made_up_result(lag_ms=25).summary
    text = format_comparison(compare(a, combine([saturated, saturated, base])))
    assert "!! B: the client saturated in 2 runs; there the figures may describe the client" in (
        text.splitlines()
    )
    # Only the report's figures: std and the client's lags stay in the JSON.
    assert not any(line.startswith(("TTFT std", "SCHEDULE_LAG")) for line in lines)


def test_a_comparison_of_single_runs_says_it_cannot_judge() -> None:
    summary = made_up_result().summary
    text = format_comparison(compare(summary, summary))
    assert "Significance not judged: one run says nothing about how far the next" in text
    assert next(line for line in text.splitlines() if line.startswith("TTFT P99 (ms)")).endswith(
        "+0.0%  -"
    )


def test_a_comparison_of_sweeps_shows_each_shared_level_and_the_others() -> None:
    run = made_up_result().summary

    def sweep(levels: list[float]) -> dict[str, object]:
        return {
            "schema": SWEEP_SCHEMA_ID,
            "kind": "concurrency",
            "levels": levels,
            "runs": [run] * len(levels),
            "saturated_at": None,
            "stop_reason": None,
        }

    lines = format_comparison(compare(sweep([1, 2]), sweep([2, 4]))).splitlines()
    assert lines[0] == (
        "A = A: a sweep, 1 run a level, qwen-plus, closed loop, concurrency 4, ramp-up 0.5 s"
    )
    assert "=" * 16 + " at 2 concurrent " + "=" * 17 in lines
    assert lines[-2:] == ["only in A, not compared: 1", "only in B, not compared: 4"]


def test_a_repeat_report_shows_the_workload_and_the_servers_cache_hits() -> None:
    base = made_up_result().summary
    runs = [
        {**base, "requests_with_cache_report": 38, "total_cached_tokens": cached}
        | {"mean_cached_tokens": cached / 38, "uncounted_input_parts": 4}
        for cached in (380, 418)
    ]
    lines = format_repeat(combine(runs)).splitlines()
    assert f"{'Workload:':<40} {format_summary(base).splitlines()[3].split(None, 1)[1]}" in lines
    assert f"{'Cached input tokens (server):':<40} 399.00 ± 241.42" in lines
    assert f"{'  mean per request:':<40} 10.50 ± 6.35" in lines
    assert f"{'Media parts (not in local counts):':<40} 4" in lines
    assert not any(
        line.startswith("Cached") for line in format_repeat(combine([base, base])).splitlines()
    )


def test_the_servers_own_series_have_a_section_of_their_own() -> None:
    result = made_up_result()
    assert "Server (its /metrics)" not in format_summary(result.summary)
    summary = {**result.summary, "server_metrics": made_up_server_metrics(failed=1)}
    lines = format_summary(summary).splitlines()
    start = lines.index("--------------Server (its /metrics)---------------")
    # Beside the client's figures: the section just before the client's.
    assert lines[start : start + 11] == [
        "--------------Server (its /metrics)---------------",
        f"{'Scrapes (failed):':<40} 6 (1)",
        "  1 × HTTP 503 Service Unavailable",
        f"{'Requests running min/mean/max:':<40} 4 / 6 / 8  (vllm:num_requests_running)",
        f"{'Requests waiting min/mean/max:':<40} 0.0 / 0.7 / 2.0  (vllm:num_requests_waiting)",
        f"{'KV-cache usage min/mean/max:':<40} 25% / 38% / 50%  (vllm:kv_cache_usage_perc)",
        "Counters, increase over 5.0 s:",
        f"{'  vllm:e2e_request_latency_seconds_count':<40} 5",
        f"{'  vllm:e2e_request_latency_seconds_sum':<40} 7.50",
        f"{'  vllm:generation_tokens_total':<40} 500",
        "-------------Client (load generator)--------------",
    ]


def test_a_server_section_with_nothing_scraped() -> None:
    server = summarize(
        [Reading(at_s=0.0, phase="before", error="cannot connect: Connection refused")],
        url="http://127.0.0.1:9/metrics",
        interval_s=1.0,
    )
    text = format_summary({**made_up_result().summary, "server_metrics": server})
    assert f"{'Scrapes (failed):':<40} 1 (1)\n  1 × cannot connect: Connection refused\n" in text
    assert "Requests running" not in text
    assert "Counters" not in text
