"""The compatible-mode framing: OpenAI Chat Completions as DashScope streams it.

Edge layer (part of :mod:`qwen_sse.emulator`). The request body *is* the answer request.
The stream reproduces protocol.md's compatible mode byte for byte where it matters to a
client: the role-only first chunk, ``usage: null`` and ``system_fingerprint: null`` in
every chunk, the chunk id ``chatcmpl-<x-request-id>``, ``reasoning_content`` deltas,
tool-call deltas with DashScope's quirks, the usage chunk (with ``stream_options.
include_usage``), ``data: [DONE]``; a request without ``"stream": true`` (or a fault's JSON
content type) gets one ``chat.completion`` body. With ``n`` (2 to 4) every choice gets its
role chunk first, then the choices' pieces come token by token side by side, each choice
ending with its finish chunk after its last piece, before the one usage chunk. HTTP errors
are ``{"error": {message, type, param, code}, "request_id"}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from qwen_sse.emulator.accounting import AnswerUsage
from qwen_sse.emulator.answers import EmulatedAnswer, Piece
from qwen_sse.emulator.faults import Events, FaultFrames, Item, paced
from qwen_sse.emulator.framing.base import Answering
from qwen_sse.emulator.rejects import Reject, json_object
from qwen_sse.protocols.compatible import COMPATIBLE, DONE_MARKER

__all__ = [
    "COMPATIBLE_FRAMING",
    "CompatibleFraming",
    "encode",
    "error_envelope",
    "tool_calls_of",
    "usage_of",
]

encode = msgspec.json.Encoder().encode
"""Compact JSON, as DashScope sends it."""


def usage_of(usage: AnswerUsage) -> dict[str, Any]:
    """The compatible-mode usage object (``prompt_tokens_details`` only when the context
    cache held some of the prompt)."""
    wire: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:
        wire["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens is not None:
        wire["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return wire


def tool_calls_of(answer: EmulatedAnswer) -> list[dict[str, Any]]:
    """The answer's tool calls as a whole message carries them."""
    return [
        {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for index, ((name, arguments), call_id) in enumerate(
            zip(answer.tool_calls, answer.tool_call_ids, strict=True)
        )
    ]


def error_envelope(reject: Reject, request_id: str) -> bytes:
    """OpenAI's error body as DashScope sends it: ``{"error": {...}, "request_id"}``."""
    body = {
        "error": {
            "message": reject.message,
            "type": reject.type,
            "param": None,
            "code": reject.code,
        },
        "request_id": request_id,
    }
    return encode(body)


class CompatibleFrames:
    """Builds one response's SSE events from pre-encoded parts: a few byte joins each.
    ``choice`` is the index of the choice a frame belongs to (0 unless ``n > 1``)."""

    __slots__ = ("_chunk_id", "_created", "_end", "_indices", "_model", "_suffix")

    huge_after = 1  # the role chunk

    def __init__(
        self, chunk_id: str, model: str, created: int, line_ending: str, *, choices: int = 1
    ) -> None:
        self._chunk_id = chunk_id
        self._model = model
        self._created = created
        self._end = (line_ending * 2).encode()
        self._indices = tuple(b'"index":' + str(index).encode() for index in range(choices))
        self._suffix = b"".join(
            (
                b',"object":"chat.completion.chunk","usage":null,"created":',
                str(created).encode(),
                b',"system_fingerprint":null,"model":',
                encode(model),
                b',"id":',
                encode(chunk_id),
                b"}",
            )
        )

    def data(self, payload: bytes) -> bytes:
        return b"".join((b"data: ", payload, self._end))

    def choice(self, choice: bytes) -> bytes:
        return b"".join((b'data: {"choices":[', choice, b"]", self._suffix, self._end))

    def choice_dict(self, choice: dict[str, Any]) -> bytes:
        return self.choice(encode(choice))

    def role(self, choice: int = 0) -> bytes:
        return self.choice(
            b'{"delta":{"content":"","role":"assistant"},'
            + self._indices[choice]
            + b',"logprobs":null,"finish_reason":null}'
        )

    def content(self, text: str, *, first: bool, after_reasoning: bool, choice: int = 0) -> bytes:
        # Key order varies between real chunks; the first text chunk leads with finish_reason.
        delta = b"".join(
            (
                b'{"content":',
                encode(text),
                b',"reasoning_content":null}' if after_reasoning else b"}",
            )
        )
        index = self._indices[choice]
        if first:
            return self.choice(
                b"".join(
                    (b'{"finish_reason":null,"delta":', delta, b",", index, b',"logprobs":null}')
                )
            )
        return self.choice(
            b"".join((b'{"delta":', delta, b',"finish_reason":null,', index, b',"logprobs":null}'))
        )

    def reasoning(self, text: str, choice: int = 0) -> bytes:
        return self.choice(
            b"".join(
                (
                    b'{"delta":{"content":null,"reasoning_content":',
                    encode(text),
                    b'},"finish_reason":null,',
                    self._indices[choice],
                    b',"logprobs":null}',
                )
            )
        )

    def tool_call(self, piece: Piece, call_id: str, name: str, choice: int = 0) -> bytes:
        if call_id:
            # The first delta of a call carries its id and name, and the first fragment.
            call = {
                "index": piece.call_index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": piece.text},
            }
            return self.choice_dict(
                {
                    "delta": {"content": None, "tool_calls": [call]},
                    "index": choice,
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        # Continuations repeat an empty id and omit the finish_reason and logprobs keys.
        call = {
            "index": piece.call_index,
            "id": "",
            "type": "function",
            "function": {"arguments": piece.text},
        }
        return self.choice_dict({"delta": {"tool_calls": [call]}, "index": choice})

    def empty_function(self, index: int, choice: int = 0) -> bytes:
        call = {"function": {}, "index": index, "id": "", "type": "function"}
        return self.choice_dict(
            {
                "delta": {"tool_calls": [call]},
                "index": choice,
                "logprobs": None,
                "finish_reason": None,
            }
        )

    def finish(self, reason: str, choice: int = 0) -> bytes:
        return self.choice(
            b"".join(
                (
                    b'{"finish_reason":',
                    encode(reason),
                    b',"delta":{"content":""},',
                    self._indices[choice],
                    b',"logprobs":null}',
                )
            )
        )

    def usage(self, usage: dict[str, Any]) -> bytes:
        chunk = {
            "choices": [],
            "object": "chat.completion.chunk",
            "usage": usage,
            "created": self._created,
            "system_fingerprint": None,
            "model": self._model,
            "id": self._chunk_id,
        }
        return self.data(encode(chunk))

    def huge(self, size: int) -> bytes:
        head = b'{"choices":[{"delta":{"content":"'
        tail = b'"},"finish_reason":null,"index":0,"logprobs":null}]' + self._suffix
        padding = b"x" * max(0, size - len(head) - len(tail))
        return self.data(b"".join((head, padding, tail)))

    def malformed(self) -> bytes:
        return self.data(b'{"choices":[{"delta":{"content":"broken')

    def error(self, code: str, message: str) -> bytes:
        frame = {
            "error": {"message": message, "type": code, "code": code},
            "id": self._chunk_id,
        }
        return self.data(encode(frame))

    def done(self) -> bytes:
        return self.data(DONE_MARKER.encode())

    def numbered(self, frame: bytes, number: int) -> bytes:
        # Compatible-mode events carry no id.
        return frame


class _Choice:
    """One choice as it streams: what its next frame needs to know."""

    __slots__ = ("after_reasoning", "announced", "answer", "first_content", "index", "left")

    def __init__(self, index: int, answer: EmulatedAnswer) -> None:
        self.index = index
        self.answer = answer
        self.left = len(answer.pieces)
        self.after_reasoning = False
        self.first_content = True
        self.announced: set[int] = set()

    def frame(self, frames: CompatibleFrames, piece: Piece) -> bytes:
        kind = piece.kind
        if kind == "content":
            frame = frames.content(
                piece.text,
                first=self.first_content,
                after_reasoning=self.after_reasoning,
                choice=self.index,
            )
            self.first_content = self.after_reasoning = False
            return frame
        if kind == "reasoning_content":
            self.after_reasoning = True
            return frames.reasoning(piece.text, self.index)
        call = piece.call_index
        new = call not in self.announced
        self.announced.add(call)
        answer = self.answer
        return frames.tool_call(
            piece, answer.tool_call_ids[call] if new else "", answer.tool_calls[call][0], self.index
        )

    def end(self, frames: CompatibleFrames) -> Iterator[Item]:
        """The frames after the last piece: DashScope's empty function delta after tool
        calls, and the finish reason."""
        answer = self.answer
        if answer.tool_calls:
            yield frames.empty_function(len(answer.tool_calls) - 1, self.index), None
        yield frames.finish(answer.finish_reason, self.index), None


def _events(
    *,
    frames: CompatibleFrames,
    answers: tuple[EmulatedAnswer, ...],
    usage: dict[str, Any] | None,
    no_done: bool,
) -> Iterator[Item]:
    """A compatible-mode stream: a role chunk per choice, the pieces (each choice ending
    with its finish chunk after its last piece), the usage (if asked), ``[DONE]``."""
    choices = [_Choice(index, answer) for index, answer in enumerate(answers)]
    for choice in choices:
        yield frames.role(choice.index), None
    for choice in choices:
        if not choice.left:
            yield from choice.end(frames)
    for wait, index, piece in paced(answers):
        if wait:
            yield wait
        choice = choices[index]
        yield choice.frame(frames, piece), piece.kind
        choice.left -= 1
        if not choice.left:
            yield from choice.end(frames)
    if usage is not None:
        yield frames.usage(usage), None
    if not no_done:
        yield frames.done(), None


class _CompatibleReply:
    __slots__ = ("answer_request",)

    def __init__(self, body: dict[str, Any]) -> None:
        self.answer_request = body

    def streams(self, content_type: str | None) -> bool:
        return self.answer_request.get("stream") is True and not (
            content_type and "json" in content_type.lower()
        )

    def stream(self, answering: Answering) -> tuple[FaultFrames, Events]:
        body = answering.body
        frames = CompatibleFrames(
            f"chatcmpl-{answering.request_id}",
            body["model"],
            answering.created_s,
            answering.line_ending,
            choices=len(answering.answers),
        )
        include_usage = isinstance(options := body.get("stream_options"), dict) and (
            options.get("include_usage") is True
        )

        def events(no_done: bool) -> Iterator[Item]:
            return _events(
                frames=frames,
                answers=answering.answers,
                usage=usage_of(answering.usage) if include_usage else None,
                no_done=no_done,
            )

        return frames, events

    def completion(self, answering: Answering) -> bytes:
        body = answering.body
        choices = []
        for index, answer in enumerate(answering.answers):
            message: dict[str, Any] = {"role": "assistant", "content": answer.content}
            if body.get("enable_thinking") is True:
                message["reasoning_content"] = answer.reasoning
            if answer.tool_calls:
                message["tool_calls"] = tool_calls_of(answer)
            choices.append(
                {
                    "message": message,
                    "finish_reason": answer.finish_reason,
                    "index": index,
                    "logprobs": None,
                }
            )
        completion = {
            "choices": choices,
            "object": "chat.completion",
            "usage": usage_of(answering.usage),
            "created": answering.created_s,
            "system_fingerprint": None,
            "model": body["model"],
            "id": f"chatcmpl-{answering.request_id}",
        }
        return encode(completion)


class CompatibleFraming:
    """The compatible-mode framing (see the module docstring)."""

    protocol = COMPATIBLE

    def reply_to(self, body: Any, headers: Mapping[str, str]) -> _CompatibleReply:
        return _CompatibleReply(json_object(body))

    def error_body(self, reject: Reject, request_id: str) -> bytes:
        return error_envelope(reject, request_id)


COMPATIBLE_FRAMING = CompatibleFraming()
