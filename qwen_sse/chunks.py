"""Typed chat-completion chunks as they arrive in ``data:`` frames, and their JSON decoding.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging.

Attribute names mirror the OpenAI SDK's (``chunk.choices[0].delta.content``,
``chunk.usage.prompt_tokens``) and DashScope's wire names verbatim (``reasoning_content``).
Unknown fields are ignored; a missing key reads as None (or an empty list for ``choices``);
a known key of the wrong type is a :class:`~qwen_sse.errors.ProtocolError` naming the field
path and carrying the raw frame.
"""

from __future__ import annotations

from typing import Any

import msgspec

from qwen_sse.errors import ProtocolError

__all__ = [
    "CacheCreation",
    "ChatCompletionChunk",
    "ChoiceDelta",
    "ChoiceDeltaAudio",
    "ChoiceDeltaToolCall",
    "ChoiceDeltaToolCallFunction",
    "CompletionTokensDetails",
    "DeltaChoice",
    "ErrorBody",
    "InputOutputUsage",
    "PromptTokensDetails",
    "SearchResult",
    "Usage",
    "chunk_decoder",
    "chunk_protocol_error",
    "decode_chunk",
    "decode_error_frame",
    "encode_chunk",
]


class ChoiceDeltaToolCallFunction(msgspec.Struct, frozen=True, gc=False):
    """One fragment of a tool call's function: ``name`` on the first, ``arguments`` pieces."""

    name: str | None = None
    arguments: str | None = None


class ChoiceDeltaToolCall(msgspec.Struct, frozen=True, gc=False):
    """One tool-call delta; fragments of the same call share ``index``."""

    index: int = 0
    id: str | None = None
    type: str | None = None
    function: ChoiceDeltaToolCallFunction | None = None


class ChoiceDeltaAudio(msgspec.Struct, frozen=True, gc=False):
    """One piece of spoken answer (Qwen-Omni, ``modalities: ["text", "audio"]``): ``data`` is
    base64 of 16-bit mono PCM at 24 kHz, ``transcript`` a piece of its text; ``id`` and
    ``expires_at`` (epoch seconds) name the audio."""

    id: str | None = None
    data: str | None = None
    transcript: str | None = None
    expires_at: int | None = None


class ChoiceDelta(msgspec.Struct, frozen=True, gc=False):
    """What one chunk adds to one choice. ``reasoning_signature`` is the Anthropic
    protocol's ``signature_delta`` (it must go back with the thinking text in a later turn)."""

    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None
    audio: ChoiceDeltaAudio | None = None
    reasoning_signature: str | None = None


class DeltaChoice(msgspec.Struct, frozen=True, gc=False):
    """One choice of a chunk: its index, its delta, and the finish reason once it ends."""

    index: int = 0
    delta: ChoiceDelta = msgspec.field(default_factory=ChoiceDelta)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class CacheCreation(msgspec.Struct, frozen=True, gc=False):
    """Tokens written to DashScope's explicit context cache, by lifetime."""

    ephemeral_5m_input_tokens: int | None = None


class PromptTokensDetails(msgspec.Struct, frozen=True, gc=False):
    """Breakdown of the prompt tokens: ``cached_tokens`` hit the context cache; the
    modality counts split the input (Qwen-Omni, VL); ``cache_creation_input_tokens``,
    ``cache_type`` (``"ephemeral"``) and ``cache_creation`` describe an explicit cache
    entry this request created (billed at 125% of input)."""

    cached_tokens: int | None = None
    text_tokens: int | None = None
    audio_tokens: int | None = None
    image_tokens: int | None = None
    video_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_type: str | None = None
    cache_creation: CacheCreation | None = None


class CompletionTokensDetails(msgspec.Struct, frozen=True, gc=False):
    """Breakdown of the completion tokens (``reasoning_tokens`` are included in them;
    Qwen-Omni splits ``text_tokens`` and ``audio_tokens``)."""

    reasoning_tokens: int | None = None
    text_tokens: int | None = None
    audio_tokens: int | None = None


class Usage(msgspec.Struct, frozen=True, gc=False):
    """Token usage as the server bills it. ``plugins`` is the native protocol's
    ``usage.plugins`` (for example web-search calls), verbatim."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
    plugins: dict[str, Any] | None = None


class InputOutputUsage(msgspec.Struct, frozen=True, gc=False):
    """Usage as DashScope's native protocols and the Responses API spell it
    (``input_tokens``, ``output_tokens``, their details, native ``plugins``); :meth:`usage`
    is the same in the shared model."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    input_tokens_details: PromptTokensDetails | None = None
    output_tokens_details: CompletionTokensDetails | None = None
    plugins: dict[str, Any] | None = None

    def usage(self) -> Usage:
        """The shared model's :class:`Usage` (``total_tokens`` summed when not given)."""
        total = self.total_tokens
        return Usage(
            prompt_tokens=self.input_tokens,
            completion_tokens=self.output_tokens,
            total_tokens=total if total is not None else self.input_tokens + self.output_tokens,
            prompt_tokens_details=self.prompt_tokens_details or self.input_tokens_details,
            completion_tokens_details=self.output_tokens_details,
            plugins=self.plugins,
        )


