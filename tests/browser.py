"""Headless Chromium driven over the Chrome DevTools Protocol, for tests that check a page as
a person's browser shows it: console errors, uncaught exceptions and failed loads, every
request the page made, its images as decoded, screenshots.

Chromium (Debian's ``chromium`` package) starts with ``--remote-debugging-port=0``; the port
it chose comes from its stderr (``DevTools listening on ws://...``), the page's websocket
from ``/json/list``, and aiohttp's websocket client speaks the protocol (JSON messages:
commands with ids, their results, and events), so nothing is downloaded. Without Chromium
the tests that need it are skipped, saying so; with ``QWEN_SSE_REQUIRE_BROWSER=1`` (CI's
browser stage) they fail instead, so a missing browser cannot pass as a green run.
``QWEN_SSE_CHROMIUM`` names the binary if it is not on the PATH as ``chromium``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import pytest

REQUIRE_ENV = "QWEN_SSE_REQUIRE_BROWSER"
CHROMIUM_ENV = "QWEN_SSE_CHROMIUM"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Generous: a busy machine starts a browser slowly; no test measures these.
_START_TIMEOUT_S = 90.0
_CALL_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")

# Every image of the page once decoded, with its box in page coordinates.
_IMAGES = """(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map((image) => image.decode().catch(() => null)));
  return images.map((image) => {
    const box = image.getBoundingClientRect();
    return {alt: image.alt, width: image.naturalWidth, height: image.naturalHeight,
            x: box.left + window.scrollX, y: box.top + window.scrollY,
            w: box.width, h: box.height};
  });
})()"""


def chromium() -> str:
    """The Chromium binary; skips the test (fails it under ``QWEN_SSE_REQUIRE_BROWSER=1``)
    when there is none."""
    configured = os.environ.get(CHROMIUM_ENV, "").strip()
    found = configured or next((path for name in _NAMES if (path := shutil.which(name))), "")
    if not found:
        reason = f"no Chromium: apt-get install chromium, or set {CHROMIUM_ENV}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return found


@dataclass
class Visit:
    """What opening a page showed: ``problems`` (console errors and assertions, uncaught
    exceptions, log entries of level error, failed loads), every URL ``requested``, each
    image as decoded (``alt``, natural ``width`` and ``height``, its box ``x``, ``y``, ``w``,
    ``h``), a PNG ``screenshot`` of the window and one of each image's box."""

    problems: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    screenshot: bytes = b""
    image_shots: list[bytes] = field(default_factory=list)


