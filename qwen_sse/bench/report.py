"""What a run leaves behind: the summary table, and the JSON, JSONL and CSV files.

Edge layer (bench). Text and files only; it computes no figure (they all come in the
summary document from :mod:`qwen_sse.bench.benchmark`). The table follows vLLM's layout
so the two read alike; the verdict on the client opens it when the client was saturated.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import msgspec

from qwen_sse.bench.metrics import RequestRecord, percentile_key
from qwen_sse.bench.schema import CSV_COLUMNS

__all__ = [
    "JsonlWriter",
    "format_summary",
    "format_sweep",
    "saturation_banner",
    "write_csv",
    "write_json",
]

_WIDTH = 50
# A failure message in the Errors section: enough to say why, short enough for one line.
_EXAMPLE_CHARS = 160
# Messages shown under each error type; the JSON summary has them all.
_MESSAGES_PER_TYPE = 5
_SECTIONS = (
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2el", "E2EL", "End-to-end Latency"),
)


def _one_line(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _row(label: str, value: Any, digits: int = 2) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return f"{label:<40} {text}"


def _rule(title: str = "", fill: str = "-") -> str:
    return f"{title:{fill}^{_WIDTH}}" if title else fill * _WIDTH


def saturation_banner(summary: dict[str, Any]) -> list[str]:
    """The loud warning of a saturated client (no lines when it was not)."""
    if not summary.get("client_saturated"):
        return []
    lines = [
        "!" * _WIDTH,
        "!! CLIENT SATURATED: these figures are limited by",
        "!! the load generator, not only by the server.",
    ]
    lines += [f"!! - {reason}" for reason in summary.get("client_saturation_reasons", [])]
    lines.append("!" * _WIDTH)
    return lines


def _load_line(summary: dict[str, Any]) -> str:
    load = summary["load"]
    if load["mode"] == "closed":
        text = f"closed loop, concurrency {load['concurrency']}"
        if load.get("ramp_up_s"):
            text += f", ramp-up {load['ramp_up_s']:g} s"
    else:
        rate = load.get("rate")
        text = f"open loop, {'all at once' if rate is None else f'{rate:g} req/s'}"
        if rate is not None:
            text += f" {load['arrivals']}"
            if load["arrivals"] == "gamma":
                text += f" (burstiness {load['burstiness']:g})"
        if load.get("max_concurrency"):
            text += f", at most {load['max_concurrency']} in flight"
    if load["workers"] > 1:
        text += f", {load['workers']} workers"
    return text


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable report of one run (vLLM's layout, plus the client's health)."""
    lines = saturation_banner(summary)
    lines.append(_rule(" Serving Benchmark Result ", "="))
    lines.append(_row("Model:", summary["model_id"]))
    lines.append(_row("Load:", _load_line(summary)))
    lines.append(_row("Workload:", _workload_line(summary)))
    if summary.get("stop_reason"):
        lines.append(_row("Stopped early:", _one_line(summary["stop_reason"], _EXAMPLE_CHARS)))
    lines.append(_row("Successful requests:", summary["completed"]))
    lines.append(_row("Failed requests:", summary["failed"]))
    if summary.get("cancelled"):
        lines.append(_row("Cancelled at the stop:", summary["cancelled"]))
    lines.append(_row("Benchmark duration (s):", summary["duration"]))
    lines.append(_row("Total input tokens:", summary["total_input_tokens"]))
    lines.append(_row("Total generated tokens:", summary["total_output_tokens"]))
    lines += _input_lines(summary)
    lines.append(_row("Request throughput (req/s):", summary["request_throughput"]))
    if summary["request_goodput"] is not None:
        slo = ", ".join(f"{k} <= {v:g} ms" for k, v in summary["goodput_slo_ms"].items())
        lines.append(_row("Request goodput (req/s):", summary["request_goodput"]))
        lines.append(_row("  under SLOs:", slo))
    lines.append(_row("Output token throughput (tok/s):", summary["output_throughput"]))
    lines.append(_row("Peak output token throughput (tok/s):", summary["max_output_tokens_per_s"]))
    lines.append(_row("Total token throughput (tok/s):", summary["total_token_throughput"]))
    lines.append(_row("Peak concurrent requests:", summary["max_concurrent_requests"]))
    if summary["load"]["mode"] == "open":
        lines.append(_row("Send rate achieved (req/s):", summary["send_rate"]))
    for metric, short, title in _SECTIONS:
        lines.append(_rule(title))
        lines.append(_row(f"Mean {short} (ms):", summary[f"mean_{metric}_ms"]))
        lines.append(_row(f"Median {short} (ms):", summary[f"median_{metric}_ms"]))
        for p in summary["percentiles"]:
            word = percentile_key(p, metric).split("_", 1)[0].upper()
            lines.append(_row(f"{word} {short} (ms):", summary[percentile_key(p, metric)]))
    lines += _conversation_lines(summary)
    if summary["errors"]:
        lines.append(_rule("Errors"))
        lines += _error_lines(summary)
    lines += _server_lines(summary)
    lines += _client_lines(summary)
    lines.append(_rule(fill="="))
    return "\n".join(lines)


