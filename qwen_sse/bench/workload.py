"""What a load test sends: synthetic prompts of target sizes, or prompts read from a file;
single requests or conversations.

Edge layer (bench). It counts and sizes prompts with :mod:`qwen_sse.bench.tokenizer` (the
Qwen tokenizer unless a workload names a ``tokenizer.json``) and must not import the
client: a workload is plain data that any worker process can rebuild request by request,
deterministically from the request's index. A conversation is one unit of work: its first
request carries the later user turns, and :func:`follow_up` builds each next request from
the server's actual answer.
"""

from __future__ import annotations

import binascii
import functools
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from qwen_sse.bench.tokenizer import TokenCounter, counter
from qwen_sse.errors import ConfigurationError

__all__ = [
    "FileWorkload",
    "PromptEntry",
    "RequestSpec",
    "Sizes",
    "SyntheticWorkload",
    "Turn",
    "Workload",
    "follow_up",
    "read_prompts",
]

_FIX_ROUNDS = 8

Sizes = int | list[int]
"""Token sizes: one size, or a list that each request draws from (uniformly, seeded)."""


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """A later turn of a conversation: the user's ``message``, the ``max_tokens`` of the
    answer to it (None sends none) and ``tokens``, what the message adds to the prompt."""

    message: dict[str, Any]
    max_tokens: int | None
    tokens: int


class RequestSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One request of a run: its ``index``, the ``messages``, ``max_tokens`` to send (None
    sends none) and ``prompt_tokens``, the prompt's size counted locally (as DashScope bills
    it, with the Qwen tokenizer); ``uncounted_parts`` are its image, audio and video parts,
    which no local count includes.

    A request of a conversation has its ``turn`` (1 for the first) of ``turns``; the first
    carries the ``later_turns``, which the runner sends one by one after the server's
    answers (:func:`follow_up`). Outside a conversation ``turn`` and ``turns`` are None.
    """

    index: int
    messages: list[dict[str, Any]]
    max_tokens: int | None
    prompt_tokens: int
    uncounted_parts: int = 0
    turn: int | None = None
    turns: int | None = None
    later_turns: list[Turn] = []


def follow_up(spec: RequestSpec, answer: str, *, tokenizer: str | None = None) -> RequestSpec:
    """The next request of ``spec``'s conversation: ``spec``'s messages, the server's
    ``answer`` to them as an assistant message, then the next user turn. Its prompt size
    adds the answer's and the turn's tokens to ``spec``'s (counted with ``tokenizer``)."""
    if not spec.later_turns or spec.turn is None:
        raise ValueError(f"request {spec.index} has no later turn")
    turn, *rest = spec.later_turns
    reply = {"role": "assistant", "content": answer}
    return RequestSpec(
        index=spec.index,
        messages=[*spec.messages, reply, turn.message],
        max_tokens=turn.max_tokens,
        prompt_tokens=spec.prompt_tokens + counter(tokenizer).message_tokens(reply) + turn.tokens,
        uncounted_parts=spec.uncounted_parts,
        turn=spec.turn + 1,
        turns=spec.turns,
        later_turns=rest,
    )


