"""``qwen-sse bench`` end to end with ``--mock``: the table, every output file validated
against the documented schemas, workers, sweeps, and the refusals of bad options."""

from __future__ import annotations

import csv
import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from qwen_sse import protocols
from qwen_sse.bench import benchmark, workers
from qwen_sse.bench.plot import DISTRIBUTIONS_PNG, SWEEP_PNG, TIMELINE_PNG
from qwen_sse.bench.runner import Target
from qwen_sse.bench.schema import (
    CSV_COLUMNS,
    RECORD_SCHEMA,
    REPEAT_SCHEMA,
    SUMMARY_SCHEMA,
    SWEEP_SCHEMA,
)
from qwen_sse.bench.sharegpt import read_sharegpt
from qwen_sse.cli import main
from tests.hftokenizer import write_tokenizer
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
            "--output-tokens",
            "4",
            "--quiet",
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
    assert summary["workload"] == {
        "type": "file",
        "source": "prompts",
        "path": str(prompts),
        "entries": 2,
        "output_tokens": 4,
        "conversations": False,
        "mean_turns": 1.0,
        "skipped": {},
        "uncounted_parts": 0,
        "tokenizer": None,
    }
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
        (["--repeat", "0"], "--repeat must be at least 1, got 0"),
        (["--repeat", "2", "--sweep-rates", "1,2"], "a sweep with repeats is not supported"),
        (["--repeat", "2", "--jsonl", "r.jsonl"], "leave them out of --repeat"),
        (["--concurrency", "0"], "--concurrency must be at least 1, got 0"),
        (["--concurrency", "-3"], "--concurrency must be at least 1, got -3"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--requests", "0"], "--requests must be at least 1, got 0"),
        (["--rate", "5", "--max-concurrency", "0"], "--max-concurrency must be at least 1"),
        (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
        (["--output-tokens", "0"], "--output-tokens must be at least 1, got 0"),
        (["--duration", "0"], "--duration must be a positive number of seconds"),
        (["--ramp-up", "-1"], "--ramp-up must be a number of seconds"),
        (["--sweep-concurrency", "0,2"], "--sweep-concurrency wants whole numbers of at least 1"),
        (["--sweep-concurrency", "1.5"], "--sweep-concurrency wants whole numbers of at least 1"),
        (["--sweep-rates", "0,1"], "--sweep-rates must all be positive"),
    ],
)
def test_bad_options_exit_2_before_any_load(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--mock", *options]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1  # one line


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


def test_a_password_in_the_base_url_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BENCH_KEY", "sk-test")
    summary_path = tmp_path / "summary.json"
    with served("sk-test") as base_url:
        with_password = base_url.replace("http://", "http://someone:pw-do-not-show@", 1)
        status = main(
            [
                "bench",
                *SMALL,
                "--base-url",
                with_password,
                "--api-key-env",
                "BENCH_KEY",
                "--requests",
                "2",
                "--json",
                str(summary_path),
            ]
        )
    out, err = capsys.readouterr()
    assert status == 2
    assert not summary_path.exists()
    (line,) = err.splitlines()
    assert "must not carry a user name or password" in line
    assert base_url in line
    assert "pw-do-not-show" not in out + err


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


def turn(speaker: str, value: str) -> dict[str, str]:
    return {"from": speaker, "value": value}


def sharegpt_file(tmp_path: Path) -> Path:
    """Five usable conversations (of two or three turns) and two left out."""
    entries: list[dict[str, Any]] = [
        {
            "id": f"talk-{n}",
            "conversations": [
                turn("human", f"Tell me about the rivers of country number {n}, please."),
                turn("gpt", f"Country {n} has three long rivers and many small ones."),
                turn("human", "Which one is the longest?"),
                turn("gpt", "The first one, by a wide margin."),
            ]
            + (
                [turn("human", "Thanks a lot!"), turn("gpt", "You are welcome, anytime.")] * (n % 2)
            ),
        }
        for n in range(5)
    ]
    entries.append({"id": "short", "conversations": [turn("human", "hello?")]})
    entries.append({"id": "tiny", "conversations": [turn("human", "hi"), turn("gpt", "Hello!")]})
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    return path


def run_bench(options: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    status = main(["bench", *FAST_MOCK, "--quiet", *options])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out, err


def test_a_sharegpt_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sharegpt_file(tmp_path)
    summary_path = tmp_path / "summary.json"
    options = ["--dataset", f"sharegpt:{path}", "--requests", "6", "--concurrency", "2"]
    jsonl = tmp_path / "requests.jsonl"
    out, err = run_bench(
        [*options, "--seed", "3", "--json", str(summary_path), "--jsonl", str(jsonl)], capsys
    )
    # Entries left out are told before the run, and how many of each kind.
    assert (
        f"qwen-sse bench: {path}: 2 entries left out (fewer than 2 turns: 1, prompt under 4" in err
    )
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["completed"] == 6
    workload = summary["workload"]
    assert (workload["source"], workload["entries"], workload["conversations"]) == (
        "sharegpt",
        5,
        False,
    )
    assert workload["skipped"] == {"fewer than 2 turns": 1, "prompt under 4 tokens": 1}
    assert summary["turns"] is None
    # Each request asked for its recorded answer's length, and the emulator (told the
    # longest) had more to say: max_tokens ended every answer.
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {record["finish_reason"] for record in records} == {"length"}
    assert "Workload:" in out
    assert "ShareGPT sharegpt.json, 5 entries (2 left out)" in out
    # --sample draws that many entries.
    run_bench([*options, "--sample", "2", "--json", str(summary_path)], capsys)
    assert json.loads(summary_path.read_text())["workload"]["entries"] == 2


def test_sharegpt_conversations_turn_by_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sharegpt_file(tmp_path)
    jsonl = tmp_path / "requests.jsonl"
    summary_path = tmp_path / "summary.json"
    out, _ = run_bench(
        [
            "--dataset",
            f"multiturn:{path}",
            "--output-tokens",
            "3",
            "--requests",
            "5",
            "--concurrency",
            "2",
            "--json",
            str(summary_path),
            "--jsonl",
            str(jsonl),
            "--csv",
            str(tmp_path / "requests.csv"),
        ],
        capsys,
    )
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["conversations"]["completed"] == 5
    # The sample is 5 of the 6 usable conversations, shuffled with the seed (the "tiny"
    # one is usable as a conversation: no length filter applies to conversations).
    sample = read_sharegpt(path, sample=5, conversations=True, output_tokens=3)
    turns = [1 + len(entry.later_turns) for entry in sample.entries]
    assert summary["completed"] == sum(turns)
    assert [turn["completed"] for turn in summary["turns"]] == [
        sum(1 for count in turns if count >= number) for number in range(1, max(turns) + 1)
    ]
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == sum(turns)
    for record in records:
        jsonschema.validate(record, RECORD_SCHEMA)
        assert record["finish_reason"] == "length"
    assert "------------------Conversations-------------------" in out


def test_synthetic_conversations_over_two_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary_path = tmp_path / "summary.json"
    run_bench(
        [
            "--dataset",
            "multiturn",
            "--turns",
            "2",
            "--input-tokens",
            "24,40",
            "--output-tokens",
            "3",
            "--prefix-tokens",
            "8",
            "--requests",
            "6",
            "--concurrency",
            "2",
            "--workers",
            "2",
            "--json",
            str(summary_path),
        ],
        capsys,
    )
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["completed"] == 12
    assert summary["conversations"]["completed"] == 6
    first, second = summary["turns"]
    assert first["mean_prompt_tokens"] in range(24, 41)
    assert second["mean_prompt_tokens"] > first["mean_prompt_tokens"]


def test_a_shared_prefix_and_a_spread_of_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary_path = tmp_path / "summary.json"
    out, _ = run_bench(
        [
            "--dataset",
            "shared-prefix",
            "--prefix-tokens",
            "64",
            "--prefix-groups",
            "2",
            "--input-tokens",
            "100",
            "--output-tokens",
            "4",
            "--random-range-ratio",
            "0.2",
            "--requests",
            "8",
            "--json",
            str(summary_path),
        ],
        capsys,
    )
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    workload = summary["workload"]
    assert (workload["prefix_tokens"], workload["prefix_groups"]) == (64, 2)
    assert workload["range_ratio"] == 0.2
    # The emulator bills each prompt as it was built: between 80 and 120 tokens.
    assert 8 * 80 <= summary["total_input_tokens"] <= 8 * 120
    # A 64-token prefix is under the 256 tokens a context cache holds, so the emulator's
    # reports no cached tokens.
    assert summary["requests_with_cache_report"] == 0
    assert "100 ±20% tokens in (64 shared in 2 groups), 4 ±20% out" in out


def test_images_in_a_prompts_file_are_counted_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "vl.jsonl"
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    text = {"type": "text", "text": "What is in the picture?"}
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": [image, text]}]}))
    summary_path = tmp_path / "summary.json"
    out, _ = run_bench(
        [
            "--model",
            "qwen-vl-max",
            "--prompts",
            str(prompts),
            "--output-tokens",
            "4",
            "--requests",
            "3",
            "--json",
            str(summary_path),
        ],
        capsys,
    )
    summary = json.loads(summary_path.read_text())
    assert summary["uncounted_input_parts"] == 3
    assert summary["workload"]["uncounted_parts"] == 1
    assert re.search(r"\nMedia parts \(not in local counts\): +3\n", out)


def test_prompts_sized_with_another_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = str(write_tokenizer(tmp_path))
    summary_path = tmp_path / "summary.json"
    out, _ = run_bench(
        [
            "--tokenizer",
            tokenizer,
            "--input-tokens",
            "5",
            "--output-tokens",
            "3",
            "--requests",
            "2",
            "--json",
            str(summary_path),
        ],
        capsys,
    )
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["tokenizer_id"] == tokenizer
    assert summary["workload"]["tokenizer"] == tokenizer
    assert f"counted with {tokenizer}" in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dataset", "lmsys"], "--dataset wants random, shared-prefix, sharegpt:FILE.json"),
        (["--dataset", "sharegpt"], "--dataset wants random"),
        (["--dataset", "random:x.json"], "--dataset wants random"),
        (
            ["--dataset", "random", "--prompts", "p.jsonl"],
            "--prompts and --dataset are alternatives",
        ),
        (
            ["--dataset", "sharegpt:{share}", "--input-tokens", "9"],
            "--input-tokens does not apply to a ShareGPT file",
        ),
        (
            ["--dataset", "sharegpt:{share}", "--turns", "2"],
            "--turns does not apply to --dataset sharegpt",
        ),
        (
            ["--dataset", "sharegpt:{share}", "--output-tokens", "4,8"],
            "--output-tokens is one number",
        ),
        (["--turns", "2"], "--turns does not apply to --dataset random"),
        (["--sample", "3"], "--sample does not apply to synthetic prompts"),
        (["--prefix-tokens", "9"], "a shared prefix is --dataset shared-prefix --prefix-tokens K"),
        (["--dataset", "shared-prefix"], "--dataset shared-prefix needs --prefix-tokens K"),
        (
            ["--dataset", "multiturn", "--prefix-groups", "2"],
            "--prefix-groups divides a shared prefix",
        ),
        (["--input-tokens", "64,x"], "--input-tokens wants a whole number, or numbers separated"),
        (["--random-range-ratio", "1"], "range ratio must lie in [0, 1), got 1"),
        (["--input-tokens", "20", "--random-range-ratio", "0.9"], "the smallest drawn is 1"),
        (["--dataset", "sharegpt:{bad}"], "bad.json: entry 1: Expected `str`, got `null`"),
        (["--dataset", "sharegpt:{missing}"], "cannot read {missing}: No such file"),
        (["--tokenizer", "{missing}"], "cannot read tokenizer {missing}: no such file"),
        (["--prompts", "{bad}", "--tokenizer", "{bad}"], "cannot load tokenizer {bad}"),
    ],
)
def test_bad_workload_options_and_files_are_one_line(
    tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "share": str(sharegpt_file(tmp_path)),
        "bad": str(tmp_path / "bad.json"),
        "missing": str(tmp_path / "missing.json"),
    }
    (tmp_path / "bad.json").write_text(
        '[{"conversations": []}, {"conversations": [{"from": "human", "value": null}]}]'
    )
    assert main(["bench", "--mock", *(option.format(**files) for option in options)]) == 2
    err = capsys.readouterr().err
    assert message.format(**files) in err
    assert err.count("\n") == 1, err