def _sizes(sizes: int | list[int] | None, range_ratio: float) -> str:
    if sizes is None:
        return "-"
    if isinstance(sizes, list):
        return "|".join(str(size) for size in sizes)
    return f"{sizes} ±{range_ratio:.0%}" if range_ratio else str(sizes)


def _workload_line(summary: dict[str, Any]) -> str:
    """What was sent: the dataset and its sizes, on one line."""
    workload = summary["workload"]
    if workload["type"] == "file":
        kind = "ShareGPT" if workload["source"] == "sharegpt" else "prompts"
        entries = workload["entries"]
        text = (
            f"{kind} {Path(workload['path']).name}, {entries} entr{'y' if entries == 1 else 'ies'}"
        )
        if workload["conversations"]:
            text += f" of {workload['mean_turns']:.3g} turns on average"
        left_out = sum(workload["skipped"].values())
        if left_out:
            text += f" ({left_out} left out)"
    else:
        ratio = workload["range_ratio"]
        text = "synthetic" if workload["turns"] == 1 else f"{workload['turns']}-turn conversations"
        text += f", {_sizes(workload['input_tokens'], ratio)} tokens in"
        if workload["prefix_tokens"]:
            groups = workload["prefix_groups"]
            text += f" ({workload['prefix_tokens']} shared" + (
                f" in {groups} groups)" if groups > 1 else ")"
            )
        text += f", {_sizes(workload['output_tokens'], ratio)} out"
    if workload["tokenizer"]:
        text += f", counted with {workload['tokenizer']}"
    return text


def _input_lines(summary: dict[str, Any]) -> list[str]:
    """The server's cache hits and the media parts, when there were any."""
    lines = []
    if summary["requests_with_cache_report"]:
        lines.append(_row("Cached input tokens (server):", summary["total_cached_tokens"]))
        lines.append(_row("  mean per request:", summary["mean_cached_tokens"]))
    if summary["uncounted_input_parts"]:
        lines.append(_row("Media parts (not in local counts):", summary["uncounted_input_parts"]))
    return lines


