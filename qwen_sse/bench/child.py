"""A helper process of one bench command (:class:`LinkedChild`: the ``--mock`` emulator,
the ``--metrics-url`` scraper), with a pipe to it, that never outlives the command.

Edge layer (bench). The child is spawned (no state inherited from a parent that may run
an event loop and threads) while SIGINT and SIGTERM are held, so that it can leave them to
its parent (:func:`~qwen_sse.bench.stop.leave_signals_to_parent`) before one arrives. It
stops when its pipe says ``b"stop"`` or closes (the parent is gone); a child that has not
stopped :data:`STOP_WAIT_S` after being told is killed, as it ignores SIGTERM.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from qwen_sse.bench.stop import signals_held

__all__ = ["STOP", "STOP_WAIT_S", "LinkedChild"]

STOP = b"stop"
"""The message (``send_bytes``) that tells a child to finish."""

STOP_WAIT_S = 5.0
"""How long :meth:`LinkedChild.close` waits for a told child before it kills it."""


class LinkedChild:
    """``target(link, *args)`` in a spawned process named ``name``, once :meth:`start`
    has returned ``link``'s other end; :meth:`close` stops it (idempotent). ``link`` and
    ``process`` are None before the start and after the close."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], *, name: str) -> None:
        self._target = target
        self._args = args
        self._name = name
        self.link: Connection | None = None
        self.process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> Connection:
        """Start the child; the parent's end of the pipe to it."""
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self.link = parent_end
        self.process = context.Process(
            target=self._target, args=(child_end, *self._args), name=self._name, daemon=True
        )
        with signals_held():
            self.process.start()
        # Only the child holds its end now: it reads EOF once this process is gone.
        child_end.close()
        return parent_end

    @property
    def pid(self) -> int | None:
        """The child's process id, None unless it runs."""
        process = self.process
        return None if process is None or process.pid is None else int(process.pid)

    def close(self) -> None:
        """Tell the child to stop and wait for it, killing it if it does not."""
        link, self.link = self.link, None
        if link is not None:
            with contextlib.suppress(OSError):
                link.send_bytes(STOP)
            link.close()
        process, self.process = self.process, None
        if process is not None:
            process.join(timeout=STOP_WAIT_S)
            if process.is_alive():
                process.kill()
                process.join(timeout=STOP_WAIT_S)
