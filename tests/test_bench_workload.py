"""Workloads: synthetic prompts of an exact billed size, and prompts files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_sse.bench.workload import FileWorkload, PromptEntry, SyntheticWorkload, read_prompts
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import count_message_tokens


@pytest.mark.parametrize("size", [9, 10, 64, 256, 1000, 4096])
def test_synthetic_prompts_have_exactly_the_target_size(size: int) -> None:
    workload = SyntheticWorkload(input_tokens=size, output_tokens=50, seed=7)
    for index in range(5):
        spec = workload.request(index)
        assert spec.index == index
        assert spec.prompt_tokens == size
        assert count_message_tokens(spec.messages) == size
        assert spec.max_tokens == 50


def test_every_request_gets_other_words_and_a_seed_reproduces_them() -> None:
    workload = SyntheticWorkload(input_tokens=128, output_tokens=None, seed=1)
    contents = [workload.request(index).messages[0]["content"] for index in range(20)]
    assert len(set(contents)) == 20
    again = SyntheticWorkload(input_tokens=128, output_tokens=None, seed=1)
    assert again.request(3) == workload.request(3)
    other = SyntheticWorkload(input_tokens=128, output_tokens=None, seed=2)
    assert other.request(3).messages != workload.request(3).messages
    assert workload.request(0).max_tokens is None


def test_synthetic_sizes_below_the_template_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 9"):
        SyntheticWorkload(input_tokens=8, output_tokens=1)
    with pytest.raises(ConfigurationError, match="output tokens"):
        SyntheticWorkload(input_tokens=100, output_tokens=0)


def test_a_prompts_file_is_read_and_used_in_turn(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt": "你好"},
        {},
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ]
        },
        {"prompt": "long answer", "max_tokens": 7},
    ]
    path.write_text(
        "\n".join("" if not line else json.dumps(line, ensure_ascii=False) for line in lines) + "\n"
    )
    workload = read_prompts(path, output_tokens=32)
    assert isinstance(workload, FileWorkload)
    assert len(workload.entries) == 3
    first, second, third, fourth = (workload.request(index) for index in range(4))
    assert first.messages == [{"role": "user", "content": "你好"}]
    assert first.max_tokens == 32
    assert first.prompt_tokens == count_message_tokens(first.messages)
    assert second.messages[0]["role"] == "system"
    assert third.max_tokens == 7
    assert fourth.messages == first.messages
    assert fourth.index == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json\n", r"prompts.jsonl:1: not JSON"),
        ('"a string"\n', r":1: expected a JSON object"),
        ('{"prompt": "ok"}\n{"text": "no"}\n', r':2: expected "prompt"'),
        ('{"messages": []}\n', r":1: messages must be a non-empty list"),
        ('{"prompt": "x", "max_tokens": 0}\n', r":1: max_tokens must be a positive integer"),
        ('{"messages": [{"content": "no role"}]}\n', r":1: "),
        ("\n\n", r"holds no prompts"),
    ],
)
def test_bad_prompts_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        read_prompts(path)


def test_a_missing_prompts_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_prompts(tmp_path / "absent.jsonl")


def test_an_entry_keeps_its_own_max_tokens_over_the_default() -> None:
    entry = PromptEntry(messages=[{"role": "user", "content": "x"}], max_tokens=3, prompt_tokens=9)
    workload = FileWorkload(entries=[entry], output_tokens=100)
    assert workload.request(0).max_tokens == 3
