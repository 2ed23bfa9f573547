"""ShareGPT datasets read as vLLM reads them: first turns with vLLM's filters, or whole
conversations; seeded samples; every entry left out counted by reason; bad files named."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from qwen_sse.bench.sharegpt import read_sharegpt
from qwen_sse.bench.tokenizer import counter
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import count_message_tokens, count_tokens
from tests.hftokenizer import write_tokenizer

LONG = "word " * 1100
QUESTION = "What is the tallest mountain on the earth?"
ANSWER = "Mount Everest, at 8,849 metres above the sea."
OTHER_ANSWER = "Everest, without a doubt."


def turn(speaker: str, value: str) -> dict[str, str]:
    return {"from": speaker, "value": value}


def dataset(tmp_path: Path, entries: list[dict[str, Any]], name: str = "sharegpt.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def numbered(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"e{n}",
            "conversations": [
                turn("human", f"Question number {n} about the sea"),
                turn("gpt", f"Answer number {n}: the sea is large"),
            ],
        }
        for n in range(count)
    ]


def test_the_first_human_turn_asks_for_as_many_tokens_as_the_recorded_answer(
    tmp_path: Path,
) -> None:
    entries = [
        {"id": "a", "conversations": [turn("human", QUESTION), turn("gpt", ANSWER)]},
        # Some entries open with an answer: the first human turn is the prompt all the same.
        {
            "id": "b",
            "conversations": [
                turn("gpt", "Hello!"),
                turn("human", QUESTION),
                turn("gpt", OTHER_ANSWER),
            ],
        },
    ]
    workload = read_sharegpt(dataset(tmp_path, entries))
    assert workload.source == "sharegpt"
    assert not workload.conversations
    specs = {spec.max_tokens: spec for spec in map(workload.request, range(2))}
    assert set(specs) == {count_tokens(ANSWER), count_tokens(OTHER_ANSWER)}
    spec = specs[count_tokens(ANSWER)]
    assert spec.messages == [{"role": "user", "content": QUESTION}]
    assert specs[count_tokens(OTHER_ANSWER)].messages == spec.messages
    assert spec.prompt_tokens == count_message_tokens(spec.messages)
    assert spec.turn is None


def test_output_tokens_override_the_recorded_answers(tmp_path: Path) -> None:
    entries = [{"conversations": [turn("human", QUESTION), turn("gpt", "Everest")]}]
    path = dataset(tmp_path, entries)
    # Without an override an answer under 4 tokens is left out, as vLLM leaves it out.
    with pytest.raises(ConfigurationError, match=r"no usable entry among 1 \(answer under 4"):
        read_sharegpt(path)
    workload = read_sharegpt(path, output_tokens=64)
    assert workload.request(0).max_tokens == 64
    assert workload.summary()["output_tokens"] == 64


def test_vllms_filters_leave_entries_out_and_each_is_counted_by_reason(tmp_path: Path) -> None:
    entries: list[dict[str, Any]] = [
        {"conversations": [turn("human", QUESTION), turn("gpt", ANSWER)]},
        {"conversations": [turn("human", QUESTION)]},
        {"id": "no conversations"},
        {"conversations": [turn("human", "hi"), turn("gpt", ANSWER)]},
        {"conversations": [turn("human", QUESTION), turn("gpt", "ok")]},
        {"conversations": [turn("human", LONG), turn("gpt", ANSWER)]},
        {"conversations": [turn("human", "word " * 1000), turn("gpt", "word " * 1100)]},
        {"conversations": [turn("gpt", QUESTION), turn("gpt", ANSWER)]},
        {"conversations": [turn("human", QUESTION), turn("narrator", ANSWER)]},
    ]
    workload = read_sharegpt(dataset(tmp_path, entries))
    assert len(workload.entries) == 1
    assert workload.skipped == {
        "a speaker other than human, gpt or system": 1,
        "answer under 4 tokens": 1,
        "fewer than 2 turns": 2,
        "no answer to the first human turn": 1,
        "prompt and answer over 2048 tokens": 1,
        "prompt over 1024 tokens": 1,
        "prompt under 4 tokens": 1,
    }
    assert workload.summary()["skipped"] == workload.skipped


def test_a_sample_is_drawn_with_the_seed_in_vllms_order(tmp_path: Path) -> None:
    entries = numbered(30)
    path = dataset(tmp_path, entries)
    sample = read_sharegpt(path, sample=5, seed=7)
    prompts = [entry.messages[0]["content"] for entry in sample.entries]
    # vLLM: random.seed(seed), then random.shuffle of the entries with two turns or more.
    state = random.getstate()
    try:
        random.seed(7)
        shuffled = list(entries)
        random.shuffle(shuffled)
    finally:
        random.setstate(state)
    assert prompts == [entry["conversations"][0]["value"] for entry in shuffled[:5]]
    assert read_sharegpt(path, sample=5, seed=7) == sample
    other = read_sharegpt(path, sample=5, seed=8)
    assert [entry.messages for entry in other.entries] != [e.messages for e in sample.entries]
    assert len(read_sharegpt(path).entries) == 30


def test_conversations_keep_their_alternating_turns(tmp_path: Path) -> None:
    entries = [
        {
            "conversations": [
                turn("system", "You are terse."),
                turn("gpt", "Hi, ask me anything."),
                turn("human", QUESTION),
                turn("gpt", ANSWER),
                turn("human", "And the second one?"),
                turn("gpt", "K2, at 8,611 metres."),
                turn("human", "Thanks"),
                turn("human", "Really, thanks"),
                turn("gpt", "You are welcome."),
            ]
        }
    ]
    workload = read_sharegpt(dataset(tmp_path, entries), conversations=True)
    assert workload.conversations
    first = workload.request(0)
    assert first.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": QUESTION},
    ]
    assert first.prompt_tokens == count_message_tokens(first.messages)
    assert first.max_tokens == count_tokens(ANSWER)
    # The turns stop where they stop alternating: "Thanks" has no answer of its own.
    assert (first.turn, first.turns) == (1, 2)
    (second,) = first.later_turns
    assert second.message == {"role": "user", "content": "And the second one?"}
    assert second.max_tokens == count_tokens("K2, at 8,611 metres.")
    assert second.tokens == counter(None).message_tokens(second.message)
    assert workload.summary()["mean_turns"] == 2
    assert workload.requests_per_unit() == 2


def test_conversations_are_cut_to_the_turns_asked_and_answers_overridden(tmp_path: Path) -> None:
    talk = [turn(speaker, f"{speaker} says {n}") for n in range(5) for speaker in ("human", "gpt")]
    entries = [{"conversations": talk}, {"conversations": talk[:2]}]
    workload = read_sharegpt(
        dataset(tmp_path, entries), conversations=True, max_turns=3, output_tokens=9
    )
    turns = sorted(1 + len(entry.later_turns) for entry in workload.entries)
    assert turns == [1, 3]
    assert workload.requests_per_unit() is None
    for index in range(2):
        spec = workload.request(index)
        assert spec.max_tokens == 9
        assert all(later.max_tokens == 9 for later in spec.later_turns)
    # No length filter applies to conversations: short turns stay.
    assert workload.skipped == {}


def test_another_tokenizer_counts_the_filters_and_the_answers(tmp_path: Path) -> None:
    tokenizer = str(write_tokenizer(tmp_path))
    entries = [
        {"conversations": [turn("human", "the quick brown fox"), turn("gpt", "the lazy dog x y")]},
    ]
    workload = read_sharegpt(dataset(tmp_path, entries), tokenizer=tokenizer)
    spec = workload.request(0)
    assert (spec.prompt_tokens, spec.max_tokens) == (4, 5)
    assert workload.summary()["tokenizer"] == tokenizer


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[not json", r"sharegpt.json: not JSON: "),
        ('{"conversations": []}', r"sharegpt.json: not a ShareGPT dataset \(a JSON list"),
        (
            '[{"conversations": []}, {"conversations": [{"from": "human", "value": 3}]}]',
            r"sharegpt.json: entry 1: Expected `str`, got `int` \(at conversations\[0\].value\)",
        ),
        (
            '[{"conversations": [{"value": "x"}]}]',
            r"entry 0: Object missing required field `from` \(at conversations\[0\]\)",
        ),
        ("[3]", r"sharegpt.json: entry 0: Expected `object`, got `int`$"),
        ("[]", r"sharegpt.json: no usable entry among 0$"),
    ],
)
def test_a_bad_dataset_is_one_line_naming_the_file_and_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message) as caught:
        read_sharegpt(path)
    assert "\n" not in str(caught.value)


def test_a_missing_dataset_and_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read .*absent.json: No such file"):
        read_sharegpt(tmp_path / "absent.json")
    path = dataset(tmp_path, numbered(2))
    with pytest.raises(ConfigurationError, match="sample must be at least 1"):
        read_sharegpt(path, sample=0)
    with pytest.raises(ConfigurationError, match="turns must be at least 1"):
        read_sharegpt(path, conversations=True, max_turns=0)
    with pytest.raises(ConfigurationError, match="output tokens must be at least 1"):
        read_sharegpt(path, output_tokens=0)
