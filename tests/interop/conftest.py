"""A real llama.cpp server (``llama-cpp-python[server]``) on loopback, serving the tiny model.

The server runs under the Python named by ``QWEN_SSE_LLAMA_PYTHON``, else under this
interpreter if it can import ``llama_cpp.server``. Without either the interop tests are
skipped, saying so; with ``QWEN_SSE_REQUIRE_INTEROP=1`` (CI sets it) they fail instead, so a
broken build cannot pass as a green run. One server serves the whole session: it listens on
127.0.0.1 with an OS-chosen port and is terminated when the session ends.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.interop.tiny_model import write_tiny_model

LLAMA_PYTHON_ENV = "QWEN_SSE_LLAMA_PYTHON"
REQUIRE_ENV = "QWEN_SSE_REQUIRE_INTEROP"
API_KEY = "sk-test-interop"
MODEL = "tiny-qwen2"
N_CTX = 2048
STARTUP_TIMEOUT_S = 300.0

_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class LlamaServer:
    """A running server: ``url`` ends in ``/v1``; ``log`` collects its output lines."""

    url: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return self.url.removesuffix("/v1")


def llama_python() -> str | None:
    """The Python that runs the server, or None when no llama-cpp-python is available."""
    configured = os.environ.get(LLAMA_PYTHON_ENV, "").strip()
    if configured:
        return configured
    if importlib.util.find_spec("llama_cpp") is not None:
        return sys.executable
    return None


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny qwen2 model, written once per session."""
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny-qwen2.gguf")


@pytest.fixture(scope="session")
def llama_server(tiny_model: Path) -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI-compatible server, started once, stopped at session end."""
    python = llama_python()
    if python is None:
        reason = (
            f"no llama-cpp-python: install qwen-sse[interop] or set {LLAMA_PYTHON_ENV} to a "
            "Python that has llama-cpp-python[server]"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    command = [
        python, "-m", "llama_cpp.server",
        "--model", str(tiny_model),
        "--model_alias", MODEL,
        "--host", "127.0.0.1",
        "--port", "0",
        "--n_ctx", str(N_CTX),
        "--n_threads", "1",
        "--n_threads_batch", "1",
        "--api_key", API_KEY,
        "--verbose", "False",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    log: list[str] = []
    port: list[int] = []
    listening = threading.Event()

    def drain() -> None:
        # Read every line, so the server never blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match and not port:
                port.append(int(match.group(1)))
                listening.set()
        listening.set()

    reader = threading.Thread(target=drain, name="llama-server-log", daemon=True)
    reader.start()
    try:
        listening.wait(STARTUP_TIMEOUT_S)
        if not port:
            tail = "\n".join(log[-30:])
            pytest.fail(f"llama.cpp's server did not start: {' '.join(command)}\n{tail}")
        yield LlamaServer(url=f"http://127.0.0.1:{port[0]}/v1", process=process, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
