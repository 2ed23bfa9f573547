"""Comparisons of two bench results: which figures differ significantly and which side is
better, single runs that cannot be judged, sweeps matched by level, vLLM's results, per-request
records, and the refusal of files that cannot be compared (no I/O but files here;
tests/test_cli_compare.py compares real runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from qwen_sse.bench.compare import (
    ALPHA,
    DocumentError,
    compare,
    read_document,
    read_records,
)
from qwen_sse.bench.metrics import RequestRecord
from qwen_sse.bench.repeat import combine
from qwen_sse.bench.report import JsonlWriter
from qwen_sse.bench.schema import COMPARISON_SCHEMA, COMPARISON_SCHEMA_ID, SWEEP_SCHEMA_ID
from tests.bench_documents import made_up_record, made_up_result

BASE = made_up_result().summary

# The keys of a result of vLLM's benchmark_serving --save-result (figures and settings).
VLLM_KEYS = (
    "date",
    "backend",
    "model_id",
    "tokenizer_id",
    "num_prompts",
    "request_rate",
    "burstiness",
    "max_concurrency",
    "duration",
    "completed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    *(
        f"{kind}_{metric}_ms"
        for metric in ("ttft", "tpot", "itl", "e2el")
        for kind in ("mean", "median", "std", "p99")
    ),
)


def run(**figures: float | None) -> dict[str, Any]:
    return {**BASE, **figures}


def repeat(*runs: dict[str, Any]) -> dict[str, Any]:
    return combine(list(runs))


def row(document: dict[str, Any], figure: str, level: int = 0) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        r for r in document["levels"][level]["figures"] if r["figure"] == figure
    ]
    assert len(rows) == 1, figure
    return rows[0]


def sweep(kind: str, levels: list[float]) -> dict[str, Any]:
    return {
        "schema": SWEEP_SCHEMA_ID,
        "kind": kind,
        "levels": levels,
        "runs": [run(request_throughput=level * 0.9) for level in levels],
        "saturated_at": None,
        "stop_reason": None,
    }


def test_repeats_that_differ_are_judged_by_welchs_test_and_the_better_side_named() -> None:
    a = repeat(*(run(median_ttft_ms=v, request_throughput=t) for v, t in ((100, 10), (101, 11))))
    b = repeat(*(run(median_ttft_ms=v, request_throughput=t) for v, t in ((150, 10), (152, 11))))
    document = compare(a, b, names=("a.json", "b.json"))
    jsonschema.validate(document, COMPARISON_SCHEMA)
    assert document["schema"] == COMPARISON_SCHEMA_ID
    assert document["alpha"] == ALPHA == 0.05
    assert document["a"] == {
        "name": "a.json",
        "kind": "repeat",
        "runs": 2,
        "model_id": "qwen-plus",
        "load": BASE["load"],
        "client_saturated_runs": 0,
    }
    ttft = row(document, "median_ttft_ms")
    assert ttft["test"] == "welch"
    assert ttft["a"] == {"n": 2, "value": 100.5, "half_width": pytest.approx(6.3531, abs=1e-4)}
    assert ttft["difference_percent"] == pytest.approx((151 - 100.5) / 100.5 * 100)
    assert ttft["significant"] is True
    assert ttft["p_value"] < 0.05
    assert ttft["better"] == "a"  # lower latency
    # (100.5 - 151) / sqrt(0.5 / 2 + 2 / 2): the sample variances are 0.5 and 2.
    assert ttft["statistic"] == pytest.approx(-50.5 / 1.25**0.5)
    same = row(document, "request_throughput")
    assert (same["significant"], same["p_value"], same["better"]) == (False, 1.0, None)
    assert same["difference_percent"] == 0.0


def test_higher_throughput_is_better_and_token_totals_are_neither() -> None:
    a = repeat(
        run(output_throughput=100, total_input_tokens=10),
        run(output_throughput=101, total_input_tokens=11),
    )
    b = repeat(
        run(output_throughput=200, total_input_tokens=20),
        run(output_throughput=202, total_input_tokens=21),
    )
    document = compare(a, b)
    assert row(document, "output_throughput")["better"] == "b"
    totals = row(document, "total_input_tokens")
    assert totals["significant"] is True
    assert totals["better"] is None


def test_a_single_run_on_either_side_is_not_judged() -> None:
    single = run(median_ttft_ms=100)
    repeated = repeat(run(median_ttft_ms=150), run(median_ttft_ms=151))
    for a, b in ((single, run(median_ttft_ms=150)), (single, repeated), (repeated, single)):
        document = compare(a, b)
        jsonschema.validate(document, COMPARISON_SCHEMA)
        for r in document["levels"][0]["figures"]:
            assert (r["test"], r["p_value"], r["significant"], r["better"]) == (
                None,
                None,
                None,
                None,
            )
    ttft = row(compare(single, run(median_ttft_ms=150)), "median_ttft_ms")
    assert ttft["a"] == {"n": 1, "value": 100.0, "half_width": None}
    assert ttft["difference_percent"] == 50.0


def test_runs_in_which_the_client_saturated_are_counted() -> None:
    saturated = made_up_result(lag_ms=25).summary
    document = compare(repeat(BASE, saturated, saturated), saturated)
    assert document["a"]["client_saturated_runs"] == 2
    assert document["b"]["client_saturated_runs"] == 1
    jsonschema.validate(document, COMPARISON_SCHEMA)


def test_a_zero_baseline_has_a_difference_only_when_b_is_zero_too() -> None:
    document = compare(run(failed=0), run(failed=2))
    assert row(document, "failed")["difference_percent"] is None
    assert row(compare(run(failed=0), run(failed=0)), "failed")["difference_percent"] == 0.0


def test_a_figure_null_on_a_side_has_no_value_there() -> None:
    document = compare(run(request_goodput=None), run(request_goodput=3.0))
    goodput = row(document, "request_goodput")
    assert goodput["a"] == {"n": 0, "value": None, "half_width": None}
    assert goodput["difference_percent"] is None


def test_sweeps_are_compared_at_the_levels_they_share() -> None:
    document = compare(sweep("rates", [1, 2, 4]), sweep("rates", [2, 4, 8]))
    jsonschema.validate(document, COMPARISON_SCHEMA)
    assert document["sweep"] == {"kind": "rates", "only_in_a": [1.0], "only_in_b": [8.0]}
    assert [level["level"] for level in document["levels"]] == [2.0, 4.0]
    assert row(document, "request_throughput", level=1)["a"]["value"] == pytest.approx(3.6)
    assert document["a"]["kind"] == "sweep"
    assert document["a"]["runs"] == 1


def test_a_vllm_result_compares_with_a_qwen_sse_run_on_the_keys_they_share() -> None:
    vllm = {key: BASE[key] for key in VLLM_KEYS}
    vllm.update(ttfts=[0.1, 0.2], errors=["", ""], mean_ttft_ms=BASE["mean_ttft_ms"] * 2)
    document = compare(vllm, BASE, names=("vllm.json", "qwen.json"))
    jsonschema.validate(document, COMPARISON_SCHEMA)
    assert document["a"]["kind"] == "run"
    assert document["a"]["load"] is None
    figures = [r["figure"] for r in document["levels"][0]["figures"]]
    assert "p99_itl_ms" in figures
    assert "p90_itl_ms" not in figures  # vLLM's file has p99 only
    assert "failed" not in figures
    assert row(document, "mean_ttft_ms")["difference_percent"] == pytest.approx(-50.0)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (sweep("rates", [1]), BASE, "a.json is a sweep and b.json is not"),
        (BASE, sweep("rates", [1]), "b.json is a sweep and a.json is not"),
        (sweep("rates", [1]), sweep("concurrency", [1]), "sweeps rates and b.json sweeps"),
        (sweep("rates", [1]), sweep("rates", [2]), "no level in common"),
        ({"schema": "urn:other"}, BASE, "a.json: not a result of qwen-sse bench --json"),
        ({"mean_ttft_ms": 3}, BASE, "a.json: not a result"),
        ({**repeat(BASE, BASE), "runs": [{}]}, BASE, "a.json: its 'runs' are not"),
        (
            {**sweep("rates", [1, 2]), "levels": [1]},
            sweep("rates", [1]),
            "a.json: its 'levels' do not match",
        ),
    ],
)
def test_results_that_cannot_be_compared_are_refused(
    a: dict[str, Any], b: dict[str, Any], message: str
) -> None:
    with pytest.raises(DocumentError, match=message):
        compare(a, b, names=("a.json", "b.json"))


def records_with_ttft(ttfts_s: list[float]) -> list[RequestRecord]:
    return [
        msgspec.structs.replace(made_up_record(index), ttft_s=ttft)
        for index, ttft in enumerate(ttfts_s)
    ]


def test_records_of_two_single_runs_compare_each_latencys_requests() -> None:
    fast = records_with_ttft([0.100 + k * 0.001 for k in range(20)])
    slow = records_with_ttft([0.150 + k * 0.001 for k in range(20)])
    a, b = run(completed=20), run(completed=20)
    document = compare(a, b, records=(fast, slow))
    jsonschema.validate(document, COMPARISON_SCHEMA)
    distributions = {r["figure"]: r for r in document["levels"][0]["distributions"]}
    assert list(distributions) == ["ttft", "tpot", "itl", "e2el"]
    ttft = distributions["ttft"]
    assert ttft["test"] == "mann-whitney"
    assert ttft["a"] == {"n": 20, "value": pytest.approx(109.5), "half_width": None}
    assert (ttft["significant"], ttft["better"]) == (True, "a")
    # The same inter-token gaps on both sides.
    itl = distributions["itl"]
    assert itl["a"]["n"] == itl["b"]["n"] == 20 * 9
    assert (itl["significant"], itl["p_value"]) == (False, pytest.approx(1.0))
    # Figures stay unjudged: one run a side.
    assert row(document, "median_ttft_ms")["test"] is None
    assert compare(a, b)["levels"][0]["distributions"] == []


def test_records_must_be_of_the_runs_compared() -> None:
    records = records_with_ttft([0.1] * 20)
    with pytest.raises(DocumentError, match=r"A: its per-request records hold 20 .* summary 38"):
        compare(BASE, BASE, records=(records, records))
    with pytest.raises(DocumentError, match="two single runs, not repeats or sweeps"):
        compare(repeat(BASE, BASE), BASE, records=(records, records))


def test_files_are_read_and_what_is_not_a_result_is_named(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE))
    assert read_document(good) == json.loads(json.dumps(BASE))
    cases = {
        "missing.json": None,
        "garbage.json": "{not json",
        "list.json": "[1, 2]",
        "other.json": '{"hello": "world"}',
        "binary.json": b"\xff\xfe\x00",
    }
    messages = {
        "missing.json": "cannot read it: No such file or directory",
        "garbage.json": "not JSON (Expecting property name",
        "list.json": "not a bench result (a JSON object)",
        "other.json": "not a result of qwen-sse bench --json or of vLLM's benchmark_serving",
        "binary.json": "cannot read it: not UTF-8 text",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        with pytest.raises(DocumentError, match="^" + str(path) + ": ") as caught:
            read_document(path)
        assert messages[name] in str(caught.value)


def test_records_are_read_and_a_bad_line_is_named(tmp_path: Path) -> None:
    records = records_with_ttft([0.1, 0.2])
    path = tmp_path / "r.jsonl"
    with JsonlWriter(path) as out:
        for record in records:
            out.write(record)
    assert read_records(path) == records
    path.write_text(path.read_text() + '{"index": "one"}\n')
    with pytest.raises(DocumentError, match=r"r.jsonl, line 3: not a request record"):
        read_records(path)
    with pytest.raises(DocumentError, match="cannot read it"):
        read_records(tmp_path / "absent.jsonl")
