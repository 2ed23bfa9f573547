"""Qwen BPE token counts of texts, and of chat prompts as DashScope bills them.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

The vocabulary ships inside the package (``data/qwen.tiktoken.gz``, Apache-2.0, see
``data/NOTICE``) and is loaded on first use, once per process, under a lock: counting works
offline and nothing is ever downloaded. Text is NFC-normalized, split by the Qwen
pre-tokenizer pattern and byte-pair encoded by tiktoken, as the server does.

A prompt is counted by the ChatML rule DashScope bills: every message
``<|im_start|>{role}\\n{content}<|im_end|>\\n``, then ``<|im_start|>assistant\\n``, no
injected system prompt. Message text is always ordinary text: a ``<|im_end|>`` typed by a
user is counted as the characters it is, never as the special token.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import json
import re
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from qwen_sse.errors import ConfigurationError

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "PRETOKENIZER_PATTERN",
    "SPECIAL_TOKENS",
    "PromptTokenCount",
    "count_message_tokens",
    "count_tokens",
    "decode",
    "encode",
    "message_token_count",
    "token_bytes",
]

PRETOKENIZER_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""The Qwen pre-tokenizer: BPE runs inside each piece this pattern matches, never across."""

SPECIAL_TOKENS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        # Added tokens of the Qwen2.5/Qwen3 tokenizers (one token each), used by the
        # chat template's tool rendering and by Qwen3's reasoning markers.
        "<tool_call>": 151657,
        "</tool_call>": 151658,
        "<tool_response>": 151665,
        "</tool_response>": 151666,
        "<think>": 151667,
        "</think>": 151668,
    }
)
"""Special tokens and their ids; they only ever come from the prompt template."""

_VOCABULARY_RESOURCE: Final = "data/qwen.tiktoken.gz"

