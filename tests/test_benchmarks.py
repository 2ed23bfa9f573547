"""Smoke tests of benchmarks/: each script runs at tiny size and prints valid JSON.

They check that the scripts still run and report what they promise, never how fast.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_sse import protocols, tokens

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# A stage of its own (`pytest -m benchmarks`, run by .ci/run): it takes a minute.
pytestmark = pytest.mark.benchmarks


def run_quick(script: str, *extra: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    document: dict[str, object] = json.loads(completed.stdout)
    return document


@pytest.mark.timeout(300)
def test_bench_sse_quick() -> None:
    document = run_quick("bench_sse.py")
    assert {"throughput", "large_event", "linearity", "protocols", "targets"} <= document.keys()
    text = json.dumps(document["throughput"])
    for name in ("feed", "feed_frames", "chat", "openai", "httpx-sse"):
        assert name in text
    rows = document["protocols"]
    assert isinstance(rows, list)
    assert [row["protocol"] for row in rows] == list(protocols.NAMES)
    for row in rows:
        assert row["us_per_event_median"] > 0
        assert row["us_per_piece_median"] > 0
        assert row["events"] >= row["pieces"] > 0
    targets = document["targets"]
    assert isinstance(targets, dict)
    assert {target["issue"] for target in targets.values()} == {2, 11}


def test_bench_tokens_quick() -> None:
    document = run_quick("bench_tokens.py")
    assert {"first_load", "counting", "prompts"} <= document.keys()


@pytest.mark.timeout(300)
def test_bench_client_quick() -> None:
    document = run_quick("bench_client.py", "--repeat", "1")
    assert {"server", "results", "targets"} <= document.keys()
    text = json.dumps(document["results"])
    for name in (
        "raw aiohttp",
        "qwen-sse",
        "qwen-sse otel",
        "openai",
        "httpx-sse",
        "aiohttp lines",
    ):
        assert name in text
    for workload in ("bulk", "paced", "memory"):
        assert workload in text
    targets = document["targets"]
    assert isinstance(targets, dict)
    assert targets["paced_cpu_per_event_telemetry_on_x_off"]["value"] > 0


@pytest.mark.timeout(300)
def test_bench_accuracy_quick() -> None:
    document = run_quick("bench_accuracy.py")
    levels = document["levels"]
    assert isinstance(levels, list)
    assert [level["concurrency"] for level in levels] == [1, 8]
    for level in levels:
        assert level["completed"] == level["requests"]
        # The emulator never writes a token before its time: no first token before the
        # TTFT. (A late token does not delay the next, so gaps may fall either side.)
        assert level["served"]["median_ttft_ms"] >= level["configured"]["ttft_ms"]
        assert level["served"]["median_itl_ms"] > 0
        assert level["measured"]["median_ttft_ms"] >= level["served"]["median_ttft_ms"]
        assert level["client_limited"] is bool(level["client_reasons"])


@pytest.mark.timeout(300)
def test_bench_capacity_quick() -> None:
    document = run_quick("bench_capacity.py")
    levels = document["levels"]
    assert isinstance(levels, list)
    assert [(row["concurrency"], row["generator"]) for row in levels] == [
        (4, "floor"),
        (4, "qwen-sse"),
        (8, "floor"),
        (8, "qwen-sse"),
    ]
    for row in levels:
        (run,) = row["runs"]
        # Every request was measured, and against the server's record of it.
        assert run["completed"] == run["requests"] == 8
        assert run["failed"] == 0
        emulator, generator = run["emulator"], run["generator_figures"]
        assert emulator["tokens_written"] >= 8
        # CPU time counts in clock ticks: a tiny run may not reach one.
        assert emulator["cpu_fraction"] >= 0
        assert emulator["cpu_us_per_token"] >= 0
        assert emulator["event_loop"] in ("asyncio", "uvloop")
        # uvloop's clock, on which aiohttp notes a request's arrival, counts milliseconds
        # (a coarse kernel clock can add one more); asyncio's is exact.
        arrival_error_ms = 2.0 if emulator["event_loop"] == "uvloop" else 0.0
        served_ttft_ms = emulator["served_ttft_ms"]["median"]
        # No first token before its time, and no client reads a piece before it is sent.
        assert served_ttft_ms >= 30 - arrival_error_ms
        assert generator["ttft_ms"]["median"] >= served_ttft_ms - arrival_error_ms
        assert generator["itl_ms"]["median"] > 0
        medians = row["medians"]
        assert medians["measured_vs_served_ttft_pct"] >= -arrival_error_ms / served_ttft_ms * 100
        assert set(row["limited_by"]) <= {"server", "client"}
        if row["generator"] == "qwen-sse":
            assert row["client_limited_runs"] in (0, 1)
            assert generator["client_limited"] is bool(generator["client_reasons"])
        else:
            assert row["client_limited_runs"] is None


@pytest.mark.timeout(300)
def test_bench_send_floor_quick() -> None:
    document = run_quick("bench_send_floor.py")
    levels = document["levels"]
    assert isinstance(levels, list)
    assert [row["streams"] for row in levels] == [4, 8]
    for row in levels:
        (run,) = row["runs"]
        # One token per stream every 20 ms.
        assert run["sends_per_s_asked"] == row["streams"] * 50
        assert 0 < run["sends_per_s_done"] <= run["sends_per_s_asked"] * 1.01
        assert run["cpu_fraction"] > 0
        assert run["cpu_us_per_send"] > 0


def test_bench_send_floors_step_is_one_chunked_content_event() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        step: bytes = importlib.import_module("bench_send_floor").token_step()
    finally:
        sys.path.remove(str(BENCHMARKS))
    size, _, rest = step.partition(b"\r\n")
    event, _, after = rest.partition(b"\r\n")
    assert int(size, 16) == len(event)
    assert after == b""
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    chunk = json.loads(event[len(b"data: ") :])
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"][0]["delta"]["content"] == "hello"


def run_peers(*extra: str) -> tuple[dict[str, Any], str]:
    """bench_peers.py --quick: its JSON document and its stderr."""
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_peers.py"), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    document: dict[str, Any] = json.loads(completed.stdout)
    return document, completed.stderr


def check_qwen_sse_rows(document: dict[str, Any], stderr: str) -> None:
    entries = document["medians"]
    assert [(entry["tool"], entry["level"]) for entry in entries] == [
        ("qwen-sse", 1),
        ("qwen-sse", 4),
    ]
    for entry in entries:
        assert entry["completed"] == entry["requests"] == 4
        assert entry["failed"] == 0
        # The emulator never answers sooner than configured: sleeps only add time.
        assert entry["ttft_p50_ms"] >= document["settings"]["ttft_ms"]
        assert entry["itl_p50_ms"] > 0
        assert entry["cpu_s"] > 0
        assert entry["cpu_s_per_1k_output_tokens"] > 0
        assert entry["server_cpu_pct"] is not None
        # Closed loop, all requests at once: never more in flight than the level.
        assert 0 < entry["mean_in_flight"] <= entry["level"] * 1.01
    table = [line for line in stderr.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| streams | tool |")
    assert [line.split(" | ")[:3] for line in table[2:]] == [
        ["| 1", "qwen-sse", "4/4"],
        ["| 4", "qwen-sse", "4/4"],
    ]


@pytest.mark.timeout(300)
def test_bench_peers_quick_qwen_sse_alone() -> None:
    document, stderr = run_peers("--peers", "none")
    assert document["peers"] == {}
    check_qwen_sse_rows(document, stderr)


@pytest.mark.timeout(300)
def test_bench_peers_says_in_one_line_when_the_peer_cannot_be_installed(
    tmp_path: Path,
) -> None:
    # A file where the peers' directory should be: nothing can be created there, so the
    # peer fails at once, offline, and qwen-sse runs alone.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    document, stderr = run_peers("--venv-dir", str(blocker))
    said = [line for line in stderr.splitlines() if line.startswith("guidellm:")]
    assert len(said) == 1
    assert said[0].startswith("guidellm: not run: cannot prepare")
    assert "Traceback" not in stderr
    assert document["peers"]["guidellm"]["status"] == "not run"
    check_qwen_sse_rows(document, stderr)


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (["--levels", "1,x"], "--levels"),
        (["--levels", "0"], "at least 1 stream"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--peers", "vllm"], "unknown peer 'vllm'"),
        (["--input-tokens", "3"], "--input-tokens must exceed"),
    ],
)
def test_bench_peers_refuses_bad_settings_in_one_line(argument: list[str], message: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_peers.py"), *argument, "--peers", "none"]
        if argument[0] != "--peers"
        else [sys.executable, str(BENCHMARKS / "bench_peers.py"), *argument],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    errors = [line for line in completed.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert message in errors[0]
    assert "Traceback" not in completed.stderr


@pytest.fixture(scope="module")
def peers_modules() -> Iterator[ModuleType]:
    """benchmarks/bench_peers.py imported as the scripts import each other."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_peers")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_bench_peers_reads_a_real_guidellm_report(peers_modules: ModuleType) -> None:
    figures = peers_modules.guidellm_figures(FIXTURES / "guidellm-0.8.1-report.json")
    assert figures.completed == 16
    assert figures.failed == 0
    assert figures.ttft_p50_ms == pytest.approx(165.648, abs=0.001)
    assert figures.ttft_p99_ms == pytest.approx(903.340, abs=0.001)
    assert figures.itl_p50_ms == pytest.approx(20.413, abs=0.001)
    assert figures.itl_p99_ms == pytest.approx(24.265, abs=0.001)
    assert figures.output_tokens_per_s == pytest.approx(170.693, abs=0.001)
    assert figures.output_tokens == 2164
    assert figures.duration_s == pytest.approx(12.678, abs=0.001)
    assert figures.mean_latency_s == pytest.approx(3.151, abs=0.001)
    assert figures.warnings == [
        "p95 root dispatch delay was 0.251s over 16 samples (threshold 0.200s)."
    ]


