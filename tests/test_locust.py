"""The Locust integration: a master and two workers, headless, against the emulator; bench's
workloads sent as bench builds them; failures, protocols and bad options.

Everything Locust runs in subprocesses: importing locust patches the standard library
for gevent (sockets, threads), which must not happen inside this test process. The
emulator runs in this test's event loop, so a test sees every request it was sent. Runs
end by ``--qwen-requests-per-user`` (a fixed amount of work, whatever the machine's
speed), and the figures are read from ``--json-file``, which Locust writes at the end
(``--csv`` files are rewritten once a second, so they can miss the last second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from qwen_sse import protocols
from qwen_sse.bench.workload import follow_up
from qwen_sse.cli.workloads import add_workload_options, workload_from
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault, emulated_answer
from tests.hftokenizer import write_tokenizer

LOCUSTFILE = Path(__file__).resolve().parents[1] / "benchmarks" / "locustfile.py"
LOCUST = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
ENV = {**os.environ, "DASHSCOPE_API_KEY": "sk-test"}
TTFT_MS = 50


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    config = EmulatorConfig(ttft_s=TTFT_MS / 1000, itl_s=0.005)
    async with Emulator(config) as server:
        yield server


async def locust(
    *args: str, cwd: Path, timeout_s: float = 90, stdout: list[str] | None = None
) -> tuple[int, str]:
    """Run ``locust -f benchmarks/locustfile.py ARGS``; its exit code and log (stderr, where
    Locust logs and prints its report). ``stdout`` gets what it writes there (``--json``)."""
    process = await asyncio.create_subprocess_exec(
        *LOCUST,
        *args,
        cwd=cwd,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    if stdout is not None:
        stdout.append(out.decode())
    return process.returncode, err.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def distributed(
    master: Sequence[str], *, workers: int, cwd: Path, worker_cwd: Path | None = None
) -> tuple[tuple[int, str], list[tuple[int, str]]]:
    """A headless master with ``master`` options and ``workers`` workers on a free
    loopback port; each one's exit code and output."""
    port = str(free_port())
    bind = ["--master-bind-host", "127.0.0.1", "--master-bind-port", port]
    run_master = locust(
        "--master", "--headless", *bind, "--expect-workers", str(workers), *master, cwd=cwd
    )
    run_workers = [
        locust(
            "--worker",
            "--master-host",
            "127.0.0.1",
            "--master-port",
            port,
            cwd=worker_cwd or cwd,
        )
        for _ in range(workers)
    ]
    master_run, *worker_runs = await asyncio.gather(run_master, *run_workers)
    return master_run, worker_runs


