"""Token counters of a load test: the bundled Qwen tokenizer, and a local tokenizer.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from qwen_sse.bench.tokenizer import counter
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import count_message_tokens, count_tokens
from tests.hftokenizer import write_tokenizer

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def test_the_qwen_counter_bills_prompts_as_dashscope_does() -> None:
    qwen = counter(None)
    assert qwen.name == "qwen"
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "你好, what is 2+2?\n"},
        {"role": "assistant", "content": "4"},
    ]
    assert qwen.prompt(messages).tokens == count_message_tokens(messages)
    assert qwen.text("hello there") == count_tokens("hello there")
    # A prompt is the empty prompt plus what each of its messages adds.
    empty = count_message_tokens([])
    assert count_message_tokens(messages) == empty + sum(qwen.message_tokens(m) for m in messages)


def test_the_qwen_words_are_one_token_each_and_add_up() -> None:
    words = counter(None).words
    assert len(words) > 50
    assert all(count_tokens(word) == 1 == count_tokens(" " + word) for word in words)
    assert count_tokens(" ".join(words)) == len(words)


def test_a_tokenizer_json_counts_text_without_a_chat_template(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path)
    words = counter(str(path))
    assert words.name == str(path)
    assert words.text("the quick brown fox") == 4
    assert words.text("unbelievable!") == 2  # one unknown word, one punctuation run
    assert words.text("") == 0
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "the dog"},
        {"role": "user", "content": [{"type": "text", "text": "a fox"}, IMAGE]},
    ]
    size = words.prompt(messages)
    assert size.tokens == 4
    assert size.uncounted_parts == 1
    assert words.prompt([]).tokens == 0
    assert words.message_tokens({"role": "user", "content": "the lazy dog"}) == 3
    assert set(words.words) >= {"the", "over", "server", "client"}


def test_a_directory_holding_a_tokenizer_json_will_do(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    assert counter(str(tmp_path)).text("the fox") == 2


def test_malformed_messages_are_named_whatever_the_tokenizer(tmp_path: Path) -> None:
    words = counter(str(write_tokenizer(tmp_path)))
    with pytest.raises(ConfigurationError, match=r"messages\[1\] needs a non-empty string 'role'"):
        words.prompt([{"role": "user", "content": "a"}, {"content": "b"}])


def test_a_tokenizer_that_cannot_be_used_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read tokenizer .*missing\.json: no such"):
        counter(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": 3}')
    with pytest.raises(ConfigurationError, match=r"cannot load tokenizer .*broken\.json: "):
        counter(str(broken))


def test_without_the_tokenizers_package_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tokenizer(tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'qwen-sse\[hf\]'"):
        counter(str(path))
