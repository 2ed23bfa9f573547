"""The retry clock of client tests: a sleep that records the delays asked for and returns at
once, so backoff and ``Retry-After`` are checked without waiting."""

from __future__ import annotations


class FakeSleep:
    """Records the delays the client asks for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
