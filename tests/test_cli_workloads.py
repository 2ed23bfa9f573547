"""The workload options of ``qwen-sse bench``: what they build, the sample a run needs, the
requests it plans, the emulator's answer length. (Runs and refusals: test_cli_bench.py.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from qwen_sse.bench.benchmark import BenchConfig
from qwen_sse.bench.schedule import ClosedLoop
from qwen_sse.bench.workload import FileWorkload, SyntheticWorkload, Workload
from qwen_sse.cli.bench import add_parser
from qwen_sse.cli.workloads import (
    add_workload_options,
    mock_answer_tokens,
    planned_requests,
    workload_from,
    workload_notes,
)
from qwen_sse.errors import ConfigurationError


def parse(*options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *options])


def sharegpt(tmp_path: Path, entries: int) -> Path:
    path = tmp_path / "sharegpt.json"
    talk = [
        {"from": "human", "value": "Which rivers cross the country, from north to south?"},
        {"from": "gpt", "value": "Three rivers cross it, the longest in the east."},
    ]
    path.write_text(json.dumps([{"conversations": talk}] * entries + [{"conversations": []}]))
    return path


def test_the_default_is_vllms_random_dataset_at_256_in_128_out() -> None:
    workload = workload_from(parse(), units=10)
    assert workload == SyntheticWorkload(input_tokens=256, output_tokens=128)
    spread = workload_from(
        parse("--input-tokens", "64,128", "--output-tokens", "7", "--seed", "4"), units=None
    )
    assert spread == SyntheticWorkload(input_tokens=[64, 128], output_tokens=7, seed=4)


def test_a_sharegpt_file_is_sampled_to_what_the_run_sends(tmp_path: Path) -> None:
    path = sharegpt(tmp_path, entries=30)
    args = parse("--dataset", f"sharegpt:{path}")
    workload = workload_from(args, units=12)
    assert isinstance(workload, FileWorkload)
    assert len(workload.entries) == 12
    # A run bounded by time has no count of its own: every usable entry is read.
    every = workload_from(args, units=None)
    assert isinstance(every, FileWorkload)
    assert len(every.entries) == 30
    sampled = workload_from(parse("--dataset", f"sharegpt:{path}", "--sample", "3"), units=12)
    assert isinstance(sampled, FileWorkload)
    assert len(sampled.entries) == 3
    assert workload_notes(workload) == [f"{path}: 1 entry left out (fewer than 2 turns: 1)"]
    assert workload_notes(SyntheticWorkload(input_tokens=20, output_tokens=1)) == []


def test_the_emulator_answers_one_piece_longer_than_any_request_asks(tmp_path: Path) -> None:
    assert mock_answer_tokens(SyntheticWorkload(input_tokens=20, output_tokens=[4, 9])) == 10
    assert mock_answer_tokens(SyntheticWorkload(input_tokens=20, output_tokens=None)) == 129
    recorded = workload_from(parse("--dataset", f"multiturn:{sharegpt(tmp_path, 2)}"), units=2)
    assert isinstance(recorded, FileWorkload)
    asked = max(entry.max_tokens or 0 for entry in recorded.entries)
    assert mock_answer_tokens(recorded) == asked + 1


def test_a_conversation_plans_a_request_per_turn(tmp_path: Path) -> None:
    def config(workload: Workload, requests: int | None) -> BenchConfig:
        duration_s = None if requests is not None else 5.0
        return BenchConfig(
            shape=ClosedLoop(concurrency=1),
            workload=workload,
            requests=requests,
            duration_s=duration_s,
        )

    synthetic = SyntheticWorkload(input_tokens=20, output_tokens=1, turns=3)
    assert planned_requests(config(synthetic, 5)) == 15
    assert planned_requests(config(synthetic, None)) is None
    assert planned_requests(config(SyntheticWorkload(input_tokens=20, output_tokens=1), 5)) == 5
    path = tmp_path / "talks.json"
    pair = [{"from": "human", "value": "a question"}, {"from": "gpt", "value": "an answer"}]
    path.write_text(json.dumps([{"conversations": pair * turns} for turns in (1, 2)]))
    uneven = workload_from(parse("--dataset", f"multiturn:{path}"), units=None)
    assert planned_requests(config(uneven, 5)) is None


def parse_prefixed(*options: str) -> argparse.Namespace:
    """The options as the Locust user adds them: ``--qwen-`` before each, a seed of its own."""
    parser = argparse.ArgumentParser()
    add_workload_options(parser, prefix="qwen-")
    parser.add_argument("--qwen-seed", type=int, default=0)
    return parser.parse_args(list(options))


def test_prefixed_options_build_the_same_workloads(tmp_path: Path) -> None:
    path = sharegpt(tmp_path, entries=5)
    for options in (
        [],
        ["dataset", "shared-prefix", "prefix-tokens", "40", "prefix-groups", "2"],
        ["dataset", "multiturn", "turns", "2", "input-tokens", "30,40", "seed", "7"],
        ["input-tokens", "64", "random-range-ratio", "0.5", "output-tokens", "9"],
        ["dataset", f"multiturn:{path}", "turns", "1", "sample", "3"],
    ):
        plain = [f"--{word}" if i % 2 == 0 else word for i, word in enumerate(options)]
        prefixed = [f"--qwen-{word}" if i % 2 == 0 else word for i, word in enumerate(options)]
        expected = workload_from(parse(*plain), units=None)
        assert workload_from(parse_prefixed(*prefixed), units=None, prefix="qwen-") == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--qwen-dataset", "nonsense"], "--qwen-dataset wants random, shared-prefix"),
        (["--qwen-prompts", "p.jsonl", "--qwen-turns", "2"], "--qwen-turns does not apply"),
        (["--qwen-dataset", "shared-prefix"], "shared-prefix needs --qwen-prefix-tokens K"),
        (["--qwen-input-tokens", "8,x"], "--qwen-input-tokens wants a whole number"),
    ],
)
def test_prefixed_options_are_named_so_in_errors(options: list[str], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        workload_from(parse_prefixed(*options), units=None, prefix="qwen-")
    assert message in str(caught.value)
    # Every option the message names has the prefix.
    assert all(word.startswith("--qwen-") for word in str(caught.value).split() if "--" in word)
