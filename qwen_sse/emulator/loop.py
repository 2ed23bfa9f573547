"""The event loop of a process that serves the emulator: uvloop's when it is installed
(``pip install 'qwen-sse[fast]'``), asyncio's own otherwise.

Edge layer (part of :mod:`qwen_sse.emulator`). ``qwen-sse serve`` and the child process of
``qwen-sse bench --mock`` run on it: uvloop accepts and writes for many streams at a
fraction of the CPU, so its delays stay closer to the configured ones. Its clock and timers
count whole milliseconds, so the emulator records its timings on ``time.monotonic()``,
never on ``loop.time()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "new_event_loop", "run"]

_T = TypeVar("_T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's if it can be imported, else asyncio's default."""
    try:
        import uvloop  # noqa: PLC0415  (optional: the `fast` extra)
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)``, on :func:`new_event_loop`'s loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` for uvloop's loop, else ``"asyncio"``: what a process announces."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
