"""``qwen-sse bench --metrics-url`` and ``--html`` end to end: against the emulator of
``--mock`` (whose ``/metrics`` the scrapes read), a served emulator with a key, a scripted
metrics page and a dead one; the options' refusals; the page at the end, at a signal, and
without matplotlib."""

from __future__ import annotations

import json
import signal
import socket
import sys
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest

from qwen_sse.bench.html import NO_CHARTS
from qwen_sse.bench.runner import Target
from qwen_sse.bench.schema import SUMMARY_SCHEMA, SWEEP_SCHEMA
from qwen_sse.cli import main
from qwen_sse.cli.bench_reports import AUTO, metrics_url_of
from tests.served import served
from tests.test_bench_scrape import PAGE, scripted
from tests.test_cli_bench import (
    FAST_MOCK,
    SIGNAL_MOCK,
    SMALL,
    Bench,
    jsonl_lines,
    short_and_long_prompts,
    wait_until,
)

# Long answers: eight streams stay open together for a while, whatever the machine's speed.
LONG = [
    "--mock",
    "--mock-ttft-ms",
    "500",
    "--mock-itl-ms",
    "5",
    "--mock-jitter-ms",
    "0",
    "--input-tokens",
    "24",
    "--output-tokens",
    "100",
    "--quiet",
]


def test_a_concurrency_8_run_sees_8_requests_running_on_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary_path = tmp_path / "summary.json"
    status = main(
        [
            "bench",
            *LONG,
            "--concurrency",
            "8",
            "--requests",
            "8",
            "--metrics-url",
            "auto",
            "--metrics-interval",
            "0.05",
            "--json",
            str(summary_path),
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    summary = json.loads(summary_path.read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA)
    server = summary["server_metrics"]
    assert server["failed_scrapes"] == 0
    assert server["url"].endswith("/metrics")
    running = server["series"]["requests_running"]
    assert running["metric"] == "vllm:num_requests_running"
    # Some scrape during the run saw all eight requests being answered, none saw more.
    assert running["max"] == 8
    assert max(running["values"]) == 8
    assert running["values"][0] == running["values"][-1] == 0  # before and after
    # The server's counters agree with the client's figures.
    counters = server["counters"]
    assert counters["qwen_emulator_requests_total"] == 8
    assert counters["vllm:generation_tokens_total"] == summary["total_output_tokens"]
    assert counters["vllm:prompt_tokens_total"] == summary["total_input_tokens"]
    assert "--------------Server (its /metrics)---------------" in out
    assert "Requests running min/mean/max:" in out
    assert "scrapes" not in err  # none failed: nothing to say


def test_a_sweep_scrapes_each_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_path = tmp_path / "sweep.json"
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--sweep-concurrency",
            "1,2",
            "--requests",
            "4",
            "--metrics-url",
            "auto",
            "--json",
            str(sweep_path),
        ]
    )
    assert status == 0, capsys.readouterr().err
    document = json.loads(sweep_path.read_text())
    jsonschema.validate(document, SWEEP_SCHEMA)
    for run in document["runs"]:
        # Each level counts its own requests, the warm-up of none.
        assert run["server_metrics"]["counters"]["qwen_emulator_requests_total"] == 4


def test_failed_scrapes_are_one_line_and_never_fail_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/metrics"
    summary_path = tmp_path / "summary.json"
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--requests",
            "2",
            "--metrics-url",
            dead,
            "--json",
            str(summary_path),
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    server = json.loads(summary_path.read_text())["server_metrics"]
    assert server["failed_scrapes"] == server["scrapes"] >= 2
    (line,) = [line for line in err.splitlines() if "scrapes of" in line]
    assert line.startswith(
        f"qwen-sse bench: {server['scrapes']} of {server['scrapes']} scrapes of {dead} "
        "failed: cannot connect: "
    )
    assert "Traceback" not in err
    assert f"{'Scrapes (failed):':<40} {server['scrapes']} ({server['scrapes']})" in out


