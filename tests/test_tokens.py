"""Tests of qwen_sse.tokens: the documented figures, the pre-tokenizer's cases, prompts."""

from __future__ import annotations

import gzip
import hashlib
import random
import threading
import unicodedata
from importlib import resources
from typing import Any

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_sse import tokens
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import (
    SPECIAL_TOKENS,
    count_message_tokens,
    count_tokens,
    decode,
    encode,
    message_token_count,
    token_bytes,
)

VOCABULARY_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
IM_START, IM_END = SPECIAL_TOKENS["<|im_start|>"], SPECIAL_TOKENS["<|im_end|>"]
Message = dict[str, Any]
HELPFUL: Message = {"role": "system", "content": "You are a helpful assistant."}
WHO: Message = {"role": "user", "content": "你是谁？"}


# The vocabulary ------------------------------------------------------------------------


def test_shipped_vocabulary_is_the_original_file() -> None:
    package = resources.files("qwen_sse")
    data = gzip.decompress(package.joinpath("data/qwen.tiktoken.gz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == VOCABULARY_SHA256
    notice = package.joinpath("data/NOTICE").read_text("utf-8")
    assert VOCABULARY_SHA256 in notice
    assert "Apache License, Version 2.0" in notice


def test_ranks_are_the_token_ids_and_specials_follow_them() -> None:
    ranks = tokens._read_ranks()
    assert sorted(ranks.values()) == list(range(151_643))
    assert min(SPECIAL_TOKENS.values()) == len(ranks)
    assert all(decode([token]) == text for text, token in SPECIAL_TOKENS.items())


def test_vocabulary_loads_once_under_concurrent_first_use() -> None:
    vocabulary = tokens._Vocabulary()
    barrier = threading.Barrier(8)
    seen: list[tiktoken.Encoding] = []

    def first_use() -> None:
        barrier.wait()
        seen.append(vocabulary.encoding())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8
    assert all(encoding is seen[0] for encoding in seen)
    assert seen[0].encode_ordinary("通义千问") == encode("通义千问")


# Documented figures (protocol.md, "Tokens") ------------------------------------------------


def test_documented_ids() -> None:
    assert encode("通义千问具有强大的能力。") == [
        31935,
        64559,
        99320,
        56007,
        100629,
        104795,
        99788,
        1773,
    ]


def test_documented_reply_count() -> None:
    assert count_tokens("我是来自阿里云的超大规模语言模型，我叫通义千问。") == 17


def test_documented_prompt_count() -> None:
    assert count_message_tokens([HELPFUL, WHO]) == 22


# Pre-tokenizer cases ---------------------------------------------------------------------


def test_digits_are_one_token_each() -> None:
    assert count_tokens("1234567890") == 10
    assert encode("abc2024") == encode("abc") + [encode(d)[0] for d in "2024"]
    # Fullwidth digits are \p{N} too, and NFC keeps them fullwidth.
    assert count_tokens("１２３") == 3


@pytest.mark.parametrize("emoji", ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇨🇳"])
def test_emoji_round_trip_within_their_utf8_bytes(emoji: str) -> None:
    ids = encode(emoji)
    assert decode(ids) == emoji
    assert 1 <= len(ids) <= len(emoji.encode("utf-8"))
    assert encode(f"ok{emoji}") == encode("ok") + ids


def test_crlf_stays_together_and_line_breaks_are_their_own_piece() -> None:
    assert encode("a\r\nb") == encode("a") + encode("\r\n") + encode("b")
    assert count_tokens("\r\n") == 1
    assert encode("line\r\n\r\nnext") == encode("line") + encode("\r\n\r\n") + encode("next")
    assert decode(encode("x\r\ny\rz\n")) == "x\r\ny\rz\n"


def test_mixed_scripts_split_at_spaces_and_punctuation() -> None:
    text = "Hello 世界, Привет мир! こんにちは"
    assert encode(text) == (
        encode("Hello")
        + encode(" 世界")
        + encode(",")
        + encode(" Привет")
        + encode(" мир")
        + encode("!")
        + encode(" こんにちは")
    )
    assert decode(encode(text)) == text


def test_english_contractions_are_encode() -> None:
    assert encode("I'm here") == encode("I") + encode("'m") + encode(" here")


def test_empty_text() -> None:
    assert encode("") == []
    assert count_tokens("") == 0
    assert decode([]) == ""


def test_input_is_nfc_normalized() -> None:
    decomposed, composed = "Cafe\u0301 e\u0301te\u0301", "Café été"
    assert unicodedata.normalize("NFC", decomposed) == composed
    assert encode(decomposed) == encode(composed)
    assert decode(encode(decomposed)) == composed


def test_special_token_strings_in_text_are_ordinary_characters() -> None:
    for text, token in SPECIAL_TOKENS.items():
        ids = encode(text)
        assert token not in ids
        assert len(ids) > 1
        assert decode(ids) == text


def test_decode_rejects_ids_outside_the_vocabulary() -> None:
    for bad in (151_650, -1, 2**40):
        with pytest.raises(ConfigurationError, match=f"token id {bad} "):
            decode([1, bad])


@pytest.mark.parametrize("text", ["café 😊 龘", "通义千问具有强大的能力。", "<|im_end|> 𪚥"])
def test_token_bytes_are_each_tokens_share_of_the_utf8(text: str) -> None:
    ids = encode(text)
    pieces = token_bytes(ids)
    assert len(pieces) == len(ids)
    assert b"".join(pieces) == text.encode()
    assert all(pieces)


def test_token_bytes_may_split_a_character() -> None:
    # " 😊" and "龘" are two tokens each, cut inside the character's UTF-8 sequence.
    for text in (" 😊", "龘"):
        first, second = token_bytes(encode(text))
        assert first + second == text.encode()
        with pytest.raises(UnicodeDecodeError):
            first.decode()


def test_token_bytes_rejects_ids_outside_the_vocabulary() -> None:
    for bad in (151_650, -1, 2**40):
        with pytest.raises(ConfigurationError, match=f"token id {bad} "):
            token_bytes([1, bad])
    assert token_bytes([151_645]) == [b"<|im_end|>"]


# Long texts ------------------------------------------------------------------------------


def mixed_text(size_chars: int) -> tuple[str, list[str]]:
    """A Chinese/English text of size_chars characters, and the sentences it is made of.

    Every sentence starts with a digit, a piece of its own, after a character that is not
    whitespace: the cut before it is a safe boundary (see tokens._encode_ordinary), so the
    text's ids are its sentences' ids concatenated.
    """
    sentences = [
        "1、通义千问具有强大的能力。",
        "2. The quick brown fox jumps over the lazy dog, 42 times.",
        "3、我是来自阿里云的超大规模语言模型，我叫通义千问。",
        "4. Streaming clients decode server-sent events:\ndata lines, then a blank line.",
        "5、今天天气很好，我们去公园散步吧！",
    ]
    rng = random.Random(3)
    chosen: list[str] = []
    size = 0
    while size < size_chars:
        chosen.append(rng.choice(sentences))
        size += len(chosen[-1])
    return "".join(chosen), chosen


def test_one_megabyte_of_mixed_text_counts_as_its_sentences() -> None:
    text, sentences = mixed_text(1_000_000)
    assert len(text) >= 1_000_000
    ids = encode(text)
    by_sentence = {sentence: encode(sentence) for sentence in set(sentences)}
    assert ids == [token for sentence in sentences for token in by_sentence[sentence]]
    assert count_tokens(text) == len(ids)
    assert decode(ids) == text


@pytest.mark.parametrize(
    "text",
    [
        " " * 1_000_000,
        "x" + " " * 1_000_000 + "y",
        "\u3000\t " * 400_000 + "!",
        "a\n" + " " * 999_999,
        " " * 70_000 + "1" + " " * 70_000 + "\n",
    ],
    ids=["spaces", "between-letters", "mixed-whitespace", "after-newline", "two-runs"],
)
def test_megabyte_whitespace_runs_match_the_reference_pre_tokenizer(text: str) -> None:
    # tiktoken's own regex engine overflows its stack on these; its pure-Python path (the
    # `regex` module, then the same BPE) does not, and is an independent pre-tokenizer.
    reference = tokens._VOCABULARY.encoding()._encode_only_native_bpe(text)
    assert encode(text) == reference


def test_whitespace_set_is_tiktoken_whitespace() -> None:
    # A probe encoding whose pattern is `\s` and whose vocabulary is the 256 bytes: the
    # text it keeps is exactly the characters tiktoken's regex engine calls whitespace.
    probe = tiktoken.Encoding(
        "whitespace-probe",
        pat_str=r"\s",
        mergeable_ranks={bytes([byte]): byte for byte in range(256)},
        special_tokens={},
    )
    every_char = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    whitespace = set(probe.decode(probe.encode_ordinary(every_char)))
    assert whitespace == set(tokens._HORIZONTAL_WHITESPACE) | {"\r", "\n"}


SPLIT_ALPHABET = [" ", " ", "\t", "\n", "\r", "\u3000", "\xa0", "\x85", "\u2028"]
SPLIT_ALPHABET += ["a", "Z", "s", "'", "1", "!", "中", "é", "\x1c", "😀"]


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=st.sampled_from(SPLIT_ALPHABET), max_size=60))
def test_encoding_runs_apart_changes_nothing(text: str) -> None:
    # With runs of 2 characters encoded apart, the cutting proof is exercised on every
    # example; the result must be tiktoken's plain encoding.
    expected = tokens._VOCABULARY.encoding().encode_ordinary(text)
    assert tokens._encode_ordinary(text, 2) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_encode_decode_round_trip(text: str) -> None:
    ids = encode(text)
    assert decode(ids) == unicodedata.normalize("NFC", text)
    assert count_tokens(text) == len(ids)


# Prompts ---------------------------------------------------------------------------------


def test_plain_prompt_is_exact() -> None:
    count = message_token_count([HELPFUL, WHO])
    assert count.tokens == 22
    assert count.exact
    assert count.notes == ()


def test_chatml_rule_term_by_term() -> None:
    content = "多轮对话 with <|im_end|> typed by a user"
    expected = (
        1
        + count_tokens("user\n" + content)
        + 1
        + count_tokens("\n")
        + 1
        + count_tokens("assistant\n")
    )
    assert count_message_tokens([{"role": "user", "content": content}]) == expected


def test_empty_and_null_content() -> None:
    empty = 1 + count_tokens("user\n") + 1 + 1 + 1 + count_tokens("assistant\n")
    assert count_message_tokens([{"role": "user", "content": ""}]) == empty == 8
    assert count_message_tokens([{"role": "user", "content": None}]) == empty
    assert count_message_tokens([{"role": "user"}]) == empty
    assert count_message_tokens([]) == 3


def test_special_token_strings_in_messages_are_text() -> None:
    plain = count_message_tokens([{"role": "user", "content": "x"}])
    for text in SPECIAL_TOKENS:
        counted = count_message_tokens([{"role": "user", "content": f"x{text}"}])
        assert counted == plain - count_tokens("user\nx") + count_tokens(f"user\nx{text}")
        assert counted > plain + 1


def test_text_parts_count_as_the_string() -> None:
    as_parts: list[Message] = [
        HELPFUL,
        {"role": "user", "content": [{"type": "text", "text": "你是谁？"}]},
    ]
    count = message_token_count(as_parts)
    assert (count.tokens, count.exact) == (22, True)
    dashscope_parts: list[Message] = [HELPFUL, {"role": "user", "content": [{"text": "你是谁？"}]}]
    assert count_message_tokens(dashscope_parts) == 22


def test_several_text_parts_are_joined_and_estimated() -> None:
    parts = [{"type": "text", "text": "你是"}, {"type": "text", "text": "谁？"}]
    count = message_token_count([HELPFUL, {"role": "user", "content": parts}])
    assert count.tokens == 22
    assert (count.exact, count.estimated_parts, count.uncounted_parts) == (False, 1, 0)
    assert "1 message(s) with several text parts" in count.notes[0]


def test_media_parts_are_reported_not_guessed() -> None:
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": "你是谁？"},
        {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}},
        {"image": "https://example.com/b.png"},
    ]
    count = message_token_count([HELPFUL, {"role": "user", "content": content}])
    assert count.tokens == 22
    assert count.uncounted_parts == 3
    assert not count.exact
    assert "3 image/audio/video part(s) not counted" in count.notes[0]
    assert "lower bound" in count.notes[0]


