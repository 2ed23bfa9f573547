"""The HTML report of a run or a sweep (``--html``): one self-contained page, charts inline.

Edge layer (bench). It computes no figure: it lays out what the summary (or sweep)
document says, in tables, with the charts of :mod:`qwen_sse.bench.plot` as PNG images
inside the page (``data:`` URLs). The page loads nothing from anywhere (no script, no
font, no stylesheet, no image outside it), so it can be mailed and opened offline. Every
text that comes from outside (a server's error message, a file's path, a model's name, a
request parameter) is HTML-escaped. Without matplotlib (the ``plot`` extra) the page has no
charts and says so.

Sections, in order: the verdict when the client was saturated; the settings (target,
load, workload, parameters; never a key); the figures of ``format_summary`` as tables;
errors; the server's own series (``--metrics-url``); the client's self-check (its verdict,
the reasons and the figures behind them); the charts. A sweep opens with a table of its
levels and its chart, then one such section a level.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from qwen_sse.bench import plot
from qwen_sse.bench.metrics import RequestRecord, percentile_key
from qwen_sse.bench.monitor import ClientLoad
from qwen_sse.bench.report import load_line
from qwen_sse.config import shown_url
from qwen_sse.errors import ConfigurationError

__all__ = [
    "NO_CHARTS",
    "Chart",
    "LevelReport",
    "run_charts",
    "run_page",
    "sweep_charts",
    "sweep_page",
    "write_html",
]

NO_CHARTS = "Charts need matplotlib: pip install 'qwen-sse[plot]'."


class Chart(NamedTuple):
    """One chart of the page: its title and the PNG image."""

    title: str
    png: bytes


class LevelReport(NamedTuple):
    """A sweep's level as its page shows it: the level, its run's summary and its charts
    (None: no matplotlib)."""

    level: float
    summary: dict[str, Any]
    charts: list[Chart] | None


_SECTIONS = (
    ("ttft", "TTFT", "Time to first token"),
    ("tpot", "TPOT", "Time per output token (excl. 1st)"),
    ("itl", "ITL", "Inter-token latency"),
    ("e2el", "E2EL", "End-to-end latency"),
)
_SERIES = (
    ("requests_running", "Requests running"),
    ("requests_waiting", "Requests waiting"),
    ("kv_cache_usage", "KV-cache usage"),
)
_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2733;
  margin: 0 auto; max-width: 1180px; padding: 24px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 2px solid #d5dde6; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p.meta { color: #5b6b7c; margin: 0 0 16px; }
table { border-collapse: collapse; margin: 6px 0 14px; }
th, td { border: 1px solid #d5dde6; padding: 3px 10px; text-align: left;
  vertical-align: top; }
th { background: #eef2f6; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { width: 300px; }
.banner { border: 3px solid #c0392b; background: #fdecea; padding: 10px 14px;
  margin: 12px 0; }
.banner strong { color: #c0392b; }
.ok { color: #1e7d45; font-weight: 600; }
.bad { color: #c0392b; font-weight: 600; }
.note { color: #5b6b7c; font-style: italic; }
figure { margin: 12px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d5dde6; }
figcaption { color: #5b6b7c; font-size: 13px; }
code, pre { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { background: #f5f7f9; padding: 8px; white-space: pre-wrap; word-break: break-all; }
section.level { border-top: 4px solid #4a7ab5; margin-top: 36px; }
"""