def test_the_scrape_never_carries_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-served-secret")
    with (
        served("sk-test-served-secret") as base_url,
        scripted(lambda n: (200, {}, PAGE)) as page,
    ):
        status = main(
            [
                "bench",
                "--base-url",
                base_url,
                "--allow-insecure-http",
                *SMALL,
                "--requests",
                "2",
                "--metrics-url",
                page.url,
                "--json",
                str(tmp_path / "summary.json"),
            ]
        )
    assert status == 0, capsys.readouterr().err
    assert len(page.seen) >= 2
    for headers in page.seen:
        assert "authorization" not in headers
        assert not any("sk-test" in value for value in headers.values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["server_metrics"]["series"]["requests_running"]["max"] == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--metrics-url", "ftp://h/metrics"], "--metrics-url wants an http:// or https:// URL"),
        (["--metrics-url", "localhost:8000"], "--metrics-url wants an http:// or https:// URL"),
        (["--metrics-url", "http:///metrics"], "--metrics-url wants an http:// or https:// URL"),
        (
            ["--metrics-url", "http://user:pw@h/metrics"],
            "--metrics-url must not carry a user name or password",
        ),
        # No scheme: the URL would otherwise be echoed in the "wants an http://" line.
        (
            ["--metrics-url", "user:pw@h/metrics"],
            "--metrics-url must not carry a user name or password",
        ),
        (["--metrics-interval", "1"], "--metrics-interval needs --metrics-url"),
        (
            ["--metrics-url", "auto", "--metrics-interval", "0"],
            "--metrics-interval must be a positive number of seconds, got 0",
        ),
        (
            ["--metrics-url", "auto", "--metrics-interval", "nan"],
            "--metrics-interval must be a positive number of seconds, got nan",
        ),
        (["--html", "{tmp}/missing/r.html"], "the directory {tmp}/missing does not exist"),
        (["--html", "{tmp}"], "is a directory, not a file"),
        (["--html", "{tmp}/a", "--json", "{tmp}/a"], "--json and --html name the same file"),
    ],
)
def test_bad_report_options_exit_2_before_any_load(
    tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    filled = [option.format(tmp=tmp_path) for option in options]
    # An endpoint that would see any connection: nothing may reach it.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        arguments = ["bench", "--base-url", base_url, "--allow-insecure-http", "--quiet"]
        assert main([*arguments, *filled]) == 2
        with pytest.raises(BlockingIOError):
            listener.accept()
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert err.count("\n") == 1, err


def test_auto_is_metrics_at_the_targets_host() -> None:
    def of(base_url: str) -> str:
        return metrics_url_of(AUTO, Target(base_url=base_url, model="m"))

    assert of("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/metrics"
    assert of("https://dashscope.aliyuncs.com/compatible-mode/v1") == (
        "https://dashscope.aliyuncs.com/metrics"
    )
    assert of("http://user:secret@[::1]:8080/v1?x=1") == "http://[::1]:8080/metrics"
    assert metrics_url_of("http://h:9/m", Target(base_url="http://x/v1", model="m")) == (
        "http://h:9/m"
    )


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def read_page(path: Path) -> Tags:
    parser = Tags()
    parser.feed(path.read_text("utf-8"))
    parser.close()
    return parser


def test_html_of_a_run_and_of_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--requests",
            "4",
            "--metrics-url",
            "auto",
            "--html",
            str(tmp_path / "run.html"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 0, err
    assert f"qwen-sse bench: wrote {tmp_path / 'run.html'}" in err
    run = read_page(tmp_path / "run.html")
    # Two charts of the run and the server's.
    assert run.tags.count("img") == 3
    text = " ".join(run.text)
    assert "Server (its /metrics)" in text
    assert "Client self-check (the load generator)" in text
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--sweep-concurrency",
            "1,2",
            "--requests",
            "2",
            "--html",
            str(tmp_path / "sweep.html"),
        ]
    )
    assert status == 0, capsys.readouterr().err
    sweep = read_page(tmp_path / "sweep.html")
    # A section a level (a busy machine may end the sweep after one), the sweep's chart and
    # each level's two.
    sections = sweep.tags.count("section")
    assert sections >= 1
    assert sweep.tags.count("img") == 1 + 2 * sections


def test_html_without_matplotlib_says_charts_need_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    status = main(
        [
            "bench",
            *FAST_MOCK,
            *SMALL,
            "--requests",
            "2",
            "--html",
            str(tmp_path / "run.html"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 0, err
    assert f"qwen-sse bench: --html: the page will have no charts. {NO_CHARTS}" in err
    page = read_page(tmp_path / "run.html")
    assert "img" not in page.tags
    assert NO_CHARTS in " ".join(page.text)


def test_a_signal_writes_the_page_of_what_finished(tmp_path: Path) -> None:
    run = Bench(
        *SIGNAL_MOCK,
        *short_and_long_prompts(tmp_path),
        "--concurrency",
        "2",
        "--requests",
        "1000",
        "--jsonl",
        str(tmp_path / "requests.jsonl"),
        "--html",
        str(tmp_path / "run.html"),
    )
    try:
        wait_until(lambda: len(jsonl_lines(tmp_path / "requests.jsonl")) >= 1)
        run.signal(signal.SIGINT)
        status, _, err = run.finish()
    finally:
        run.kill()
    assert status == 130, err
    text = " ".join(read_page(tmp_path / "run.html").text)
    assert "Stopped early: interrupted by SIGINT" in text
