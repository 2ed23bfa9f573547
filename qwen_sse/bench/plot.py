"""PNG charts of a run and of a sweep (the ``plot`` extra).

Edge layer (bench). It draws with matplotlib's object API (no pyplot, no global state, no
display) and computes nothing the summary does not already say, except the series it
plots (throughput over a sliding window, cumulative distributions). matplotlib is
imported on use, so the rest of the package works without it.

The files, named by the constants here:

* ``ttft-itl.png``: TTFT and ITL, each as a histogram with its median and p99 and as a
  cumulative distribution with its p50, p90 and p99.
* ``timeline.png``: by send time, TTFT and end-to-end latency (two panels: a TTFT of
  150 ms would be lost on the scale of a 3-second answer); completed requests and output
  tokens per second over a sliding window; the client's event-loop and receive lag.
* ``sweep.png`` (a sweep): each level's output throughput against its TTFT, ITL and
  end-to-end latency (p50 and p99, one point per level, labelled), and the throughput at
  each level. Each level's own run is drawn in ``level-<N>/`` beside it.
* ``server.png`` (with ``--metrics-url``, when the server's page had a series of
  :data:`~qwen_sse.bench.server_metrics.SERIES`): the server's own requests running and
  waiting at each scrape, and its KV-cache use.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_sse.bench.metrics import RequestRecord, percentile, percentile_key, token_arrivals_s
from qwen_sse.bench.monitor import ClientLoad
from qwen_sse.errors import ConfigurationError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DISTRIBUTIONS_PNG",
    "SERVER_PNG",
    "SWEEP_PNG",
    "TIMELINE_PNG",
    "distributions_figure",
    "level_directory",
    "rate_series",
    "server_figure",
    "smoothing_window_s",
    "sweep_figure",
    "timeline_figure",
    "write_charts",
    "write_sweep_chart",
]

DISTRIBUTIONS_PNG = "ttft-itl.png"
TIMELINE_PNG = "timeline.png"
SWEEP_PNG = "sweep.png"
SERVER_PNG = "server.png"

_DPI = 110
_MIN_WINDOW_S = 5.0
_WINDOWS_PER_RUN = 20
_POINTS = 200
_CDF_MARKS = (50.0, 90.0, 99.0)
_TITLE_CHARS = 110
_BLUE, _GREY, _GREEN, _RED, _INK = "#4a7ab5", "#95a5a6", "#27ae60", "#c0392b", "#2c3e50"


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415  (the optional plot extra)
    except ImportError:
        raise ConfigurationError(
            "PNG charts need matplotlib: pip install 'qwen-sse[plot]'"
        ) from None
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def write_charts(
    summary: dict[str, Any],
    records: Sequence[RequestRecord],
    loads: Sequence[ClientLoad],
    directory: str | Path,
) -> list[Path]:
    """Draw ``ttft-itl.png`` and ``timeline.png`` of one run into ``directory`` (created
    if need be), and ``server.png`` when its summary has the server's series; return their
    paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / DISTRIBUTIONS_PNG, out / TIMELINE_PNG]
    distributions_figure(summary, records).savefig(paths[0])
    timeline_figure(summary, records, loads).savefig(paths[1])
    server = summary.get("server_metrics")
    if server is not None and server["series"]:
        paths.append(out / SERVER_PNG)
        server_figure(server).savefig(paths[2])
    return paths


def level_directory(directory: str | Path, level: float) -> Path:
    """Where a sweep's level draws its own run: ``level-<N>`` in the sweep's directory."""
    return Path(directory) / f"level-{level:g}"


