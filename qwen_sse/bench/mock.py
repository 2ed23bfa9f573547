"""The DashScope emulator in a child process, as the endpoint of ``qwen-sse bench --mock``.

Edge layer (bench). In a process of its own, the emulator's work (request parsing, token
counting, pacing hundreds of streams) never runs on the event loop that timestamps the
chunks, so the figures measure the client's view of a server, not a shared loop. It uses
the emulator's public API only. The child stops when told to, or as soon as its parent
goes away (its end of the pipe closes), so it never outlives the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self

import msgspec

from qwen_sse.emulator import Emulator, EmulatorConfig

__all__ = ["MOCK_API_KEY", "MockServer"]

MOCK_API_KEY = "sk-mock"
_START_TIMEOUT_S = 60.0


class MockServer:
    """``with MockServer(config) as base_url:`` runs an emulator on a loopback port.

    The emulator accepts any bearer key (``api_key`` in ``config`` is overridden) and does
    not record requests, so its memory stays flat however long the run.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.base_url = ""
        self._link: Connection | None = None
        self._process: Any = None

    def __enter__(self) -> Self:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self._link = parent_end
        self._process = context.Process(
            target=_serve, args=(child_end, self.config), name="qwen-sse-mock", daemon=True
        )
        self._process.start()
        child_end.close()
        if not parent_end.poll(_START_TIMEOUT_S):
            self.close()
            raise RuntimeError("the emulator did not start")
        try:
            self.base_url = str(parent_end.recv())
        except EOFError:
            self.close()
            raise RuntimeError("the emulator exited while starting") from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the emulator and wait for its process (idempotent)."""
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(OSError):
                link.send("stop")
            link.close()
        process, self._process = self._process, None
        if process is not None:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def _serve(link: Connection, config: EmulatorConfig) -> None:
    asyncio.run(_serve_until_told(link, config))


async def _serve_until_told(link: Connection, config: EmulatorConfig) -> None:
    config = msgspec.structs.replace(config, api_key=None, record_requests=False)
    async with Emulator(config) as emulator:
        link.send(emulator.base_url)
        # recv() returns at "stop" and raises EOFError when the parent is gone: either way
        # it is time to go. A thread waits so the loop keeps serving meanwhile.
        with contextlib.suppress(EOFError):
            await asyncio.to_thread(link.recv)