# Every character of the Unicode White_Space property (what `\s` matches in tiktoken's
# regex engine) except CR and LF, which the pattern treats apart. tests/test_tokens.py
# checks this set against tiktoken's own `\s`.
_HORIZONTAL_WHITESPACE: Final = (
    "\t\x0b\x0c\x20\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# tiktoken's regex engine (fancy-regex) keeps one backtracking entry per character while
# it tries `\s+(?!\S)` and panics with StackOverflow near 10**6 entries (measured: a run
# of 999,999 spaces with tiktoken 0.14). Runs this long or longer are encoded apart, far
# below that limit; shorter runs, nearly all of them in real text, take the fast path.
_LONG_RUN_CHARS: Final = 65_536

_QWEN_MODEL_PREFIXES: Final = ("qwen", "qwq", "qvq")

_TOOLS_PREAMBLE: Final = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_POSTAMBLE: Final = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
_SPECIAL_TOKEN_SPLIT: Final = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")
_SPECIAL_TOKEN_IDS: Final = frozenset(SPECIAL_TOKENS.values())
_BPE_RANKS: Final = 151_643


class PromptTokenCount(msgspec.Struct, frozen=True, gc=False):
    """The size of a prompt in tokens, and how far that size is known.

    ``tokens`` counts everything that can be counted offline. ``uncounted_parts`` is the
    number of image, audio and video parts, whose token cost depends on the media and the
    server: when it is not 0, ``tokens`` is a lower bound. ``estimated_parts`` is the
    number of parts whose rendering DashScope does not document (tool schemas, tool calls,
    tool results, several text parts in one message, a partial assistant prefix); they
    are counted as the open-weights Qwen3 chat template renders them. ``notes`` says, one
    line per kind, what was not counted or only estimated.
    """

    tokens: int
    uncounted_parts: int = 0
    estimated_parts: int = 0
    notes: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        """True when ``tokens`` is the billed prompt size, with nothing missing or estimated."""
        return not self.uncounted_parts and not self.estimated_parts


def count_tokens(text: str) -> int:
    """Number of Qwen tokens in ``text`` as ordinary text (NFC-normalized first).

    This is also the completion token count of a reply whose text is ``text``. Special
    token strings in ``text`` count as the characters they are.
    """
    return len(encode(text))


def encode(text: str) -> list[int]:
    """Token ids of ``text`` as ordinary text, NFC-normalized first.

    Special token strings (``<|im_end|>``, ``<think>``...) are encoded as plain characters,
    never as special tokens. Texts of any length work, including megabytes of whitespace.
    """
    return _encode_ordinary(unicodedata.normalize("NFC", text))


def decode(ids: Sequence[int]) -> str:
    """The text of token ids (special tokens as their strings).

    A byte sequence that is not valid UTF-8, as a slice of ids cut inside a character
    gives, decodes to U+FFFD. An id outside the vocabulary raises ConfigurationError.
    """
    try:
        return _VOCABULARY.encoding().decode(ids)
    except (KeyError, OverflowError):
        raise _unknown_id(ids) from None


def token_bytes(ids: Sequence[int]) -> list[bytes]:
    """The bytes of each token id, in order (special tokens as their strings' bytes).

    A token may hold part of a character's UTF-8 sequence (a rare CJK character or an
    emoji split across two tokens): ``b"".join(token_bytes(ids))`` is always the text's
    UTF-8, while a single token's bytes need not decode. An id outside the vocabulary
    raises ConfigurationError.
    """
    try:
        return _VOCABULARY.encoding().decode_tokens_bytes(ids)
    except (KeyError, OverflowError):
        raise _unknown_id(ids) from None


def _unknown_id(ids: Sequence[int]) -> ConfigurationError:
    bad = next(i for i in ids if not (0 <= i < _BPE_RANKS or i in _SPECIAL_TOKEN_IDS))
    return ConfigurationError(f"token id {bad} is not in the Qwen vocabulary")


def count_message_tokens(messages: Sequence[Mapping[str, Any]], model: str | None = None) -> int:
    """The prompt size DashScope bills for ``messages`` (the ChatML rule; see the module).

    ``model``, when given, must be a Qwen model (``qwen*``, ``qwq*``, ``qvq*``, any case,
    e.g. ``Qwen/Qwen3-8B``): other models count with other vocabularies, so a Qwen count
    would be wrong, and ConfigurationError says so rather than guess. All Qwen models
    share this vocabulary and template.

    Image, audio and video parts are not counted, and tool calls and tool results are
    estimated: use :func:`message_token_count` to learn whether the number is exact.
    """
    if model is not None and not model.lower().startswith(_QWEN_MODEL_PREFIXES):
        raise ConfigurationError(
            f"model {model!r} is not a Qwen model; its tokens cannot be counted with the "
            "Qwen vocabulary"
        )
    return message_token_count(messages).tokens


def message_token_count(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
) -> PromptTokenCount:
    """The prompt size of a chat request, with what is exact and what is not.

    ``messages`` are OpenAI-shaped dicts: ``role`` (a string) and ``content`` (a string,
    None, or a list of parts such as ``{"type": "text", "text": ...}`` and
    ``{"type": "image_url", ...}``; DashScope's ``{"text": ...}`` parts count as text),
    plus ``tool_calls`` on assistant messages and ``"partial": True`` on a final
    assistant prefix. Other fields (``name``, ``reasoning_content``...) are not counted.

    Plain messages follow the documented ChatML rule exactly. Several text parts are
    joined without a separator. ``tools`` (the request's function schemas), assistant
    tool calls, tool results and a partial prefix are rendered as the open-weights Qwen3
    chat template does: the tools block as the first system message (merged with a
    leading system message), consecutive tool results as one user turn in
    ``<tool_response>`` tags. These count as estimates in the result.

    Raises ConfigurationError, naming the message, when a message is malformed.
    """
    if not _is_list(messages):
        raise ConfigurationError("messages must be a list of message objects")
    if tools is not None and not (_is_list(tools) and all(isinstance(t, Mapping) for t in tools)):
        raise ConfigurationError("tools must be a list of tool objects")
    parsed = [_parse_message(index, message) for index, message in enumerate(messages)]
    prompt = _PromptTokens()
    first = 0
    if tools:
        prompt.template("<|im_start|>system\n")
        if parsed and parsed[0].role == "system":
            prompt.text(parsed[0].text)
            prompt.template("\n\n")
            first = 1
        prompt.template(_TOOLS_PREAMBLE)
        for index, tool in enumerate(tools):
            prompt.template("\n")
            prompt.text(_to_json(tool, f"tools[{index}]"))
        prompt.template(_TOOLS_POSTAMBLE)
    last = len(parsed) - 1
    # Partial mode continues the last message, so it stays open and nothing follows it.
    partial = bool(parsed) and parsed[last].partial
    for index in range(first, len(parsed)):
        message = parsed[index]
        if message.role == "tool":
            # Consecutive tool results share one user turn.
            if index == 0 or parsed[index - 1].role != "tool":
                prompt.template("<|im_start|>user")
            prompt.template("\n<tool_response>\n")
            prompt.text(message.text)
            prompt.template("\n</tool_response>")
            if index == last or parsed[index + 1].role != "tool":
                prompt.template("<|im_end|>\n")
            continue
        prompt.template("<|im_start|>")
        prompt.text(f"{message.role}\n{message.text}")
        for number, (name, arguments) in enumerate(message.tool_calls):
            if number or message.text:
                prompt.template("\n")
            prompt.template('<tool_call>\n{"name": "')
            prompt.text(name)
            prompt.template('", "arguments": ')
            prompt.text(arguments)
            prompt.template("}\n</tool_call>")
        if not (partial and index == last):
            prompt.template("<|im_end|>\n")
    if not partial:
        prompt.template("<|im_start|>assistant\n")
    return _with_notes(prompt.total(), parsed, len(tools or ()), partial)


class _Message(NamedTuple):
    role: str
    text: str
    text_parts: int
    uncounted_parts: int
    tool_calls: tuple[tuple[str, str], ...]
    partial: bool


def _parse_message(index: int, message: Any) -> _Message:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise ConfigurationError(f"{where} must be an object, not {type(message).__name__}")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise ConfigurationError(f"{where} needs a non-empty string 'role'")
    text, text_parts, uncounted_parts = _content_text(message.get("content"), where)
    calls = message.get("tool_calls") or ()
    if not _is_list(calls):
        raise ConfigurationError(f"{where}.tool_calls must be a list")
    tool_calls = tuple(_tool_call(call, f"{where}.tool_calls[{n}]") for n, call in enumerate(calls))
    partial = role == "assistant" and message.get("partial") is True  # honoured when last
    return _Message(role, text, text_parts, uncounted_parts, tool_calls, partial)


def _content_text(content: Any, where: str) -> tuple[str, int, int]:
    """(text, number of text parts, number of uncounted media parts) of a message content."""
    if content is None:
        return "", 0, 0
    if isinstance(content, str):
        return content, 1, 0
    if not _is_list(content):
        raise ConfigurationError(
            f"{where}.content must be a string, a list of parts or null, "
            f"not {type(content).__name__}"
        )
    texts: list[str] = []
    uncounted = 0
    for number, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise ConfigurationError(f"{where}.content[{number}] must be an object")
        kind = part.get("type")
        if kind == "text" or (kind is None and "text" in part):
            text = part.get("text")
            if not isinstance(text, str):
                raise ConfigurationError(f"{where}.content[{number}].text must be a string")
            texts.append(text)
        else:
            uncounted += 1
    return "".join(texts), len(texts), uncounted


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _tool_call(call: Any, where: str) -> tuple[str, str]:
    """(name, arguments) of an assistant tool call, arguments as the template renders them."""
    if not isinstance(call, Mapping):
        raise ConfigurationError(f"{where} must be an object")
    function = call.get("function") or call
    if not isinstance(function, Mapping):
        raise ConfigurationError(f"{where}.function must be an object")
    name = function.get("name") or ""
    if not isinstance(name, str):
        raise ConfigurationError(f"{where}.function.name must be a string")
    arguments = function.get("arguments", "")
    if isinstance(arguments, str):
        return name, arguments
    return name, _to_json(arguments, f"{where}.function.arguments")


def _to_json(value: Any, where: str) -> str:
    # The template's `tojson`: json.dumps with its default separators and non-ASCII kept.
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"{where} is not JSON-serializable: {error}") from None


