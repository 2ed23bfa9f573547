"""What a run leaves behind: the summary table (of one run, of repeated runs, of a
comparison), and the JSON, JSONL and CSV files.

Edge layer (bench). Text and files only; it computes no figure (they all come in the
documents of :mod:`qwen_sse.bench.benchmark`, :mod:`~qwen_sse.bench.repeat` and
:mod:`~qwen_sse.bench.compare`). The table follows vLLM's layout so the two read alike;
the verdict on the client opens it when the client was saturated.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import msgspec

from qwen_sse.bench.metrics import RequestRecord, percentile_key
from qwen_sse.bench.schema import CSV_COLUMNS

__all__ = [
    "JsonlWriter",
    "format_comparison",
    "format_repeat",
    "format_summary",
    "format_sweep",
    "load_line",
    "repeat_banner",
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


def load_line(load: dict[str, Any]) -> str:
    """How a run's ``load`` (its summary's) was shaped, in one line of words."""
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
    lines.append(_row("Load:", load_line(summary["load"])))
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
    header = f"{unit:>8} {_RUN_HEADER}"
    lines = [header, "-" * len(header)]
    for level, run in zip(sweep["levels"], sweep["runs"], strict=False):
        lines.append(f"{level:>8g} {_run_columns(run)}")
    if sweep["saturated_at"] is not None:
        lines.append(f"stopped at {sweep['saturated_at']:g}: {sweep['stop_reason']}")
    elif sweep["stop_reason"] is not None:
        lines.append(f"stopped: {sweep['stop_reason']}")
    else:
        lines.append("no saturation within the levels given")
    return "\n".join(lines)


_RUN_HEADER = (
    f"{'req/s':>8} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} "
    f"{'ITL p50':>8} {'E2E p50':>9} {'errors':>6}  client"
)


def _run_columns(run: dict[str, Any]) -> str:
    """One run's main figures under :data:`_RUN_HEADER` (a sweep's level, a repeat's run)."""

    def ms(key: str) -> str:
        value = run.get(key)
        return "-" if value is None else f"{value:.1f}"

    return (
        f"{run['request_throughput']:>8.2f} {run['output_throughput']:>9.1f} "
        f"{ms('median_ttft_ms'):>9} {ms(percentile_key(99, 'ttft')):>9} "
        f"{ms('median_itl_ms'):>8} {ms('median_e2el_ms'):>9} {run['failed']:>6}  "
        f"{'SATURATED' if run['client_saturated'] else 'ok'}"
    )


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    """Write a summary, sweep, repeat or comparison document as indented JSON."""
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


def repeat_banner(document: dict[str, Any]) -> list[str]:
    """The loud warning of repeated runs in which the client saturated (no lines when it
    never did), with each such run's reasons."""
    numbers = document["client_saturated_runs"]
    if not numbers:
        return []
    lines = [
        "!" * _WIDTH,
        f"!! CLIENT SATURATED in {_runs_named(numbers)} of {document['repeat']}:",
        "!! these figures are limited by the load",
        "!! generator, not only by the server.",
    ]
    for number in numbers:
        reasons = document["runs"][number - 1].get("client_saturation_reasons", [])
        lines += [f"!! - run {number}: {reason}" for reason in reasons]
    lines.append("!" * _WIDTH)
    return lines


def _runs_named(numbers: list[int]) -> str:
    return f"run{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"


def _plus_minus(value: float | None, half_width: float | None) -> str:
    if value is None:
        return "-"
    if half_width == 0 and float(value).is_integer():
        return f"{value:.0f} ± 0"  # a count that every run agrees on
    return f"{value:.2f}" if half_width is None else f"{value:.2f} ± {half_width:.2f}"


