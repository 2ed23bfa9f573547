"""Two bench results side by side (``qwen-sse bench compare``): for every figure both values,
the difference and whether it is significant, as the comparison document.

Edge layer (bench). It reads what ``bench --json`` writes (one run, repeated runs, or a
sweep, whose levels it matches) and vLLM's ``benchmark_serving`` results (the same keys,
read as one run); it prints nothing. A difference is judged only where the data can:

* at least two runs on each side: Welch's t-test of the figure across the runs
  (two-sided, at :data:`ALPHA`), so each figure's own run-to-run spread decides;
* fewer: not judged, since one run says nothing about how far the next one would move;
* with the per-request records of two single runs (``--jsonl`` files): each latency's
  requests by the Mann-Whitney U test. That says whether the two runs differed; as the
  requests of one run share the server's state, it does not say that the next runs
  would (``--repeat`` does).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from qwen_sse.bench.metrics import METRICS, RequestRecord
from qwen_sse.bench.repeat import figure_keys, samples
from qwen_sse.bench.schema import (
    COMPARISON_SCHEMA_ID,
    REPEAT_SCHEMA_ID,
    SUMMARY_SCHEMA_ID,
    SWEEP_SCHEMA_ID,
)
from qwen_sse.bench.stats import TestResult, mann_whitney, mean_interval, welch

__all__ = ["ALPHA", "DocumentError", "compare", "read_document", "read_records"]

ALPHA = 0.05
"""A difference is significant when its test's p-value is below this (95% confidence)."""

# The better direction of each figure; latencies, failures and durations are lower-better.
_HIGHER_IS_BETTER = frozenset(
    {
        "completed",
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
        "max_output_tokens_per_s",
    }
)
# Figures of the workload or of the schedule, where neither direction is better.
_NEUTRAL = frozenset(
    {
        "total_input_tokens",
        "total_output_tokens",
        "total_cached_tokens",
        "mean_cached_tokens",
        "max_concurrent_requests",
        "send_rate",
    }
)
# Where a record keeps each latency, in seconds.
_RECORD_FIELDS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2el": "e2e_s"}


class DocumentError(ValueError):
    """A file that is not a bench result, or two results that cannot be compared; the
    message names the file."""


def read_document(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``, checked to be a bench result (see the module)."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise DocumentError(f"{path}: cannot read it: {reason}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DocumentError(f"{path}: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise DocumentError(f"{path}: not a bench result (a JSON object)")
    _kind(document, str(path))
    return document


def read_records(path: str | Path) -> list[RequestRecord]:
    """The request records of a ``--jsonl`` file."""
    decoder = msgspec.json.Decoder(RequestRecord)
    records = []
    try:
        with Path(path).open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    try:
                        records.append(decoder.decode(line))
                    except msgspec.DecodeError as error:
                        raise DocumentError(
                            f"{path}, line {number}: not a request record ({error})"
                        ) from None
    except OSError as error:
        raise DocumentError(f"{path}: cannot read it: {error.strerror}") from None
    return records


def _kind(document: dict[str, Any], name: str) -> str:
    """``run``, ``repeat`` or ``sweep``; a document without our schema but with vLLM's
    figures is a run of vLLM's ``benchmark_serving``."""
    kinds = {SUMMARY_SCHEMA_ID: "run", REPEAT_SCHEMA_ID: "repeat", SWEEP_SCHEMA_ID: "sweep"}
    schema = document.get("schema")
    if schema in kinds:
        return kinds[schema]
    if schema is None and "request_throughput" in document:
        return "run"
    raise DocumentError(
        f"{name}: not a result of qwen-sse bench --json or of vLLM's benchmark_serving"
    )


def _levels(document: dict[str, Any], name: str) -> dict[float | None, list[dict[str, Any]]]:
    """The document's runs, by level (None outside a sweep)."""
    kind = _kind(document, name)
    if kind == "run":
        return {None: [document]}
    runs = document.get("runs")
    if not (
        isinstance(runs, list)
        and runs
        and all(isinstance(run, dict) and "request_throughput" in run for run in runs)
    ):
        raise DocumentError(f"{name}: its 'runs' are not a list of run summaries")
    if kind == "repeat":
        return {None: runs}
    levels = document.get("levels")
    if not (
        isinstance(levels, list)
        and len(levels) == len(runs)
        and all(isinstance(level, int | float) for level in levels)
    ):
        raise DocumentError(f"{name}: its 'levels' do not match its 'runs'")
    return {float(level): [run] for level, run in zip(levels, runs, strict=True)}


def compare(
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    names: tuple[str, str] = ("A", "B"),
    records: tuple[Sequence[RequestRecord], Sequence[RequestRecord]] | None = None,
) -> dict[str, Any]:
    """The comparison document (:data:`~qwen_sse.bench.schema.COMPARISON_SCHEMA`) of ``a``
    and ``b`` (``b`` against ``a``: differences are ``b - a``); ``names`` name them in it
    and in errors. ``records``: the per-request records of two single runs."""
    name_a, name_b = names
    kind_a, kind_b = _kind(a, name_a), _kind(b, name_b)
    if (kind_a == "sweep") != (kind_b == "sweep"):
        swept, other = (name_a, name_b) if kind_a == "sweep" else (name_b, name_a)
        raise DocumentError(f"{swept} is a sweep and {other} is not: compare a sweep with a sweep")
    levels_a, levels_b = _levels(a, name_a), _levels(b, name_b)
    sweep: dict[str, Any] | None = None
    if kind_a == "sweep":
        if a.get("kind") != b.get("kind"):
            raise DocumentError(
                f"{name_a} sweeps {a.get('kind')} and {name_b} sweeps {b.get('kind')}: "
                "their levels do not match"
            )
        sweep = {
            "kind": a["kind"],
            "only_in_a": [level for level in levels_a if level not in levels_b],
            "only_in_b": [level for level in levels_b if level not in levels_a],
        }
    common = [level for level in levels_a if level in levels_b]
    if not common:
        raise DocumentError(f"{name_a} and {name_b} have no level in common")
    if records is not None and (kind_a, kind_b) != ("run", "run"):
        raise DocumentError("per-request records compare two single runs, not repeats or sweeps")
    first_a, first_b = levels_a[common[0]][0], levels_b[common[0]][0]
    # Both have request_throughput at least (every run summary does).
    keys = [key for key in figure_keys(first_a) if key in figure_keys(first_b)]
    distributions = _distributions(first_a, first_b, names, records) if records is not None else []
    return {
        "schema": COMPARISON_SCHEMA_ID,
        "alpha": ALPHA,
        "a": _side(name_a, kind_a, levels_a),
        "b": _side(name_b, kind_b, levels_b),
        "sweep": sweep,
        "levels": [
            {
                "level": level,
                "figures": [_figure(key, levels_a[level], levels_b[level]) for key in keys],
                "distributions": distributions,
            }
            for level in common
        ],
    }


def _side(name: str, kind: str, levels: dict[float | None, list[dict[str, Any]]]) -> dict[str, Any]:
    first = next(iter(levels.values()))
    model = first[0].get("model_id")
    load = first[0].get("load")
    return {
        "name": name,
        "kind": kind,
        "runs": len(first),
        "model_id": model if isinstance(model, str) else None,
        "load": load if isinstance(load, dict) else None,
        "client_saturated_runs": sum(
            1 for runs in levels.values() for run in runs if run.get("client_saturated") is True
        ),
    }


def _figure(key: str, runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]]) -> dict[str, Any]:
    a = samples([run.get(key) for run in runs_a])
    b = samples([run.get(key) for run in runs_b])
    return _difference(key, _across_runs(a), _across_runs(b), "welch", welch(a, b))


