"""``qwen-sse bench`` end to end with ``--mock``: the table, every output file validated
against the documented schemas, workers, sweeps, and the refusals of bad options."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from qwen_sse import protocols
from qwen_sse.bench import benchmark, workers
from qwen_sse.bench.plot import DISTRIBUTIONS_PNG, SWEEP_PNG, TIMELINE_PNG
from qwen_sse.bench.runner import Target
from qwen_sse.bench.schema import CSV_COLUMNS, RECORD_SCHEMA, SUMMARY_SCHEMA, SWEEP_SCHEMA
from qwen_sse.cli import main
from tests.served import served

FAST_MOCK = ["--mock", "--mock-ttft-ms", "30", "--mock-itl-ms", "5", "--mock-jitter-ms", "1"]
SMALL = ["--input-tokens", "24", "--output-tokens", "4", "--quiet"]


def test_a_run_writes_the_table_and_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--concurrency",
            "3",
            "--requests",
            "12",
            "--warmup",
            "3",
            "--ramp-up",
            "0.05",
            "--goodput",
            "ttft:1000",
            "e2el:5000",
            "--percentiles",
            "50,99.9",
            "--param",
            "top_k=20",
            "--thinking",
            "--json",
            str(tmp_path / "summary.json"),
            "--jsonl",
            str(tmp_path / "requests.jsonl"),
            "--csv",
            str(tmp_path / "requests.csv"),
            "--plot",
            str(tmp_path / "charts"),
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "============ Serving Benchmark Result ============" in out
    assert "P99.9 TTFT (ms):" in out
    assert "Request goodput (req/s):" in out
    assert "Client limited the figures:" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["completed"] == 12
    assert summary["request_goodput"] is not None
    assert summary["params"] == {"enable_thinking": True, "top_k": 20}
    assert "p99.9_itl_ms" in summary
    assert summary["max_concurrency"] == 3
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 12
    for line in lines:
        jsonschema.validate(json.loads(line), RECORD_SCHEMA)
    with (tmp_path / "requests.csv").open(newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        assert len(list(reader)) == 12
    for name in (DISTRIBUTIONS_PNG, TIMELINE_PNG):
        assert (tmp_path / "charts" / name).read_bytes().startswith(b"\x89PNG")
    assert f"wrote {tmp_path / 'charts' / DISTRIBUTIONS_PNG}" in err


def test_two_workers_and_a_prompts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "你好"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--prompts",
            str(prompts),
            "--rate",
            "40",
            "--arrivals",
            "gamma",
            "--burstiness",
            "2",
            "--max-concurrency",
            "4",
            "--requests",
            "16",
            "--workers",
            "2",
            "--json",
            str(tmp_path / "summary.json"),
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "open loop, 40 req/s gamma (burstiness 2), at most 4 in flight, 2 workers" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["completed"] == 16
    assert summary["workload"] == {"type": "file", "entries": 2, "output_tokens": 4}
    assert [w["worker"] for w in summary["client"]["workers"]] == [0, 1]


def test_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--sweep-concurrency",
            "1,2",
            "--requests",
            "4",
            "--json",
            str(tmp_path / "sweep.json"),
            "--plot",
            str(tmp_path / "charts"),
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    document: dict[str, Any] = json.loads((tmp_path / "sweep.json").read_text())
    jsonschema.validate(document, SWEEP_SCHEMA)
    assert document["levels"][0] == 1
    assert out.splitlines()[0].split()[:2] == ["conc", "req/s"]
    assert "qwen-sse bench: level 1:" in err
    # The sweep's chart, and each level's own charts beside it.
    charts = tmp_path / "charts"
    drawn = [charts / SWEEP_PNG] + [
        charts / f"level-{level:g}" / name
        for level in document["levels"]
        for name in (DISTRIBUTIONS_PNG, TIMELINE_PNG)
    ]
    assert sorted(path for path in charts.rglob("*") if path.is_file()) == sorted(drawn)
    for path in drawn:
        assert path.read_bytes().startswith(b"\x89PNG")
        assert f"qwen-sse bench: wrote {path}" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--goodput", "latency:5"], "--goodput wants KEY:MS"),
        (["--goodput", "ttft:fast"], "is not a number"),
        (["--max-concurrency", "4"], "--max-concurrency caps an open loop"),
        (["--percentiles", "50,x"], "--percentiles wants numbers"),
        (["--param", "no-equals"], "--param wants KEY=JSON"),
        (["--sweep-rates", "1,2", "--csv", "r.csv"], "--jsonl and --csv record one run"),
        (["--concurrency", "2", "--workers", "3"], "3 workers cannot share 2"),
        (["--input-tokens", "3"], "input tokens must be at least"),
        (["--rate", "-1"], "rate must be positive"),
    ],
)
def test_bad_options_exit_2_before_any_load(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--mock", *options]) == 2
    assert message in capsys.readouterr().err


def test_a_real_endpoint_needs_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("QWEN_API_KEY", raising=False)
    assert main(["bench", "--base-url", "http://127.0.0.1:9/v1", "--requests", "1"]) == 2
    assert "DASHSCOPE_API_KEY" in capsys.readouterr().err


def test_workers_read_the_key_from_the_variable_named_and_only_its_name_travels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "sk-test-bench-0123456789abcdef"
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("QWEN_API_KEY", raising=False)
    monkeypatch.setenv("BENCH_KEY", key)  # the workers inherit the environment
    sent: list[bytes] = []  # what goes to the worker processes about the target
    run_workers = workers.run_workers

    def watched(plans: Any, target: Target, **options: Any) -> Any:
        sent.append(msgspec.msgpack.encode(target))
        return run_workers(plans, target, **options)

    monkeypatch.setattr(benchmark, "run_workers", watched)
    summary_path = tmp_path / "summary.json"
    with served(key) as base_url:
        status = main(
            [
                "bench",
                *SMALL,
                "--base-url",
                base_url,
                "--api-key-env",
                "BENCH_KEY",
                "--concurrency",
                "2",
                "--requests",
                "4",
                "--workers",
                "2",
                "--json",
                str(summary_path),
            ]
        )
    _, err = capsys.readouterr()
    assert status == 0, err
    assert json.loads(summary_path.read_text())["completed"] == 4
    (target,) = sent
    assert key.encode() not in target
    assert b"BENCH_KEY" in target


@pytest.mark.parametrize("protocol", ["native", "responses", "anthropic"])
def test_a_run_in_another_protocol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], protocol: str
) -> None:
    summary_path = tmp_path / "summary.json"
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--protocol",
            protocol,
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--json",
            str(summary_path),
        ]
    )
    _, err = capsys.readouterr()
    assert status == 0, err
    summary = json.loads(summary_path.read_text())
    assert summary["completed"] == 4
    assert summary["failed"] == 0
    assert summary["base_url"].endswith(protocols.get(protocol).root)
    assert summary["protocol"] == protocol
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    # Every answer of 4 pieces was decoded whole, whatever the protocol's framing.
    assert summary["total_output_tokens"] >= 4 * 4


def test_mock_ignores_the_proxy_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    status = main(["bench", *FAST_MOCK, *SMALL, "--requests", "2"])
    _, err = capsys.readouterr()
    assert status == 0, err


def test_a_remote_proxy_for_plain_http_exits_2_before_any_load(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    arguments = ["bench", "--base-url", "http://127.0.0.1:9/v1", "--requests", "1"]
    assert main([*arguments, "--proxy", "http://proxy.invalid:3128"]) == 2
    assert "through the proxy http://proxy.invalid:3128" in capsys.readouterr().err