def _conversation_lines(summary: dict[str, Any]) -> list[str]:
    """Multi-turn runs: conversations as wholes, and a line per turn number."""
    conversations = summary["conversations"]
    if conversations is None:
        return []
    top = max(summary["percentiles"], default=50.0)
    top_word = percentile_key(top, "ttft").split("_", 1)[0].upper()
    lines = [
        _rule("Conversations"),
        _row(
            "Completed / failed / unfinished:",
            f"{conversations['completed']} / {conversations['failed']} / "
            f"{conversations['unfinished']}",
        ),
        _row("Mean turns:", conversations["mean_turns"]),
        _row("Mean conversation (ms):", conversations["mean_conversation_ms"]),
        _row("Median conversation (ms):", conversations["median_conversation_ms"]),
        _row(
            f"{top_word} conversation (ms):",
            conversations[percentile_key(top, "conversation")],
        ),
        f"{'turn':>4} {'ok':>5} {'failed':>6} {'prompt':>8} {'TTFT p50':>9} "
        f"{'TTFT ' + top_word:>9} {'E2E p50':>9}",
    ]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for turn in summary["turns"]:
        prompt = turn["mean_prompt_tokens"]
        lines.append(
            f"{turn['turn']:>4} {turn['completed']:>5} {turn['failed']:>6} "
            f"{'-' if prompt is None else f'{prompt:.0f}':>8} {ms(turn['median_ttft_ms']):>9} "
            f"{ms(turn[percentile_key(top, 'ttft')]):>9} {ms(turn['median_e2el_ms']):>9}"
        )
    return lines


