"""Per-request measurements and the figures computed from them, under vLLM's definitions.

Edge layer (bench). Pure: results in, records out, records in, numbers out; no clock
and no I/O, so the asyncio runner and the Locust user (under gevent) share it. Imports
only the core (:mod:`qwen_sse.chat`, :mod:`qwen_sse.tokens`).

Definitions (those of vLLM's ``benchmark_serving``, so results compare side by side):

* TTFT: from sending the request to the first content or reasoning text (the role-only
  first chunk does not count).
* ITL: every gap between consecutive text-bearing chunks, pooled over all requests.
* TPOT, per request with more than one output token: ``(e2e - ttft) / (output_tokens - 1)``.
* E2EL: from sending the request to the end of its stream.
* Percentiles interpolate linearly between closest ranks (numpy's default); ``std`` is
  the population standard deviation. Only successful requests count; failed ones are
  counted by error type and message. Requests cancelled when a run was stopped early
  are counted apart, and count in no other figure.
* Throughputs divide by the measured window: from the first measured request's send to
  the last measured request's end.
* Goodput: successful requests per second that meet every SLO given (a request with one
  output token has TPOT 0 for this purpose).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import msgspec

from qwen_sse.chat import ChatResult
from qwen_sse.tokens import count_tokens

__all__ = [
    "METRICS",
    "RequestRecord",
    "Slo",
    "cache_figures",
    "cached_tokens_of",
    "conversation_figures",
    "describe",
    "error_groups",
    "max_concurrency",
    "output_tokens_of",
    "peak_output_tokens_per_s",
    "percentile",
    "percentile_key",
    "reason_of",
    "record_of",
    "summarize",
    "token_arrivals_s",
    "tpot_of",
]

TokenSource = Literal["usage", "local"]

_CANCELLED = "cancelled: the run was stopped before this answer ended"

METRICS = ("ttft", "tpot", "itl", "e2el")
"""The latency metrics, in vLLM's key spelling (``mean_ttft_ms``, ``p99_itl_ms``, ...)."""


class RequestRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Everything measured about one request. Times are seconds; instants (``*_at_s``)
    count from the start of the run, on one clock shared by every worker.

    * ``scheduled_at_s``: when the schedule meant it to go (closed loop: when its slot
      became free); ``schedule_lag_s``: how late the client got round to it.
    * ``queue_wait_s``: waiting after that for a free place under ``--max-concurrency``
      (and for the client's limiter, if any), before the request was sent at ``sent_at_s``.
    * ``ttft_s``, ``itl_s`` (every inter-token gap), ``e2e_s``, ``tpot_s``: from the send.
    * ``output_tokens`` and ``prompt_tokens``, each with its source: ``"usage"`` when the
      server reported it, ``"local"`` when counted with the Qwen tokenizer.
    * ``ok`` is False when the request failed; ``error_type`` is then the exception's class
      name, ``error`` its message and ``status`` the HTTP status, if one came.
    * ``cached_tokens``: the prompt tokens the server's usage says hit its context cache
      (``prompt_tokens_details.cached_tokens``); None when it said nothing of a cache.
    * ``uncounted_parts``: image, audio and video parts of the prompt, which a local count
      leaves out (a server's usage counts them).
    * ``turn`` of ``turns``: the request's place in its conversation (``index`` is the
      conversation's); None outside a conversation.
    * ``cancelled``: the run was stopped early and this request cut off; it is not ``ok``,
      and it counts in no figure (only in the summary's ``cancelled``).
    * ``request_id``: the server's, from the answer or from the error.
    """

    index: int
    worker: int
    scheduled_at_s: float
    schedule_lag_s: float
    queue_wait_s: float
    sent_at_s: float
    ttft_s: float | None
    itl_s: list[float]
    e2e_s: float
    tpot_s: float | None
    output_tokens: int
    output_tokens_source: TokenSource
    prompt_tokens: int
    prompt_tokens_source: TokenSource
    ok: bool
    error_type: str | None = None
    error: str | None = None
    status: int | None = None
    attempts: int = 1
    finish_reason: str | None = None
    request_id: str = ""
    cached_tokens: int | None = None
    uncounted_parts: int = 0
    turn: int | None = None
    turns: int | None = None
    cancelled: bool = False

    @property
    def end_at_s(self) -> float:
        return self.sent_at_s + self.e2e_s


class Slo(msgspec.Struct, frozen=True, kw_only=True):
    """Service-level objectives for goodput, in milliseconds; None leaves one out."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        """True when the (successful) request meets every objective set."""
        if not record.ok:
            return False
        checks = (
            (self.ttft_ms, record.ttft_s),
            (self.tpot_ms, record.tpot_s if record.tpot_s is not None else 0.0),
            (self.e2el_ms, record.e2e_s),
        )
        return all(
            limit is None or (value is not None and value * 1000 <= limit)
            for limit, value in checks
        )

    def as_dict(self) -> dict[str, float]:
        return {
            name: value
            for name, value in (
                ("ttft", self.ttft_ms),
                ("tpot", self.tpot_ms),
                ("e2el", self.e2el_ms),
            )
            if value is not None
        }


def tpot_of(e2e_s: float, ttft_s: float | None, output_tokens: int) -> float | None:
    """vLLM's time per output token after the first; None below two tokens."""
    if ttft_s is None or output_tokens < 2:
        return None
    return (e2e_s - ttft_s) / (output_tokens - 1)


def output_tokens_of(
    result: ChatResult, count_text: Callable[[str], int] = count_tokens
) -> tuple[int, TokenSource]:
    """Output tokens of a result: the server's ``completion_tokens`` when it reported usage,
    else the ``count_text`` count (Qwen's by default) of everything it streamed (reasoning,
    content, tool-call arguments)."""
    if result.usage is not None:
        return result.usage.completion_tokens, "usage"
    text = "".join(
        choice.reasoning_content
        + choice.content
        + "".join(call.function.arguments for call in choice.tool_calls)
        for choice in result.choices
    )
    return count_text(text), "local"


def cached_tokens_of(result: ChatResult | None) -> int | None:
    """The prompt tokens the server's usage reports as read from its context cache (None
    when it reports nothing of a cache)."""
    usage = result.usage if result is not None else None
    details = usage.prompt_tokens_details if usage is not None else None
    return details.cached_tokens if details is not None else None


def record_of(
    result: ChatResult | None,
    *,
    index: int,
    worker: int,
    scheduled_at_s: float,
    schedule_lag_s: float,
    queue_wait_s: float,
    sent_at_s: float,
    elapsed_s: float,
    prompt_tokens: int,
    error: BaseException | None = None,
    uncounted_parts: int = 0,
    turn: int | None = None,
    turns: int | None = None,
    count_text: Callable[[str], int] = count_tokens,
    cancelled: bool = False,
) -> RequestRecord:
    """The record of one request from its (possibly partial, possibly missing) result.

    ``elapsed_s`` is the caller's own measure of send-to-end, used when the result has no
    end time of its own (a request that failed before any response). ``count_text``
    counts the output when the server reports no usage.
    end time of its own (a request that failed before any response). ``cancelled``: the
    request was cut off because the run stopped (``error`` is then ignored).
    """
    timing = result.timing if result is not None else None
    ttft_s = timing.ttft_s if timing is not None else None
    e2e_s = timing.total_s if timing is not None and timing.total_s is not None else elapsed_s
    if result is not None:
        output_tokens, output_source = output_tokens_of(result, count_text)
    else:
        output_tokens, output_source = 0, "local"
    usage = result.usage if result is not None else None
    error_type: str | None = None
    message: str | None = None
    status: object = None
    if cancelled:
        error_type, message = "CancelledError", _CANCELLED
    elif error is not None:
        error_type, message = type(error).__name__, str(error)
        status = getattr(error, "status", None)
    request_id = result.request_id if result is not None else ""
    if not request_id:
        # An HTTP error has no result, but its answer named the request.
        found = getattr(error, "request_id", "")
        request_id = found if isinstance(found, str) else ""
    return RequestRecord(
        index=index,
        worker=worker,
        scheduled_at_s=scheduled_at_s,
        schedule_lag_s=schedule_lag_s,
        queue_wait_s=queue_wait_s + (result.queue_wait_s if result is not None else 0.0),
        sent_at_s=sent_at_s,
        ttft_s=ttft_s,
        itl_s=list(timing.inter_token_gaps_s) if timing is not None else [],
        e2e_s=e2e_s,
        tpot_s=tpot_of(e2e_s, ttft_s, output_tokens),
        output_tokens=output_tokens,
        output_tokens_source=output_source,
        prompt_tokens=usage.prompt_tokens if usage is not None else prompt_tokens,
        prompt_tokens_source="usage" if usage is not None else "local",
        ok=error is None and not cancelled,
        error_type=error_type,
        error=message,
        status=status if isinstance(status, int) else None,
        attempts=result.attempts if result is not None else 1,
        finish_reason=result.finish_reason if result is not None else None,
        cached_tokens=cached_tokens_of(result),
        uncounted_parts=uncounted_parts,
        turn=turn,
        turns=turns,
        request_id=request_id,
        cancelled=cancelled,
    )


def reason_of(record: RequestRecord) -> str:
    """Why a failed request failed: its error message without the request id (which differs
    from request to request), so that alike failures group together."""
    message = record.error or ""
    if record.request_id:
        message = message.replace(f" (request id {record.request_id})", "")
    return message


def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``ordered`` (ascending, non-empty), linear interpolation
    between closest ranks, as ``numpy.percentile`` computes it by default."""
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * p / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentile_key(p: float, metric: str) -> str:
    """vLLM's key of a percentile: ``p99_ttft_ms``, ``p99.9_itl_ms``."""
    word = str(int(p)) if float(p).is_integer() else str(p)
    return f"p{word}_{metric}_ms"


def describe(
    values_s: Iterable[float], metric: str, percentiles: Sequence[float]
) -> dict[str, Any]:
    """``mean_/median_/std_/p<N>_<metric>_ms`` of values in seconds; None when there are none."""
    ordered = sorted(values_s)
    out: dict[str, Any] = {}
    if not ordered:
        out[f"mean_{metric}_ms"] = out[f"median_{metric}_ms"] = out[f"std_{metric}_ms"] = None
        for p in percentiles:
            out[percentile_key(p, metric)] = None
        return out
    out[f"mean_{metric}_ms"] = statistics.fmean(ordered) * 1000
    out[f"median_{metric}_ms"] = percentile(ordered, 50) * 1000
    out[f"std_{metric}_ms"] = statistics.pstdev(ordered) * 1000
    for p in percentiles:
        out[percentile_key(p, metric)] = percentile(ordered, p) * 1000
    return out


def token_arrivals_s(record: RequestRecord) -> list[float]:
    """When each text-bearing chunk of the request arrived, from the start of the run."""
    if record.ttft_s is None:
        return []
    at = record.sent_at_s + record.ttft_s
    times = [at]
    for gap in record.itl_s:
        at += gap
        times.append(at)
    return times


def peak_output_tokens_per_s(records: Iterable[RequestRecord]) -> float:
    """The most output tokens that arrived within one whole second of the run.

    A request's tokens are spread evenly over its text-bearing chunks (a chunk may carry
    several tokens); seconds are counted from the run's start.
    """
    buckets: defaultdict[int, float] = defaultdict(float)
    for record in records:
        if not record.ok:
            continue
        arrivals = token_arrivals_s(record)
        if not arrivals:
            continue
        share = record.output_tokens / len(arrivals)
        for at in arrivals:
            buckets[math.floor(at)] += share
    return float(max(buckets.values(), default=0.0))


def max_concurrency(records: Iterable[RequestRecord]) -> int:
    """The most requests in flight at once (half-open intervals from send to end)."""
    edges: list[tuple[float, int]] = []
    for record in records:
        edges.append((record.sent_at_s, 1))
        edges.append((record.end_at_s, -1))
    # An end sorts before a send at the same instant: the intervals are half-open.
    edges.sort()
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def summarize(
    records: Sequence[RequestRecord],
    *,
    percentiles: Sequence[float],
    slo: Slo | None = None,
) -> dict[str, Any]:
    """The figures of a run from its measured records, with vLLM's keys.

    ``duration`` (s), ``completed``, ``failed``, token totals, ``request_throughput``,
    ``request_goodput`` (None without SLOs), ``output_throughput``,
    ``total_token_throughput``, ``max_output_tokens_per_s``, ``max_concurrent_requests``,
    ``mean_/median_/std_/p<N>_`` of ``ttft``, ``tpot``, ``itl``, ``e2el`` (ms); and beyond
    vLLM: ``send_rate`` (requests sent per second over the send span), schedule lag and
    queue wait statistics, ``errors`` by type with ``error_examples`` (the first message
    of each type: why such requests failed) and where the token counts came from; the
    context cache (:func:`cache_figures`), ``uncounted_input_parts`` (media parts of the
    successful requests' prompts, which no local count includes) and the conversations
    (:func:`conversation_figures`).
    of each type), ``error_groups`` (failures by type and message, most frequent first:
    why they failed), ``cancelled`` (requests cut off by an early stop, left out of every
    other figure) and where the token counts came from.
    """
    cancelled = sum(1 for record in records if record.cancelled)
    records = [record for record in records if not record.cancelled]
    ok = [record for record in records if record.ok]
    if records:
        start = min(record.sent_at_s for record in records)
        end = max(record.end_at_s for record in records)
        duration = max(end - start, 1e-9)
    else:
        duration = 0.0
    total_input = sum(record.prompt_tokens for record in ok)
    total_output = sum(record.output_tokens for record in ok)

    def per_second(amount: float) -> float:
        return amount / duration if duration else 0.0

    good = sum(1 for record in ok if slo is not None and slo.met_by(record))
    out: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": per_second(len(ok)),
        "request_goodput": per_second(good) if slo is not None else None,
        "output_throughput": per_second(total_output),
        "total_token_throughput": per_second(total_input + total_output),
        "max_output_tokens_per_s": peak_output_tokens_per_s(ok),
        "max_concurrent_requests": max_concurrency(records),
    }
    out.update(describe((r.ttft_s for r in ok if r.ttft_s is not None), "ttft", percentiles))
    out.update(describe((r.tpot_s for r in ok if r.tpot_s is not None), "tpot", percentiles))
    out.update(describe((gap for r in ok for gap in r.itl_s), "itl", percentiles))
    out.update(describe((r.e2e_s for r in ok), "e2el", percentiles))
    out["send_rate"] = _send_rate(records)
    out.update(describe((r.schedule_lag_s for r in records), "schedule_lag", percentiles))
    out.update(describe((r.queue_wait_s for r in records), "queue_wait", percentiles))
    out["errors"] = dict(Counter(r.error_type or "unknown" for r in records if not r.ok))
    examples: dict[str, str] = {}
    for record in records:
        if not record.ok:
            examples.setdefault(record.error_type or "unknown", record.error or "")
    out["error_examples"] = examples
    out["error_groups"] = error_groups(records)
    out["cancelled"] = cancelled
    out["output_tokens_source"] = dict(Counter(r.output_tokens_source for r in ok))
    out["prompt_tokens_source"] = dict(Counter(r.prompt_tokens_source for r in ok))
    out.update(cache_figures(ok))
    out["uncounted_input_parts"] = sum(record.uncounted_parts for record in ok)
    out.update(conversation_figures(records, percentiles))
    return out


def cache_figures(ok: Sequence[RequestRecord]) -> dict[str, Any]:
    """What the server said of its context cache over the successful requests ``ok``:
    ``total_cached_tokens``, ``mean_cached_tokens`` (over the requests whose usage reported
    ``cached_tokens``; None when none did) and ``requests_with_cache_report``."""
    reported = [record.cached_tokens for record in ok if record.cached_tokens is not None]
    return {
        "total_cached_tokens": sum(reported),
        "mean_cached_tokens": statistics.fmean(reported) if reported else None,
        "requests_with_cache_report": len(reported),
    }


def conversation_figures(
    records: Sequence[RequestRecord], percentiles: Sequence[float]
) -> dict[str, Any]:
    """The figures of a run's conversations; both None when no record is of one.

    * ``turns``: one object per turn number (1 first): ``completed``, ``failed``,
      ``mean_prompt_tokens`` and ``mean_output_tokens`` of its successful requests, and the
      TTFT and E2EL statistics (``mean_ttft_ms``, ``p99_e2el_ms``...).
    * ``conversations``: ``completed`` (every turn succeeded), ``failed`` (a turn failed,
      so the rest were not sent), ``unfinished`` (the run ended first), ``mean_turns``
      (turns planned), and the statistics of a completed conversation's duration, from its
      first request's send to its last one's end (``mean_conversation_ms``...).
    """
    by_turn: defaultdict[int, list[RequestRecord]] = defaultdict(list)
    by_conversation: defaultdict[int, list[RequestRecord]] = defaultdict(list)
    for record in records:
        if record.turn is not None:
            by_turn[record.turn].append(record)
            by_conversation[record.index].append(record)
    if not by_conversation:
        return {"turns": None, "conversations": None}
    turns: list[dict[str, Any]] = []
    for number in sorted(by_turn):
        group = by_turn[number]
        ok = [record for record in group if record.ok]
        row: dict[str, Any] = {
            "turn": number,
            "completed": len(ok),
            "failed": len(group) - len(ok),
            "mean_prompt_tokens": statistics.fmean(r.prompt_tokens for r in ok) if ok else None,
            "mean_output_tokens": statistics.fmean(r.output_tokens for r in ok) if ok else None,
        }
        row.update(describe((r.ttft_s for r in ok if r.ttft_s is not None), "ttft", percentiles))
        row.update(describe((r.e2e_s for r in ok), "e2el", percentiles))
        turns.append(row)
    completed = failed = unfinished = 0
    durations: list[float] = []
    for conversation in by_conversation.values():
        if not all(record.ok for record in conversation):
            failed += 1
        elif len(conversation) == conversation[0].turns:
            completed += 1
            start = min(record.sent_at_s for record in conversation)
            durations.append(max(record.end_at_s for record in conversation) - start)
        else:
            unfinished += 1
    planned = [conversation[0].turns or 0 for conversation in by_conversation.values()]
    conversations: dict[str, Any] = {
        "completed": completed,
        "failed": failed,
        "unfinished": unfinished,
        "mean_turns": statistics.fmean(planned),
    }
    conversations.update(describe(durations, "conversation", percentiles))
    return {"turns": turns, "conversations": conversations}


def error_groups(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """The failed requests grouped by error type and message (:func:`reason_of`), most
    frequent first: ``[{"type": ..., "message": ..., "count": ...}, ...]``."""
    counts = Counter(
        (record.error_type or "unknown", reason_of(record)) for record in records if not record.ok
    )
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [
        {"type": kind, "message": message, "count": count} for (kind, message), count in ordered
    ]


def _send_rate(records: Sequence[RequestRecord]) -> float | None:
    """Requests sent per second: ``(n - 1)`` over the span from the first to the last send."""
    if len(records) < 2:
        return None
    sends = [record.sent_at_s for record in records]
    span = max(sends) - min(sends)
    return (len(records) - 1) / span if span > 0 else None
