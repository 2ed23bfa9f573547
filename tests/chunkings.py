"""Ways to cut a byte stream into reads, shared by the tests of every incremental decoder."""

from __future__ import annotations

from collections.abc import Iterator


def every_chunking(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """Yield ``(label, pieces)``: whole, byte by byte, and every two-way split."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield f"split@{cut}", [data[:cut], data[cut:]]


def with_line_ending(text: str, line_ending: str) -> str:
    """``text`` written with LF, rewritten with ``line_ending`` (LF, CRLF or CR)."""
    return text.replace("\n", line_ending)


LINE_ENDINGS = ("\n", "\r\n", "\r")