def _error_lines(summary: dict[str, Any]) -> list[str]:
    """Each error type with its count, most frequent first, and under it why: its message,
    or each of its messages with their counts when they differ."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for group in summary["error_groups"]:
        groups.setdefault(group["type"], []).append(group)
    lines: list[str] = []
    for kind, count in sorted(summary["errors"].items(), key=lambda item: (-item[1], item[0])):
        lines.append(_row(f"{kind}:", count))
        messages = [group for group in groups.get(kind, []) if group["message"]]
        if len(messages) == 1 and messages[0]["count"] == count:
            lines.append(f"  {_one_line(messages[0]['message'], _EXAMPLE_CHARS)}")
            continue
        for group in messages[:_MESSAGES_PER_TYPE]:
            text = _one_line(group["message"], _EXAMPLE_CHARS)
            lines.append(f"  {group['count']} × {text}")
        if len(messages) > _MESSAGES_PER_TYPE:
            lines.append(
                f"  … and {len(messages) - _MESSAGES_PER_TYPE} other messages (see --json)"
            )
    return lines


def _client_lines(summary: dict[str, Any]) -> list[str]:
    client = summary["client"]
    lag = client["loop_lag_ms"]
    receive = client["receive_lag_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    sources = summary["output_tokens_source"]
    counted = ", ".join(
        f"{'server usage' if source == 'usage' else 'local tokenizer'} ({count})"
        for source, count in sorted(sources.items())
    )
    if summary["client_saturated"]:
        verdict = "YES, see the warning above"
    elif not summary["completed"]:
        verdict = "no (no request succeeded: nothing to judge)"
    else:
        verdict = "no"
    top_key = percentile_key(max(summary["percentiles"], default=50.0), "schedule_lag")
    top = top_key.split("_", 1)[0]
    lines = [
        _rule("Client (load generator)"),
        _row(
            "Event-loop lag p50/p90/p99/max (ms):",
            " / ".join(ms(lag[key]) for key in ("median", "p90", "p99", "max")),
        ),
        _row(
            "Receive lag p50/p90/p99/max (ms):",
            " / ".join(ms(receive[key]) for key in ("median", "p90", "p99", "max")),
        ),
        _row(
            f"Schedule lag mean/p50/{top.upper()} (ms):",
            " / ".join(
                ms(summary[key])
                for key in ("mean_schedule_lag_ms", "median_schedule_lag_ms", top_key)
            ),
        ),
        _row("CPU of the busiest worker:", f"{client['cpu_fraction_max']:.0%} of a core"),
        _row("Output tokens counted by:", counted or "-"),
        _row("Client limited the figures:", verdict),
    ]
    if summary["load"]["mode"] == "open" and summary["load"].get("max_concurrency"):
        lines.insert(4, _row("Mean queue wait for a slot (ms):", summary["mean_queue_wait_ms"]))
    return lines


# Counters listed in the Server section; the JSON summary has every one.
_COUNTER_LINES = 20
_SERIES_LABELS = (
    ("requests_running", "Requests running"),
    ("requests_waiting", "Requests waiting"),
    ("kv_cache_usage", "KV-cache usage"),
)


def _server_lines(summary: dict[str, Any]) -> list[str]:
    """``--metrics-url``: the server's own series over the run, the scrapes that failed
    and why, and the counters that grew."""
    server = summary.get("server_metrics")
    if server is None:
        return []
    lines = [
        _rule("Server (its /metrics)"),
        _row("Scrapes (failed):", f"{server['scrapes']} ({server['failed_scrapes']})"),
    ]
    for error in server["errors"]:
        lines.append(f"  {error['count']} × {_one_line(error['message'], _EXAMPLE_CHARS)}")
    for key, label in _SERIES_LABELS:
        series = server["series"].get(key)
        if series is None:
            continue
        shown = [series[stat] for stat in ("min", "mean", "max")]
        if key == "kv_cache_usage":
            text = " / ".join(f"{value:.0%}" for value in shown)
        else:
            digits = 0 if all(value % 1 == 0 for value in shown) else 1
            text = " / ".join(f"{value:.{digits}f}" for value in shown)
        lines.append(_row(f"{label} min/mean/max:", f"{text}  ({series['metric']})"))
    grew = {name: value for name, value in server["counters"].items() if value}
    if grew:
        lines.append(f"Counters, increase over {server['counters_window_s']:.1f} s:")
        for name, value in list(grew.items())[:_COUNTER_LINES]:
            lines.append(_row(f"  {name}", f"{value:.0f}" if value % 1 == 0 else f"{value:.2f}"))
        if len(grew) > _COUNTER_LINES:
            lines.append(f"  … and {len(grew) - _COUNTER_LINES} more (see --json)")
    return lines


def format_sweep(sweep: dict[str, Any]) -> str:
    """One line per level of a sweep, and where and why it stopped."""
    unit = "req/s" if sweep["kind"] == "rates" else "conc"
    header = (
        f"{unit:>8} {'req/s':>8} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'ITL p50':>8} {'E2E p50':>9} {'errors':>6}  client"
    )
    lines = [header, "-" * len(header)]
    for level, run in zip(sweep["levels"], sweep["runs"], strict=False):

        def ms(key: str, run: dict[str, Any] = run) -> str:
            value = run.get(key)
            return "-" if value is None else f"{value:.1f}"

        lines.append(
            f"{level:>8g} {run['request_throughput']:>8.2f} {run['output_throughput']:>9.1f} "
            f"{ms('median_ttft_ms'):>9} {ms(percentile_key(99, 'ttft')):>9} "
            f"{ms('median_itl_ms'):>8} {ms('median_e2el_ms'):>9} {run['failed']:>6}  "
            f"{'SATURATED' if run['client_saturated'] else 'ok'}"
        )
    if sweep["saturated_at"] is not None:
        lines.append(f"stopped at {sweep['saturated_at']:g}: {sweep['stop_reason']}")
    elif sweep["stop_reason"] is not None:
        lines.append(f"stopped: {sweep['stop_reason']}")
    else:
        lines.append("no saturation within the levels given")
    return "\n".join(lines)


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    """Write a summary or sweep document as indented JSON."""
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")


class JsonlWriter:
    """``--jsonl``: one JSON object a line, every field of a record (``itl_s`` in full),
    written and flushed as each request finishes, so that a run killed midway keeps what
    finished. Opening the file (``with JsonlWriter(path) as out``) truncates it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = self.path.open("wb")
        self._encoder = msgspec.json.Encoder()

    def write(self, record: RequestRecord) -> None:
        self._file.write(self._encoder.encode(record) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_csv(path: str | Path, records: Sequence[RequestRecord]) -> None:
    """One row a request, :data:`~qwen_sse.bench.schema.CSV_COLUMNS`; ``itl_s`` summarised."""
    with Path(path).open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for record in records:
            row: dict[str, Any] = msgspec.to_builtins(record)
            gaps = row.pop("itl_s")
            row["itl_count"] = len(gaps)
            row["itl_mean_s"] = statistics.fmean(gaps) if gaps else ""
            row["itl_max_s"] = max(gaps) if gaps else ""
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
