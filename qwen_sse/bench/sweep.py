"""A sweep: the same benchmark at rising rates or concurrencies, until the endpoint saturates.

Edge layer (bench). It decides the levels' configurations and when to stop; running one
level is the caller's function (normally :func:`qwen_sse.bench.benchmark.run`).

The endpoint is saturated at a level when, there:

* open loop: the request throughput falls below ``1 - tolerance`` of the offered rate
  (requests pile up instead of completing at the rate they arrive);
* closed loop: more concurrency no longer buys throughput, less than ``min_gain`` (10%)
  above the previous level's;
* either: more than ``max_error_rate`` of the requests failed.

A level at which the client saturated ends the sweep too: beyond it the figures would
describe the load generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from qwen_sse.bench.benchmark import BenchConfig, BenchResult
from qwen_sse.bench.schedule import ClosedLoop, OpenLoop
from qwen_sse.bench.schema import SWEEP_SCHEMA_ID
from qwen_sse.errors import ConfigurationError

__all__ = ["SweepKind", "SweepRule", "config_at", "run_sweep", "saturation"]

SweepKind = Literal["rates", "concurrency"]


class SweepRule(msgspec.Struct, frozen=True, kw_only=True):
    """When a sweep stops (see the module)."""

    tolerance: float = 0.1
    min_gain: float = 0.1
    max_error_rate: float = 0.05


def config_at(base: BenchConfig, kind: SweepKind, level: float) -> BenchConfig:
    """``base`` with its load set to ``level``: a rate (open loop, keeping ``base``'s
    arrivals and cap if it is open) or a concurrency (closed loop)."""
    shape = base.shape
    if kind == "rates":
        if isinstance(shape, OpenLoop):
            return msgspec.structs.replace(base, shape=msgspec.structs.replace(shape, rate=level))
        return msgspec.structs.replace(base, shape=OpenLoop(rate=level))
    if not float(level).is_integer():
        raise ConfigurationError(f"a concurrency must be a whole number, got {level:g}")
    ramp_up_s = shape.ramp_up_s if isinstance(shape, ClosedLoop) else 0.0
    return msgspec.structs.replace(
        base, shape=ClosedLoop(concurrency=int(level), ramp_up_s=ramp_up_s)
    )


def saturation(
    kind: SweepKind,
    level: float,
    summary: dict[str, Any],
    previous: dict[str, Any] | None,
    rule: SweepRule,
) -> str | None:
    """Why the sweep stops at this level, or None to go on."""
    if summary["client_saturated"]:
        return "the client saturated: " + "; ".join(summary["client_saturation_reasons"])
    total = summary["completed"] + summary["failed"]
    if total and summary["failed"] / total > rule.max_error_rate:
        return f"{summary['failed']} of {total} requests failed"
    throughput = summary["request_throughput"]
    if kind == "rates" and throughput < (1 - rule.tolerance) * level:
        return f"throughput {throughput:.2f} req/s fell short of the offered {level:g} req/s"
    if kind == "concurrency" and previous is not None:
        before = previous["request_throughput"]
        if throughput < (1 + rule.min_gain) * before:
            return (
                f"throughput {throughput:.2f} req/s gained less than {rule.min_gain:.0%} "
                f"over {before:.2f} req/s at the previous level"
            )
    return None


def run_sweep(
    base: BenchConfig,
    kind: SweepKind,
    levels: Sequence[float],
    run_level: Callable[[BenchConfig], BenchResult],
    *,
    rule: SweepRule | None = None,
    on_level: Callable[[float, BenchResult], None] | None = None,
    stopped: Callable[[], str | None] | None = None,
) -> dict[str, Any]:
    """Run ``levels`` in ascending order until saturation; return the sweep document
    (:data:`~qwen_sse.bench.schema.SWEEP_SCHEMA`). ``on_level`` sees each level's result.
    ``stopped`` says why the sweep was asked to stop (None: go on); it is asked before
    and after each level, and a stopped sweep ends with the levels run so far, the one cut
    short included (``saturated_at`` null, ``stop_reason`` the reason)."""
    if not levels:
        raise ConfigurationError("a sweep needs at least one level")
    rule = rule or SweepRule()
    ordered = sorted(levels)
    runs: list[dict[str, Any]] = []
    done: list[float] = []
    stopped_at: float | None = None
    reason: str | None = None
    for level in ordered:
        reason = stopped() if stopped is not None else None
        if reason is not None:
            break
        result = run_level(config_at(base, kind, level))
        if on_level is not None:
            on_level(level, result)
        runs.append(result.summary)
        done.append(level)
        # A level cut short by a stop is kept, as the last.
        reason = stopped() if stopped is not None else None
        if reason is not None:
            break
        reason = saturation(kind, level, result.summary, runs[-2] if len(runs) > 1 else None, rule)
        if reason is not None:
            stopped_at = level
            break
    return {
        "schema": SWEEP_SCHEMA_ID,
        "kind": kind,
        "levels": done,
        "runs": runs,
        "saturated_at": stopped_at,
        "stop_reason": reason,
    }