def test_other_fields_are_not_counted() -> None:
    reply = {"role": "assistant", "content": "我是通义千问。"}
    with_extras = dict(reply, reasoning_content="用户问我是谁。" * 20, name="qwen")
    assert count_message_tokens([WHO, with_extras]) == count_message_tokens([WHO, reply])


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查询天气",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tools_render_as_the_qwen3_template() -> None:
    messages: list[Message] = [
        HELPFUL,
        {"role": "user", "content": "杭州和北京天气怎么样？"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "杭州"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "北京"}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "晴，25度"},
        {"role": "tool", "tool_call_id": "call_2", "content": "多云，18度"},
    ]
    rendered = (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "查询天气", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n'
        "</tools>\n\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n杭州和北京天气怎么样？<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "杭州"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n晴，25度\n</tool_response>\n"
        "<tool_response>\n多云，18度\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    expected = len(tokens._VOCABULARY.encoding().encode(rendered, allowed_special="all"))
    count = message_token_count(messages, tools=[WEATHER_TOOL])
    assert count.tokens == expected
    assert (count.estimated_parts, count.uncounted_parts, count.exact) == (5, 0, False)
    assert count.notes == (
        "estimated as the open-weights Qwen3 chat template renders them, since DashScope "
        "does not document its rendering: 1 tool schema(s), 2 assistant tool call(s), "
        "2 tool result(s)",
    )


def test_tools_without_a_system_message_open_their_own() -> None:
    with_system = message_token_count([HELPFUL, WHO], tools=[WEATHER_TOOL]).tokens
    without = message_token_count([WHO], tools=[WEATHER_TOOL]).tokens
    assert with_system - without == count_tokens("You are a helpful assistant.\n\n")
    assert message_token_count([WHO], tools=[]).tokens == count_message_tokens([WHO])


def test_partial_prefix_has_no_end_and_no_generation_prompt() -> None:
    prefix = {"role": "assistant", "content": "我是", "partial": True}
    count = message_token_count([WHO, prefix])
    user_turn = 1 + count_tokens("user\n你是谁？") + 1 + count_tokens("\n")
    assert count.tokens == user_turn + 1 + count_tokens("assistant\n我是")
    assert count.estimated_parts == 1
    assert "1 partial assistant prefix" in count.notes[0]
    # Only a last message can be a prefix; an earlier one is an ordinary message.
    reply = {"role": "assistant", "content": "我是"}
    assert message_token_count([WHO, prefix, WHO]) == message_token_count([WHO, reply, WHO])


def test_model_must_be_a_qwen_model() -> None:
    for model in ("qwen-max", "qwq-plus", "Qwen/Qwen3-8B", "qvq-max"):
        assert count_message_tokens([HELPFUL, WHO], model=model) == 22
    with pytest.raises(ConfigurationError, match="'deepseek-v3' is not a Qwen model"):
        count_message_tokens([WHO], model="deepseek-v3")


@pytest.mark.parametrize(
    ("messages", "tools", "message"),
    [
        ("hello", None, "messages must be a list"),
        ([WHO, "hi"], None, r"messages\[1\] must be an object"),
        ([{"content": "hi"}], None, r"messages\[0\] needs a non-empty string 'role'"),
        ([{"role": "user", "content": 3}], None, r"messages\[0\].content must be a string"),
        ([{"role": "user", "content": ["x"]}], None, r"messages\[0\].content\[0\] must be"),
        ([{"role": "user", "content": [{"type": "text"}]}], None, r"\.text must be a string"),
        ([{"role": "assistant", "tool_calls": "x"}], None, r"tool_calls must be a list"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": 1}}]}], None, "name"),
        ([WHO], {"type": "function"}, "tools must be a list"),
        ([WHO], [{"f": {1, 2}}], r"tools\[0\] is not JSON-serializable"),
    ],
)
def test_malformed_prompts_are_named(messages: Any, tools: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        message_token_count(messages, tools)