class SyntheticWorkload(msgspec.Struct, frozen=True, kw_only=True, tag="synthetic"):
    """Prompts of exactly ``input_tokens`` billed tokens (the chat template included),
    asking for ``output_tokens`` (sent as ``max_tokens``; None sends none).

    * Sizes: one number, or a list each request draws from; with ``range_ratio`` R, each
      request's sizes are drawn uniformly from ``[int(N * (1 - R)), int(N * (1 + R))]``
      around the number N given (vLLM's ``--random-range-ratio``).
    * ``prefix_tokens`` K: every prompt opens with a system message of K tokens that is the
      same for the requests of one of ``prefix_groups`` groups (request ``i`` is in group
      ``i mod prefix_groups``), then a user message of its own; ``input_tokens`` still
      sizes the whole prompt.
    * ``turns`` T above 1: each request opens a conversation of T turns; every later user
      message is one that alone would make an ``input_tokens`` prompt, and the answers
      are the server's.
    * ``tokenizer``: a ``tokenizer.json`` to count with instead of the Qwen tokenizer
      (:mod:`qwen_sse.bench.tokenizer`); its sizes count no chat template.

    Everything is drawn from ``seed`` and the request's index, so every request gets other
    words (a server's prefix cache cannot flatter later requests beyond the shared
    prefix) and any process rebuilds the same request.
    """

    input_tokens: Sizes
    output_tokens: Sizes | None
    seed: int = 0
    range_ratio: float = 0.0
    prefix_tokens: int = 0
    prefix_groups: int = 1
    turns: int = 1
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.range_ratio < 1:
            raise ConfigurationError(f"range ratio must lie in [0, 1), got {self.range_ratio:g}")
        for name, sizes in (("input", self.input_tokens), ("output", self.output_tokens)):
            if isinstance(sizes, list) and not sizes:
                raise ConfigurationError(f"{name} tokens: the list of sizes is empty")
            if isinstance(sizes, list) and self.range_ratio:
                raise ConfigurationError(
                    f"{name} tokens: a range ratio spreads one size; give a number, not a list"
                )
        if self.prefix_tokens < 0:
            raise ConfigurationError(
                f"prefix tokens must not be negative, got {self.prefix_tokens}"
            )
        if self.prefix_groups < 1:
            raise ConfigurationError(f"prefix groups must be at least 1, got {self.prefix_groups}")
        if self.turns < 1:
            raise ConfigurationError(f"turns must be at least 1, got {self.turns}")
        minimum = self._frame_tokens() + 1
        low, _ = _bounds(self.input_tokens, self.range_ratio)
        if low < minimum:
            frame = (
                f"the chat template and the {self.prefix_tokens}-token prefix take {minimum - 1}"
                if self.prefix_tokens
                else f"the chat template alone takes {minimum - 1}"
            )
            spread = f" (the smallest drawn is {low})" if low != self.input_tokens else ""
            raise ConfigurationError(
                f"input tokens must be at least {minimum} ({frame}), got "
                f"{self.input_tokens}{spread}"
            )
        if self.output_tokens is not None:
            low, _ = _bounds(self.output_tokens, self.range_ratio)
            if low < 1:
                spread = f" (the smallest drawn is {low})" if low != self.output_tokens else ""
                raise ConfigurationError(
                    f"output tokens must be at least 1, got {self.output_tokens}{spread}"
                )

    def _counter(self) -> TokenCounter:
        return counter(self.tokenizer)

    def _frame_tokens(self) -> int:
        """The prompt's tokens besides the user's text: template and shared prefix."""
        system = [{"role": "system", "content": ""}] if self.prefix_tokens else []
        frame = [*system, {"role": "user", "content": ""}]
        return self._counter().prompt(frame).tokens + self.prefix_tokens

    def request(self, index: int) -> RequestSpec:
        """The ``index``-th request (the same for the same seed and index, in any process)."""
        sizes = random.Random(f"{self.seed}:{index}:sizes")
        # The words' own generator is seeded as before sizes varied, so fixed-size prompts
        # stay what they were for a seed.
        words = random.Random(f"{self.seed}:{index}")
        prefix = (
            _shared_prefix(
                self.seed, index % self.prefix_groups, self.prefix_tokens, self.tokenizer
            )
            if self.prefix_tokens
            else None
        )
        target = _draw(self.input_tokens, self.range_ratio, sizes)
        max_tokens = self._draw_output(sizes)
        messages, counted = self._filled(prefix, target, words)
        if self.turns == 1:
            return RequestSpec(
                index=index, messages=messages, max_tokens=max_tokens, prompt_tokens=counted
            )
        later = []
        for _ in range(self.turns - 1):
            size = _draw(self.input_tokens, self.range_ratio, sizes)
            (message,), _ = self._filled(None, size, words)
            later.append(
                Turn(
                    message=message,
                    max_tokens=self._draw_output(sizes),
                    tokens=self._counter().message_tokens(message),
                )
            )
        return RequestSpec(
            index=index,
            messages=messages,
            max_tokens=max_tokens,
            prompt_tokens=counted,
            turn=1,
            turns=self.turns,
            later_turns=later,
        )

    def _draw_output(self, rng: random.Random) -> int | None:
        if self.output_tokens is None:
            return None
        return _draw(self.output_tokens, self.range_ratio, rng)

    def _filled(
        self, prefix: tuple[str, int] | None, target: int, rng: random.Random
    ) -> tuple[list[dict[str, Any]], int]:
        """A system message of the ``prefix`` (its text and tokens) if any, and a user
        message of words that make the prompt ``target`` tokens; the messages and their
        count (``target`` but for a tokenizer that merges words)."""
        count = self._counter()
        system = [] if prefix is None else [{"role": "system", "content": prefix[0]}]
        empty = [{**message, "content": ""} for message in system]
        frame = count.prompt([*empty, {"role": "user", "content": ""}]).tokens
        need = target - frame - (0 if prefix is None else prefix[1])
        picked = [rng.choice(count.words) for _ in range(need)]

        def prompt() -> list[dict[str, Any]]:
            return [*system, {"role": "user", "content": " ".join(picked)}]

        messages = prompt()
        counted = count.prompt(messages).tokens
        # Additivity holds by construction; these rounds only guard that invariant.
        for _ in range(_FIX_ROUNDS):
            if counted == target or len(picked) <= 1:
                break
            if counted > target:
                picked.pop()
            else:
                picked.append(rng.choice(count.words))
            messages = prompt()
            counted = count.prompt(messages).tokens
        return messages, counted

    def max_output_tokens(self) -> int | None:
        """The largest ``max_tokens`` a request may carry (None: requests carry none)."""
        if self.output_tokens is None:
            return None
        return _bounds(self.output_tokens, self.range_ratio)[1]

    def requests_per_unit(self) -> int:
        """Requests each unit of work sends (a conversation sends one per turn)."""
        return self.turns

    def summary(self) -> dict[str, Any]:
        """The workload as the run's summary shows it."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


@functools.lru_cache(maxsize=64)
def _shared_prefix(seed: int, group: int, tokens: int, tokenizer: str | None) -> tuple[str, int]:
    """The text of ``group``'s shared system prompt, ``tokens`` tokens long, and its count
    (built once per process: every request of the group sends the same)."""
    rng = random.Random(f"{seed}:prefix:{group}")
    count = counter(tokenizer)
    picked = [rng.choice(count.words) for _ in range(tokens)]
    counted = count.text(" ".join(picked))
    for _ in range(_FIX_ROUNDS):
        if counted == tokens or len(picked) <= 1:
            break
        if counted > tokens:
            picked.pop()
        else:
            picked.append(rng.choice(count.words))
        counted = count.text(" ".join(picked))
    return " ".join(picked), counted


def _bounds(sizes: Sizes, range_ratio: float) -> tuple[int, int]:
    if isinstance(sizes, list):
        return min(sizes), max(sizes)
    return int(sizes * (1 - range_ratio)), int(sizes * (1 + range_ratio))


def _draw(sizes: Sizes, range_ratio: float, rng: random.Random) -> int:
    if isinstance(sizes, list):
        return rng.choice(sizes)
    if not range_ratio:
        return sizes
    return rng.randint(*_bounds(sizes, range_ratio))


class PromptEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt of a file: its messages, its own ``max_tokens`` (or None), its size
    (``prompt_tokens``, ``uncounted_parts`` as in :class:`RequestSpec`) and, in a
    conversation, the ``later_turns``."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    prompt_tokens: int = 0
    uncounted_parts: int = 0
    later_turns: list[Turn] = []


class FileWorkload(msgspec.Struct, frozen=True, kw_only=True, tag="file"):
    """Prompts read from a file, used in turn (request ``i`` sends entry ``i mod n``).

    ``output_tokens``, when set, is the ``max_tokens`` of entries that set none.
    ``source`` names the format (``"prompts"``: a JSONL prompts file, ``"sharegpt"``: a
    ShareGPT dataset) read from ``path``; ``skipped`` counts the entries left out, by
    reason. With ``conversations``, every entry opens a conversation (turn 1 of 1 plus its
    later turns). ``tokenizer`` counted the prompts (None: the Qwen tokenizer).
    """

    entries: list[PromptEntry]
    output_tokens: int | None = None
    source: str = "prompts"
    path: str = ""
    conversations: bool = False
    skipped: dict[str, int] = {}
    tokenizer: str | None = None

    def request(self, index: int) -> RequestSpec:
        entry = self.entries[index % len(self.entries)]
        max_tokens = entry.max_tokens if entry.max_tokens is not None else self.output_tokens
        return RequestSpec(
            index=index,
            messages=entry.messages,
            max_tokens=max_tokens,
            prompt_tokens=entry.prompt_tokens,
            uncounted_parts=entry.uncounted_parts,
            turn=1 if self.conversations else None,
            turns=1 + len(entry.later_turns) if self.conversations else None,
            later_turns=entry.later_turns,
        )

    def max_output_tokens(self) -> int | None:
        """The largest ``max_tokens`` a request may carry (None: requests carry none)."""
        asked = [self.output_tokens] + [
            value
            for entry in self.entries
            for value in (entry.max_tokens, *(turn.max_tokens for turn in entry.later_turns))
        ]
        return max((value for value in asked if value is not None), default=None)

    def requests_per_unit(self) -> int | None:
        """Requests each unit of work sends (None: conversations of different lengths)."""
        turns = {1 + len(entry.later_turns) for entry in self.entries}
        return turns.pop() if len(turns) == 1 else None

    def summary(self) -> dict[str, Any]:
        """The workload as the run's summary shows it (the entries by number only)."""
        turns = sum(1 + len(entry.later_turns) for entry in self.entries)
        return {
            "type": "file",
            "source": self.source,
            "path": self.path,
            "entries": len(self.entries),
            "output_tokens": self.output_tokens,
            "conversations": self.conversations,
            "mean_turns": turns / len(self.entries),
            "skipped": dict(self.skipped),
            "uncounted_parts": sum(entry.uncounted_parts for entry in self.entries),
            "tokenizer": self.tokenizer,
        }