def _with_notes(
    tokens: int, messages: list[_Message], tool_schemas: int, partial: bool
) -> PromptTokenCount:
    estimates = {
        "tool schema(s)": tool_schemas,
        "assistant tool call(s)": sum(len(m.tool_calls) for m in messages),
        "tool result(s)": sum(m.role == "tool" for m in messages),
        "message(s) with several text parts": sum(m.text_parts > 1 for m in messages),
        "partial assistant prefix": int(partial),
    }
    uncounted = sum(m.uncounted_parts for m in messages)
    notes = []
    if uncounted:
        notes.append(
            f"{uncounted} image/audio/video part(s) not counted: their cost cannot be known "
            "offline, so tokens is a lower bound"
        )
    if any(estimates.values()):
        listed = ", ".join(f"{number} {what}" for what, number in estimates.items() if number)
        notes.append(
            f"estimated as the open-weights Qwen3 chat template renders them, since DashScope "
            f"does not document its rendering: {listed}"
        )
    return PromptTokenCount(
        tokens=tokens,
        uncounted_parts=uncounted,
        estimated_parts=sum(estimates.values()),
        notes=tuple(notes),
    )


class _PromptTokens:
    """Counts a prompt rendered in order: template text may hold special tokens, message
    text never does."""

    def __init__(self) -> None:
        self._tokens = 0
        self._text: list[str] = []

    def template(self, literal: str) -> None:
        for index, part in enumerate(_SPECIAL_TOKEN_SPLIT.split(literal)):
            if index % 2:
                self._end_text()
                self._tokens += 1
            elif part:
                self._text.append(part)

    def text(self, text: str) -> None:
        self._text.append(text)

    def total(self) -> int:
        self._end_text()
        return self._tokens

    def _end_text(self) -> None:
        # The text between two special tokens is pre-tokenized as one string ("user\n" and
        # the message after it can share a piece), so it is counted as one.
        if self._text:
            self._tokens += count_tokens("".join(self._text))
            self._text.clear()