def test_output_paths_are_checked_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    cases = [
        (["--json", f"{tmp_path}/missing/s.json"], f"the directory {tmp_path}/missing does not"),
        (["--jsonl", str(tmp_path)], "is a directory, not a file"),
        (["--csv", f"{a_file}/r.csv"], f"{a_file} is not a directory"),
        (["--plot", f"{a_file}/charts"], f"{a_file} is not a directory, so it cannot hold"),
        (["--json", f"{tmp_path}/a", "--csv", f"{tmp_path}/a"], "--json and --csv name the same"),
        (
            ["--jsonl", f"{tmp_path}/r.jsonl", "--json", f"{tmp_path}/no/such/dir/s.json"],
            "does not exist",
        ),
    ]
    # An endpoint that would see any connection: nothing may reach it.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        for options, message in cases:
            arguments = ["bench", "--base-url", f"http://127.0.0.1:{port}/v1", "--quiet"]
            assert main([*arguments, "--allow-insecure-http", *options]) == 2, options
            err = capsys.readouterr().err
            assert message in err, (options, err)
            assert err.count("\n") == 1
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert not (tmp_path / "r.jsonl").exists()


def test_a_run_whose_first_requests_are_all_refused_alike_stops_early_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WRONG_KEY", "sk-test-wrong")
    summary_path = tmp_path / "summary.json"
    with served("sk-test-right") as base_url:
        status = main(
            [
                "bench",
                *SMALL,
                "--base-url",
                base_url,
                "--api-key-env",
                "WRONG_KEY",
                "--concurrency",
                "4",
                "--requests",
                "2000",
                "--json",
                str(summary_path),
            ]
        )
    out, err = capsys.readouterr()
    assert status == 1
    (line,) = [line for line in err.splitlines() if "stopped early" in line]
    assert line.startswith(
        "qwen-sse bench: stopped early: the first 8 requests all failed with "
        "AuthenticationError: HTTP 401"
    )
    assert "request id" not in line
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["completed"] == 0
    assert 8 <= summary["failed"] <= 8 + 4  # those in flight at the stop ended too
    (group,) = summary["error_groups"]
    assert group["type"] == "AuthenticationError"
    assert group["count"] == summary["failed"]
    assert summary["errors"] == {"AuthenticationError": summary["failed"]}
    assert summary["stop_reason"] in line
    # The report shows the message once, not one line per request id.
    assert f"  {group['message']}" in out.splitlines()


