"""The Prometheus text format parser: real servers' pages, every corner of the format, and a
round trip of anything the format can say."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_sse.bench.prometheus import PrometheusFormatError, Sample, family_of, parse

# As vLLM 0.9 serves it (prometheus_client): labels, a histogram, a counter with its
# _created gauge, HELP texts with escapes.
VLLM_PAGE = r"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-8B"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-8B"} 0.4375
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="Qwen/Qwen3-8B"} 12345.0
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{engine="0",model_name="Qwen/Qwen3-8B"} 1.7529e+09
# HELP vllm:e2e_request_latency_seconds Histogram of e2e latency.\nA line, a \\ backslash.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="Qwen/Qwen3-8B"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen3-8B"} 40.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="Qwen/Qwen3-8B"} 40.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="Qwen/Qwen3-8B"} 61.5
"""

# llama.cpp's server (--metrics): types declared, no labels, integers.
LLAMACPP_PAGE = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.63
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""

# TGI (Rust's metrics exporter): no HELP, a summary-less histogram, untyped-looking names.
TGI_PAGE = """# TYPE tgi_queue_size gauge
tgi_queue_size 4
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
# TYPE tgi_request_count counter
tgi_request_count 120
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 10
tgi_request_duration_bucket{le="+Inf"} 120
tgi_request_duration_sum 300.25
tgi_request_duration_count 120
"""


def test_vllms_page() -> None:
    page = parse(VLLM_PAGE)
    assert page.samples[0] == Sample(
        "vllm:num_requests_running",
        (("engine", "0"), ("model_name", "Qwen/Qwen3-8B")),
        7.0,
    )
    assert page.types["vllm:e2e_request_latency_seconds"] == "histogram"
    assert page.types["vllm:generation_tokens_created"] == "gauge"
    assert page.helps["vllm:e2e_request_latency_seconds"] == (
        "Histogram of e2e latency.\nA line, a \\ backslash."
    )
    buckets = [s for s in page.samples if s.name.endswith("_bucket")]
    assert [dict(s.labels)["le"] for s in buckets] == ["0.3", "+Inf"]
    assert page.type_of("vllm:e2e_request_latency_seconds_sum") == (
        "vllm:e2e_request_latency_seconds",
        "histogram",
    )
    assert page.type_of("vllm:generation_tokens_total") == (
        "vllm:generation_tokens_total",
        "counter",
    )
    assert len(page.samples) == 9


def test_llamacpp_and_tgi_pages() -> None:
    llama = parse(LLAMACPP_PAGE)
    assert {s.name: s.value for s in llama.samples} == {
        "llamacpp:prompt_tokens_total": 6886.0,
        "llamacpp:kv_cache_usage_ratio": 0.63,
        "llamacpp:requests_processing": 2.0,
        "llamacpp:requests_deferred": 1.0,
    }
    tgi = parse(TGI_PAGE)
    assert tgi.helps == {}
    assert tgi.type_of("tgi_request_duration_count") == ("tgi_request_duration", "histogram")
    assert tgi.type_of("tgi_queue_size") == ("tgi_queue_size", "gauge")


def test_label_values_with_every_escape_blanks_and_a_trailing_comma() -> None:
    page = parse('m{ path = "C:\\\\dir\\\\\\"x\\"" , text="a\\nb", empty="",} 1\n')
    (sample,) = page.samples
    assert dict(sample.labels) == {"path": 'C:\\dir\\"x"', "text": "a\nb", "empty": ""}
    # Braces, commas and '#' inside a quoted value are text.
    (odd,) = parse('m{v="a}b,c=#\\"d"} 2').samples
    assert dict(odd.labels) == {"v": 'a}b,c=#"d'}


def test_values_timestamps_and_line_endings() -> None:
    text = "a NaN\nb +Inf\nc -Inf\nd 1e-3 1700000000000\ne -0.5\nf 2.5E+2 -1\r\ng 7\r\n"
    samples = {s.name: s for s in parse(text).samples}
    assert math.isnan(samples["a"].value)
    assert samples["b"].value == math.inf
    assert samples["c"].value == -math.inf
    assert samples["d"] == Sample("d", (), 0.001, 1700000000000)
    assert samples["e"].value == -0.5
    assert samples["f"] == Sample("f", (), 250.0, -1)
    assert samples["g"].value == 7.0


def test_comments_blank_lines_and_eof_are_skipped() -> None:
    text = "\n# just a comment\n#\n   \n# HELP\n  # TYPE x counter\nx_total 3\n# EOF\n"
    page = parse(text)
    assert page.samples == (Sample("x_total", (), 3.0),)
    # A counter named as its family without _total (OpenMetrics' way), still a counter.
    assert page.type_of("x_total") == ("x", "counter")
    assert family_of("y_count", {"y": "summary"}) == ("y", "summary")
    assert family_of("y_bucket", {"y": "summary"}) == ("y_bucket", "untyped")
    assert family_of("z", {}) == ("z", "untyped")


def test_an_empty_page_has_nothing() -> None:
    page = parse("")
    assert page.samples == ()
    assert page.types == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ok 1\nmissing_value\n", "line 2: missing_value: no value"),
        ("x 1_000", "line 1: x: '1_000' is not a number"),
        ("x one", "line 1: x: 'one' is not a number"),
        ('x{a="b} 1', "line 1: label a: the value's closing quote is missing"),
        ('x{a="b\\"} 1', "line 1: label a: the value's closing quote is missing"),
        ('x{a="\\t"} 1', "line 1: label a: unknown escape \\t"),
        ('x{a="1",a="2"} 1', "line 1: x: a label given twice"),
        ("x{a} 1", "line 1: label a: expected = after the name"),
        ("x{a=1} 1", "line 1: label a: expected a quoted value"),
        ('x{a="1" b="2"} 1', "line 1: after label a: expected ',' or '}'"),
        ('x{1a="1"} 1', "line 1: expected a label name"),
        ("x-y 1", "line 1: x: unexpected '-y 1' after the name"),
        ("x 1 2 3", "line 1: x: more than a value and a timestamp"),
        ("x 1 1.5", "line 1: x: timestamp '1.5' is not an integer"),
        ("9x 1", "line 1: no metric name at '9x 1'"),
        ("# TYPE x meter\nx 1", "line 1: # TYPE x 'meter': not a metric type"),
        ("# TYPE x gauge\n# TYPE x gauge\nx 1", "line 2: a second # TYPE line for x"),
        ("# TYPE 1x gauge", "line 1: # TYPE of an invalid metric name '1x'"),
    ],
)
def test_what_is_not_the_format_is_an_error_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(PrometheusFormatError) as caught:
        parse(text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
_label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True)
_values = st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf])


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _render(sample: Sample) -> str:
    labels = ",".join(f'{name}="{_escaped(value)}"' for name, value in sample.labels)
    stamp = "" if sample.timestamp_ms is None else f" {sample.timestamp_ms}"
    return f"{sample.name}{{{labels}}} {sample.value!r}{stamp}"


@given(
    st.lists(
        st.builds(
            Sample,
            _names,
            st.dictionaries(_label_names, st.text(max_size=12), max_size=3).map(
                lambda labels: tuple(sorted(labels.items()))
            ),
            _values,
            st.none() | st.integers(-(2**62), 2**62),
        ),
        max_size=8,
    )
)
def test_whatever_the_format_can_say_reads_back(samples: list[Sample]) -> None:
    text = "# a page\n" + "\n".join(_render(sample) for sample in samples) + "\n"
    assert list(parse(text).samples) == samples
