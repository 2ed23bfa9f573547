"""The application's credentials in one exchange: which request headers carry them, and their
removal from everything the debugging proxy shows or records.

Edge layer (part of :mod:`qwen_sse.debugproxy`); no I/O. The proxy forwards the credentials
unchanged (the upstream needs them) and keeps them nowhere else: a :class:`Secrets` holds
them only for the life of its exchange, and its repr never shows them.

Two forms of removal:

* in request headers, the credential headers read ``Bearer ***`` (the scheme kept) or
  ``***``, as the client's wire tap shows them;
* anywhere else (the URL, other headers, the request body, the response's headers and body,
  error text) every occurrence of a credential is masked **in place**: replaced by a mask
  of the same length (its first three characters, then ``*``; all ``*`` for a credential of
  eight characters or fewer). A recording keeps its exact sizes and read boundaries.

A response body arrives in reads, and an echo of the key may be split across two of them:
:class:`StreamMask` holds back the end of a read only while it could be the start of a
credential, so every read comes out masked, whole, and (nearly always) at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

__all__ = ["CREDENTIAL_HEADERS", "Secrets", "StreamMask"]

CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})
"""Request headers (lower case) whose value is a credential: OpenAI's and DashScope's bearer
key, Anthropic's ``x-api-key``, Azure's ``api-key``."""


def _mask(secret: bytes) -> bytes:
    if len(secret) > 8:
        return secret[:3] + b"*" * (len(secret) - 3)
    return b"*" * len(secret)


class Secrets:
    """The credentials a request's ``headers`` carry: the value of each credential header,
    without its scheme (``Bearer``, ``Basic``). Empty when the request carries none."""

    __slots__ = ("_pairs", "_text_pairs")

    def __init__(self, headers: Mapping[str, str]) -> None:
        found: set[bytes] = set()
        for name, value in headers.items():
            if name.lower() not in CREDENTIAL_HEADERS:
                continue
            scheme, _, credential = value.strip().partition(" ")
            secret = (credential.strip() or scheme).encode("utf-8", "surrogateescape")
            if secret:
                found.add(secret)
        # Longest first: a credential that contains another is masked whole.
        self._pairs = [(secret, _mask(secret)) for secret in sorted(found, key=len, reverse=True)]
        self._text_pairs = [
            (secret.decode("utf-8", "surrogateescape"), mask.decode("utf-8", "surrogateescape"))
            for secret, mask in self._pairs
        ]

    def __repr__(self) -> str:
        return f"<{len(self._pairs)} credential(s), never shown>"

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def data(self, data: bytes) -> bytes:
        """``data`` with every credential masked in place."""
        for secret, mask in self._pairs:
            if secret in data:
                data = data.replace(secret, mask)
        return data

    def text(self, text: str) -> str:
        """``text`` with every credential masked in place."""
        for secret, mask in self._text_pairs:
            if secret in text:
                text = text.replace(secret, mask)
        return text

    def request_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Request headers safe to show and record: a credential header as ``Bearer ***`` (its
        scheme kept) or ``***``, any other with the credentials masked."""
        shown: dict[str, str] = {}
        for name, value in headers.items():
            if name.lower() in CREDENTIAL_HEADERS:
                scheme, _, credential = value.strip().partition(" ")
                shown[name] = f"{scheme} ***" if credential.strip() else "***"
            else:
                shown[name] = self.text(value)
        return shown

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Response headers with the credentials masked (a server may echo the key)."""
        return {name: self.text(value) for name, value in headers.items()}

    def stream(self) -> StreamMask:
        """A mask for one body received in reads."""
        return StreamMask(self._pairs)


class StreamMask:
    """Masks credentials in a body that arrives in reads, an echo split across reads
    included, keeping every read's length, order and arrival time.

    ``feed(piece, at_s)`` returns the reads that are now final, masked: all of them, unless
    the body so far ends with the start of a credential; then the reads holding that start
    wait for the next ``feed`` (or :meth:`finish`) to tell whether the credential follows.
    """

    __slots__ = ("_buffer", "_pairs", "_pieces")

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._pairs = pairs
        self._buffer = bytearray()
        self._pieces: deque[tuple[int, float]] = deque()

    def feed(self, piece: bytes, at_s: float) -> list[tuple[bytes, float]]:
        """The reads that ``piece`` made final, each with its arrival time."""
        if not self._pairs:
            return [(piece, at_s)]
        if not self._pieces and self._clean(piece):
            return [(piece, at_s)]  # the usual case: no copy
        self._buffer += piece
        self._pieces.append((len(piece), at_s))
        for secret, mask in self._pairs:
            start = self._buffer.find(secret)
            while start >= 0:
                self._buffer[start : start + len(secret)] = mask
                start = self._buffer.find(secret, start + len(secret))
        return self._release(len(self._buffer) - self._open_tail(self._buffer))

    def finish(self) -> list[tuple[bytes, float]]:
        """The reads still held: the body ended, so no credential can complete any more."""
        return self._release(len(self._buffer))

    def _clean(self, piece: bytes) -> bool:
        return not any(secret in piece for secret, _ in self._pairs) and not self._open_tail(piece)

    def _open_tail(self, data: bytes | bytearray) -> int:
        """The length of the longest end of ``data`` that is the start of a credential."""
        longest = 0
        for secret, _ in self._pairs:
            first = secret[:1]
            position = data.find(first, max(0, len(data) - len(secret) + 1))
            while position >= 0:
                tail = len(data) - position
                if data[position:] == secret[:tail]:
                    longest = max(longest, tail)
                    break  # the earliest start is the longest
                position = data.find(first, position + 1)
        return longest

    def _release(self, final_bytes: int) -> list[tuple[bytes, float]]:
        released: list[tuple[bytes, float]] = []
        taken = 0
        while self._pieces and taken + self._pieces[0][0] <= final_bytes:
            size, at_s = self._pieces.popleft()
            released.append((bytes(self._buffer[taken : taken + size]), at_s))
            taken += size
        del self._buffer[:taken]
        return released