def format_repeat(document: dict[str, Any]) -> str:
    """The report of repeated runs: the figures of one run's report, each as ``mean ±
    half-width`` of its confidence interval across the runs, then one line a run."""
    runs = document["runs"]
    first = runs[0]
    figures = document["figures"]

    def row(label: str, key: str) -> str:
        figure = figures.get(key) or {}
        return _row(label, _plus_minus(figure.get("mean"), figure.get("half_width")))

    lines = repeat_banner(document)
    lines.append(_rule(f" Serving Benchmark Result, {document['repeat']} runs ", "="))
    lines.append(_row("Model:", first["model_id"]))
    lines.append(_row("Load:", load_line(first["load"])))
    lines.append(_row("Workload:", _workload_line(first)))
    lines.append(
        _row("Each figure:", f"mean ± {document['confidence']:.0%} CI across runs (Student t)")
    )
    lines.append(row("Successful requests:", "completed"))
    lines.append(row("Failed requests:", "failed"))
    lines.append(row("Benchmark duration (s):", "duration"))
    lines.append(row("Total input tokens:", "total_input_tokens"))
    lines.append(row("Total generated tokens:", "total_output_tokens"))
    if first["requests_with_cache_report"]:
        lines.append(row("Cached input tokens (server):", "total_cached_tokens"))
        lines.append(row("  mean per request:", "mean_cached_tokens"))
    if first["uncounted_input_parts"]:
        lines.append(_row("Media parts (not in local counts):", first["uncounted_input_parts"]))
    lines.append(row("Request throughput (req/s):", "request_throughput"))
    if first["goodput_slo_ms"] is not None:
        slo = ", ".join(f"{k} <= {v:g} ms" for k, v in first["goodput_slo_ms"].items())
        lines.append(row("Request goodput (req/s):", "request_goodput"))
        lines.append(_row("  under SLOs:", slo))
    lines.append(row("Output token throughput (tok/s):", "output_throughput"))
    lines.append(row("Peak output token throughput (tok/s):", "max_output_tokens_per_s"))
    lines.append(row("Total token throughput (tok/s):", "total_token_throughput"))
    lines.append(row("Peak concurrent requests:", "max_concurrent_requests"))
    if first["load"]["mode"] == "open":
        lines.append(row("Send rate achieved (req/s):", "send_rate"))
    for metric, short, title in _SECTIONS:
        lines.append(_rule(title))
        lines.append(row(f"Mean {short} (ms):", f"mean_{metric}_ms"))
        lines.append(row(f"Median {short} (ms):", f"median_{metric}_ms"))
        for p in first["percentiles"]:
            key = percentile_key(p, metric)
            lines.append(row(f"{key.split('_', 1)[0].upper()} {short} (ms):", key))
    errors: dict[str, int] = {}
    for run in runs:
        for kind, count in run["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    if errors:
        lines.append(_rule("Errors (all runs)"))
        lines += [_row(f"{kind}:", count) for kind, count in sorted(errors.items())]
    lines.append(_rule("Runs"))
    lines.append(f"{'run':>8} {_RUN_HEADER}")
    lines += [f"{number:>8} {_run_columns(run)}" for number, run in enumerate(runs, start=1)]
    saturated = document["client_saturated_runs"]
    busiest = max(run["client"]["cpu_fraction_max"] for run in runs)
    lines.append(_rule("Client (load generator)"))
    lines.append(_row("CPU of the busiest worker:", f"{busiest:.0%} of a core (busiest run)"))
    lines.append(
        _row(
            "Client limited the figures:",
            f"YES in {_runs_named(saturated)}, see the warning above" if saturated else "no",
        )
    )
    lines.append(_rule(fill="="))
    return "\n".join(lines)


_COMPARED_FIGURES = (
    ("completed", "Successful requests"),
    ("failed", "Failed requests"),
    ("duration", "Duration (s)"),
    ("request_throughput", "Requests/s"),
    ("request_goodput", "Goodput (req/s)"),
    ("output_throughput", "Output tokens/s"),
    ("max_output_tokens_per_s", "Peak output tokens/s"),
    ("total_token_throughput", "Total tokens/s"),
)
_LATENCY_KEY = re.compile(r"^(mean|median|p[0-9.]+)_(ttft|tpot|itl|e2el)_ms$")


def _figure_label(key: str) -> str | None:
    """The comparison table's label of a figure (None: not in the table, only the JSON)."""
    for compared, label in _COMPARED_FIGURES:
        if key == compared:
            return label
    match = _LATENCY_KEY.match(key)
    if match is None:
        return None
    kind, metric = match.groups()
    word = kind if kind in ("mean", "median") else kind.upper()
    return f"{metric.upper()} {word} (ms)"


def _side_line(side: dict[str, Any]) -> str:
    runs = f"{side['runs']} run{'s' if side['runs'] > 1 else ''}"
    if side["kind"] == "sweep":
        runs = "a sweep, 1 run a level"
    load = "load not recorded"
    if side["load"] is not None:
        try:
            load = load_line(side["load"])
        except (KeyError, TypeError, ValueError):
            load = "load not readable"  # a file edited by hand
    return f"{side['name']}: {runs}, {side['model_id'] or 'model not recorded'}, {load}"


def _verdict(row: dict[str, Any]) -> str:
    p = row["p_value"]
    if p is None:
        return "-"
    shown = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    if not row["significant"]:
        return f"no ({shown})"
    better = f", {row['better'].upper()} better" if row["better"] else ""
    return f"YES ({shown}){better}"


def _difference_line(label: str, row: dict[str, Any]) -> str:
    percent = row["difference_percent"]
    return (
        f"{label:<24} {_plus_minus(row['a']['value'], row['a']['half_width']):>18} "
        f"{_plus_minus(row['b']['value'], row['b']['half_width']):>18} "
        f"{'-' if percent is None else f'{percent:+.1f}%':>8}  {_verdict(row)}"
    )


def format_comparison(document: dict[str, Any]) -> str:
    """Two results side by side (B against A): each figure of the report, both values,
    the difference and whether it is significant, and what the judgement rests on."""
    alpha = document["alpha"]
    lines = [f"A = {_side_line(document['a'])}", f"B = {_side_line(document['b'])}"]
    if document["a"]["runs"] > 1 and document["b"]["runs"] > 1:
        lines.append(
            f"Figures: mean ± {1 - alpha:.0%} CI across runs; significant: Welch's t-test, "
            f"p < {alpha:g}"
        )
    else:
        lines.append("Significance not judged: one run says nothing about how far the next")
        lines.append("would move (run both with --repeat N, N at least 2)")
    for letter in ("a", "b"):
        saturated = document[letter]["client_saturated_runs"]
        if saturated:
            lines.append(
                f"!! {letter.upper()}: the client saturated in {saturated} "
                f"run{'s' if saturated > 1 else ''}; there the figures may describe the client"
            )
    header = f"{'figure':<24} {'A':>18} {'B':>18} {'B vs A':>8}  significant"
    sweep = document["sweep"]
    for level in document["levels"]:
        if level["level"] is not None:
            unit = "req/s" if sweep["kind"] == "rates" else "concurrent"
            lines.append(_rule(f" at {level['level']:g} {unit} ", "="))
        lines += [header, "-" * len(header)]
        for row in level["figures"]:
            label = _figure_label(row["figure"])
            if label is not None and (row["a"]["n"] or row["b"]["n"]):
                lines.append(_difference_line(label, row))
        if level["distributions"]:
            lines.append(f"Per-request latencies: median; Mann-Whitney U test, p < {alpha:g}")
            lines.append("(whether these two runs differed, not whether the next would)")
            lines += [header.replace("figure", "requests", 1), "-" * len(header)]
            for row in level["distributions"]:
                lines.append(_difference_line(f"{row['figure'].upper()} median (ms)", row))
    if sweep is not None:
        for side in ("a", "b"):
            only = sweep[f"only_in_{side}"]
            if only:
                levels = ", ".join(f"{level:g}" for level in only)
                lines.append(f"only in {side.upper()}, not compared: {levels}")
    return "\n".join(lines)