def _across_runs(numbers: list[float]) -> dict[str, Any]:
    if not numbers:
        return {"n": 0, "value": None, "half_width": None}
    interval = mean_interval(numbers)
    return {"n": interval.n, "value": interval.mean, "half_width": interval.half_width}


def _distributions(
    summary_a: dict[str, Any],
    summary_b: dict[str, Any],
    names: tuple[str, str],
    records: tuple[Sequence[RequestRecord], Sequence[RequestRecord]],
) -> list[dict[str, Any]]:
    for name, summary, side in zip(names, (summary_a, summary_b), records, strict=True):
        ok = sum(1 for record in side if record.ok)
        if summary.get("completed") != ok:
            raise DocumentError(
                f"{name}: its per-request records hold {ok} successful requests and its "
                f"summary {summary.get('completed')}: they are not of the same run"
            )
    rows = []
    for metric in METRICS:
        a, b = (_latencies_ms(side, metric) for side in records)
        test = mann_whitney(a, b)
        rows.append(_difference(metric, _of_requests(a), _of_requests(b), "mann-whitney", test))
    return rows


def _latencies_ms(records: Sequence[RequestRecord], metric: str) -> list[float]:
    ok = [record for record in records if record.ok]
    if metric == "itl":
        return [gap * 1000 for record in ok for gap in record.itl_s]
    values = (getattr(record, _RECORD_FIELDS[metric]) for record in ok)
    return [value * 1000 for value in values if value is not None]


def _of_requests(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "value": statistics.median(values) if values else None,
        "half_width": None,
    }


def _difference(
    figure: str,
    a: dict[str, Any],
    b: dict[str, Any],
    test_name: str,
    test: TestResult | None,
) -> dict[str, Any]:
    value_a, value_b = a["value"], b["value"]
    percent: float | None = None
    if value_a is not None and value_b is not None:
        if value_a != 0:
            percent = (value_b - value_a) / abs(value_a) * 100
        elif value_b == 0:
            percent = 0.0
    significant = None if test is None else test.p_value < ALPHA
    return {
        "figure": figure,
        "a": a,
        "b": b,
        "difference_percent": percent,
        "test": None if test is None else test_name,
        "statistic": None if test is None else _finite(test.statistic),
        "df": None if test is None else _finite(test.df),
        "p_value": None if test is None else test.p_value,
        "significant": significant,
        "better": _better(figure, value_a, value_b) if significant else None,
    }


def _finite(value: float | None) -> float | None:
    # JSON has no infinities.
    return value if value is not None and math.isfinite(value) else None


def _better(figure: str, value_a: float | None, value_b: float | None) -> str | None:
    if figure in _NEUTRAL or value_a is None or value_b is None or value_a == value_b:
        return None
    b_higher = value_b > value_a
    return "b" if b_higher == (figure in _HIGHER_IS_BETTER) else "a"
