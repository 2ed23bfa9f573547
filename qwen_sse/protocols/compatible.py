"""OpenAI Chat Completions as DashScope's compatible mode speaks it (``protocol="compatible"``).

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

Request: ``POST {base}/chat/completions`` with ``Authorization: Bearer``; the body is
``{"model", "messages", "stream": true, "stream_options": {"include_usage": true}}`` plus
the caller's parameters at the top level (where DashScope wants ``enable_thinking``...).
Stream (protocol.md): ``data: {chunk}`` events, ending with ``data: [DONE]``; a frame with a
top-level ``error`` object is an :class:`~qwen_sse.errors.InBandError`; ``finish_reason``
given as the string ``"null"`` means null (the accumulator reads it so, for every
protocol). Resume: DashScope's partial mode (the text so far as a last assistant message
with ``"partial": true``), for text answers without thinking and with one choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from qwen_sse.chunks import (
    ChatCompletionChunk,
    ErrorBody,
    chunk_decoder,
    chunk_protocol_error,
    decode_error_frame,
)
from qwen_sse.errors import InBandError, ProtocolError, QwenSSEError
from qwen_sse.protocols.base import (
    Frame,
    ProtocolDefaults,
    RequestFacts,
    frame_failure,
    max_choices,
    sampling_value,
)

if TYPE_CHECKING:
    from qwen_sse.chat import ChatResult

__all__ = ["COMPATIBLE", "DONE_MARKER", "CompatibleProtocol", "CompatibleReader"]

DONE_MARKER = "[DONE]"
_DONE_BYTES = DONE_MARKER.encode()


class CompatibleReader:
    """Reads ``data:`` chunk frames until ``data: [DONE]`` (see :class:`FrameReader`)."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False

    def read(
        self, frames: Sequence[Frame], out: list[ChatCompletionChunk]
    ) -> tuple[int, QwenSSEError | None]:
        decode = chunk_decoder.decode
        append = out.append
        for _, data in frames:
            if data == _DONE_BYTES:
                self.ended = True
                return len(out) + 1, None
            try:
                chunk = decode(data)
            except msgspec.DecodeError as decode_error:
                return len(out) + 1, _frame_error(data, decode_error)
            except Exception as failure:  # e.g. RecursionError from deeply nested JSON
                return len(out) + 1, frame_failure(failure, data)
            if chunk.error is not None:
                body = (
                    ErrorBody(message=chunk.error) if isinstance(chunk.error, str) else chunk.error
                )
                return len(out) + 1, _in_band_error(body, chunk.id)
            append(chunk)
        return len(out), None


def _frame_error(data: bytes, decode_error: msgspec.DecodeError) -> QwenSSEError:
    """For a frame that is not a valid chunk: its in-band error, if it is one (for example
    ``{"error": {...}, "choices": null}``), else its decoding error."""
    try:
        failure = decode_error_frame(data)
    except ProtocolError as protocol_error:
        return protocol_error
    except Exception as other:  # e.g. RecursionError from deeply nested JSON
        return frame_failure(other, data)
    if failure is None:
        return chunk_protocol_error(decode_error, data)
    return _in_band_error(*failure)


def _in_band_error(body: ErrorBody, frame_id: str) -> InBandError:
    return InBandError(
        code="" if body.code is None else str(body.code),
        message=body.message,
        type=body.type or "",
        request_id=frame_id.removeprefix("chatcmpl-"),
    )


class CompatibleProtocol(ProtocolDefaults):
    """OpenAI Chat Completions (``compatible``); see the module docstring."""

    name = "compatible"
    root = "/compatible-mode/v1"
    path = "/chat/completions"
    end_marker = "data: [DONE]"
    built_fields = frozenset({"model", "messages", "stream", "stream_options"})
    resume = (
        "partial mode: the text so far goes back as an assistant message with "
        '"partial": true (text answers without thinking, one choice)'
    )

    def request_body(
        self,
        model: str,
        messages: Sequence[Any],
        params: Mapping[str, Any],
        *,
        include_usage: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(params)
        return body

    def facts(self, body: Mapping[str, Any]) -> RequestFacts:
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        return RequestFacts(
            model=str(body.get("model", "")),
            messages=body.get("messages") or (),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            choices=max_choices(body.get("n", 1)),
            temperature=sampling_value(body.get("temperature")),
            top_p=sampling_value(body.get("top_p")),
        )

    def reader(self, body: Mapping[str, Any]) -> CompatibleReader:
        return CompatibleReader()

    def continuation(self, body: Mapping[str, Any], so_far: ChatResult) -> dict[str, Any] | None:
        if body.get("enable_thinking") is True or body.get("n", 1) != 1:
            return None
        return {**body, "messages": partial_messages(body.get("messages", ()), so_far.content)}


def partial_messages(messages: Sequence[Any], text: str) -> list[Any]:
    """``messages`` continued by ``text`` in DashScope's partial mode: a last assistant
    message with ``"partial": true`` (extended, when the request already ended with one)."""
    continued = list(messages)
    prefix = ""
    last = continued[-1] if continued else None
    if isinstance(last, Mapping) and last.get("role") == "assistant" and last.get("partial"):
        prefix = str(continued.pop().get("content") or "")
    continued.append({"role": "assistant", "content": prefix + text, "partial": True})
    return continued


COMPATIBLE = CompatibleProtocol()