class SearchResult(msgspec.Struct, frozen=True, gc=False):
    """One web-search source the native protocol returns (``output.search_info``)."""

    index: int | None = None
    title: str | None = None
    url: str | None = None
    site_name: str | None = None
    icon: str | None = None


class ErrorBody(msgspec.Struct, frozen=True, gc=False):
    """The ``error`` object of an in-band error frame or an HTTP error body."""

    message: str = ""
    type: str | None = None
    code: str | int | None = None
    param: str | None = None


class ChatCompletionChunk(msgspec.Struct, frozen=True, gc=False, repr_omit_defaults=True):
    """One ``chat.completion.chunk``. The usage-only chunk has ``choices == []``.

    ``error`` is DashScope's in-band error object; it is decoded in the same pass so that
    every frame is checked for it at no extra cost. A chunk the chat decoder delivers never
    has one: such a frame becomes an :class:`~qwen_sse.errors.InBandError` instead.
    ``search_results`` are web-search sources (the native protocol's
    ``output.search_info.search_results``); compatible mode returns none.
    """

    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    system_fingerprint: str | None = None
    choices: list[DeltaChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: ErrorBody | str | None = None
    search_results: list[SearchResult] | None = None


class _ErrorFrame(msgspec.Struct, frozen=True, gc=False):
    error: ErrorBody | str | None = None
    id: str = ""
    request_id: str = ""


chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)
"""The msgspec decoder behind :func:`decode_chunk`, for hot loops that map its errors
themselves with :func:`chunk_protocol_error`."""
_error_decoder = msgspec.json.Decoder(_ErrorFrame)


def chunk_protocol_error(
    error: msgspec.DecodeError, frame: str | bytes, *, what: str = "chunk"
) -> ProtocolError:
    """The ``ProtocolError`` for a frame msgspec rejected, naming the field path; ``what``
    names the frame (a ``chunk``, or a protocol's ``event``)."""
    reason = str(error)
    if isinstance(error, msgspec.ValidationError):
        return ProtocolError(f"{what} has a field of the wrong type: {reason}", frame=frame)
    return ProtocolError(f"data frame is not valid JSON: {reason}", frame=frame)


def encode_chunk(chunk: ChatCompletionChunk) -> bytes:
    """The chunk as wire JSON: every OpenAI field, nulls included; the extensions that only
    some protocols fill (``error``, ``search_results``, ``delta.audio``,
    ``delta.reasoning_signature``, ``usage.plugins``) only when set."""
    fields = msgspec.to_builtins(chunk)
    _drop_unset(fields, ("error", "search_results"))
    for choice in fields["choices"]:
        _drop_unset(choice["delta"], ("audio", "reasoning_signature"))
    usage = fields.get("usage")
    if usage is not None:
        _drop_unset(usage, ("plugins",))
        for name in ("prompt_tokens_details", "completion_tokens_details"):
            if usage.get(name) is not None:
                usage[name] = {k: v for k, v in usage[name].items() if v is not None}
    return msgspec.json.encode(fields)


def _drop_unset(fields: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if fields.get(name) is None:
            fields.pop(name, None)


def decode_chunk(data: str | bytes) -> ChatCompletionChunk:
    """Decode one ``data:`` frame into a chunk, or raise ``ProtocolError`` naming the field."""
    try:
        return chunk_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise chunk_protocol_error(error, data) from None


def decode_error_frame(data: str | bytes) -> tuple[ErrorBody, str] | None:
    """The ``(error, id)`` of a frame with a top-level ``error`` object, else None.

    Cheap on ordinary chunks: only frames whose text contains ``"error"`` are parsed.
    """
    marker: str | bytes = '"error"' if isinstance(data, str) else b'"error"'
    if marker not in data:  # type: ignore[operator]
        return None
    try:
        frame = _error_decoder.decode(data)
    except msgspec.ValidationError:
        # A chunk whose text merely mentions "error" (e.g. in content) lands here when its
        # other top-level keys have unexpected types; it is decoded as a chunk instead.
        return None
    except msgspec.DecodeError as decode_error:
        raise chunk_protocol_error(decode_error, data) from None
    if frame.error is None:
        return None
    body = ErrorBody(message=frame.error) if isinstance(frame.error, str) else frame.error
    return body, frame.id or frame.request_id