def _encode_ordinary(text: str, long_run_chars: int = _LONG_RUN_CHARS) -> list[int]:
    """tiktoken's ``encode_ordinary``, made safe for whitespace runs of any length.

    Each horizontal-whitespace run of at least ``long_run_chars`` characters is encoded
    on its own as the single piece the pattern makes of it, the text around it by
    tiktoken, and the result is the same as tiktoken's would be without the limit:

    Take a maximal run ``text[q:e]`` of White_Space characters other than CR and LF, with
    ``text[e]`` not whitespace at all (or the end of text), ``e - q >= 2``. At ``q``
    the pattern's alternatives fail up to ``\\s+(?!\\S)``: a letter or punctuation piece
    would need a non-space at ``q + 1``, and ``\\s*[\\r\\n]+`` a CR/LF before ``e``. That
    alternative takes the run up to ``e - 1`` (up to ``e`` at the end of text): one piece,
    after which matching resumes at ``e - 1``.

    Cutting a text at a match boundary ``p`` leaves the matches on both sides unchanged
    when ``text[p]`` is whitespace or ``text[p - 1]`` is not. The pattern has no
    lookbehind or anchor, so matches after ``p`` read only text after ``p``. A match
    before ``p`` ends by ``p``, and the alternatives that beat it failed in the whole text
    (or they would have been the match), so they fail in the prefix too, unless through
    the one lookahead, ``(?!\\S)``, at ``p``: it sees whitespace in the whole text and the
    end of text in the prefix (both "not \\S"), and is never reached when ``text[p - 1]``
    is not whitespace (it follows ``\\s+``). ``q`` is a boundary: the match holding
    ``text[q - 1]`` is a letter, digit or punctuation piece, none of which takes
    horizontal whitespace after it, or ``\\s*[\\r\\n]+``, tried before ``\\s+`` and ending
    at the last CR/LF. So is ``e - 1``, as shown above. Both are followed by whitespace:
    both cuts are safe.
    """
    encoding = _VOCABULARY.encoding()
    if not _may_hold_run(text, long_run_chars):
        return encoding.encode_ordinary(text)
    ids: list[int] = []
    start = 0
    for run in _long_run_regex(long_run_chars).finditer(text):
        piece_end = run.end() if run.end() == len(text) else run.end() - 1
        ids += encoding.encode_ordinary(text[start : run.start()])
        ids += _VOCABULARY.whole_piece_encoding().encode_ordinary(text[run.start() : piece_end])
        start = piece_end
    ids += encoding.encode_ordinary(text[start:])
    return ids


