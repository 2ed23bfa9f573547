"""ShareGPT datasets (the JSON that vLLM's ``--dataset-name sharegpt`` reads) as workloads:
first human turns as single prompts, or whole conversations turn by turn.

Edge layer (bench). A dataset is a JSON list of entries ``{"id": ..., "conversations":
[{"from": "human" | "gpt", "value": "..."}, ...]}``; other fields are ignored. As vLLM
does, entries with fewer than two turns are left out and the rest are shuffled with the
seed (``random.Random(seed).shuffle``, the shuffle vLLM's seeded ``random.shuffle`` makes),
then taken in that order until the sample is full, counting tokens only of the entries
taken. Every entry left out is counted by reason.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from qwen_sse.bench.tokenizer import TokenCounter, counter
from qwen_sse.bench.workload import FileWorkload, PromptEntry, Turn
from qwen_sse.errors import ConfigurationError

__all__ = ["MAX_PROMPT_TOKENS", "MAX_TOTAL_TOKENS", "MIN_TOKENS", "read_sharegpt"]

MIN_TOKENS = 4
"""vLLM's filter: a first turn whose prompt (or recorded answer) is shorter is left out."""
MAX_PROMPT_TOKENS = 1024
"""vLLM's filter: a first turn whose prompt is longer is left out."""
MAX_TOTAL_TOKENS = 2048
"""vLLM's filter: a first turn whose prompt and answer together are longer is left out."""

_SPEAKERS = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}

_TOO_FEW = "fewer than 2 turns"
_UNANSWERED = "no answer to the first human turn"
_SPEAKER = "a speaker other than human, gpt or system"


class _Message(msgspec.Struct, frozen=True):
    speaker: str = msgspec.field(name="from")
    value: str


class _Entry(msgspec.Struct, frozen=True):
    conversations: list[_Message] = []


_decoder = msgspec.json.Decoder(list[_Entry])
_WHERE = re.compile(r"^(?P<what>.*?)(?: - at `\$\[(?P<entry>\d+)\](?P<rest>[^`]*)`)?$", re.DOTALL)


def read_sharegpt(
    path: str | Path,
    *,
    seed: int = 0,
    sample: int | None = None,
    output_tokens: int | None = None,
    conversations: bool = False,
    max_turns: int | None = None,
    tokenizer: str | None = None,
) -> FileWorkload:
    """The workload of a ShareGPT dataset: at most ``sample`` entries (None: all that pass).

    Single prompts (``conversations`` False): the first human turn is the prompt, the token
    length of the first gpt turn after it is ``max_tokens`` unless ``output_tokens`` is
    given; vLLM's filters leave out prompts under :data:`MIN_TOKENS` or over
    :data:`MAX_PROMPT_TOKENS` tokens, answers under :data:`MIN_TOKENS` (unless
    ``output_tokens`` is given) and pairs over :data:`MAX_TOTAL_TOKENS` (text tokens, as
    vLLM counts them; ``prompt_tokens`` is still the billed size).

    Conversations: leading system turns become a system message; the human turns that have
    a gpt answer, up to the first place where the turns stop alternating and at most
    ``max_turns`` of them, are the conversation's turns, each answer's length (at least 1)
    its ``max_tokens`` unless ``output_tokens`` is given. No length filter applies.

    Raises :class:`~qwen_sse.errors.ConfigurationError` naming the file, and the entry
    when one is malformed, or when no entry passes.
    """
    file = Path(path)
    if sample is not None and sample < 1:
        raise ConfigurationError(f"the sample must be at least 1 entry, got {sample}")
    if max_turns is not None and max_turns < 1:
        raise ConfigurationError(f"turns must be at least 1, got {max_turns}")
    if output_tokens is not None and output_tokens < 1:
        raise ConfigurationError(f"output tokens must be at least 1, got {output_tokens}")
    data = _load(file)
    count = counter(tokenizer)
    skipped: Counter[str] = Counter()
    usable = [entry for entry in data if len(entry.conversations) >= 2]
    skipped[_TOO_FEW] = len(data) - len(usable)
    random.Random(seed).shuffle(usable)
    entries: list[PromptEntry] = []
    for entry in usable:
        if sample is not None and len(entries) >= sample:
            break
        if conversations:
            made = _conversation(entry, count, output_tokens, max_turns)
        else:
            made = _first_turn(entry, count, output_tokens)
        if isinstance(made, str):
            skipped[made] += 1
        else:
            entries.append(made)
    reasons = {reason: number for reason, number in sorted(skipped.items()) if number}
    if not entries:
        why = ", ".join(f"{reason}: {number}" for reason, number in reasons.items())
        raise ConfigurationError(
            f"{file}: no usable entry among {len(data)}" + (f" ({why})" if why else "")
        )
    return FileWorkload(
        entries=entries,
        output_tokens=output_tokens,
        source="sharegpt",
        path=str(file),
        conversations=conversations,
        skipped=reasons,
        tokenizer=tokenizer,
    )


