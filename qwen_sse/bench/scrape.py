"""Scraping a server's Prometheus ``/metrics`` before, during and after each run
(``qwen-sse bench --metrics-url``), from a child process of its own.

Edge layer (bench). A page of vLLM's runs to tens of kilobytes; reading and parsing one
every second in the measuring process would take its event loop away from the streams it
timestamps, so a child process does it (as the emulator of ``--mock`` runs in one). The
child scrapes once when a run begins (the run starts after that scrape), then every
``interval_s`` on a fixed beat, and once when the run has ended; it hands the readings
over (:class:`~qwen_sse.bench.server_metrics.Reading`) and the parent summarises them.

A scrape sends no API key and no cookie (a fresh session, no proxy from the environment,
redirects not followed); one that fails (no connection, a status other than 200, no answer
within ``timeout_s``, a page that is not the text format) is a reading with its error,
never a failure of the run. The child ignores SIGINT and SIGTERM (its parent's to handle)
and exits when told to or when its parent goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self

import aiohttp
import msgspec

from qwen_sse.bench.child import STOP, LinkedChild
from qwen_sse.bench.prometheus import PrometheusFormatError, parse
from qwen_sse.bench.server_metrics import Phase, Reading, read, summarize
from qwen_sse.bench.stop import leave_signals_to_parent

__all__ = ["DEFAULT_INTERVAL_S", "SCRAPE_TIMEOUT_S", "Scraper"]

DEFAULT_INTERVAL_S = 1.0
SCRAPE_TIMEOUT_S = 5.0
# vLLM's page with every histogram of a few models is far below this; more is not a page.
_MAX_PAGE_BYTES = 32 * 1024 * 1024
_START_TIMEOUT_S = 60.0
# How long past a scrape's own timeout the parent waits for the child's answer.
_SLACK_S = 10.0
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


class Scraper:
    """``with Scraper(url) as scraper:`` starts the child; around each run,
    ``scraper.begin()`` (returns once the first scrape is done) and ``scraper.end()``
    (returns the run's ``server_metrics``, :func:`~qwen_sse.bench.server_metrics.summarize`).
    Should the child be lost, ``end()`` says so as a failed scrape, and the run goes on."""

    def __init__(
        self,
        url: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = SCRAPE_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._child = LinkedChild(_serve, (url, interval_s, timeout_s), name="qwen-sse-scrape")
        self._begun_at = 0.0

    def __enter__(self) -> Self:
        self.start()
        return self

    def start(self) -> None:
        """Start the child (RuntimeError if it does not come up)."""
        self._child.start()
        if not self._answer(_START_TIMEOUT_S):
            self.close()
            raise RuntimeError("the metrics scraper did not start")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def begin(self) -> None:
        """Scrape once and start scraping every ``interval_s``: a run begins."""
        self._begun_at = time.monotonic()
        if self._send("begin"):
            self._answer(self.timeout_s + _SLACK_S)

    def end(self) -> dict[str, Any]:
        """Scrape once more, stop, and summarise the run's readings."""
        readings: list[Reading] = []
        if self._send("end"):
            answer = self._answer(self.timeout_s + _SLACK_S)
            if answer is not None:
                readings = msgspec.msgpack.decode(answer, type=list[Reading])
        if not readings:
            lost = Reading(
                at_s=time.monotonic() - self._begun_at,
                phase="after",
                error="the scraping process was lost",
            )
            readings = [lost]
        return summarize(readings, url=self.url, interval_s=self.interval_s)

    def close(self) -> None:
        """Stop the child and wait for it (idempotent)."""
        self._child.close()

    def _send(self, command: str) -> bool:
        link = self._child.link
        if link is None:
            return False
        try:
            link.send_bytes(command.encode())
        except OSError:
            return False
        return True

    def _answer(self, timeout_s: float) -> bytes | None:
        link = self._child.link
        if link is None:
            return None
        try:
            if link.poll(timeout_s):
                return link.recv_bytes()
        except (OSError, EOFError):
            pass
        return None


def _serve(link: Connection, url: str, interval_s: float, timeout_s: float) -> None:
    leave_signals_to_parent()
    asyncio.run(_scrape_when_told(link, url, interval_s, timeout_s))


async def _scrape_when_told(
    link: Connection, url: str, interval_s: float, timeout_s: float
) -> None:
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )
    async with session:
        scrape = _Scrapes(session, url, interval_s)
        link.send_bytes(b"ready")
        # recv_bytes() returns a command, or raises EOFError once the parent is gone: then
        # it is time to go, as at "stop". A thread waits so that the beat goes on meanwhile.
        with contextlib.suppress(EOFError, OSError):
            while (command := await asyncio.to_thread(link.recv_bytes)) != STOP:
                if command == b"begin":
                    await scrape.begin()
                    link.send_bytes(b"begun")
                elif command == b"end":
                    link.send_bytes(msgspec.msgpack.encode(await scrape.end()))


