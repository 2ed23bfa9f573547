"""``qwen-sse serve`` in a subprocess, as a user starts it: for tests of commands and of the
README that talk to a real server over loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_URL = re.compile(r"DashScope emulator at (http://127\.0\.0\.1:\d+/compatible-mode/v1)")


@contextmanager
def served(key: str, *options: str) -> Iterator[str]:
    """The emulator accepting only ``key`` (handed over in the environment, as the command
    wants it), fast answers, on a free port; yields its compatible-mode base URL and stops
    it afterwards."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qwen_sse",
            "serve",
            "--port",
            "0",
            "--api-key-env",
            "SERVED_KEY",
            "--ttft-ms",
            "0",
            "--itl-ms",
            "1",
            "--exit-after-s",
            "120",
            *options,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SERVED_KEY": key},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = _URL.search(line)
        assert match, line
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)
