"""``qwen-sse bench`` end to end with ``--mock``: the table, every output file validated
against the documented schemas, workers, sweeps, and the refusals of bad options."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from qwen_sse import protocols
from qwen_sse.bench import benchmark, workers
from qwen_sse.bench.plot import DISTRIBUTIONS_PNG, TIMELINE_PNG
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
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    document: dict[str, Any] = json.loads((tmp_path / "sweep.json").read_text())
    jsonschema.validate(document, SWEEP_SCHEMA)
    assert document["levels"][0] == 1
    assert out.splitlines()[0].split()[:2] == ["conc", "req/s"]
    assert "qwen-sse bench: level 1:" in err


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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--goodput", "latency:5"], "--goodput wants KEY:MS"),
        (["--goodput", "ttft:fast"], "is not a number"),
        (["--max-concurrency", "4"], "--max-concurrency caps an open loop"),
        (["--percentiles", "50,x"], "--percentiles wants numbers"),
        (["--param", "no-equals"], "--param wants KEY=JSON"),
        (["--sweep-rates", "1,2", "--plot", "charts"], "--plot draws one run"),
        (["--sweep-rates", "1,2", "--csv", "r.csv"], "--jsonl and --csv record one run"),
        (["--concurrency", "2", "--workers", "3"], "3 workers cannot share 2"),
        (["--input-tokens", "3"], "input tokens must be at least"),
        (["--rate", "-1"], "rate must be positive"),
        (["--repeat", "0"], "--repeat must be at least 1, got 0"),
        (["--repeat", "2", "--sweep-rates", "1,2"], "a sweep with repeats is not supported"),
        (["--repeat", "2", "--jsonl", "r.jsonl"], "leave them out of --repeat"),
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
    # The emulator keeps no context cache, so no cached tokens are reported.
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
