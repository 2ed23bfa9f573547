"""A real redis-server of the test's own, on a free loopback port, for the shared-limit tests."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[str]:
    """Start redis-server (no persistence, files in ``directory``), yield its URL, stop it.

    Skips the test when the Debian package redis-server is not installed (CI installs it).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found: install the Debian package redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        # Up to 10 s of polling: a busy machine may take that long to start it.
        for _ in range(1000):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.01)
        else:
            pytest.fail("redis-server did not answer")
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)