@pytest.fixture(scope="module")
def qwen_tokenizer(
    peers_modules: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> tokenizers.Tokenizer:
    converter = importlib.import_module("hf_qwen_tokenizer")
    directory: Path = converter.ensure_tokenizer(tmp_path_factory.mktemp("qwen-tokenizer"))
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    return tokenizer


SAMPLES = (
    "Hello, world! It's 2024 and we're streaming tokens.",
    "你好，世界！今天天气很好，我们来测试一下分词器。",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 and flags 🇨🇳🇺🇸",
    "def f(x):\n    return x  \n\n\t y\r\n",
    "   leading, inner    and trailing spaces   ",
    "e\u0301 (decomposed) and café; ÀÉÎ mixed 中文 and English 1234567",
    "Ünïcödé ＦＵＬＬＷＩＤＴＨ and Ελληνικά and русский and العربية",
)


@pytest.mark.parametrize("text", SAMPLES)
def test_local_qwen_tokenizer_encodes_as_qwen_sse(
    qwen_tokenizer: tokenizers.Tokenizer, text: str
) -> None:
    assert qwen_tokenizer.encode(text, add_special_tokens=False).ids == tokens.encode(text)
    assert qwen_tokenizer.decode(tokens.encode(text)) == unicodedata.normalize("NFC", text)


def test_local_qwen_tokenizer_has_the_special_tokens(qwen_tokenizer: tokenizers.Tokenizer) -> None:
    # In a chat template they are special tokens; as text they are their characters.
    assert qwen_tokenizer.encode("<|im_end|>", add_special_tokens=False).ids == [151645]
    for content, token_id in tokens.SPECIAL_TOKENS.items():
        assert qwen_tokenizer.token_to_id(content) == token_id
        assert qwen_tokenizer.decode([token_id], skip_special_tokens=False) == content
    # Qwen's 151,643 BPE tokens, then the added ones up to </think>, gaps held by placeholders.
    assert qwen_tokenizer.get_vocab_size() == max(tokens.SPECIAL_TOKENS.values()) + 1


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_local_qwen_tokenizer_agrees_on_any_text(
    qwen_tokenizer: tokenizers.Tokenizer, text: str
) -> None:
    qwen_tokenizer.encode_special_tokens = True  # text is text, as in qwen_sse.tokens
    try:
        assert qwen_tokenizer.encode(text, add_special_tokens=False).ids == tokens.encode(text)
    finally:
        qwen_tokenizer.encode_special_tokens = False


@pytest.mark.timeout(300)
def test_bench_proxy_quick() -> None:
    document = run_quick("bench_proxy.py")
    levels = document["levels"]
    assert isinstance(levels, list)
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["failures"] == []
        for metric in ("ttfb_p50_ms", "ttfb_p99_ms", "itl_p50_ms", "itl_p99_ms"):
            figures = level[metric]
            # Two pieces read at once have a gap of 0; nothing arrives before it was sent.
            assert figures["direct"] >= 0
            assert figures["proxy"] >= 0
            assert figures["added"] == pytest.approx(figures["proxy"] - figures["direct"])
        assert level["ttfb_p50_ms"]["direct"] > 0
        assert level["ttfb_p50_ms"]["proxy"] > 0
    proxy = document["proxy_process"]
    assert isinstance(proxy, dict)
    # Every stream through the proxy (warm-up included) was summarised, complete, clean.
    assert proxy["exchanges"] == proxy["complete"] == 2 * (1 + 4) * 2
    assert proxy["anomalies"] == 0
    assert proxy["events"] > proxy["exchanges"]
    assert proxy["cpu_us_per_event"] > 0
    assert document["target"] == {"streams": 100, "measured": False}
