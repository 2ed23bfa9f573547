"""What a framing is: how one wire protocol's requests read and its answers look, for the
emulator's server, which does everything else (routes, keys, checks, limits, faults).

Edge layer (part of :mod:`qwen_sse.emulator`); no I/O of its own.

A :class:`Framing` reads a request body of its protocol as the common *answer request*
(the equivalent compatible-mode body that :func:`~qwen_sse.emulator.answers.emulated_answer`
and the server's checks read) and keeps what else the protocol asked for in a
:class:`Reply`; once the server has admitted the request and computed the answer, the
reply gives the protocol's stream (its frames and the coroutine that sends them) or its
non-stream body. HTTP error bodies and codes are the framing's too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from qwen_sse.emulator.accounting import AnswerUsage
from qwen_sse.emulator.answers import EmulatedAnswer
from qwen_sse.emulator.faults import Events, FaultFrames, LineEnding
from qwen_sse.emulator.rejects import Reject

__all__ = ["Answering", "Endpoint", "Framing", "Reply"]


class Endpoint(Protocol):
    """Where a protocol is served and how a request carries its key: the part of a
    :class:`~qwen_sse.protocols.base.WireProtocol` the server needs (every registered
    protocol is an endpoint)."""

    @property
    def name(self) -> str: ...

    @property
    def root(self) -> str: ...

    @property
    def path(self) -> str: ...

    def api_key_of(self, headers: Mapping[str, str]) -> str:
        """The API key ``headers`` carry ("" if none)."""
        ...


class Answering(NamedTuple):
    """What a reply needs to answer an admitted request: its ``request_id``, the answer
    request ``body``, the ``answers`` (one per choice the request asked for: ``n``, 1
    unless the protocol has it) and their ``usage``, the fault's ``line_ending`` and the
    response's Unix time ``created_s``."""

    request_id: str
    body: Mapping[str, Any]
    answers: tuple[EmulatedAnswer, ...]
    usage: AnswerUsage
    line_ending: LineEnding
    created_s: int

    @property
    def answer(self) -> EmulatedAnswer:
        """The answer of choice 0 (the only one without ``n``)."""
        return self.answers[0]


class Reply(Protocol):
    """One request as a framing read it."""

    @property
    def answer_request(self) -> dict[str, Any]:
        """The equivalent compatible-mode body: what the answer and the checks read."""
        ...

    def streams(self, content_type: str | None) -> bool:
        """Whether the answer is an event stream, given the content type a fault imposes."""
        ...

    def stream(self, answering: Answering) -> tuple[FaultFrames, Events]:
        """The stream's frames (for the faults) and its events."""
        ...

    def completion(self, answering: Answering) -> bytes:
        """The non-stream answer body (JSON)."""
        ...


class Framing(Protocol):
    """One protocol's side of the emulator; see the module docstring."""

    @property
    def protocol(self) -> Endpoint: ...

    def reply_to(self, body: Any, headers: Mapping[str, str]) -> Reply:
        """Read a request (``body`` is its JSON, None when it was not JSON); a request the
        protocol's envelope refuses is a 400 :class:`~qwen_sse.emulator.rejects.Reject`.
        The answer request is checked by the server afterwards."""
        ...

    def error_body(self, reject: Reject, request_id: str) -> bytes:
        """The HTTP error body of ``reject``, in this protocol's shape and codes."""
        ...