class _Scrapes:
    """The child's side: the readings of the current run and the beat that takes them."""

    def __init__(self, session: aiohttp.ClientSession, url: str, interval_s: float) -> None:
        self.session = session
        self.url = url
        self.interval_s = interval_s
        self.readings: list[Reading] = []
        self.origin = 0.0
        self._beat: asyncio.Task[None] | None = None
        self._first_ok: Reading | None = None

    async def begin(self) -> None:
        self.readings = []
        self._first_ok = None
        sent = time.monotonic()
        reading = await self._scrape("before", sent)
        self.origin = time.monotonic()
        self._keep(msgspec.structs.replace(reading, at_s=sent - self.origin))
        self._beat = asyncio.create_task(self._every_interval())

    async def end(self) -> list[Reading]:
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        self._keep(await self._scrape("after", time.monotonic()))
        return self.readings

    async def _every_interval(self) -> None:
        beat = 1
        while True:
            due = self.origin + beat * self.interval_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self._keep(await self._scrape("during", time.monotonic()))
            # A scrape longer than the interval skips the beats it overran.
            beat = max(beat + 1, int((time.monotonic() - self.origin) / self.interval_s) + 1)

    def _keep(self, reading: Reading) -> None:
        """Add ``reading``; only the first and the latest successful readings keep their
        counters (the summary needs no others), so memory stays flat however long the run."""
        if reading.error is None:
            if self._first_ok is None:
                self._first_ok = reading
            else:
                for index in range(len(self.readings) - 1, -1, -1):
                    previous = self.readings[index]
                    if previous.error is None:
                        if previous is not self._first_ok and previous.counters:
                            self.readings[index] = msgspec.structs.replace(previous, counters={})
                        break
        self.readings.append(reading)

    async def _scrape(self, phase: Phase, sent: float) -> Reading:
        at_s = sent - self.origin
        try:
            async with self.session.get(
                self.url, headers={"Accept": _ACCEPT}, allow_redirects=False
            ) as response:
                if response.status != 200:
                    reason = f" {response.reason}" if response.reason else ""
                    return Reading(at_s=at_s, phase=phase, error=f"HTTP {response.status}{reason}")
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > _MAX_PAGE_BYTES:
                        error = f"a page of more than {_MAX_PAGE_BYTES // (1024 * 1024)} MiB"
                        return Reading(at_s=at_s, phase=phase, error=error)
            page = parse(body.decode("utf-8", errors="replace"))
        except TimeoutError:
            return Reading(at_s=at_s, phase=phase, error="no answer in time")
        except aiohttp.ClientError as error:
            return Reading(at_s=at_s, phase=phase, error=_client_error(error))
        except PrometheusFormatError as error:
            return Reading(at_s=at_s, phase=phase, error=f"not the Prometheus text format: {error}")
        return read(page, at_s=at_s, phase=phase)


def _client_error(error: aiohttp.ClientError) -> str:
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect: {error.os_error.strerror or error.os_error}"
    text = str(error) or type(error).__name__
    return " ".join(text.split())
