"""Workloads: synthetic prompts of exact billed sizes (fixed, spread or listed; with a shared
prefix; as conversations), prompts files (with images), other tokenizers."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qwen_sse.bench.tokenizer import counter
from qwen_sse.bench.workload import (
    FileWorkload,
    PromptEntry,
    RequestSpec,
    SyntheticWorkload,
    Workload,
    follow_up,
    read_prompts,
)
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import count_message_tokens, count_tokens
from tests.hftokenizer import write_tokenizer


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


def test_a_range_ratio_spreads_sizes_uniformly_as_vllm_does() -> None:
    workload = SyntheticWorkload(input_tokens=100, output_tokens=40, range_ratio=0.5, seed=3)
    specs = [workload.request(index) for index in range(200)]
    inputs = [spec.prompt_tokens for spec in specs]
    outputs = [spec.max_tokens for spec in specs]
    # vLLM's bounds: [int(N * (1 - R)), int(N * (1 + R))], both included.
    assert 50 <= min(inputs) < 60
    assert 140 < max(inputs) <= 150
    assert all(o is not None and 20 <= o <= 60 for o in outputs)
    assert len(set(inputs)) > 50
    assert len(set(outputs)) > 20
    for spec in specs[:20]:
        assert count_message_tokens(spec.messages) == spec.prompt_tokens
    again = SyntheticWorkload(input_tokens=100, output_tokens=40, range_ratio=0.5, seed=3)
    assert again.request(17) == specs[17]
    other = SyntheticWorkload(input_tokens=100, output_tokens=40, range_ratio=0.5, seed=4)
    assert [other.request(i).prompt_tokens for i in range(10)] != inputs[:10]
    assert workload.max_output_tokens() == 60


def test_lists_of_sizes_are_drawn_from() -> None:
    workload = SyntheticWorkload(input_tokens=[20, 64, 300], output_tokens=[1, 7], seed=5)
    specs = [workload.request(index) for index in range(60)]
    assert Counter(spec.prompt_tokens for spec in specs).keys() == {20, 64, 300}
    assert Counter(spec.max_tokens for spec in specs).keys() == {1, 7}
    for spec in specs[:10]:
        assert count_message_tokens(spec.messages) == spec.prompt_tokens
    assert workload.max_output_tokens() == 7


def test_fixed_sizes_keep_the_prompts_they_always_had() -> None:
    # The words' generator is seeded by seed and index alone, as before sizes could vary.
    spec = SyntheticWorkload(input_tokens=12, output_tokens=None, seed=1).request(3)
    assert spec.messages == [{"role": "user", "content": "which but paper city"}]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"range_ratio": 1.0}, r"range ratio must lie in \[0, 1\), got 1"),
        ({"range_ratio": -0.1}, "range ratio must lie in"),
        ({"input_tokens": [64, 9], "range_ratio": 0.1}, "input tokens: a range ratio spreads one"),
        ({"input_tokens": []}, "input tokens: the list of sizes is empty"),
        (
            {"input_tokens": 16, "range_ratio": 0.5},
            r"at least 9 .* got 16 \(the smallest drawn is 8\)",
        ),
        (
            {"output_tokens": 1, "range_ratio": 0.5},
            r"output tokens must be at least 1, got 1 \(the",
        ),
        ({"output_tokens": [4, 0]}, "output tokens must be at least 1"),
        ({"prefix_tokens": 100}, "the chat template and the 100-token prefix take 113"),
        ({"prefix_groups": 0}, "prefix groups must be at least 1"),
        ({"turns": 0}, "turns must be at least 1"),
    ],
)
def test_impossible_sizes_are_refused(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"input_tokens": 64, "output_tokens": 8, **fields}
    with pytest.raises(ConfigurationError, match=message):
        SyntheticWorkload(**values)  # type: ignore[arg-type]


def test_a_shared_prefix_opens_every_prompt_of_its_group() -> None:
    workload = SyntheticWorkload(
        input_tokens=400, output_tokens=8, prefix_tokens=300, prefix_groups=2, seed=9
    )
    specs = [workload.request(index) for index in range(6)]
    for spec in specs:
        system, user = spec.messages
        assert system["role"] == "system"
        assert count_tokens(system["content"]) == 300
        assert user["role"] == "user"
        assert spec.prompt_tokens == 400 == count_message_tokens(spec.messages)
    assert {spec.messages[0]["content"] for spec in specs[0::2]} == {
        specs[0].messages[0]["content"]
    }
    assert {spec.messages[0]["content"] for spec in specs[1::2]} == {
        specs[1].messages[0]["content"]
    }
    assert specs[0].messages[0] != specs[1].messages[0]
    assert len({spec.messages[1]["content"] for spec in specs}) == 6


def test_a_synthetic_conversation_carries_its_later_turns() -> None:
    workload = SyntheticWorkload(input_tokens=[30, 50], output_tokens=5, turns=3, seed=2)
    first = workload.request(4)
    assert (first.turn, first.turns, len(first.later_turns)) == (1, 3, 2)
    assert count_message_tokens(first.messages) == first.prompt_tokens
    for turn in first.later_turns:
        # Each later user message is one that alone would make an input_tokens prompt.
        assert count_message_tokens([turn.message]) in (30, 50)
        assert turn.max_tokens == 5
    assert workload.requests_per_unit() == 3
    assert SyntheticWorkload(input_tokens=30, output_tokens=5).request(0).turn is None


@pytest.mark.parametrize(
    "answer", ["", "Sure.", "第一，\n\n- a list\n  ```py\nx = 1\n```", " padded  "]
)
def test_a_follow_up_holds_the_history_and_counts_it_exactly(answer: str) -> None:
    workload = SyntheticWorkload(
        input_tokens=80, output_tokens=5, turns=3, prefix_tokens=20, seed=6
    )
    first = workload.request(0)
    second = follow_up(first, answer)
    assert second.messages == [
        *first.messages,
        {"role": "assistant", "content": answer},
        first.later_turns[0].message,
    ]
    assert second.prompt_tokens == count_message_tokens(second.messages)
    assert (second.index, second.turn, second.turns) == (0, 2, 3)
    assert second.max_tokens == first.later_turns[0].max_tokens
    third = follow_up(second, answer + " again")
    assert third.prompt_tokens == count_message_tokens(third.messages)
    assert (third.turn, third.later_turns) == (3, [])
    with pytest.raises(ValueError, match="no later turn"):
        follow_up(third, "the end")


def test_other_tokenizers_size_synthetic_prompts_without_a_template(tmp_path: Path) -> None:
    path = str(write_tokenizer(tmp_path))
    words = counter(path)
    workload = SyntheticWorkload(
        input_tokens=[11, 40], output_tokens=3, prefix_tokens=10, tokenizer=path, turns=2
    )
    for index in range(10):
        spec = workload.request(index)
        assert words.prompt(spec.messages).tokens == spec.prompt_tokens in (11, 40)
        assert words.text(spec.messages[0]["content"]) == 10
        (turn,) = spec.later_turns
        assert words.prompt([turn.message]).tokens in (11, 40)
        after = follow_up(spec, "the lazy dog", tokenizer=path)
        assert after.prompt_tokens == words.prompt(after.messages).tokens
    with pytest.raises(ConfigurationError, match="at least 11"):
        SyntheticWorkload(input_tokens=10, output_tokens=3, prefix_tokens=10, tokenizer=path)
    assert (
        SyntheticWorkload(input_tokens=1, output_tokens=1, tokenizer=path).request(0).prompt_tokens
        == 1
    )


def test_workloads_travel_to_workers_unchanged() -> None:
    workloads: list[Workload] = [
        SyntheticWorkload(input_tokens=[20, 30], output_tokens=4, turns=2, prefix_tokens=5),
        FileWorkload(
            entries=[PromptEntry(messages=[{"role": "user", "content": "x"}], prompt_tokens=9)],
            source="sharegpt",
            conversations=True,
        ),
    ]
    for workload in workloads:
        wire = msgspec.msgpack.encode(workload)
        back = msgspec.msgpack.decode(wire, type=Workload)
        assert back == workload
        assert back.request(3) == workload.request(3)


IMAGE_URL = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
IMAGE_DATA = {
    "type": "image_url",
    "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()},
}


def test_a_multimodal_prompts_file_counts_text_and_the_images_apart(tmp_path: Path) -> None:
    path = tmp_path / "vl.jsonl"
    text = {"type": "text", "text": "What is in these pictures?"}
    lines: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": [IMAGE_URL, IMAGE_DATA, text]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "and now?"}]}]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    workload = read_prompts(path, output_tokens=16)
    first, second = workload.request(0), workload.request(1)
    assert first.uncounted_parts == 2
    text_only = [{"role": "user", "content": "What is in these pictures?"}]
    assert first.prompt_tokens == count_message_tokens(text_only)
    assert first.messages == lines[0]["messages"]
    assert second.uncounted_parts == 0
    assert workload.summary()["uncounted_parts"] == 2


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"type": "image_url"}, r"vl.jsonl:1: messages\[0\].content\[0\]: image_url needs"),
        (
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}},
            r"content\[0\]: an image URL must be http\(s\) or a data: URL, got 'ftp",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},
            r"content\[0\]: a data: image URL must be ;base64, encoded",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,&&&"}},
            r"content\[0\]: the image's base64 is broken",
        ),
    ],
)
def test_a_bad_image_part_names_its_line(
    tmp_path: Path, part: dict[str, object], message: str
) -> None:
    path = tmp_path / "vl.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": [part]}]}) + "\n")
    with pytest.raises(ConfigurationError, match=message):
        read_prompts(path)


def test_a_prompts_file_counted_with_another_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "the quick brown fox"}\n')
    tokenizer = str(write_tokenizer(tmp_path))
    workload = read_prompts(path, tokenizer=tokenizer)
    assert workload.request(0).prompt_tokens == 4
    assert workload.summary()["tokenizer"] == tokenizer


def test_a_request_spec_outside_a_conversation_has_no_turn() -> None:
    spec = RequestSpec(index=0, messages=[], max_tokens=None, prompt_tokens=0)
    assert (spec.turn, spec.turns, spec.later_turns) == (None, None, [])
