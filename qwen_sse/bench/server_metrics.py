"""The server's own account of a run, from its Prometheus ``/metrics``: which series mean
requests running, requests waiting and KV-cache use on each server, one scrape's
:class:`Reading`, and the summary's ``server_metrics`` made of a run's readings.

Edge layer (bench); pure (no I/O: :mod:`qwen_sse.bench.scrape` fetches the pages). The
series and the names each server gives them (the first name a page has wins):

* ``requests_running``: vLLM ``vllm:num_requests_running``, SGLang
  ``sglang:num_running_reqs``, llama.cpp ``llamacpp:requests_processing``, TGI
  ``tgi_batch_current_size`` (and the emulator, under vLLM's name);
* ``requests_waiting``: ``vllm:num_requests_waiting``, ``sglang:num_queue_reqs``,
  ``llamacpp:requests_deferred``, ``tgi_queue_size``;
* ``kv_cache_usage`` (a fraction, 1 is full): ``vllm:kv_cache_usage_perc`` (vLLM V1),
  ``vllm:gpu_cache_usage_perc`` (V0), ``sglang:token_usage``,
  ``llamacpp:kv_cache_usage_ratio``.

A page may carry a series several times under different labels (a model, an engine of a
data-parallel server): requests are summed over them, KV-cache use is the fullest. Every
counter (and every histogram's and summary's ``_sum`` and ``_count``, which only grow) is
summed over its labels too, and reported as its increase from the first successful scrape
to the last; a counter that went down was reset (the server restarted), and its increase
is then its last value, as Prometheus's ``increase()`` reads it.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from qwen_sse.bench.prometheus import CUMULATIVE_SUFFIXES, Exposition

__all__ = ["SERIES", "Phase", "Reading", "read", "summarize"]

Phase = Literal["before", "during", "after"]

SERIES: dict[str, tuple[str, ...]] = {
    "requests_running": (
        "vllm:num_requests_running",
        "sglang:num_running_reqs",
        "llamacpp:requests_processing",
        "tgi_batch_current_size",
    ),
    "requests_waiting": (
        "vllm:num_requests_waiting",
        "sglang:num_queue_reqs",
        "llamacpp:requests_deferred",
        "tgi_queue_size",
    ),
    "kv_cache_usage": (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "sglang:token_usage",
        "llamacpp:kv_cache_usage_ratio",
    ),
}
"""Each series of the report and the metric names servers give it, in order of preference."""

# Series whose label sets are alternatives (engines of one server), not parts of a whole.
_FULLEST = frozenset(("kv_cache_usage",))


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One scrape: ``at_s`` when it was sent (seconds from the start of the run; the scrape
    before it is negative), its ``phase``, and either ``error`` (why it failed, on one line)
    or what the page said: ``gauges`` by series name (:data:`SERIES`), ``sources`` the metric
    each came from, and ``counters``, every cumulative sample name with its value summed over
    its labels (the scraper keeps them only in the readings it needs: :func:`summarize`
    takes the first and last successful ones)."""

    at_s: float
    phase: Phase
    error: str | None = None
    gauges: dict[str, float] = {}
    sources: dict[str, str] = {}
    counters: dict[str, float] = {}


def read(page: Exposition, *, at_s: float, phase: Phase) -> Reading:
    """The :class:`Reading` of a parsed page."""
    by_name: dict[str, list[float]] = {}
    counters: dict[str, float] = {}
    for sample in page.samples:
        if not math.isfinite(sample.value):
            continue  # NaN says nothing; JSON has no infinity
        by_name.setdefault(sample.name, []).append(sample.value)
        _, kind = page.type_of(sample.name)
        if kind == "counter" or (
            kind in ("histogram", "summary") and sample.name.endswith(CUMULATIVE_SUFFIXES)
        ):
            counters[sample.name] = counters.get(sample.name, 0.0) + sample.value
    gauges: dict[str, float] = {}
    sources: dict[str, str] = {}
    for series, names in SERIES.items():
        for name in names:
            values = by_name.get(name)
            if values:
                gauges[series] = max(values) if series in _FULLEST else math.fsum(values)
                sources[series] = name
                break
    return Reading(at_s=at_s, phase=phase, gauges=gauges, sources=sources, counters=counters)


def summarize(readings: Sequence[Reading], *, url: str, interval_s: float) -> dict[str, Any]:
    """The summary's ``server_metrics`` (see ``SUMMARY_SCHEMA``): the scrapes and their
    failures, each series found (its values at every scrape; min, mean and max over the
    scrapes taken during the run, or over all of them if none was), and every counter's
    increase over the run."""
    ok = [reading for reading in readings if reading.error is None]
    errors = Counter(reading.error for reading in readings if reading.error is not None)
    series: dict[str, Any] = {}
    for name in SERIES:
        points = [(r.at_s, r.gauges[name], r) for r in ok if name in r.gauges]
        if not points:
            continue
        during = [value for _, value, r in points if r.phase == "during"] or [
            value for _, value, _ in points
        ]
        series[name] = {
            "metric": points[-1][2].sources[name],
            "min": min(during),
            "mean": statistics.fmean(during),
            "max": max(during),
            "at_s": [at for at, _, _ in points],
            "values": [value for _, value, _ in points],
        }
    counters: dict[str, float] = {}
    window: float | None = None
    if len(ok) >= 2:
        first, last = ok[0], ok[-1]
        window = last.at_s - first.at_s
        for name, after in sorted(last.counters.items()):
            before = first.counters.get(name)
            if before is None:
                continue
            counters[name] = after - before if after >= before else after
    return {
        "url": url,
        "interval_s": interval_s,
        "scrapes": len(readings),
        "failed_scrapes": len(readings) - len(ok),
        "errors": [{"message": message, "count": count} for message, count in errors.most_common()],
        "series": series,
        "counters_window_s": window,
        "counters": counters,
    }