def _may_hold_run(text: str, run_chars: int) -> bool:
    """False only when ``text`` holds no whitespace run of ``run_chars`` (>= 2) characters."""
    # A run of 2 * block characters covers a whole aligned block, and str.isspace() accepts
    # every White_Space character: scanning blocks is far cheaper than the regex.
    block = run_chars // 2
    return any(text[i : i + block].isspace() for i in range(0, len(text) - block + 1, block))


@functools.cache
def _long_run_regex(run_chars: int) -> re.Pattern[str]:
    space = f"[{_HORIZONTAL_WHITESPACE}]"
    # Maximal runs only (the lookbehind, and the possessive repeat that never gives back),
    # and not those followed by CR/LF: `\s*[\r\n]+` takes those whole, safely.
    return re.compile(f"(?<!{space}){space}{{{run_chars},}}+(?![\\r\\n])")


def _read_ranks() -> dict[bytes, int]:
    """The BPE ranks shipped in the package: token bytes -> token id."""
    compressed = resources.files("qwen_sse").joinpath(_VOCABULARY_RESOURCE).read_bytes()
    # One "<base64 token> <rank>" pair per line. Splitting the whole file at once and
    # decoding with binascii loads it in half the time of a line-by-line parse.
    fields = gzip.decompress(compressed).split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


class _Vocabulary:
    """The shipped vocabulary, loaded on first use, once per process, under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ranks: dict[bytes, int] | None = None
        self._encoding: tiktoken.Encoding | None = None
        self._whole_piece: tiktoken.Encoding | None = None

    def encoding(self) -> tiktoken.Encoding:
        """The Qwen encoding: pre-tokenizer pattern, BPE ranks, special tokens."""
        if self._encoding is None:
            with self._lock:
                if self._encoding is None:
                    self._encoding = self._build("qwen", PRETOKENIZER_PATTERN)
        return self._encoding

    def whole_piece_encoding(self) -> tiktoken.Encoding:
        """An encoding that byte-pair encodes its whole input as one piece."""
        if self._whole_piece is None:
            with self._lock:
                if self._whole_piece is None:
                    self._whole_piece = self._build("qwen-whole-piece", r"(?s:.+)")
        return self._whole_piece

    def _build(self, name: str, pattern: str) -> tiktoken.Encoding:
        # Imported here so that importing qwen_sse does not pay for tiktoken (~40 ms)
        # in programs that never count.
        import tiktoken  # noqa: PLC0415

        if self._ranks is None:
            self._ranks = _read_ranks()
        return tiktoken.Encoding(
            name,
            pat_str=pattern,
            mergeable_ranks=self._ranks,
            special_tokens=dict(SPECIAL_TOKENS),
        )


_VOCABULARY: Final = _Vocabulary()
