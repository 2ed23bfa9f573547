"""PNG charts of a run (the ``plot`` extra): latency distributions, and the run over time.

Edge layer (bench). It draws with matplotlib's object API (no pyplot, no global state,
no display) and computes nothing the summary does not already say, except the
per-second series it plots. matplotlib is imported on use, so the rest of the package
works without it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_sse.bench.metrics import RequestRecord, token_arrivals_s
from qwen_sse.bench.monitor import ClientLoad
from qwen_sse.errors import ConfigurationError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DISTRIBUTIONS_PNG", "TIMELINE_PNG", "write_charts"]

DISTRIBUTIONS_PNG = "ttft-itl.png"
TIMELINE_PNG = "timeline.png"
_BUCKET_S = 1.0


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415  (the optional plot extra)
    except ImportError:
        raise ConfigurationError(
            "PNG charts need matplotlib: pip install 'qwen-sse[plot]'"
        ) from None
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def write_charts(
    summary: dict[str, Any],
    records: Sequence[RequestRecord],
    loads: Sequence[ClientLoad],
    directory: str | Path,
) -> list[Path]:
    """Draw ``ttft-itl.png`` and ``timeline.png`` into ``directory`` (created if need be);
    return their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / DISTRIBUTIONS_PNG, out / TIMELINE_PNG]
    _distributions(summary, records).savefig(paths[0])
    _timeline(summary, records, loads).savefig(paths[1])
    return paths


def _title(summary: dict[str, Any]) -> str:
    load = summary["load"]
    if load["mode"] == "closed":
        shape = f"concurrency {load['concurrency']}"
    else:
        shape = "all at once" if load["rate"] is None else f"{load['rate']:g} req/s"
    verdict = "  [CLIENT SATURATED]" if summary["client_saturated"] else ""
    return f"{summary['model_id']} · {shape} · {summary['completed']} requests{verdict}"


def _histogram(
    axes: Axes, values_ms: list[float], label: str, summary_key: str, summary: Any
) -> None:
    if not values_ms:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        axes.set_title(label)
        return
    axes.hist(values_ms, bins=min(60, max(10, int(math.sqrt(len(values_ms))))), color="#4a7ab5")
    median = summary[f"median_{summary_key}_ms"]
    p99 = summary.get(f"p99_{summary_key}_ms")
    axes.axvline(median, color="#222222", linestyle="--", label=f"median {median:.1f} ms")
    if p99 is not None:
        axes.axvline(p99, color="#c0392b", linestyle=":", label=f"p99 {p99:.1f} ms")
    axes.set_title(label)
    axes.set_xlabel("ms")
    axes.set_ylabel("count")
    axes.legend(loc="upper right", fontsize="small")


def _distributions(summary: dict[str, Any], records: Sequence[RequestRecord]) -> Figure:
    figure = _figure(10, 4)
    left, right = figure.subplots(1, 2)
    ok = [record for record in records if record.ok]
    ttft = [record.ttft_s * 1000 for record in ok if record.ttft_s is not None]
    itl = [gap * 1000 for record in ok for gap in record.itl_s]
    _histogram(left, ttft, "Time to first token", "ttft", summary)
    _histogram(right, itl, "Inter-token latency", "itl", summary)
    figure.suptitle(_title(summary))
    return figure


def _per_second(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    buckets: defaultdict[int, float] = defaultdict(float)
    for at, amount in points:
        buckets[math.floor(at / _BUCKET_S)] += amount
    if not buckets:
        return [], []
    first, last = min(buckets), max(buckets)
    xs = [(bucket + 0.5) * _BUCKET_S for bucket in range(first, last + 1)]
    return xs, [buckets.get(bucket, 0.0) / _BUCKET_S for bucket in range(first, last + 1)]


def _timeline(
    summary: dict[str, Any], records: Sequence[RequestRecord], loads: Sequence[ClientLoad]
) -> Figure:
    figure = _figure(10, 8)
    latency, throughput, client = figure.subplots(3, 1, sharex=True)
    ok = [record for record in records if record.ok]
    latency.scatter(
        [r.sent_at_s for r in ok],
        [r.e2e_s * 1000 for r in ok],
        s=4,
        color="#95a5a6",
        label="end-to-end",
    )
    latency.scatter(
        [r.sent_at_s for r in ok if r.ttft_s is not None],
        [r.ttft_s * 1000 for r in ok if r.ttft_s is not None],
        s=4,
        color="#4a7ab5",
        label="time to first token",
    )
    latency.set_ylabel("ms (by send time)")
    latency.legend(loc="upper left", fontsize="small", markerscale=3)
    xs, done = _per_second([(r.end_at_s, 1.0) for r in ok])
    throughput.step(xs, done, where="mid", color="#2c3e50", label="requests/s")
    throughput.set_ylabel("requests/s")
    throughput.set_ylim(bottom=0)
    tokens_axes = throughput.twinx()
    token_points = [
        (at, r.output_tokens / len(arrivals))
        for r in ok
        if (arrivals := token_arrivals_s(r))
        for at in arrivals
    ]
    txs, tokens = _per_second(token_points)
    tokens_axes.step(txs, tokens, where="mid", color="#27ae60", label="output tokens/s")
    tokens_axes.set_ylabel("output tokens/s")
    tokens_axes.set_ylim(bottom=0)
    throughput.legend(loc="upper left", fontsize="small")
    tokens_axes.legend(loc="upper right", fontsize="small")
    for load in loads:
        client.plot(
            load.lag_at_s,
            [lag * 1000 for lag in load.lag_s],
            linewidth=0.6,
            label=f"loop lag, worker {load.worker}",
        )
    limit = summary["client"]["thresholds"]["max_loop_lag_ms"]
    client.axhline(limit, color="#c0392b", linestyle=":", label=f"limit (p90) {limit:g} ms")
    client.set_ylabel("event-loop lag, ms")
    client.set_xlabel("seconds since start")
    client.legend(loc="upper left", fontsize="small")
    figure.suptitle(_title(summary))
    return figure
