"""The Locust integration: a master and two workers, headless, against the emulator.

Everything Locust runs in subprocesses: importing locust patches the standard library
for gevent (sockets, threads), which must not happen inside this test process.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_sse import protocols

LOCUSTFILE = Path(__file__).resolve().parents[1] / "benchmarks" / "locustfile.py"
URL_LINE = re.compile(r"DashScope emulator at (http://127\.0\.0\.1:\d+/compatible-mode/v1)")
LOCUST = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]


@contextlib.contextmanager
def serve(*extra: str) -> Iterator[str]:
    """``qwen-sse serve`` on a free loopback port; it stops by itself after a minute."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qwen_sse",
            "serve",
            "--port",
            "0",
            "--any-key",
            "--ttft-ms",
            "100",
            "--itl-ms",
            "20",
            "--jitter-ms",
            "0",
            "--exit-after-s",
            "60",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = URL_LINE.search(process.stdout.readline())
        assert match, "the emulator did not announce its URL"
        yield match[1]
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def emulator() -> Iterator[str]:
    with serve() as url:
        yield url


def stats(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as file:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(file)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(120)
def test_a_master_and_two_workers_record_ttft_and_itl(emulator: str, tmp_path: Path) -> None:
    port = str(free_port())
    env = {**os.environ, "DASHSCOPE_API_KEY": "sk-test"}
    common = {"env": env, "cwd": tmp_path, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    master = subprocess.Popen(
        [
            *LOCUST,
            "--master",
            "--headless",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            port,
            "--expect-workers",
            "2",
            "--expect-workers-max-wait",
            "60",
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--run-time",
            "4s",
            "--host",
            emulator,
            "--csv",
            str(tmp_path / "run"),
            "--qwen-input-tokens",
            "32",
            "--qwen-output-tokens",
            "8",
        ],
        **common,  # type: ignore[call-overload]
    )
    workers = [
        subprocess.Popen(
            [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", port],
            **common,  # type: ignore[call-overload]
        )
        for _ in range(2)
    ]
    try:
        output, _ = master.communicate(timeout=90)
        for worker in workers:
            worker.wait(timeout=30)
    finally:
        for process in (master, *workers):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    log = output.decode(errors="replace")
    assert master.returncode == 0, log[-3000:]
    assert all(worker.returncode == 0 for worker in workers)
    rows = stats(tmp_path / "run_stats.csv")
    ttft, itl = rows[("LLM", "TTFT")], rows[("LLM", "ITL")]
    assert int(ttft["Request Count"]) > 0
    assert int(ttft["Failure Count"]) == 0
    # Each answer of 8 pieces has 7 gaps.
    assert int(itl["Request Count"]) == 7 * int(ttft["Request Count"])
    # The server never answers sooner than configured (100 ms, then 20 ms per piece); how
    # much later depends on the machine's load. Whatever the load, the gaps of an answer
    # fit between its first text and its end, which follows its first text.
    assert float(ttft["Median Response Time"]) >= 100
    assert float(itl["Median Response Time"]) >= 15
    e2e = rows[("LLM", "E2E")]
    average = {
        name: float(row["Average Response Time"])
        for name, row in (("ttft", ttft), ("itl", itl), ("e2e", e2e))
    }
    assert average["ttft"] < average["e2e"]
    assert 7 * average["itl"] <= average["e2e"] - average["ttft"] + 1e-6  # float sums
    tokens = rows[("LLM", "output tokens")]
    assert float(tokens["Median Response Time"]) >= 7
    assert int(e2e["Request Count"]) == int(ttft["Request Count"])
    assert ("LLM", "TPOT") in rows
    assert int(rows[("POST", "chat/completions (headers)")]["Failure Count"]) == 0
    assert "2 workers connected" in log


@pytest.mark.timeout(60)
def test_failed_answers_are_failed_events(tmp_path: Path) -> None:
    with serve("--fault", '{"status": 429}') as url:
        completed = subprocess.run(
            [
                *LOCUST,
                "--headless",
                "--users",
                "1",
                "--run-time",
                "2s",
                "--host",
                url,
                "--csv",
                str(tmp_path / "run"),
                "--qwen-input-tokens",
                "16",
            ],
            env={**os.environ, "DASHSCOPE_API_KEY": "sk-test"},
            capture_output=True,
            timeout=45,
            check=False,
        )
    # Locust exits 1 when requests failed.
    assert completed.returncode == 1, completed.stderr[-2000:]
    rows = stats(tmp_path / "run_stats.csv")
    e2e = rows[("LLM", "E2E")]
    assert int(e2e["Failure Count"]) == int(e2e["Request Count"]) > 0
    assert ("LLM", "TTFT") not in rows
    failures = (tmp_path / "run_failures.csv").read_text()
    assert "HTTP 429" in failures


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["anthropic"])  # the framing furthest from the default
def test_the_user_speaks_the_protocol_it_is_given(tmp_path: Path, protocol: str) -> None:
    with serve() as url:
        origin = url.removesuffix("/compatible-mode/v1")
        wire = protocols.get(protocol)
        completed = subprocess.run(
            [
                *LOCUST,
                "--headless",
                "--users",
                "1",
                "--run-time",
                "2s",
                "--host",
                origin + wire.root,
                "--csv",
                str(tmp_path / "run"),
                "--qwen-protocol",
                protocol,
                "--qwen-input-tokens",
                "16",
                "--qwen-output-tokens",
                "4",
            ],
            env={**os.environ, "DASHSCOPE_API_KEY": "sk-test"},
            capture_output=True,
            timeout=45,
            check=False,
        )
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = stats(tmp_path / "run_stats.csv")
    ttft, e2e = rows[("LLM", "TTFT")], rows[("LLM", "E2E")]
    assert int(e2e["Request Count"]) > 0
    assert int(e2e["Failure Count"]) == 0
    assert int(ttft["Request Count"]) == int(e2e["Request Count"])
    # Each answer of 4 pieces has 3 gaps, whatever the protocol's framing.
    assert int(rows[("LLM", "ITL")]["Request Count"]) == 3 * int(e2e["Request Count"])
    assert int(rows[("POST", f"{wire.path.lstrip('/')} (headers)")]["Failure Count"]) == 0