Workload = SyntheticWorkload | FileWorkload


def read_prompts(
    path: str | Path, *, output_tokens: int | None = None, tokenizer: str | None = None
) -> FileWorkload:
    """Read a JSONL file of prompts: one JSON object a line, blank lines skipped.

    Each object has ``"prompt"`` (a string, sent as one user message) or ``"messages"``
    (an OpenAI-style list), and optionally ``"max_tokens"`` (an integer). Message contents
    may be lists of parts, images among them (``{"type": "image_url", "image_url": {"url":
    ...}}`` with an http(s) URL or a ``data:`` URL in base64, for qwen-vl models): their
    text is counted, their media parts are counted apart as ``uncounted_parts``. Raises
    :class:`~qwen_sse.errors.ConfigurationError` naming the line of the first bad entry.
    """
    if output_tokens is not None and output_tokens < 1:
        raise ConfigurationError(f"output tokens must be at least 1, got {output_tokens}")
    entries: list[PromptEntry] = []
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except OSError as error:
        raise ConfigurationError(f"cannot read {file}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"{file} is not UTF-8 text ({error.reason} at byte {error.start}): a prompts file "
            "is JSON lines"
        ) from None
    count = counter(tokenizer)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"{where}: not JSON: {error.msg}") from None
        entries.append(_entry(item, where, count))
    if not entries:
        raise ConfigurationError(f"{file} holds no prompts")
    return FileWorkload(
        entries=entries, output_tokens=output_tokens, path=str(file), tokenizer=tokenizer
    )