def _load(file: Path) -> list[_Entry]:
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"cannot read {file}: {error.strerror or error}") from None
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as error:
        match = _WHERE.match(str(error))
        if match is None or match["entry"] is None:
            raise ConfigurationError(
                f"{file}: not a ShareGPT dataset (a JSON list of entries): {error}"
            ) from None
        rest = match["rest"].lstrip(".")
        at = f" (at {rest})" if rest else ""
        raise ConfigurationError(f"{file}: entry {match['entry']}: {match['what']}{at}") from None
    except msgspec.DecodeError as error:
        raise ConfigurationError(f"{file}: not JSON: {error}") from None


def _roles(entry: _Entry) -> list[tuple[str, str]] | None:
    """(role, text) of each turn; None when a speaker is unknown."""
    turns = []
    for message in entry.conversations:
        role = _SPEAKERS.get(message.speaker.lower())
        if role is None:
            return None
        turns.append((role, message.value))
    return turns


def _first_turn(entry: _Entry, count: TokenCounter, output_tokens: int | None) -> PromptEntry | str:
    """The entry's first human turn as a prompt, or why it is left out."""
    turns = _roles(entry)
    if turns is None:
        return _SPEAKER
    asked = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
    if asked is None:
        return _UNANSWERED
    answer = next((text for role, text in turns[asked + 1 :] if role == "assistant"), None)
    if answer is None:
        return _UNANSWERED
    prompt = turns[asked][1]
    prompt_len = count.text(prompt)
    output_len = output_tokens if output_tokens is not None else count.text(answer)
    if prompt_len < MIN_TOKENS:
        return f"prompt under {MIN_TOKENS} tokens"
    if output_tokens is None and output_len < MIN_TOKENS:
        return f"answer under {MIN_TOKENS} tokens"
    if prompt_len > MAX_PROMPT_TOKENS:
        return f"prompt over {MAX_PROMPT_TOKENS} tokens"
    if prompt_len + output_len > MAX_TOTAL_TOKENS:
        return f"prompt and answer over {MAX_TOTAL_TOKENS} tokens"
    messages = [{"role": "user", "content": prompt}]
    return PromptEntry(
        messages=messages, max_tokens=output_len, prompt_tokens=count.prompt(messages).tokens
    )


def _conversation(
    entry: _Entry, count: TokenCounter, output_tokens: int | None, max_turns: int | None
) -> PromptEntry | str:
    """The entry's alternating human and gpt turns as a conversation, or why it is left out."""
    turns = _roles(entry)
    if turns is None:
        return _SPEAKER
    system: list[dict[str, Any]] = []
    while turns and turns[0][0] == "system":
        system.append({"role": "system", "content": turns.pop(0)[1]})
    # A conversation that opens with an answer (some ShareGPT entries do) starts at the
    # first question.
    while turns and turns[0][0] == "assistant":
        turns.pop(0)
    pairs: list[tuple[str, str]] = []
    for asked, answered in zip(turns[::2], turns[1::2], strict=False):
        if asked[0] != "user" or answered[0] != "assistant":
            break
        pairs.append((asked[1], answered[1]))
    if max_turns is not None:
        pairs = pairs[:max_turns]
    if not pairs:
        return _UNANSWERED

    def asked_tokens(answer: str) -> int:
        return output_tokens if output_tokens is not None else max(1, count.text(answer))

    (question, answer), *later = pairs
    messages = [*system, {"role": "user", "content": question}]
    turns_after = []
    for question, answer_after in later:
        message = {"role": "user", "content": question}
        turns_after.append(
            Turn(
                message=message,
                max_tokens=asked_tokens(answer_after),
                tokens=count.message_tokens(message),
            )
        )
    return PromptEntry(
        messages=messages,
        max_tokens=asked_tokens(answer),
        prompt_tokens=count.prompt(messages).tokens,
        later_turns=turns_after,
    )
