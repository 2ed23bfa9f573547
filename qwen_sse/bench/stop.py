"""Ending a run before its plan: the :class:`Stop` request, and the rule that only a run's
parent process reacts to SIGINT and SIGTERM (its children stop when it tells them).

Edge layer (bench). It installs no signal handler of its own (what a signal means is the
command line's decision) and imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable, Iterator

__all__ = ["STOP_SIGNALS", "Stop", "leave_signals_to_parent", "signals_held"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that ask a run to stop: Ctrl-C on a terminal, and ``kill``'s default."""


class Stop:
    """A request to end a run early, made at most once, with its ``reason``.

    :meth:`set` may be called from a signal handler or by the run itself; only the first
    call counts. Whoever waits learns of it through :meth:`watch` (a callback, called in
    the setter's context, so it must only hand the news on) or by waiting for
    :meth:`fileno` to become readable (``select``, ``multiprocessing.connection.wait``).
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._readable, self._writable = socket.socketpair()
        self._readable.setblocking(False)
        self._writable.setblocking(False)
        self._watchers: list[Callable[[], None]] = []

    @property
    def is_set(self) -> bool:
        return self.reason is not None

    def set(self, reason: str) -> None:
        """Ask the run to stop, for ``reason``; a later call changes nothing."""
        if self.reason is not None:
            return
        self.reason = reason
        with contextlib.suppress(OSError):
            self._writable.send(b"\0")
        for watcher in list(self._watchers):
            watcher()

    def fileno(self) -> int:
        """A descriptor that becomes readable once the stop is set (and stays so)."""
        return self._readable.fileno()

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the stop is set (at once if it already is); return the
        function that cancels the watch."""
        self._watchers.append(callback)
        if self.reason is not None:
            callback()

        def unwatch() -> None:
            with contextlib.suppress(ValueError):
                self._watchers.remove(callback)

        return unwatch

    def close(self) -> None:
        self._readable.close()
        self._writable.close()

    def __enter__(self) -> Stop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back in this thread for the block (they are delivered after
    it, none is lost). A child process started meanwhile begins with them held, so that it
    cannot be interrupted before it calls :func:`leave_signals_to_parent`."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def leave_signals_to_parent() -> None:
    """In a run's child process: ignore SIGINT and SIGTERM, then accept signals again.

    A Ctrl-C on a terminal reaches every process of the foreground group, children
    included; the parent decides what it means and stops its children by message (or
    kills them), so a child never dies of it halfway, nor prints a traceback. Signals that
    arrived while held (:func:`signals_held`) are discarded.
    """
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
