"""Per-request records and vLLM's figures, on records whose every number is known."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from qwen_sse.bench.metrics import (
    RequestRecord,
    Slo,
    describe,
    max_concurrency,
    output_tokens_of,
    peak_output_tokens_per_s,
    percentile,
    percentile_key,
    record_of,
    summarize,
    token_arrivals_s,
    tpot_of,
)
from qwen_sse.chat import ChatResult, ChoiceResult, StreamTiming, ToolCall, ToolCallFunction
from qwen_sse.chunks import PromptTokensDetails, Usage
from qwen_sse.errors import RateLimitError, TransportError
from qwen_sse.tokens import count_tokens


def record(**fields: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "index": 0,
        "worker": 0,
        "scheduled_at_s": 0.0,
        "schedule_lag_s": 0.0,
        "queue_wait_s": 0.0,
        "sent_at_s": 0.0,
        "ttft_s": 0.1,
        "itl_s": [0.02, 0.02],
        "e2e_s": 0.14,
        "output_tokens": 3,
        "output_tokens_source": "usage",
        "prompt_tokens": 10,
        "prompt_tokens_source": "usage",
        "ok": True,
    }
    values.update(fields)
    values.setdefault("tpot_s", tpot_of(values["e2e_s"], values["ttft_s"], values["output_tokens"]))
    return RequestRecord(**values)


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    data = [float(x * x % 17) for x in range(101)]
    ordered = sorted(data)
    cuts = statistics.quantiles(data, n=100, method="inclusive")
    for p in (1, 25, 50, 90, 99):
        assert percentile(ordered, p) == pytest.approx(cuts[p - 1])
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_percentile_keys_are_vllms() -> None:
    assert percentile_key(99, "ttft") == "p99_ttft_ms"
    assert percentile_key(99.9, "itl") == "p99.9_itl_ms"
    assert percentile_key(50.0, "e2el") == "p50_e2el_ms"


def test_describe_in_milliseconds_and_nulls_without_data() -> None:
    figures = describe([0.1, 0.2, 0.3], "ttft", [50, 99])
    assert figures["mean_ttft_ms"] == pytest.approx(200)
    assert figures["median_ttft_ms"] == pytest.approx(200)
    assert figures["std_ttft_ms"] == pytest.approx(statistics.pstdev([100, 200, 300]))
    assert figures["p99_ttft_ms"] == pytest.approx(298)
    empty = describe([], "itl", [50, 99])
    assert set(empty) == {"mean_itl_ms", "median_itl_ms", "std_itl_ms", "p50_itl_ms", "p99_itl_ms"}
    assert set(empty.values()) == {None}


def test_tpot_is_vllms_definition() -> None:
    assert tpot_of(1.1, 0.1, 11) == pytest.approx(0.1)
    assert tpot_of(1.0, 0.1, 1) is None
    assert tpot_of(1.0, None, 5) is None


def test_summary_of_known_records() -> None:
    records = [
        record(index=0, sent_at_s=0.0, ttft_s=0.1, itl_s=[0.02, 0.04], e2e_s=0.16, output_tokens=3),
        record(index=1, sent_at_s=0.5, ttft_s=0.3, itl_s=[0.02], e2e_s=0.5, output_tokens=5),
        record(
            index=2,
            sent_at_s=0.6,
            ok=False,
            ttft_s=None,
            itl_s=[],
            e2e_s=0.4,
            output_tokens=0,
            error_type="RateLimitError",
            status=429,
        ),
    ]
    summary = summarize(records, percentiles=[50, 99])
    assert summary["duration"] == pytest.approx(1.0)  # from the first send to the last end
    assert summary["completed"] == 2
    assert summary["failed"] == 1
    assert summary["total_input_tokens"] == 20
    assert summary["total_output_tokens"] == 8
    assert summary["request_throughput"] == pytest.approx(2.0)
    assert summary["output_throughput"] == pytest.approx(8.0)
    assert summary["total_token_throughput"] == pytest.approx(28.0)
    assert summary["request_goodput"] is None
    assert summary["median_ttft_ms"] == pytest.approx(200)
    assert summary["mean_itl_ms"] == pytest.approx(80 / 3)
    assert summary["mean_tpot_ms"] == pytest.approx(((0.06 / 2) + (0.2 / 4)) / 2 * 1000)
    assert summary["mean_e2el_ms"] == pytest.approx(330)
    assert summary["errors"] == {"RateLimitError": 1}
    assert summary["max_concurrent_requests"] == 2
    assert summary["send_rate"] == pytest.approx(2 / 0.6)
    assert summary["output_tokens_source"] == {"usage": 2}
    assert summary["total_cached_tokens"] == 0
    assert summary["mean_cached_tokens"] is None
    assert summary["requests_with_cache_report"] == 0
    assert summary["uncounted_input_parts"] == 0
    assert (summary["turns"], summary["conversations"]) == (None, None)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records = [
        record(ttft_s=0.1, e2e_s=0.5, tpot_s=0.02),
        record(ttft_s=0.3, e2e_s=0.5, tpot_s=0.02),
        record(ttft_s=0.1, e2e_s=2.0, tpot_s=0.02),
        record(ttft_s=0.1, e2e_s=0.5, tpot_s=None, output_tokens=1),
        record(ok=False, error_type="X"),
    ]
    slo = Slo(ttft_ms=200, e2el_ms=1000, tpot_ms=50)
    assert [slo.met_by(r) for r in records] == [True, False, False, True, False]
    summary = summarize(records, percentiles=[50], slo=slo)
    assert summary["request_goodput"] == pytest.approx(2 / summary["duration"])
    assert slo.as_dict() == {"ttft": 200, "tpot": 50, "e2el": 1000}


def test_a_run_with_no_success_has_null_latencies() -> None:
    summary = summarize([record(ok=False, error_type="TransportError")], percentiles=[99])
    assert summary["completed"] == 0
    assert summary["mean_ttft_ms"] is None
    assert summary["p99_itl_ms"] is None
    assert summary["send_rate"] is None
    assert summarize([], percentiles=[99])["duration"] == 0.0


def test_max_concurrency_treats_intervals_as_half_open() -> None:
    back_to_back = [record(sent_at_s=0.0, e2e_s=1.0), record(sent_at_s=1.0, e2e_s=1.0)]
    assert max_concurrency(back_to_back) == 1
    overlapping = [record(sent_at_s=0.0, e2e_s=1.0), record(sent_at_s=0.5, e2e_s=1.0)]
    assert max_concurrency(overlapping) == 2


def test_token_arrivals_and_the_peak_second() -> None:
    first = record(sent_at_s=0.0, ttft_s=0.5, itl_s=[0.25, 0.25], output_tokens=6)
    assert token_arrivals_s(first) == pytest.approx([0.5, 0.75, 1.0])
    second = record(sent_at_s=1.0, ttft_s=0.1, itl_s=[0.1], output_tokens=4)
    # Second 0 gets 2 + 2 tokens of the first; second 1 gets 2 of the first and 4.
    assert peak_output_tokens_per_s([first, second]) == pytest.approx(6.0)
    assert token_arrivals_s(record(ttft_s=None, itl_s=[])) == []


def result(**fields: Any) -> ChatResult:
    values: dict[str, Any] = {
        "choices": (ChoiceResult(content="hello there"),),
        "complete": True,
        "timing": StreamTiming(ttft_s=0.1, token_times_s=(0.1, 0.13, 0.15), total_s=0.2),
        "request_id": "req-1",
    }
    values.update(fields)
    return ChatResult(**values)


def test_output_tokens_come_from_usage_else_the_tokenizer() -> None:
    usage = Usage(prompt_tokens=12, completion_tokens=40, total_tokens=52)
    assert output_tokens_of(result(usage=usage)) == (40, "usage")
    call = ToolCall(index=0, id="c", type="function", function=ToolCallFunction("f", '{"a": 1}'))
    local = result(
        choices=(ChoiceResult(reasoning_content="think", content="say", tool_calls=(call,)),)
    )
    assert output_tokens_of(local) == (count_tokens('thinksay{"a": 1}'), "local")


def test_a_record_of_a_successful_result() -> None:
    made = record_of(
        result(usage=Usage(prompt_tokens=12, completion_tokens=3, total_tokens=15)),
        index=4,
        worker=1,
        scheduled_at_s=1.0,
        schedule_lag_s=0.001,
        queue_wait_s=0.5,
        sent_at_s=1.501,
        elapsed_s=9.0,
        prompt_tokens=11,
    )
    assert made.ok
    assert made.ttft_s == 0.1
    assert made.itl_s == pytest.approx([0.03, 0.02])
    assert made.e2e_s == 0.2  # the stream's own end, not the caller's elapsed time
    assert made.tpot_s == pytest.approx(0.05)
    assert (made.prompt_tokens, made.prompt_tokens_source) == (12, "usage")
    assert made.request_id == "req-1"
    assert made.end_at_s == pytest.approx(1.701)


def test_a_record_of_a_failure() -> None:
    error = RateLimitError(status=429, code="limit_requests", message="slow down")
    made = record_of(
        None,
        index=0,
        worker=0,
        scheduled_at_s=0.0,
        schedule_lag_s=0.0,
        queue_wait_s=0.0,
        sent_at_s=0.0,
        elapsed_s=0.05,
        prompt_tokens=11,
        error=error,
    )
    assert not made.ok
    assert made.error_type == "RateLimitError"
    assert made.status == 429
    assert made.e2e_s == 0.05
    assert (made.prompt_tokens, made.prompt_tokens_source) == (11, "local")
    partial = record_of(
        result(complete=False),
        index=0,
        worker=0,
        scheduled_at_s=0.0,
        schedule_lag_s=0.0,
        queue_wait_s=0.0,
        sent_at_s=0.0,
        elapsed_s=1.0,
        prompt_tokens=11,
        error=TransportError("gone"),
    )
    assert partial.status is None
    assert partial.ttft_s == 0.1
    assert partial.output_tokens_source == "local"


def test_cached_tokens_come_from_the_usage_details() -> None:
    def made(usage: Usage | None) -> RequestRecord:
        return record_of(
            result(usage=usage),
            index=0,
            worker=0,
            scheduled_at_s=0.0,
            schedule_lag_s=0.0,
            queue_wait_s=0.0,
            sent_at_s=0.0,
            elapsed_s=1.0,
            prompt_tokens=11,
            uncounted_parts=2,
        )

    details = PromptTokensDetails(cached_tokens=256)
    hit = made(Usage(prompt_tokens=300, completion_tokens=3, prompt_tokens_details=details))
    assert hit.cached_tokens == 256
    assert hit.uncounted_parts == 2
    assert made(Usage(prompt_tokens=300, completion_tokens=3)).cached_tokens is None
    empty = PromptTokensDetails(text_tokens=300)
    assert made(Usage(prompt_tokens=300, prompt_tokens_details=empty)).cached_tokens is None
    assert made(None).cached_tokens is None


def test_the_summary_adds_up_what_the_cache_and_the_media_did() -> None:
    records = [
        record(cached_tokens=256, uncounted_parts=1),
        record(cached_tokens=0, uncounted_parts=2),
        record(cached_tokens=None),
        record(ok=False, cached_tokens=1000, uncounted_parts=5),
    ]
    summary = summarize(records, percentiles=[50])
    assert summary["total_cached_tokens"] == 256
    assert summary["mean_cached_tokens"] == 128
    assert summary["requests_with_cache_report"] == 2
    assert summary["uncounted_input_parts"] == 3


def test_output_tokens_may_be_counted_with_another_tokenizer() -> None:
    words = result(choices=(ChoiceResult(content="one two three four"),))
    assert output_tokens_of(words, lambda text: len(text.split())) == (4, "local")


def test_conversations_are_figured_by_turn_and_as_wholes() -> None:
    def turn(index: int, number: int, **fields: Any) -> RequestRecord:
        return record(index=index, turn=number, turns=fields.pop("turns", 2), **fields)

    records = [
        # Conversation 0: both turns, from 0.0 to 1.0.
        turn(0, 1, sent_at_s=0.0, ttft_s=0.1, e2e_s=0.3, prompt_tokens=10),
        turn(0, 2, sent_at_s=0.5, ttft_s=0.3, e2e_s=0.5, prompt_tokens=30),
        # Conversation 1: both turns, from 0.2 to 2.2.
        turn(1, 1, sent_at_s=0.2, ttft_s=0.2, e2e_s=0.5, prompt_tokens=20),
        turn(1, 2, sent_at_s=1.2, ttft_s=0.5, e2e_s=1.0, prompt_tokens=50),
        # Conversation 2: its second turn failed.
        turn(2, 1, sent_at_s=0.0),
        turn(2, 2, sent_at_s=1.0, ok=False, ttft_s=None, itl_s=[], error_type="X"),
        # Conversation 3: the run ended after its first turn (of three).
        turn(3, 1, sent_at_s=0.0, turns=3),
    ]
    summary = summarize(records, percentiles=[50])
    conversations = summary["conversations"]
    assert conversations["completed"] == 2
    assert conversations["failed"] == 1
    assert conversations["unfinished"] == 1
    assert conversations["mean_turns"] == pytest.approx(9 / 4)
    assert conversations["mean_conversation_ms"] == pytest.approx(1500)
    assert conversations["p50_conversation_ms"] == pytest.approx(1500)
    first, second = summary["turns"]
    assert (first["turn"], first["completed"], first["failed"]) == (1, 4, 0)
    assert (second["turn"], second["completed"], second["failed"]) == (2, 2, 1)
    assert second["mean_prompt_tokens"] == pytest.approx(40)
    assert second["mean_ttft_ms"] == pytest.approx(400)
    assert second["median_e2el_ms"] == pytest.approx(750)
    assert second["mean_output_tokens"] == 3
    # The run's own figures pool every turn.
    assert summary["completed"] == 6
