"""Admission control in front of the client: what a limiter promises the client.

I/O layer. The client asks a :class:`Limiter` for a :class:`Permit` before every HTTP
request (retries and resumes included) and releases it when the request ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import msgspec

from qwen_sse.chunks import Usage

__all__ = ["LimitRequest", "Limiter", "Outcome", "Permit"]

Outcome = Literal["ok", "throttled", "error", "cancelled"]
"""How a request ended, as a limiter needs to know it: ``throttled`` is an HTTP 429 that
means rate limiting (not billing); ``error`` any other failure."""


class LimitRequest(msgspec.Struct, frozen=True):
    """What one request will cost: its model, its messages (to count the prompt), and
    the ``max_tokens`` it asks for (None: the limiter's own estimate of the output)."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    max_tokens: int | None = None


class Permit(Protocol):
    """Admission of one request. ``queue_wait_s`` is how long ``acquire`` waited."""

    @property
    def queue_wait_s(self) -> float: ...

    def release(self, *, usage: Usage | None, outcome: Outcome) -> None:
        """Called exactly once when the request ends; ``usage`` settles a token
        reservation (None: the server reported none). Must not block."""


class Limiter(Protocol):
    """Anything that admits requests: concurrency, RPM/TPM buckets, shared or not."""

    async def acquire(self, request: LimitRequest) -> Permit:
        """Wait until the request may be sent; raise a ``QwenSSEError`` on queue timeout."""
