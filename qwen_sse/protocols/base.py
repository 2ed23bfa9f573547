"""The interface every wire protocol implements, and the error-body reading they share.

Core module (sans-I/O): imports nothing from aiohttp, asyncio, os, time, random or logging,
and nothing from :mod:`qwen_sse.chat` at run time (the chat decoder is built on top of the
protocols, so the arrow points the other way).

A protocol (:class:`WireProtocol`) owns everything that differs between DashScope's
streaming APIs: where a request goes and how it is authenticated, how its body is built
from messages and parameters, how one attempt's events turn into the shared chunk model
(:class:`FrameReader`), which event ends an answer, how an error body reads, and the
continuation request that resumes a broken answer where the protocol has one. Everything
else (SSE framing, bounds, folding into a ``ChatResult``, the completion rule "every
choice finished and the end marker arrived", retries, deadlines) is the same for all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from qwen_sse.chunks import ChatCompletionChunk
from qwen_sse.errors import InBandError, ProtocolError, QwenSSEError

if TYPE_CHECKING:
    from qwen_sse.chat import ChatResult

__all__ = [
    "MAX_ANSWER_PARTS",
    "ErrorFields",
    "Frame",
    "FrameReader",
    "ProtocolDefaults",
    "RequestFacts",
    "WireProtocol",
    "bearer_key",
    "error_fields",
    "frame_failure",
    "json_error_in_body",
    "max_choices",
    "sampling_value",
    "text_of",
]

Frame = tuple[str, bytes]
"""One SSE event as the readers take it: its type (``"message"`` unless ``event:`` set it)
and its data as UTF-8 bytes."""


class FrameReader(Protocol):
    """One attempt's grammar: SSE events in, chunks of the shared model out.

    ``read(frames, out)`` decodes ``frames`` in order, appending the chunks they carry to
    ``out``; it stops after the protocol's end marker (then ``ended`` is True and the rest
    of ``frames`` is ignored) or at the first frame that is an error, and returns how many
    frames it consumed (the failing or ending one included) and that error, if any: an
    :class:`~qwen_sse.errors.InBandError` for the server's own error event, a
    :class:`~qwen_sse.errors.ProtocolError` (with the frame) for anything it cannot read.
    It never raises. Frames that carry nothing for the answer (pings, lifecycle events)
    count as consumed and add no chunk.
    """

    ended: bool

    def read(
        self, frames: Sequence[Frame], out: list[ChatCompletionChunk]
    ) -> tuple[int, QwenSSEError | None]: ...


class RequestFacts(NamedTuple):
    """What the client, limiters, decoders and telemetry need to know of a request body,
    whatever its protocol: the model, the messages (for the prompt's token count), the most
    output tokens asked for, how many choices the answer must have, and the sampling
    settings asked for (``temperature``, ``top_p``; None when the body sets none)."""

    model: str
    messages: Sequence[Any]
    max_tokens: int | None
    choices: int
    temperature: float | None = None
    top_p: float | None = None


class ErrorFields(NamedTuple):
    """What an HTTP error body says: ``code`` (or error type), ``message``, ``request_id``."""

    code: str
    message: str
    request_id: str


class WireProtocol(Protocol):
    """One of DashScope's streaming chat protocols (see ``protocols/__init__.py`` for the
    registry). Instances are stateless and shared; a :class:`FrameReader` is made per
    attempt.

    ``root`` is the protocol's base-URL path on a DashScope host (a ``base_url`` given to
    the client replaces host and root); ``path`` is what follows the base URL;
    ``end_marker`` names the event that ends an answer, for messages; ``resume`` says how
    the protocol continues a broken answer, or why it cannot (shown in documentation and
    ``qwen-sse`` help). ``built_fields`` are the ``params`` keys that would replace what
    :meth:`request_body` builds from its other arguments (the model, the messages, the
    streaming and usage switches): the command line refuses them in ``--param``. Defaults
    a caller may change (Anthropic's ``max_tokens``, the native ``result_format``) are not
    among them.
    """

    name: str
    root: str
    path: str
    end_marker: str
    resume: str
    built_fields: frozenset[str]

    def headers(self, api_key: str) -> dict[str, str]:
        """The authentication header and any header the protocol needs to stream."""
        ...

    def api_key_of(self, headers: Mapping[str, str]) -> str:
        """The API key a request's ``headers`` carry ("" if none): the inverse of
        :meth:`headers`, for servers (the emulator) and for redacting what is recorded."""
        ...

    def request_body(
        self,
        model: str,
        messages: Sequence[Any],
        params: Mapping[str, Any],
        *,
        include_usage: bool,
    ) -> dict[str, Any]:
        """The streaming request body; ``params`` are the caller's extra fields, placed
        where this protocol wants them."""
        ...

    def facts(self, body: Mapping[str, Any]) -> RequestFacts:
        """The model, messages, output bound and choice count of a request body."""
        ...

    def reader(self, body: Mapping[str, Any]) -> FrameReader:
        """A fresh reader for one attempt at ``body``."""
        ...

    def stream_bytes_factor(self, body: Mapping[str, Any]) -> int:
        """How many times the usual byte bound a response to ``body`` may take (1, unless
        the protocol repeats the answer so far in every frame)."""
        ...

    def error_fields(self, body: bytes) -> ErrorFields:
        """What an HTTP error body says."""
        ...

    def error_in_body(self, body: bytes, request_id: str = "") -> InBandError | None:
        """The error a 200 response that is not an event stream carries, if it is one;
        ``request_id`` is the response's ``x-request-id``, preferred to the body's."""
        ...

    def continuation(self, body: Mapping[str, Any], so_far: ChatResult) -> dict[str, Any] | None:
        """The request that continues ``so_far`` (text only, cut before its finish
        reason), or None where this protocol or this request cannot continue."""
        ...


class ProtocolDefaults:
    """What most protocols do, for a protocol class to inherit and override: a bearer key
    (``Authorization: Bearer``), the usual byte bound, the error bodies
    :func:`error_fields` reads, and no continuation. It states no grammar: a subclass
    still defines its request, facts and reader."""

    name: str

    def __repr__(self) -> str:
        return f"<wire protocol {self.name}>"

    def api_key_of(self, headers: Mapping[str, str]) -> str:
        return bearer_key(headers)

    def headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def stream_bytes_factor(self, body: Mapping[str, Any]) -> int:
        return 1

    def error_fields(self, body: bytes) -> ErrorFields:
        return error_fields(body)

    def error_in_body(self, body: bytes, request_id: str = "") -> InBandError | None:
        return json_error_in_body(body, request_id)

    def continuation(self, body: Mapping[str, Any], so_far: ChatResult) -> dict[str, Any] | None:
        return None


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the joined ``text`` of its parts
    (``[{"type": "text", "text": ...}]``, DashScope's multimodal ``[{"text": ...}]``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def bearer_key(headers: Mapping[str, str]) -> str:
    """The key of an ``Authorization: Bearer <key>`` header ("" if there is none)."""
    scheme, _, key = headers.get("Authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


MAX_ANSWER_PARTS = 1 << 16
"""How many parts (Anthropic content blocks, Responses output items) one answer may
announce. A reader keeps a little state for each, and a part that carries no text yet
adds no chunk, so no other bound counts them; a real answer has a handful (one per tool
call, thinking or text run), and 65,536 leaves any of them a wide margin."""


def max_choices(value: Any) -> int:
    """The choice count a request's ``n`` asks for (1 unless an int in 2..128)."""
    return value if isinstance(value, int) and 1 < value <= 128 else 1


def sampling_value(value: Any) -> float | None:
    """A sampling setting (``temperature``, ``top_p``) as a float when the body holds a
    number there (a bool is not one), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def frame_failure(failure: Exception, frame: bytes) -> ProtocolError:
    """The :class:`~qwen_sse.errors.ProtocolError` for a frame whose decoding failed in a
    way the readers do not anticipate (``RecursionError`` on JSON nested too deep, ...)."""
    reason = str(failure) or type(failure).__name__
    error = ProtocolError(f"data frame could not be decoded ({reason})", frame=frame)
    error.__cause__ = failure.with_traceback(None)  # its frames would hold the whole read
    return error


class _ErrorEnvelope(msgspec.Struct, gc=False):
    error: dict[str, Any] | str | None = None
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    detail: Any = None  # FastAPI's (llama.cpp's server, vLLM): a string or validation errors


_error_envelope = msgspec.json.Decoder(_ErrorEnvelope)


def error_fields(body: bytes) -> ErrorFields:
    """What an OpenAI-, DashScope-, Anthropic- or FastAPI-shaped error body says
    (``{"error": {"message", "code" or "type"}}``, ``{"code", "message"}``,
    ``{"detail": "..."}`` or ``{"detail": [{"loc": [...], "msg": "..."}, ...]}``); any
    other body is its first 500 bytes as the message."""
    try:
        envelope = _error_envelope.decode(body)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: JSON nested too deep
        return _raw_error_fields(body)
    code, message = envelope.code or "", envelope.message or ""
    if isinstance(envelope.error, dict):
        code = str(envelope.error.get("code") or envelope.error.get("type") or code)
        message = str(envelope.error.get("message") or message)
    elif isinstance(envelope.error, str):
        message = envelope.error
    if not message and envelope.detail:
        try:
            message = _detail_message(envelope.detail)
        except RecursionError:  # str() of a list nested nearly as deep as JSON allows
            return _raw_error_fields(body)
    return ErrorFields(code, message, envelope.request_id or "")


def _raw_error_fields(body: bytes) -> ErrorFields:
    return ErrorFields("", body[:500].decode("utf-8", "replace").strip(), "")


def _detail_message(detail: Any) -> str:
    """FastAPI's ``detail``: a message, or validation errors as ``loc.path: msg`` lines."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, dict):
        message = detail.get("message") or detail.get("msg")
        return str(message) if message else msgspec.json.encode(detail).decode()
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = item.get("loc")
                where = ".".join(map(str, loc)) if isinstance(loc, list) else str(loc or "")
                lines.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                lines.append(str(item))
        return "\n".join(lines)
    return str(detail)


def json_error_in_body(body: bytes, request_id: str = "") -> InBandError | None:
    """A JSON error object sent as a 200 body (a gateway that answers an error with a
    non-stream 200): an :class:`InBandError` when it names a code, or a message under an
    ``"error"`` key; None for anything else."""
    code, message, body_request_id = error_fields(body)
    if code or (message and body.lstrip().startswith(b"{") and b'"error"' in body):
        return InBandError(code=code, message=message, request_id=request_id or body_request_id)
    return None