def write_sweep_chart(sweep: dict[str, Any], directory: str | Path) -> Path:
    """Draw ``sweep.png`` of a sweep document into ``directory``; return its path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SWEEP_PNG
    sweep_figure(sweep).savefig(path)
    return path


def _shape(load: dict[str, Any]) -> str:
    if load["mode"] == "closed":
        return f"concurrency {load['concurrency']}"
    return "all at once" if load["rate"] is None else f"{load['rate']:g} req/s"


def _title(summary: dict[str, Any]) -> str:
    verdict = "  [CLIENT SATURATED]" if summary["client_saturated"] else ""
    return (
        f"{summary['model_id']} · {_shape(summary['load'])} · "
        f"{summary['completed']} requests{verdict}"
    )


def _no_data(axes: Axes, title: str) -> None:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title)


# -- distributions ----------------------------------------------------------------------


def distributions_figure(summary: dict[str, Any], records: Sequence[RequestRecord]) -> Figure:
    """TTFT and ITL of the successful requests: histograms above, cumulative
    distributions below (four panels)."""
    figure = _figure(11, 7.5)
    (ttft_hist, itl_hist), (ttft_cdf, itl_cdf) = figure.subplots(2, 2)
    ok = [record for record in records if record.ok]
    ttft = [record.ttft_s * 1000 for record in ok if record.ttft_s is not None]
    itl = [gap * 1000 for record in ok for gap in record.itl_s]
    _histogram(ttft_hist, ttft, "Time to first token", "ttft", summary)
    _histogram(itl_hist, itl, "Inter-token latency", "itl", summary)
    _cdf(ttft_cdf, ttft, "Time to first token, cumulative", "requests")
    _cdf(itl_cdf, itl, "Inter-token latency, cumulative", "gaps")
    figure.suptitle(_title(summary))
    return figure


def _histogram(
    axes: Axes, values_ms: list[float], title: str, summary_key: str, summary: dict[str, Any]
) -> None:
    if not values_ms:
        _no_data(axes, title)
        return
    axes.hist(values_ms, bins=min(60, max(10, int(math.sqrt(len(values_ms))))), color=_BLUE)
    median = summary[f"median_{summary_key}_ms"]
    p99 = summary.get(percentile_key(99, summary_key))
    axes.axvline(median, color="#222222", linestyle="--", label=f"median {median:.1f} ms")
    if p99 is not None:
        axes.axvline(p99, color=_RED, linestyle=":", label=f"p99 {p99:.1f} ms")
    axes.set_title(title)
    axes.set_xlabel("ms")
    axes.set_ylabel("count")
    axes.legend(loc="upper right", fontsize="small")


def _cdf(axes: Axes, values_ms: list[float], title: str, unit: str) -> None:
    """The share of ``values_ms`` at or below each value, with p50, p90 and p99 marked."""
    if not values_ms:
        _no_data(axes, title)
        return
    ordered = sorted(values_ms)
    count = len(ordered)
    axes.step(ordered, [(rank + 1) / count for rank in range(count)], where="post", color=_BLUE)
    for p in _CDF_MARKS:
        value = percentile(ordered, p)
        axes.plot([value], [p / 100], marker="o", color=_RED, markersize=4)
        axes.annotate(
            f"p{p:g} {value:.1f} ms",
            (value, p / 100),
            textcoords="offset points",
            xytext=(6, -10),
            fontsize="small",
        )
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.set_xlabel("ms")
    axes.set_ylabel(f"share of {unit} at or below")
    axes.grid(alpha=0.3)


# -- timeline ---------------------------------------------------------------------------


def smoothing_window_s(span_s: float) -> float:
    """The width of the sliding window of a run's per-second series: 5 s, or a twentieth
    of a run longer than 100 s, and never more than the run itself.

    One-second bins of a run at a few requests per second hold a handful of completions
    each: chance (Poisson arrivals) and a closed loop's slots ending together swing such
    a bin from 0 to twice the mean, which says nothing about the server. A window of
    5 s averages tens of completions, so what the line shows is a trend; a twentieth of
    a long run keeps about twenty independent windows across it."""
    return min(span_s, max(_MIN_WINDOW_S, span_s / _WINDOWS_PER_RUN))


def rate_series(
    points: Sequence[tuple[float, float]], start_s: float, end_s: float
) -> tuple[list[float], list[float], float]:
    """Amount per second of ``points`` (``(at_s, amount)`` pairs) over a sliding window
    centred on each of 200 instants from ``start_s`` to ``end_s``; returns the instants,
    the rates and the window's width (:func:`smoothing_window_s`).

    Near either end the window is cut to the run and the amount divided by what is left
    of it, so a steady rate stays level up to the edges instead of falling off by half.
    Nothing to plot (no points, or a run of no length): empty lists."""
    span = end_s - start_s
    if not points or span <= 0:
        return [], [], 0.0
    window = smoothing_window_s(span)
    ordered = sorted(points)
    times = [at for at, _ in ordered]
    totals = [0.0, *itertools.accumulate(amount for _, amount in ordered)]
    xs: list[float] = []
    rates: list[float] = []
    for step in range(_POINTS):
        x = start_s + span * step / (_POINTS - 1)
        low, high = max(start_s, x - window / 2), min(end_s, x + window / 2)
        # (low, high]: a completion at the run's very end counts, none comes at its start.
        amount = totals[bisect.bisect_right(times, high)] - totals[bisect.bisect_right(times, low)]
        xs.append(x)
        rates.append(amount / (high - low))
    return xs, rates, window


def timeline_figure(
    summary: dict[str, Any], records: Sequence[RequestRecord], loads: Sequence[ClientLoad]
) -> Figure:
    """The run over time, four panels sharing the time axis: TTFT and end-to-end latency
    by send time, requests and output tokens per second (a twin axis), the client's
    lateness."""
    figure = _figure(11, 10)
    ttft_axes, e2e_axes, throughput, client = figure.subplots(4, 1, sharex=True)
    ok = [record for record in records if record.ok]
    with_ttft = [record for record in ok if record.ttft_s is not None]
    ttft_axes.scatter(
        [r.sent_at_s for r in with_ttft], [(r.ttft_s or 0.0) * 1000 for r in with_ttft], s=4
    )
    ttft_axes.set_title("Time to first token, by send time")
    ttft_axes.set_ylabel("TTFT, ms")
    e2e_axes.scatter(
        [r.sent_at_s for r in ok], [r.e2e_s * 1000 for r in ok], s=4, color=_GREY, label="ok"
    )
    failed = [record for record in records if not record.ok]
    if failed:
        e2e_axes.scatter(
            [r.sent_at_s for r in failed],
            [r.e2e_s * 1000 for r in failed],
            s=12,
            marker="x",
            color=_RED,
            label=f"failed ({len(failed)})",
        )
        e2e_axes.legend(loc="upper left", fontsize="small", markerscale=2)
    e2e_axes.set_title("End-to-end latency, by send time")
    e2e_axes.set_ylabel("end-to-end, ms")
    _throughput(throughput, records, ok)
    _lateness(client, summary, loads)
    client.set_xlabel("seconds since start")
    figure.suptitle(_title(summary))
    return figure


def _throughput(axes: Axes, records: Sequence[RequestRecord], ok: list[RequestRecord]) -> None:
    axes.set_title("Throughput")
    if not records:
        return
    start = min(record.sent_at_s for record in records)
    end = max(record.end_at_s for record in records)
    xs, done, window = rate_series([(r.end_at_s, 1.0) for r in ok], start, end)
    axes.plot(xs, done, color=_INK, label=f"requests/s ({window:.3g} s window)")
    axes.set_ylabel("completed requests/s")
    axes.set_ylim(bottom=0)
    tokens_axes = axes.twinx()
    token_points = [
        (at, r.output_tokens / len(arrivals))
        for r in ok
        if (arrivals := token_arrivals_s(r))
        for at in arrivals
    ]
    txs, tokens, window = rate_series(token_points, start, end)
    tokens_axes.plot(txs, tokens, color=_GREEN, label=f"output tokens/s ({window:.3g} s window)")
    tokens_axes.set_ylabel("output tokens/s")
    tokens_axes.set_ylim(bottom=0)
    axes.legend(loc="lower left", fontsize="small")
    tokens_axes.legend(loc="lower right", fontsize="small")


def _lateness(axes: Axes, summary: dict[str, Any], loads: Sequence[ClientLoad]) -> None:
    for number, load in enumerate(loads):
        axes.plot(
            load.lag_at_s,
            [lag * 1000 for lag in load.lag_s],
            linewidth=0.6,
            color=f"C{2 * number}",
            label=f"event-loop lag, worker {load.worker}",
        )
        axes.scatter(
            load.receive_lag_at_s,
            [lag * 1000 for lag in load.receive_lag_s],
            s=3,
            color=f"C{2 * number + 1}",
            zorder=3,
            label=f"receive lag, worker {load.worker}",
        )
    limit = summary["client"]["thresholds"]["max_loop_lag_ms"]
    axes.axhline(limit, color=_RED, linestyle=":", label=f"limit (p90) {limit:g} ms")
    axes.set_title("Client: how late its event loop was")
    axes.set_ylabel("lag, ms")
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", fontsize="small", markerscale=3)


# -- sweep ------------------------------------------------------------------------------


def _level_label(kind: str, level: float) -> str:
    return f"{level:g} req/s" if kind == "rates" else f"c={level:g}"


def sweep_figure(sweep: dict[str, Any]) -> Figure:
    """A sweep (its document, :data:`~qwen_sse.bench.schema.SWEEP_SCHEMA`): output
    throughput against TTFT, ITL and end-to-end latency (p50 and p99, one point per level,
    labelled), and request and output throughput against the level (four panels)."""
    figure = _figure(12, 9)
    (ttft, itl), (e2e, levels) = figure.subplots(2, 2)
    kind = sweep["kind"]
    pairs = list(zip(sweep["levels"], sweep["runs"], strict=False))
    for axes, metric, name in (
        (ttft, "ttft", "Time to first token"),
        (itl, "itl", "Inter-token latency"),
        (e2e, "e2el", "End-to-end latency"),
    ):
        _latency_against_throughput(axes, kind, pairs, metric, name)
    _throughput_by_level(levels, kind, pairs, sweep.get("saturated_at"))
    runs = sweep["runs"]
    model = runs[0]["model_id"] if runs else "no runs"
    label = "rates" if kind == "rates" else "concurrency"
    if sweep.get("saturated_at") is not None:
        stop = f"stopped at {_level_label(kind, sweep['saturated_at'])}: {sweep['stop_reason']}"
    else:
        stop = "no saturation within the levels given"
    title = f"{model} · sweep of {label} · {stop}"
    if len(title) > _TITLE_CHARS:
        title = title[: _TITLE_CHARS - 1] + "…"
    figure.suptitle(title)
    return figure


def _latency_against_throughput(
    axes: Axes, kind: str, pairs: list[tuple[float, dict[str, Any]]], metric: str, name: str
) -> None:
    title = f"{name} against output throughput"
    # (level, output tok/s, p50, p99, client saturated) of the levels with a figure.
    points = [
        (
            level,
            run["output_throughput"],
            run[f"median_{metric}_ms"],
            run.get(percentile_key(99, metric)),
            run["client_saturated"],
        )
        for level, run in pairs
        if run.get(f"median_{metric}_ms") is not None
    ]
    if not points:
        _no_data(axes, title)
        return
    axes.plot([p[1] for p in points], [p[2] for p in points], marker="o", color=_BLUE, label="p50")
    tails = [(p[1], p[3]) for p in points if p[3] is not None]
    if tails:
        axes.plot(
            [x for x, _ in tails],
            [y for _, y in tails],
            marker="s",
            linestyle="--",
            color=_RED,
            label="p99",
        )
    saturated = [(p[1], p[2]) for p in points if p[4]]
    if saturated:
        axes.scatter(
            [x for x, _ in saturated],
            [y for _, y in saturated],
            s=140,
            facecolors="none",
            edgecolors=_RED,
            label="client saturated",
        )
    for level, x, y, _, _ in points:
        axes.annotate(
            _level_label(kind, level),
            (x, y),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize="small",
        )
    axes.set_title(title)
    axes.set_xlabel("output tokens/s")
    axes.set_ylabel(f"{'end-to-end' if metric == 'e2el' else metric.upper()}, ms")
    # From zero, with room above the highest point for its label.
    highest = max([p[2] for p in points] + [y for _, y in tails])
    axes.set_ylim(0, 1.15 * highest)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")


def _throughput_by_level(
    axes: Axes, kind: str, pairs: list[tuple[float, dict[str, Any]]], stopped_at: float | None
) -> None:
    title = "Throughput by level"
    if not pairs:
        _no_data(axes, title)
        return
    levels = [level for level, _ in pairs]
    axes.plot(
        levels,
        [run["request_throughput"] for _, run in pairs],
        marker="o",
        color=_INK,
        label="requests/s",
    )
    if kind == "rates":
        axes.plot(levels, levels, linestyle=":", color=_GREY, label="offered rate")
    axes.set_ylabel("requests/s")
    axes.set_ylim(bottom=0)
    tokens = axes.twinx()
    tokens.plot(
        levels,
        [run["output_throughput"] for _, run in pairs],
        marker="s",
        linestyle="--",
        color=_GREEN,
        label="output tokens/s",
    )
    tokens.set_ylabel("output tokens/s")
    tokens.set_ylim(bottom=0)
    if stopped_at is not None:
        axes.axvline(stopped_at, color=_RED, linestyle=":", label="sweep stopped")
    axes.set_xlabel("req/s offered" if kind == "rates" else "concurrency")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")
    tokens.legend(loc="lower right", fontsize="small")


# -- the server's own series ------------------------------------------------------------


def server_figure(server: dict[str, Any]) -> Figure:
    """The server's own series of one run (a summary's ``server_metrics``) at each scrape:
    requests running and waiting above, KV-cache use below (when the page had it)."""
    series = server["series"]
    kv = series.get("kv_cache_usage")
    figure = _figure(11, 6.5 if kv is not None else 4)
    if kv is not None:
        requests, cache = figure.subplots(2, 1, sharex=True)
    else:
        requests, cache = figure.subplots(1, 1), None
    drawn = False
    for key, label, color in (
        ("requests_running", "running", _BLUE),
        ("requests_waiting", "waiting", _RED),
    ):
        found = series.get(key)
        if found is None:
            continue
        requests.step(
            found["at_s"],
            found["values"],
            where="post",
            marker="o",
            markersize=3,
            color=color,
            label=f"{label} ({found['metric']})",
        )
        drawn = True
    if drawn:
        requests.set_ylim(bottom=0)
        requests.set_ylabel("requests")
        requests.legend(loc="upper left", fontsize="small")
        requests.set_title("Requests the server was running and queueing, at each scrape")
    else:
        _no_data(requests, "Requests (no such series on the page)")
    if cache is not None and kv is not None:
        cache.step(
            kv["at_s"],
            [value * 100 for value in kv["values"]],
            where="post",
            marker="o",
            markersize=3,
            color=_GREEN,
            label=kv["metric"],
        )
        cache.set_ylim(0, 105)
        cache.set_ylabel("KV cache used, %")
        cache.legend(loc="upper left", fontsize="small")
        cache.set_title("KV-cache use")
    (cache if cache is not None else requests).set_xlabel("seconds from the start of the run")
    failed = server["failed_scrapes"]
    title = f"The server's /metrics: {server['scrapes']} scrapes" + (
        f", {failed} failed" if failed else ""
    )
    figure.suptitle(title)
    return figure