def _e(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 2) -> str:
    """A figure as the text report writes it: floats to ``digits`` places, None as -."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of labels and (escaped) values."""
    body = "".join(f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>" for label, value in rows)
    return f'<table class="kv">{body}</table>'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    """A table with a header row; cells from column ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(cell)}</td>' if index >= numeric_from else f"<td>{_e(cell)}</td>"
            for index, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# -- one run ------------------------------------------------------------------------------


def _settings(summary: dict[str, Any]) -> str:
    load = summary["load"]
    slo = summary.get("goodput_slo_ms")
    thresholds = summary["client"]["thresholds"]
    rows: list[tuple[str, Any]] = [
        ("Target (base URL)", shown_url(summary["base_url"])),
        ("Protocol", summary["protocol"]),
        ("Model", summary["model_id"]),
        ("Load", load_line(load)),
        ("Measured requests planned", _number(summary["num_prompts"])),
        ("Duration limit (s)", _number(load["duration_s"])),
        ("Warm-up requests", load["warmup"]),
        ("Seed", load["seed"]),
        ("Tokenizer", summary["tokenizer_id"]),
        ("Request parameters", _json(summary["params"]) if summary["params"] else "-"),
        ("Percentiles", ", ".join(f"{p:g}" for p in summary["percentiles"])),
        (
            "Goodput SLOs",
            ", ".join(f"{key} <= {value:g} ms" for key, value in slo.items()) if slo else "-",
        ),
        (
            "Client verdict thresholds",
            ", ".join(f"{key} {value:g}" for key, value in sorted(thresholds.items())),
        ),
        ("Python", summary["python"]),
        ("Date (UTC)", summary["date"]),
    ]
    workload = _kv((key, _json(value)) for key, value in summary["workload"].items())
    return "<h3>Settings</h3>" + _kv(rows) + "<h3>Workload</h3>" + workload


def _figures(summary: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [
        ("Successful requests", summary["completed"]),
        ("Failed requests", summary["failed"]),
    ]
    if summary.get("cancelled"):
        rows.append(("Cancelled at the stop", summary["cancelled"]))
    rows += [
        ("Benchmark duration (s)", _number(summary["duration"])),
        ("Total input tokens", summary["total_input_tokens"]),
        ("Total generated tokens", summary["total_output_tokens"]),
    ]
    if summary["requests_with_cache_report"]:
        rows.append(("Cached input tokens (server)", summary["total_cached_tokens"]))
        rows.append(("Mean cached tokens per request", _number(summary["mean_cached_tokens"])))
    if summary["uncounted_input_parts"]:
        rows.append(("Media parts (not in local counts)", summary["uncounted_input_parts"]))
    rows.append(("Request throughput (req/s)", _number(summary["request_throughput"])))
    if summary["request_goodput"] is not None:
        rows.append(("Request goodput (req/s)", _number(summary["request_goodput"])))
    rows += [
        ("Output token throughput (tok/s)", _number(summary["output_throughput"])),
        ("Peak output token throughput (tok/s)", _number(summary["max_output_tokens_per_s"])),
        ("Total token throughput (tok/s)", _number(summary["total_token_throughput"])),
        ("Peak concurrent requests", summary["max_concurrent_requests"]),
    ]
    if summary["load"]["mode"] == "open":
        rows.append(("Send rate achieved (req/s)", _number(summary["send_rate"])))
    percentiles = summary["percentiles"]
    header = ["", "Mean", "Median", *(f"P{p:g}" for p in percentiles), "Std"]
    latency_rows = [
        [
            f"{title} ({short}, ms)",
            _number(summary[f"mean_{metric}_ms"]),
            _number(summary[f"median_{metric}_ms"]),
            *(_number(summary[percentile_key(p, metric)]) for p in percentiles),
            _number(summary[f"std_{metric}_ms"]),
        ]
        for metric, short, title in _SECTIONS
    ]
    return (
        "<h3>Figures</h3>"
        + _kv(rows)
        + "<h3>Latency</h3>"
        + _table(header, latency_rows)
        + _conversations(summary)
        + _errors(summary)
    )


def _conversations(summary: dict[str, Any]) -> str:
    conversations = summary["conversations"]
    if conversations is None:
        return ""
    top = max(summary["percentiles"], default=50.0)
    rows = [
        ("Completed", conversations["completed"]),
        ("Failed", conversations["failed"]),
        ("Unfinished", conversations["unfinished"]),
        ("Mean turns", _number(conversations["mean_turns"])),
        ("Mean conversation (ms)", _number(conversations["mean_conversation_ms"])),
        ("Median conversation (ms)", _number(conversations["median_conversation_ms"])),
        (
            f"P{top:g} conversation (ms)",
            _number(conversations[percentile_key(top, "conversation")]),
        ),
    ]
    turns = [
        [
            turn["turn"],
            turn["completed"],
            turn["failed"],
            _number(turn["mean_prompt_tokens"], 0),
            _number(turn["median_ttft_ms"], 1),
            _number(turn[percentile_key(top, "ttft")], 1),
            _number(turn["median_e2el_ms"], 1),
        ]
        for turn in summary["turns"]
    ]
    header = ["Turn", "OK", "Failed", "Prompt tokens", "TTFT p50", f"TTFT P{top:g}", "E2E p50"]
    return "<h3>Conversations</h3>" + _kv(rows) + _table(header, turns, numeric_from=0)


def _errors(summary: dict[str, Any]) -> str:
    if not summary["errors"]:
        return ""
    counts = sorted(summary["errors"].items(), key=lambda item: (-item[1], item[0]))
    groups = [
        [group["type"], group["message"], group["count"]] for group in summary["error_groups"]
    ]
    return (
        "<h3>Errors</h3>"
        + _table(["Error type", "Requests"], counts)
        + _table(["Error type", "Message", "Requests"], groups, numeric_from=2)
    )


def _server(summary: dict[str, Any]) -> str:
    server = summary.get("server_metrics")
    if server is None:
        return ""
    rows: list[tuple[str, Any]] = [
        ("Scraped", shown_url(server["url"])),
        ("Every (s)", f"{server['interval_s']:g}"),
        ("Scrapes (failed)", f"{server['scrapes']} ({server['failed_scrapes']})"),
    ]
    parts = ["<h3>Server (its /metrics)</h3>", _kv(rows)]
    if server["errors"]:
        errors = [[error["message"], error["count"]] for error in server["errors"]]
        parts.append(_table(["Scrape failed", "Times"], errors))
    series_rows = []
    for key, label in _SERIES:
        series = server["series"].get(key)
        if series is None:
            continue
        figures = [series[stat] for stat in ("min", "mean", "max")]
        if key == "kv_cache_usage":
            shown = [f"{value:.0%}" for value in figures]
        else:
            # As the text report: whole numbers while they are.
            digits = 0 if all(value % 1 == 0 for value in figures) else 1
            shown = [f"{value:.{digits}f}" for value in figures]
        series_rows.append([label, series["metric"], *shown])
    if series_rows:
        parts.append(_table(["Series", "Metric", "Min", "Mean", "Max"], series_rows, 2))
    else:
        parts.append(
            '<p class="note">The page had none of the series this report knows '
            "(requests running, waiting, KV-cache use).</p>"
        )
    grew = [
        [name, f"{value:.0f}" if value % 1 == 0 else f"{value:.2f}"]
        for name, value in server["counters"].items()
        if value
    ]
    if grew:
        window = server["counters_window_s"]
        parts.append(_table([f"Counter (increase over {window:.1f} s)", "Increase"], grew))
    return "".join(parts)


def _client(summary: dict[str, Any]) -> str:
    client = summary["client"]
    if summary["client_saturated"]:
        verdict = '<span class="bad">YES: the client limited these figures</span>'
    elif not summary["completed"]:
        verdict = '<span class="ok">no</span> (no request succeeded: nothing to judge)'
    else:
        verdict = '<span class="ok">no</span>'
    reasons = "".join(f"<li>{_e(reason)}</li>" for reason in summary["client_saturation_reasons"])
    top = max(summary["percentiles"], default=50.0)
    lag_keys = ("median", "p90", "p99", "max")
    lags = [
        ["Event-loop lag (ms)", *(_number(client["loop_lag_ms"][key], 1) for key in lag_keys)],
        ["Receive lag (ms)", *(_number(client["receive_lag_ms"][key], 1) for key in lag_keys)],
    ]
    sources = ", ".join(
        f"{'server usage' if source == 'usage' else 'local tokenizer'} ({count})"
        for source, count in sorted(summary["output_tokens_source"].items())
    )
    wait = client.get("cpu_wait_fraction_max")
    rows: list[tuple[str, Any]] = [
        (
            f"Schedule lag mean / p50 / P{top:g} (ms)",
            " / ".join(
                _number(summary[key], 1)
                for key in (
                    "mean_schedule_lag_ms",
                    "median_schedule_lag_ms",
                    percentile_key(top, "schedule_lag"),
                )
            ),
        ),
        ("CPU of the busiest worker", f"{client['cpu_fraction_max']:.0%} of a core"),
        ("Longest wait for a CPU", "-" if wait is None else f"{wait:.1%} of the run"),
        ("Output tokens counted by", sources or "-"),
    ]
    if summary["load"]["mode"] == "open" and summary["load"].get("max_concurrency"):
        rows.append(("Mean queue wait for a slot (ms)", _number(summary["mean_queue_wait_ms"])))
    workers = [
        [
            worker["worker"],
            f"{worker['cpu_fraction']:.0%}",
            f"{worker['cpu_fraction_max']:.0%}",
            "-"
            if worker.get("cpu_wait_fraction") is None
            else f"{worker['cpu_wait_fraction']:.1%}",
            _number(worker["loop_lag_ms"]["p90"], 1),
            _number(worker["receive_lag_ms"]["p90"], 1),
            _number(worker["open_files_limit"]),
        ]
        for worker in client["workers"]
    ]
    header = [
        "Worker",
        "CPU",
        "CPU peak",
        "CPU wait",
        "Loop lag p90 (ms)",
        "Receive lag p90 (ms)",
        "Open files limit",
    ]
    return (
        "<h3>Client self-check (the load generator)</h3>"
        f"<p>Client limited the figures: {verdict}</p>"
        + (f"<ul>{reasons}</ul>" if reasons else "")
        + _table(["", "p50", "p90", "p99", "max"], lags)
        + _kv(rows)
        + _table(header, workers, numeric_from=0)
    )


def _banner(summary: dict[str, Any]) -> str:
    parts = []
    if summary["client_saturated"]:
        reasons = "".join(
            f"<li>{_e(reason)}</li>" for reason in summary["client_saturation_reasons"]
        )
        parts.append(
            '<div class="banner"><strong>CLIENT SATURATED:</strong> these figures are limited '
            f"by the load generator, not only by the server.<ul>{reasons}</ul></div>"
        )
    if summary.get("stop_reason"):
        parts.append(f'<p class="bad">Stopped early: {_e(summary["stop_reason"])}</p>')
    return "".join(parts)


def _charts(charts: list[Chart] | None) -> str:
    if charts is None:
        return f'<h3>Charts</h3><p class="note">{_e(NO_CHARTS)}</p>'
    if not charts:
        return ""
    figures = "".join(
        f'<figure><img alt="{_e(chart.title)}" '
        f'src="data:image/png;base64,{base64.b64encode(chart.png).decode("ascii")}">'
        f"<figcaption>{_e(chart.title)}</figcaption></figure>"
        for chart in charts
    )
    return "<h3>Charts</h3>" + figures


def _run_body(summary: dict[str, Any], charts: list[Chart] | None) -> str:
    return (
        _banner(summary)
        + _settings(summary)
        + _figures(summary)
        + _server(summary)
        + _client(summary)
        + _charts(charts)
    )


def _page(title: str, subtitle: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="meta">{_e(subtitle)}</p>'
        f"{body}</body></html>\n"
    )


def _subtitle(summary: dict[str, Any]) -> str:
    return f"qwen-sse bench report · {summary['date']} · {shown_url(summary['base_url'])}"


def run_page(summary: dict[str, Any], charts: list[Chart] | None) -> str:
    """The page of one run: its summary document and its charts (None: no matplotlib)."""
    title = f"{summary['model_id']} · {load_line(summary['load'])}"
    return _page(title, _subtitle(summary), _run_body(summary, charts))


# -- a sweep ------------------------------------------------------------------------------


def _level_name(kind: str, level: float) -> str:
    return f"{level:g} req/s" if kind == "rates" else f"concurrency {level:g}"


def sweep_page(
    sweep: dict[str, Any], charts: list[Chart] | None, levels: Sequence[LevelReport]
) -> str:
    """The page of a sweep: its document, its own chart (None: no matplotlib) and each
    level's report."""
    kind = sweep["kind"]
    runs = sweep["runs"]
    top = percentile_key(99, "ttft")
    header = [
        "Level",
        "req/s",
        "tok/s",
        "TTFT p50 (ms)",
        "TTFT p99 (ms)",
        "ITL p50 (ms)",
        "E2E p50 (ms)",
        "Failed",
        "Client",
    ]
    with_server = any(run.get("server_metrics") for run in runs)
    if with_server:
        header.append("Server running max")
    rows = []
    for level, run in zip(sweep["levels"], runs, strict=False):
        row = [
            _level_name(kind, level),
            _number(run["request_throughput"]),
            _number(run["output_throughput"], 1),
            _number(run["median_ttft_ms"], 1),
            _number(run.get(top), 1),
            _number(run["median_itl_ms"], 1),
            _number(run["median_e2el_ms"], 1),
            run["failed"],
            "SATURATED" if run["client_saturated"] else "ok",
        ]
        if with_server:
            running = (run.get("server_metrics") or {}).get("series", {}).get("requests_running")
            row.append("-" if running is None else _number(float(running["max"]), 0))
        rows.append(row)
    if sweep["saturated_at"] is not None:
        end = f"Stopped at {_level_name(kind, sweep['saturated_at'])}: {sweep['stop_reason']}"
    elif sweep["stop_reason"] is not None:
        end = f"Stopped: {sweep['stop_reason']}"
    else:
        end = "No saturation within the levels given."
    body = "<h2>Levels</h2>" + _table(header, rows) + f"<p>{_e(end)}</p>" + _charts(charts)
    for report in levels:
        body += (
            f'<section class="level"><h2>Level: {_e(_level_name(kind, report.level))}</h2>'
            + _run_body(report.summary, report.charts)
            + "</section>"
        )
    named = "rates" if kind == "rates" else "concurrency"
    model = runs[0]["model_id"] if runs else "no runs"
    title = f"{model} · sweep of {named} " + ", ".join(f"{level:g}" for level in sweep["levels"])
    subtitle = _subtitle(runs[0]) if runs else "qwen-sse bench report"
    return _page(title, subtitle, body)


# -- charts and the file --------------------------------------------------------------------


def _png(figure: Any) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def run_charts(
    summary: dict[str, Any], records: Sequence[RequestRecord], loads: Sequence[ClientLoad]
) -> list[Chart] | None:
    """The charts of one run (:mod:`qwen_sse.bench.plot`), or None without matplotlib."""
    try:
        charts = [
            Chart(
                "TTFT and ITL: histograms and cumulative distributions",
                _png(plot.distributions_figure(summary, records)),
            ),
            Chart(
                "The run over time: latency by send time, throughput, the client's lag",
                _png(plot.timeline_figure(summary, records, loads)),
            ),
        ]
        server = summary.get("server_metrics")
        if server is not None and server["series"]:
            charts.append(Chart("The server's own series", _png(plot.server_figure(server))))
    except ConfigurationError:
        return None
    return charts


def sweep_charts(sweep: dict[str, Any]) -> list[Chart] | None:
    """The sweep's own chart, or None without matplotlib."""
    try:
        return [
            Chart(
                "Each level's latency against its output throughput, and throughput by level",
                _png(plot.sweep_figure(sweep)),
            )
        ]
    except ConfigurationError:
        return None


def write_html(path: str | Path, page: str) -> None:
    """Write a page (UTF-8)."""
    Path(path).write_text(page, "utf-8")