def stats(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The master's final statistics (``--json-file``), by (type, name)."""
    entries = json.loads(path.read_text())
    return {(entry["method"], entry["name"]): entry for entry in entries}


def parse(options: Sequence[str]) -> argparse.Namespace:
    """The workload options as the Locust user reads them."""
    parser = argparse.ArgumentParser()
    add_workload_options(parser, prefix="qwen-")
    parser.add_argument("--qwen-seed", type=int, default=0)
    parser.add_argument("--qwen-model", default="qwen-plus")
    known, _ = parser.parse_known_args(list(options))
    return known


def canonical(messages: list[dict[str, Any]], max_tokens: int | None) -> str:
    return json.dumps([messages, max_tokens], sort_keys=True, ensure_ascii=False)


def expected_requests(options: Sequence[str], units: int, emulator: Emulator) -> list[str]:
    """What ``qwen-sse bench`` would send with the same workload options for requests (or
    conversations) ``0 .. units - 1``: each conversation's later turns carry the answers
    the emulator gives."""
    args = parse(options)
    workload = workload_from(args, units=None, prefix="qwen-")
    sent = []
    for index in range(units):
        spec = workload.request(index)
        while True:
            sent.append(canonical(spec.messages, spec.max_tokens))
            if not spec.later_turns:
                break
            body = {"model": args.qwen_model, "messages": spec.messages}
            if spec.max_tokens is not None:
                body["max_tokens"] = spec.max_tokens
            answer = emulated_answer(body, answer_tokens=emulator.config.answer_tokens)
            spec = follow_up(spec, answer.content, tokenizer=workload.tokenizer)
    return sorted(sent)


def received_requests(emulator: Emulator) -> list[str]:
    return sorted(
        canonical(request.body["messages"], request.body.get("max_tokens"))
        for request in emulator.requests
    )


WORKLOAD = ["--qwen-dataset", "multiturn", "--qwen-turns", "3"]
SIZES = ["--qwen-input-tokens", "32", "--qwen-output-tokens", "6"]


async def test_a_master_and_two_workers_merge_every_turn(
    emulator: Emulator, tmp_path: Path
) -> None:
    # 4 users, 2 on each worker, 3 conversations each, 3 turns each: 36 requests.
    (master_code, log), workers = await distributed(
        [
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--host",
            emulator.base_url,
            "--json-file",
            str(tmp_path / "run"),
            *WORKLOAD,
            *SIZES,
            "--qwen-requests-per-user",
            "3",
        ],
        workers=2,
        cwd=tmp_path,
    )
    assert master_code == 0, log[-3000:]
    assert [code for code, _ in workers] == [0, 0], workers
    assert "2 workers connected" in log
    # The server saw every turn of every conversation end well...
    assert len(emulator.requests) == 36
    assert {request.outcome for request in emulator.requests} == {"completed"}
    # ... each exactly as bench would send it: worker w sends conversations w, w + 2, ...
    # of bench's workload, each later turn with the server's actual answers.
    assert received_requests(emulator) == expected_requests([*WORKLOAD, *SIZES], 12, emulator)
    # The master's merged figures count what both workers sent, none failed.
    rows = stats(tmp_path / "run.json")
    counts = {key: row["num_requests"] for key, row in rows.items()}
    assert counts == {
        ("POST", "chat/completions (headers)"): 36,
        ("LLM", "TTFT"): 36,
        ("LLM", "ITL"): 36 * 5,  # 6 pieces an answer, 5 gaps
        ("LLM", "TPOT"): 36,
        ("LLM", "E2E"): 36,
        ("LLM", "output tokens"): 36,
        **{("LLM", f"{name} turn {turn}"): 12 for name in ("TTFT", "E2E") for turn in (1, 2, 3)},
        ("LLM", "conversation"): 12,
    }
    assert all(row["num_failures"] == 0 for row in rows.values())
    total = {name: row["total_response_time"] for (_, name), row in rows.items()}
    # The server never answers sooner than configured, however busy the machine.
    assert rows[("LLM", "TTFT")]["min_response_time"] >= TTFT_MS
    # Whatever the load, an answer's gaps fit between its first text and its end, and a
    # conversation's turns within it; the turns' rows split the answers' rows.
    assert total["ITL"] <= total["E2E"] - total["TTFT"] + 1e-6  # float sums
    for name in ("TTFT", "E2E"):
        by_turn = sum(total[f"{name} turn {turn}"] for turn in (1, 2, 3))
        assert by_turn == pytest.approx(total[name])
    assert total["E2E"] <= total["conversation"]


def sharegpt_file(directory: Path) -> Path:
    """A ShareGPT dataset of five conversations of two or three exchanges."""
    path = directory / "sharegpt.json"
    entries = []
    for number in range(5):
        talk = []
        for turn in range(2 + number % 2):
            question = f"Question {turn} of talk {number}: which rivers cross the country?"
            talk.append({"from": "human", "value": question})
            answer = f"Answer {turn}: three rivers cross it, the longest in the east."
            talk.append({"from": "gpt", "value": answer})
        entries.append({"conversations": talk})
    path.write_text(json.dumps(entries))
    return path


def images_file(directory: Path) -> Path:
    """A prompts file of two qwen-vl prompts, an image URL and a base64 image."""
    path = directory / "vl.jsonl"
    lines = []
    for url in ("https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="):
        image = {"type": "image_url", "image_url": {"url": url}}
        text = {"type": "text", "text": "What is in the picture?"}
        lines.append(json.dumps({"messages": [{"role": "user", "content": [image, text]}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


WORKLOADS: dict[str, Callable[[Path], list[str]]] = {
    "sharegpt": lambda d: ["--qwen-dataset", f"sharegpt:{sharegpt_file(d)}"],
    "sharegpt-conversations": lambda d: [
        "--qwen-dataset",
        f"multiturn:{sharegpt_file(d)}",
        "--qwen-output-tokens",
        "5",
    ],
    "images": lambda d: ["--qwen-model", "qwen-vl-max", "--qwen-prompts", str(images_file(d))],
    "shared-prefix": lambda _: [
        "--qwen-dataset",
        "shared-prefix",
        "--qwen-prefix-tokens",
        "40",
        "--qwen-prefix-groups",
        "2",
        "--qwen-input-tokens",
        "80",
        "--qwen-random-range-ratio",
        "0.25",
        "--qwen-output-tokens",
        "4",
        "--qwen-seed",
        "3",
    ],
    "tokenizer": lambda d: [
        "--qwen-tokenizer",
        str(write_tokenizer(d)),
        "--qwen-input-tokens",
        "20,30",
        "--qwen-output-tokens",
        "3,4",
    ],
}


@pytest.mark.parametrize("name", list(WORKLOADS))
async def test_each_workload_is_sent_as_bench_builds_it(
    emulator: Emulator, tmp_path: Path, name: str
) -> None:
    options = WORKLOADS[name](tmp_path)
    code, log = await locust(
        "--headless",
        "--users",
        "2",
        "--spawn-rate",
        "2",
        "--host",
        emulator.base_url,
        "--json-file",
        str(tmp_path / "run"),
        "--qwen-requests-per-user",
        "2",
        *options,
        cwd=tmp_path,
    )
    assert code == 0, log[-3000:]
    # One process: its users send requests (or conversations) 0, 1, 2, 3 between them.
    assert received_requests(emulator) == expected_requests(options, 4, emulator)
    assert {request.outcome for request in emulator.requests} == {"completed"}
    rows = stats(tmp_path / "run.json")
    e2e = rows[("LLM", "E2E")]
    assert e2e["num_requests"] == len(emulator.requests)
    assert e2e["num_failures"] == 0
    assert rows[("LLM", "TTFT")]["num_requests"] == e2e["num_requests"]
    conversations = rows.get(("LLM", "conversation"), {}).get("num_requests")
    assert conversations == (4 if name == "sharegpt-conversations" else None)


async def test_failed_answers_are_failed_events(tmp_path: Path) -> None:
    config = EmulatorConfig(ttft_s=0, itl_s=0, fault=Fault(status=429))
    out: list[str] = []
    async with Emulator(config) as server:
        code, log = await locust(
            "--headless",
            "--users",
            "1",
            "--host",
            server.base_url,
            "--json",  # the statistics on stdout, the error report still on stderr
            "--qwen-requests-per-user",
            "3",
            *WORKLOAD,
            *SIZES,
            cwd=tmp_path,
            stdout=out,
        )
        assert [request.status for request in server.requests] == [429] * 3
    # Locust exits 1 when requests failed.
    assert code == 1, log[-3000:]
    rows = {(row["method"], row["name"]): row for row in json.loads(out[0])}
    # A failed first turn ends its conversation: one request each, failed three times over.
    for name in ("E2E", "E2E turn 1", "conversation"):
        assert rows[("LLM", name)]["num_requests"] == rows[("LLM", name)]["num_failures"] == 3
    assert ("LLM", "TTFT") not in rows
    assert ("LLM", "E2E turn 2") not in rows
    # The error report names the reasons.
    assert re.search(r"\n1 +LLM E2E: RuntimeError\('HTTP 429: ", log), log[-3000:]
    assert re.search(r"\n3 +LLM conversation: RuntimeError\('turn 1 failed'\)", log)


@pytest.mark.parametrize("protocol", ["anthropic"])  # the framing furthest from the default
async def test_the_user_speaks_the_protocol_it_is_given(
    emulator: Emulator, tmp_path: Path, protocol: str
) -> None:
    code, log = await locust(
        "--headless",
        "--users",
        "1",
        "--host",
        emulator.base_url_for(protocol),
        "--json-file",
        str(tmp_path / "run"),
        "--qwen-protocol",
        protocol,
        "--qwen-requests-per-user",
        "3",
        *SIZES,
        cwd=tmp_path,
    )
    assert code == 0, log[-3000:]
    wire = protocols.get(protocol)
    assert [request.path for request in emulator.requests] == [wire.root + wire.path] * 3
    rows = stats(tmp_path / "run.json")
    counts = {name: row["num_requests"] for (_, name), row in rows.items()}
    # Each answer of 6 pieces has 5 gaps, whatever the protocol's framing.
    assert counts["E2E"] == counts["TTFT"] == counts[f"{wire.path.lstrip('/')} (headers)"] == 3
    assert counts["ITL"] == 5 * 3
    assert all(row["num_failures"] == 0 for row in rows.values())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--qwen-dataset", "nonsense"], "qwen-sse: --qwen-dataset wants random, shared-prefix"),
        (["--qwen-prompts", "missing.jsonl"], "qwen-sse: cannot read missing.jsonl"),
        (["--qwen-params", "[1]"], "qwen-sse: --qwen-params must be a JSON object"),
        (["--qwen-requests-per-user", "0"], "--qwen-requests-per-user must be at least 1"),
    ],
)
async def test_bad_options_end_the_run_with_one_line(
    tmp_path: Path, options: list[str], message: str
) -> None:
    code, log = await locust(
        "--headless", "--host", "http://127.0.0.1:9", *options, cwd=tmp_path, timeout_s=60
    )
    assert code != 0
    assert message in log
    assert "Traceback" not in log


async def test_a_worker_without_the_prompts_file_says_so_and_quits(
    emulator: Emulator, tmp_path: Path
) -> None:
    master_dir, worker_dir = tmp_path / "master", tmp_path / "worker"
    master_dir.mkdir()
    worker_dir.mkdir()
    (master_dir / "prompts.jsonl").write_text('{"prompt": "Hello there"}\n')
    (_, log), [(worker_code, worker_log)] = await distributed(
        ["--users", "1", "--host", emulator.base_url, "--qwen-prompts", "prompts.jsonl"],
        workers=1,
        cwd=master_dir,
        worker_cwd=worker_dir,
    )
    assert worker_code == 1, worker_log[-3000:]
    assert "qwen-sse: cannot read prompts.jsonl" in worker_log
    assert "this worker quits" in worker_log
    assert "Traceback" not in worker_log
    # The master ends with its last worker, nothing sent.
    assert "The last worker quit" in log
    assert emulator.requests == []