ROOT = Path(__file__).resolve().parents[1]


WAIT_S = 120.0


SIGNAL_MOCK = ["--mock", "--mock-ttft-ms", "20", "--mock-itl-ms", "20", "--mock-jitter-ms", "0"]


def short_and_long_prompts(tmp_path: Path, long_tokens: int = 400) -> list[str]:
    """Prompts used in turn: a one-token answer, then a long one. With two slots, the first
    record appears while a long answer is in flight."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "hi", "max_tokens": 1}\n'
        f'{{"prompt": "tell me more", "max_tokens": {long_tokens}}}\n'
    )
    return ["--prompts", str(prompts)]


class Bench:
    """``python -m qwen_sse bench ...`` in a subprocess (a session of its own), its stdout
    and stderr collected as they come."""

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qwen_sse", "bench", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
        self.err_lines: queue.Queue[str] = queue.Queue()
        self._err: list[str] = []
        self._out: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stderr, self._err, True)),
            threading.Thread(target=self._read, args=(self.process.stdout, self._out, False)),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[str], lines: bool) -> None:
        for line in stream:
            into.append(line)
            if lines:
                self.err_lines.put(line)

    def wait_for_stderr(self, text: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            line = self.err_lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if text in line:
                return line

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def finish(self) -> tuple[int, str, str]:
        status = self.process.wait(timeout=WAIT_S)
        for reader in self._readers:
            reader.join(timeout=WAIT_S)
        return status, "".join(self._out), "".join(self._err)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=WAIT_S)


@pytest.fixture
def bench() -> Any:
    started: list[Bench] = []

    def start(*arguments: str) -> Bench:
        started.append(Bench(*arguments))
        return started[-1]

    yield start
    for run in started:  # a failed test leaves nothing running
        run.kill()


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.02)


def jsonl_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def check_files_of_a_stopped_run(tmp_path: Path, reason: str) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((tmp_path / "summary.json").read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    assert summary["stop_reason"] == reason
    assert summary["completed"] >= 1
    assert summary["cancelled"] >= 1  # the long answer in flight was cut off
    records = jsonl_lines(tmp_path / "requests.jsonl")
    for record in records:
        jsonschema.validate(record, RECORD_SCHEMA)
    assert len(records) == summary["completed"] + summary["failed"] + summary["cancelled"]
    assert sum(record["cancelled"] for record in records) == summary["cancelled"]
    with (tmp_path / "requests.csv").open(newline="") as file:
        assert len(list(csv.DictReader(file))) == len(records)
    return summary


@pytest.mark.parametrize(
    ("number", "workers"), [(signal.SIGINT, "1"), (signal.SIGTERM, "2")], ids=["INT", "TERM-2w"]
)
def test_a_signal_stops_the_run_reports_what_finished_and_writes_every_file(
    tmp_path: Path, bench: Callable[..., Bench], number: int, workers: str
) -> None:
    plot = ["--plot", str(tmp_path / "charts")] if workers == "1" else []
    run = bench(
        *SIGNAL_MOCK,
        *short_and_long_prompts(tmp_path),
        "--concurrency",
        "2",
        "--workers",
        workers,
        "--requests",
        "1000",
        "--json",
        str(tmp_path / "summary.json"),
        "--jsonl",
        str(tmp_path / "requests.jsonl"),
        "--csv",
        str(tmp_path / "requests.csv"),
        *plot,
    )
    # A record on disk: the run is under way, with a long answer in flight.
    wait_until(lambda: len(jsonl_lines(tmp_path / "requests.jsonl")) >= 1)
    run.signal(number)
    status, out, err = run.finish()
    name = signal.Signals(number).name
    assert status == 130, err
    assert "Traceback" not in err
    assert f"qwen-sse bench: {name}: stopping: no new requests" in err
    assert "============ Serving Benchmark Result ============" in out
    assert f"{'Stopped early:':<40} interrupted by {name}" in out
    check_files_of_a_stopped_run(tmp_path, f"interrupted by {name}")
    if plot:
        for chart in (DISTRIBUTIONS_PNG, TIMELINE_PNG):
            assert (tmp_path / "charts" / chart).read_bytes().startswith(b"\x89PNG")


def test_a_second_signal_quits_at_once(tmp_path: Path, bench: Callable[..., Bench]) -> None:
    run = bench(
        *SIGNAL_MOCK,
        *short_and_long_prompts(tmp_path, long_tokens=4000),
        "--concurrency",
        "2",
        "--requests",
        "1000",
        "--json",
        str(tmp_path / "summary.json"),
        "--jsonl",
        str(tmp_path / "requests.jsonl"),
    )
    wait_until(lambda: len(jsonl_lines(tmp_path / "requests.jsonl")) >= 1)
    run.signal(signal.SIGINT)
    # The first signal is being handled: the long answer has its grace to end.
    run.wait_for_stderr("stopping")
    run.signal(signal.SIGINT)
    status, out, err = run.finish()
    assert status == 130, err
    assert "qwen-sse bench: SIGINT again: quitting at once" in err
    assert "Traceback" not in err
    assert "Serving Benchmark Result" not in out  # no report: it did not wait
    assert not (tmp_path / "summary.json").exists()
    records = jsonl_lines(tmp_path / "requests.jsonl")
    assert records  # what had finished stays on disk
    assert all(record["ok"] for record in records)


def test_a_killed_run_keeps_the_records_of_what_finished(
    tmp_path: Path, bench: Callable[..., Bench]
) -> None:
    run = bench(
        *SIGNAL_MOCK,
        *short_and_long_prompts(tmp_path),
        "--concurrency",
        "2",
        "--workers",
        "2",
        "--requests",
        "1000",
        "--jsonl",
        str(tmp_path / "requests.jsonl"),
    )
    wait_until(lambda: len(jsonl_lines(tmp_path / "requests.jsonl")) >= 2)
    run.process.kill()  # SIGKILL, to the command alone
    run.process.wait(timeout=WAIT_S)
    records = jsonl_lines(tmp_path / "requests.jsonl")
    assert len(records) >= 2
    for record in records:
        jsonschema.validate(record, RECORD_SCHEMA)
    # Its children (the emulator, the workers) go when their parent has gone.
    group = run.process.pid

    def group_gone() -> bool:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(group_gone)


def ctrl_c_on_a_terminal(*arguments: str) -> tuple[int, str]:
    """Run ``qwen-sse bench`` on a pseudo-terminal (its controlling terminal, so that
    Ctrl-C reaches every process of the foreground group, as at a shell); press Ctrl-C once
    its live line shows a request streaming; return its exit status and all it showed."""
    command = [sys.executable, "-m", "qwen_sse", "bench", *arguments]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "dumb"}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the command, on the pseudo-terminal
        os.execve(sys.executable, command, environment)
    output = bytearray()
    try:
        deadline = time.monotonic() + WAIT_S

        def read_until(done: Callable[[], bool]) -> None:
            while not done():
                assert time.monotonic() < deadline, output.decode(errors="replace")
                ready, _, _ = select.select([terminal], [], [], 1.0)
                if ready:
                    try:
                        chunk = os.read(terminal, 65536)
                    except OSError:  # EIO: the terminal's other side closed
                        return
                    if not chunk:
                        return
                    output.extend(chunk)

        # The live line, drawn on the terminal: requests in flight, one streaming at least.
        in_flight = re.compile(rb"[1-9][0-9]* in flight \([1-9]")
        read_until(lambda: in_flight.search(output) is not None)
        os.write(terminal, b"\x03")  # Ctrl-C
        read_until(lambda: False)
        _, wait_status = os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
    return os.waitstatus_to_exitcode(wait_status), output.decode(errors="replace")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_on_a_terminal_reports_without_a_traceback_from_any_process(
    tmp_path: Path, workers: str
) -> None:
    """The terminal sends SIGINT to every process of its foreground group: the command,
    the emulator's process and the workers. Only the command handles it."""
    status, text = ctrl_c_on_a_terminal(
        *SIGNAL_MOCK,
        *short_and_long_prompts(tmp_path),
        "--concurrency",
        "2",
        "--workers",
        workers,
        "--requests",
        "1000",
    )
    assert status == 130, text
    assert "Traceback" not in text
    assert "KeyboardInterrupt" not in text
    assert "qwen-sse bench: SIGINT: stopping" in text
    assert "============ Serving Benchmark Result ============" in text
    assert "Stopped early:                           interrupted by SIGINT" in text


