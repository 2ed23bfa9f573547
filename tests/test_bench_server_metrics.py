"""The server's series: the names each server gives them, one scrape's reading, and the
summary of a run's readings."""

from __future__ import annotations

import jsonschema
import pytest

from qwen_sse.bench.prometheus import parse
from qwen_sse.bench.schema import SUMMARY_SCHEMA
from qwen_sse.bench.server_metrics import SERIES, Reading, read, summarize
from tests.test_bench_prometheus import LLAMACPP_PAGE, TGI_PAGE, VLLM_PAGE


def test_each_servers_names_are_read_as_the_same_series() -> None:
    vllm = read(parse(VLLM_PAGE), at_s=1.0, phase="during")
    assert vllm.gauges == {
        "requests_running": 7.0,
        "requests_waiting": 3.0,
        "kv_cache_usage": 0.4375,
    }
    assert vllm.sources["requests_running"] == "vllm:num_requests_running"
    llama = read(parse(LLAMACPP_PAGE), at_s=1.0, phase="during")
    assert llama.gauges == {
        "requests_running": 2.0,
        "requests_waiting": 1.0,
        "kv_cache_usage": 0.63,
    }
    assert llama.sources["kv_cache_usage"] == "llamacpp:kv_cache_usage_ratio"
    tgi = read(parse(TGI_PAGE), at_s=1.0, phase="during")
    assert tgi.gauges == {"requests_running": 16.0, "requests_waiting": 4.0}
    assert tgi.sources == {
        "requests_running": "tgi_batch_current_size",
        "requests_waiting": "tgi_queue_size",
    }
    sglang = read(
        parse("sglang:num_running_reqs 5\nsglang:num_queue_reqs 2\nsglang:token_usage 0.5\n"),
        at_s=0.0,
        phase="during",
    )
    assert sglang.gauges == {
        "requests_running": 5.0,
        "requests_waiting": 2.0,
        "kv_cache_usage": 0.5,
    }


def test_vllm_v0s_cache_name_and_label_sets() -> None:
    page = parse(
        'vllm:gpu_cache_usage_perc{engine="0"} 0.2\n'
        'vllm:gpu_cache_usage_perc{engine="1"} 0.7\n'
        'vllm:num_requests_running{engine="0"} 3\n'
        'vllm:num_requests_running{engine="1"} 4\n'
        "vllm:num_requests_waiting NaN\n"
    )
    reading = read(page, at_s=0.0, phase="during")
    # Requests add up over the engines; the cache is as full as the fullest engine's.
    assert reading.gauges == {"requests_running": 7.0, "kv_cache_usage": 0.7}
    assert reading.sources["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"


def test_the_first_name_in_order_wins() -> None:
    both = parse("vllm:kv_cache_usage_perc 0.1\nvllm:gpu_cache_usage_perc 0.9\n")
    assert read(both, at_s=0, phase="during").gauges["kv_cache_usage"] == 0.1
    assert SERIES["kv_cache_usage"][0] == "vllm:kv_cache_usage_perc"


def test_counters_are_every_counter_and_the_histograms_sums_and_counts() -> None:
    reading = read(parse(VLLM_PAGE), at_s=0.0, phase="before")
    assert reading.counters == {
        "vllm:generation_tokens_total": 12345.0,
        "vllm:e2e_request_latency_seconds_count": 40.0,
        "vllm:e2e_request_latency_seconds_sum": 61.5,
    }
    # Untyped samples and gauges are not counters, nor are a histogram's buckets.
    untyped = read(parse("requests_total 5\n"), at_s=0.0, phase="before")
    assert untyped.counters == {}


def _reading(at_s: float, phase: str, running: float, generated: float) -> Reading:
    text = (
        f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running {running}\n"
        f"# TYPE vllm:generation_tokens_total counter\n"
        f'vllm:generation_tokens_total{{model_name="a"}} {generated}\n'
        f'vllm:generation_tokens_total{{model_name="b"}} 1\n'
    )
    return read(parse(text), at_s=at_s, phase=phase)  # type: ignore[arg-type]


def test_a_runs_summary() -> None:
    readings = [
        _reading(-0.01, "before", 0, 100),
        _reading(1.0, "during", 8, 150),
        Reading(at_s=2.0, phase="during", error="HTTP 503 Service Unavailable"),
        _reading(3.0, "during", 6, 300),
        Reading(at_s=4.0, phase="during", error="HTTP 503 Service Unavailable"),
        Reading(at_s=4.5, phase="during", error="no answer in time"),
        _reading(5.0, "after", 0, 400),
    ]
    server = summarize(readings, url="http://h:8000/metrics", interval_s=1.0)
    assert server["scrapes"] == 7
    assert server["failed_scrapes"] == 3
    assert server["errors"] == [
        {"message": "HTTP 503 Service Unavailable", "count": 2},
        {"message": "no answer in time", "count": 1},
    ]
    running = server["series"]["requests_running"]
    assert running["metric"] == "vllm:num_requests_running"
    # Every successful scrape is on the chart; the figures are those taken during the run.
    assert running["at_s"] == [-0.01, 1.0, 3.0, 5.0]
    assert running["values"] == [0.0, 8.0, 6.0, 0.0]
    assert (running["min"], running["mean"], running["max"]) == (6.0, 7.0, 8.0)
    assert server["counters"] == {"vllm:generation_tokens_total": 300.0}
    assert server["counters_window_s"] == pytest.approx(5.01)
    jsonschema.validate(server, SUMMARY_SCHEMA["properties"]["server_metrics"])


def test_a_reset_counter_counts_from_zero_and_a_new_one_is_left_out() -> None:
    before = Reading(at_s=0, phase="before", counters={"a_total": 500.0})
    after = Reading(at_s=9, phase="after", counters={"a_total": 20.0, "b_total": 7.0})
    server = summarize([before, after], url="u", interval_s=1.0)
    assert server["counters"] == {"a_total": 20.0}
    # Without scrapes during the run, the series' figures come from the ones there are.
    edges = summarize(
        [_reading(0, "before", 2, 0), _reading(1, "after", 4, 0)], url="u", interval_s=1.0
    )
    assert edges["series"]["requests_running"]["mean"] == 3.0


def test_nothing_scraped() -> None:
    failed = [Reading(at_s=0, phase="before", error="cannot connect: Connection refused")]
    server = summarize(failed, url="http://127.0.0.1:9/metrics", interval_s=0.5)
    assert server["series"] == {}
    assert server["counters"] == {}
    assert server["counters_window_s"] is None
    assert server["failed_scrapes"] == 1
    jsonschema.validate(server, SUMMARY_SCHEMA["properties"]["server_metrics"])


def test_the_schema_names_every_series() -> None:
    schema = SUMMARY_SCHEMA["properties"]["server_metrics"]
    assert set(schema["properties"]["series"]["propertyNames"]["enum"]) == set(SERIES)