def _entry(item: Any, where: str, count: TokenCounter) -> PromptEntry:
    if not isinstance(item, Mapping):
        raise ConfigurationError(f"{where}: expected a JSON object")
    if isinstance(item.get("messages"), list):
        messages = [dict(message) for message in item["messages"] if isinstance(message, Mapping)]
        if len(messages) != len(item["messages"]) or not messages:
            raise ConfigurationError(f"{where}: messages must be a non-empty list of objects")
    elif isinstance(item.get("prompt"), str):
        messages = [{"role": "user", "content": item["prompt"]}]
    else:
        raise ConfigurationError(f'{where}: expected "prompt" (a string) or "messages" (a list)')
    max_tokens = item.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise ConfigurationError(f"{where}: max_tokens must be a positive integer")
    try:
        size = count.prompt(messages)
    except ConfigurationError as error:
        raise ConfigurationError(f"{where}: {error}") from None
    _check_images(messages, where)
    return PromptEntry(
        messages=messages,
        max_tokens=max_tokens,
        prompt_tokens=size.tokens,
        uncounted_parts=size.uncounted_parts,
    )


_IMAGE_SCHEMES = ("http://", "https://")


def _check_images(messages: Sequence[Mapping[str, Any]], where: str) -> None:
    """Refuse an ``image_url`` part whose URL is neither http(s) nor base64 ``data:``."""
    for number, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for index, part in enumerate(content):
            if part.get("type") != "image_url":
                continue
            at = f"{where}: messages[{number}].content[{index}]"
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str):
                raise ConfigurationError(f'{at}: image_url needs {{"url": "..."}}')
            if url.startswith(_IMAGE_SCHEMES):
                continue
            if not url.startswith("data:"):
                raise ConfigurationError(
                    f"{at}: an image URL must be http(s) or a data: URL, got {url[:40]!r}"
                )
            header, comma, data = url.partition(",")
            if not comma or not header.endswith(";base64"):
                raise ConfigurationError(f"{at}: a data: image URL must be ;base64, encoded")
            try:
                binascii.a2b_base64(data, strict_mode=True)
            except binascii.Error as error:
                raise ConfigurationError(f"{at}: the image's base64 is broken: {error}") from None