def test_ctrl_c_stops_a_sweep_and_keeps_the_level_it_cut_short(tmp_path: Path) -> None:
    status, text = ctrl_c_on_a_terminal(
        *SIGNAL_MOCK,
        *short_and_long_prompts(tmp_path),
        "--sweep-concurrency",
        "1,2,4,8",
        "--requests",
        "4",
        "--json",
        str(tmp_path / "sweep.json"),
    )
    assert status == 130, text
    assert "Traceback" not in text
    document = json.loads((tmp_path / "sweep.json").read_text())
    jsonschema.validate(document, SWEEP_SCHEMA)
    assert document["levels"] == [1]
    (level,) = document["runs"]
    assert level["stop_reason"] == "interrupted by SIGINT"
    assert document["saturated_at"] is None
    assert document["stop_reason"] == "interrupted by SIGINT"
    assert text.rstrip().endswith("stopped: interrupted by SIGINT")


def test_repeated_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = [*FAST_MOCK, *SMALL, "--concurrency", "2", "--requests", "4", "--warmup", "1"]
    status = main(["bench", *options, "--repeat", "3", "--json", str(tmp_path / "repeat.json")])
    out, err = capsys.readouterr()
    assert status == 0, err
    document: dict[str, Any] = json.loads((tmp_path / "repeat.json").read_text())
    jsonschema.validate(document, REPEAT_SCHEMA)
    runs = document["runs"]
    assert len(runs) == document["repeat"] == 3
    # The same load each time: the same requests, prompts and settings.
    assert [run["completed"] for run in runs] == [4, 4, 4]
    assert len({json.dumps([run["load"], run["workload"]]) for run in runs}) == 1
    assert len({run["total_input_tokens"] for run in runs}) == 1
    ttft = document["figures"]["median_ttft_ms"]
    assert ttft["values"] == [run["median_ttft_ms"] for run in runs]
    assert ttft["low"] <= ttft["mean"] <= ttft["high"]
    lines = out.splitlines()
    # (After the warning, if a busy machine kept the client from a core in some run.)
    assert "======== Serving Benchmark Result, 3 runs ========" in lines
    median = next(line for line in lines if line.startswith("Median TTFT (ms):"))
    assert median.split()[-3:] == [f"{ttft['mean']:.2f}", "±", f"{ttft['half_width']:.2f}"]
    for number in (1, 2, 3):
        assert f"qwen-sse bench: run {number} of 3: " in err
    # One run is a plain run, with the plain summary.
    assert main(["bench", *options, "--repeat", "1", "--json", str(tmp_path / "one.json")]) == 0
    jsonschema.validate(json.loads((tmp_path / "one.json").read_text()), SUMMARY_SCHEMA)


def test_a_signal_during_repeats_keeps_the_whole_runs_and_leaves_the_cut_one_out(
    tmp_path: Path, bench: Callable[..., Bench]
) -> None:
    # Each run is one answer of 400 tokens 5 ms apart: the signal lands inside run 3.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi", "max_tokens": 400}\n')
    run = bench(
        "--mock",
        "--mock-ttft-ms",
        "5",
        "--mock-itl-ms",
        "5",
        "--mock-jitter-ms",
        "0",
        "--prompts",
        str(prompts),
        "--requests",
        "1",
        "--repeat",
        "4",
        "--json",
        str(tmp_path / "repeat.json"),
    )
    run.wait_for_stderr("run 2 of 4")
    run.signal(signal.SIGINT)
    status, out, err = run.finish()
    assert status == 130, err
    assert "Traceback" not in err
    document: dict[str, Any] = json.loads((tmp_path / "repeat.json").read_text())
    jsonschema.validate(document, REPEAT_SCHEMA)
    assert document["repeat"] == 2
    assert all(summary["stop_reason"] is None for summary in document["runs"])
    assert "Serving Benchmark Result, 2 runs" in out
    assert "run 3 of 4 stopped (interrupted by SIGINT): left out" in err