class _Devtools:
    """One websocket to a page: commands and their results, and every event kept."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._awaited: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(f"devtools: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            self.events.append(data)
            for method, waiter in list(self._awaited):
                if method == data.get("method") and not waiter.done():
                    waiter.set_result(data.get("params", {}))
                    self._awaited.remove((method, waiter))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError("devtools: the browser closed the connection"))

    def expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        """A future of the next event ``method`` (ask before what causes it)."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._awaited.append((method, waiter))
        return waiter

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self._socket.send_str(
            json.dumps({"id": self._next_id, "method": method, "params": params})
        )
        return await asyncio.wait_for(future, _CALL_TIMEOUT_S)

    async def close(self) -> None:
        await self._socket.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Chromium:
    """``async with Chromium(binary) as browser: visit = await browser.visit(path)``: a
    headless Chromium of its own (its own profile in a temporary directory), closed
    afterwards; ``binary`` is :func:`chromium`'s."""

    def __init__(self, binary: str, *, width: int = 1280, height: int = 1600) -> None:
        self.binary = binary
        self.width = width
        self.height = height
        self._profile = tempfile.TemporaryDirectory(prefix="qwen-sse-chromium-")
        self._process: subprocess.Popen[str] | None = None
        self._log: list[str] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        try:
            endpoint = await asyncio.to_thread(self._launch)
            port = int(endpoint.split(":")[2].split("/")[0])
            self._session = aiohttp.ClientSession()
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            (page,) = [target for target in targets if target["type"] == "page"]
            self._page_socket = page["webSocketDebuggerUrl"]
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
        self._stop()
        self._profile.cleanup()

    def _launch(self) -> str:
        """Start Chromium; return its browser websocket's URL once it listens."""
        command = [
            self.binary,
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--mute-audio",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile.name}",
            "about:blank",
        ]
        if os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        process = self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        listening = threading.Event()
        endpoint: list[str] = []

        def drain() -> None:
            # Every line is read, so the browser never blocks on a full pipe.
            assert process.stderr is not None
            for line in process.stderr:
                self._log.append(line.rstrip("\n"))
                match = _LISTENING.search(line)
                if match and not endpoint:
                    endpoint.append(match.group(1))
                    listening.set()
            listening.set()

        threading.Thread(target=drain, name="chromium-stderr", daemon=True).start()
        listening.wait(_START_TIMEOUT_S)
        if not endpoint:
            self._stop()
            tail = "\n".join(self._log[-20:])
            pytest.fail(f"Chromium did not start: {' '.join(command)}\n{tail}")
        return endpoint[0]

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    async def visit(self, path: Path) -> Visit:
        """Open ``path`` (a file) in the page, wait for its load event and its images, and
        say what the browser saw."""
        assert self._session is not None
        socket = await self._session.ws_connect(self._page_socket, max_msg_size=0)
        devtools = _Devtools(socket)
        visit = Visit()
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                await devtools.call(f"{domain}.enable")
            loaded = devtools.expect("Page.loadEventFired")
            url = (await asyncio.to_thread(path.resolve)).as_uri()
            navigated = await devtools.call("Page.navigate", url=url)
            if navigated.get("errorText"):
                visit.problems.append(f"navigation: {navigated['errorText']}")
            await asyncio.wait_for(loaded, _CALL_TIMEOUT_S)
            evaluated = await devtools.call(
                "Runtime.evaluate", expression=_IMAGES, awaitPromise=True, returnByValue=True
            )
            if "exceptionDetails" in evaluated:
                visit.problems.append(f"evaluate: {evaluated['exceptionDetails']}")
            visit.images = evaluated.get("result", {}).get("value", [])
            shot = await devtools.call("Page.captureScreenshot", format="png")
            visit.screenshot = base64.b64decode(shot["data"])
            for image in visit.images:
                if image["w"] < 1 or image["h"] < 1:
                    visit.image_shots.append(b"")
                    continue
                clip = {
                    "x": image["x"],
                    "y": image["y"],
                    "width": image["w"],
                    "height": image["h"],
                    "scale": 1,
                }
                shot = await devtools.call(
                    "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
                )
                visit.image_shots.append(base64.b64decode(shot["data"]))
        finally:
            await devtools.close()
        _read_events(devtools.events, visit)
        return visit


def _read_events(events: list[dict[str, Any]], visit: Visit) -> None:
    urls: dict[str, str] = {}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
            visit.requested.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            url = urls.get(params["requestId"], "?")
            visit.problems.append(f"load failed: {url[:120]}: {params.get('errorText')}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params["args"]
            )
            visit.problems.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            description = details.get("exception", {}).get("description", "")
            visit.problems.append(f"exception: {details.get('text')} {description}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            visit.problems.append(f"log: {entry.get('text')} {entry.get('url', '')}")


def ink(png: bytes) -> tuple[float, float]:
    """``(spread, dark share)`` of a PNG: the standard deviation of its colour values (0 to
    1; a blank image's is 0) and the share of its pixels darker than light grey."""
    from matplotlib.image import imread  # noqa: PLC0415  (the plot extra, as the charts)

    pixels = imread(io.BytesIO(png), format="png")[..., :3]
    return float(pixels.std()), float((pixels.min(axis=2) < 0.8).mean())
