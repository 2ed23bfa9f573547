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
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["SERVING_GC_THRESHOLDS", "collect_rarely", "loop_name", "new_event_loop", "run"]

_T = TypeVar("_T")


SERVING_GC_THRESHOLDS = (50_000, 20, 20)
"""The garbage collector's thresholds in a serving process (Python's are 700, 10, 10)."""


def collect_rarely() -> None:
    """Have this process's garbage collector run rarely, for a process that only serves:
    the objects it has at start-up (modules, the tokenizer, the corpus) are frozen out of
    every collection, and a young collection waits for many more new objects than by
    default. A stream allocates objects for every token, and with the defaults the
    collector took about a tenth of a core serving 2,048 streams; a busy server still
    collects many times a second, so memory stays bounded."""
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)


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
