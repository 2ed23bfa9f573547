"""Bench results built from made-up records, for the tests of what reads them (the report,
the charts, the schemas, the live line): every key real, no network, no clock."""

from __future__ import annotations

from typing import Any

from qwen_sse.bench.benchmark import BenchConfig, BenchResult, compose
from qwen_sse.bench.metrics import RequestRecord, Slo, tpot_of
from qwen_sse.bench.monitor import ClientLoad, Thresholds
from qwen_sse.bench.prometheus import parse
from qwen_sse.bench.runner import ShardResult, Target
from qwen_sse.bench.schedule import ClosedLoop, OpenLoop
from qwen_sse.bench.server_metrics import Phase, Reading, read, summarize
from qwen_sse.bench.workload import SyntheticWorkload

TARGET = Target(base_url="http://127.0.0.1:1/compatible-mode/v1", model="qwen-plus")


def made_up_record(index: int, *, ok: bool = True, worker: int = 0) -> RequestRecord:
    ttft_s = 0.1 + index % 5 * 0.01 if ok else None
    itl_s = [0.02 + (index + k) % 3 * 0.001 for k in range(9)] if ok else []
    e2e_s = (ttft_s or 0.0) + sum(itl_s) if ok else 0.05
    output_tokens = 10 if ok else 0
    return RequestRecord(
        index=index,
        worker=worker,
        scheduled_at_s=index * 0.05,
        schedule_lag_s=0.0002,
        queue_wait_s=0.0,
        sent_at_s=index * 0.05 + 0.0002,
        ttft_s=ttft_s,
        itl_s=itl_s,
        e2e_s=e2e_s,
        tpot_s=tpot_of(e2e_s, ttft_s, output_tokens),
        output_tokens=output_tokens,
        output_tokens_source="usage",
        prompt_tokens=32,
        prompt_tokens_source="usage",
        ok=ok,
        error_type=None if ok else "RateLimitError",
        error=None if ok else "HTTP 429 limit_requests",
        status=None if ok else 429,
        request_id=f"req-{index}",
    )


def made_up_load(lag_ms: float, worker: int = 0) -> ClientLoad:
    return ClientLoad(
        worker=worker,
        interval_s=0.01,
        lag_s=[lag_ms / 1000] * 200,
        lag_at_s=[k * 0.01 for k in range(200)],
        cpu=[(1.0, 0.2), (2.0, 0.25)],
        cpu_s=0.5,
        wall_s=2.0,
        open_files_limit=65536,
        receive_lag_s=[lag_ms / 2000] * 200,
        receive_lag_at_s=[k * 0.01 + 0.005 for k in range(200)],
    )


def made_up_config(
    *, requests: int = 40, open_loop: bool = False, slo: Slo | None = None
) -> BenchConfig:
    """The configuration of :func:`made_up_result`."""
    shape: ClosedLoop | OpenLoop = (
        OpenLoop(rate=20.0, arrivals="gamma", burstiness=0.5, max_concurrency=4)
        if open_loop
        else ClosedLoop(concurrency=4, ramp_up_s=0.5)
    )
    return BenchConfig(
        shape=shape,
        workload=SyntheticWorkload(input_tokens=32, output_tokens=10),
        requests=requests,
        warmup=4,
        slo=slo,
        thresholds=Thresholds(),
    )


def made_up_result(
    *,
    requests: int = 40,
    failed: int = 2,
    lag_ms: float = 0.3,
    open_loop: bool = False,
    slo: Slo | None = None,
) -> BenchResult:
    """A result as :func:`~qwen_sse.bench.benchmark.compose` makes it; ``lag_ms`` over
    10 makes the client saturated."""
    config = made_up_config(requests=requests, open_loop=open_loop, slo=slo)
    records = [made_up_record(4 + i, ok=i >= failed) for i in range(requests)]
    return compose(
        config, TARGET, [ShardResult(worker=0, records=records, load=made_up_load(lag_ms))]
    )


def made_up_server_metrics(*, kv_cache: bool = True, failed: int = 0) -> dict[str, Any]:
    """A summary's ``server_metrics`` of a made-up run against vLLM: a scrape before, four
    during (running 0, 4, 8, 6; waiting 0, 0, 2, 0), one after; ``failed`` scrapes of those
    during failed with a 503 instead; KV-cache use if ``kv_cache``."""
    readings: list[Reading] = []
    running = (0, 0, 4, 8, 6, 0)
    waiting = (0, 0, 0, 2, 0, 0)
    for number, (run, wait) in enumerate(zip(running, waiting, strict=True)):
        phase: Phase = "before" if number == 0 else "after" if number == 5 else "during"
        if phase == "during" and number <= failed:
            readings.append(
                Reading(at_s=number - 0.01, phase=phase, error="HTTP 503 Service Unavailable")
            )
            continue
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="qwen-plus"}} {run}\n'
            f'vllm:num_requests_waiting{{model_name="qwen-plus"}} {wait}\n'
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total {1000 + 100 * number}\n"
            "# TYPE vllm:e2e_request_latency_seconds histogram\n"
            f"vllm:e2e_request_latency_seconds_sum {1.5 * number}\n"
            f"vllm:e2e_request_latency_seconds_count {number}\n"
        )
        if kv_cache:
            text += f"vllm:kv_cache_usage_perc {run / 16}\n"
        readings.append(read(parse(text), at_s=number - 0.01, phase=phase))
    return summarize(readings, url="http://127.0.0.1:8000/metrics", interval_s=1.0)
