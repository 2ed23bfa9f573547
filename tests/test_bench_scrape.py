"""The scraper's child process against real ``/metrics`` pages on loopback: the emulator's, and
a scripted server for every way a scrape fails. A failed scrape is a reading with its reason,
never an exception; a scrape sends no key, no cookie and goes through no proxy."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import jsonschema
import pytest

from qwen_sse.bench.mock import MockServer
from qwen_sse.bench.schema import SUMMARY_SCHEMA
from qwen_sse.bench.scrape import Scraper
from qwen_sse.emulator import EmulatorConfig

SERVER_METRICS_SCHEMA = SUMMARY_SCHEMA["properties"]["server_metrics"]
PAGE = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 5\n"


@dataclass
class Script:
    """What the scripted server answers (status, headers, body) to its n-th request, and the
    headers of every request it got."""

    answer: Callable[[int], tuple[int, dict[str, str], bytes]]
    seen: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def scripted(answer: Callable[[int], tuple[int, dict[str, str], bytes]]) -> Iterator[Script]:
    script = Script(answer)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.seen.append({name.lower(): value for name, value in self.headers.items()})
            status, headers, body = script.answer(len(script.seen))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        yield script
    finally:
        server.shutdown()
        server.server_close()


def test_the_emulators_page_before_and_after_a_run() -> None:
    with (
        MockServer(EmulatorConfig(ttft_s=0.0, itl_s=0.0)) as mock,
        Scraper(mock.base_url.split("/compatible-mode")[0] + "/metrics", interval_s=0.05) as s,
    ):
        s.begin()
        server = s.end()
    jsonschema.validate(server, SERVER_METRICS_SCHEMA)
    assert server["failed_scrapes"] == 0
    assert server["scrapes"] >= 2  # before and after, and whatever fell between
    running = server["series"]["requests_running"]
    assert running["metric"] == "vllm:num_requests_running"
    assert running["values"] == [0.0] * server["scrapes"]
    assert running["at_s"][0] < 0 <= running["at_s"][-1]  # the first scrape came before
    assert server["series"]["requests_waiting"]["max"] == 0
    assert server["counters"]["qwen_emulator_requests_total"] == 0
    assert server["counters_window_s"] > 0


def test_a_scrape_sends_no_key_no_cookie_and_no_proxy_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The child inherits the environment: a key there, and a proxy that does not exist.
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test-must-not-travel")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    cookie = {"Set-Cookie": "session=sk-test-cookie; Path=/"}
    with scripted(lambda n: (200, cookie, PAGE)) as script, Scraper(script.url) as scraper:
        scraper.begin()
        first = scraper.end()
        scraper.begin()
        second = scraper.end()
    assert first["failed_scrapes"] == second["failed_scrapes"] == 0
    assert second["series"]["requests_running"]["max"] == 5
    assert len(script.seen) >= 4
    for headers in script.seen:
        assert "authorization" not in headers
        assert "cookie" not in headers
        assert not any("sk-test" in value for value in headers.values())
        assert headers["accept"].startswith("text/plain;version=0.0.4")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((404, {}, b"not here"), "HTTP 404 Not Found"),
        ((302, {"Location": "http://127.0.0.1:9/metrics"}, b""), "HTTP 302 Found"),
        (
            (200, {}, b"ok 1\nbroken{ 2\n"),
            "not the Prometheus text format: line 2: expected a label name",
        ),
    ],
    ids=["404", "redirect", "not-the-format"],
)
def test_a_failed_scrape_is_a_reading_with_its_reason(
    answer: tuple[int, dict[str, str], bytes], reason: str
) -> None:
    with scripted(lambda n: answer) as script, Scraper(script.url, interval_s=60) as scraper:
        scraper.begin()
        server = scraper.end()
    jsonschema.validate(server, SERVER_METRICS_SCHEMA)
    assert server["scrapes"] == server["failed_scrapes"] == 2
    assert len(server["errors"]) == 1
    assert server["errors"][0]["message"].startswith(reason)
    assert server["errors"][0]["count"] == 2
    assert server["series"] == {}


def test_some_scrapes_fail_and_the_others_count() -> None:
    def answer(n: int) -> tuple[int, dict[str, str], bytes]:
        return (503, {}, b"") if n == 1 else (200, {}, PAGE)

    with scripted(answer) as script, Scraper(script.url, interval_s=60) as scraper:
        scraper.begin()
        server = scraper.end()
    assert server["failed_scrapes"] == 1
    assert server["errors"] == [{"message": "HTTP 503 Service Unavailable", "count": 1}]
    assert server["series"]["requests_running"]["values"] == [5.0]


def test_no_server_and_a_server_that_never_answers() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with Scraper(f"http://127.0.0.1:{port}/metrics", interval_s=60) as scraper:
        scraper.begin()
        refused = scraper.end()
    assert refused["errors"][0]["message"].startswith("cannot connect: ")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections, reads nothing, answers nothing
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
        with Scraper(url, interval_s=60, timeout_s=0.2) as scraper:
            scraper.begin()
            server = scraper.end()
    assert server["errors"] == [{"message": "no answer in time", "count": 2}]


def test_a_lost_scraper_is_a_failed_scrape_not_a_failed_run() -> None:
    with scripted(lambda n: (200, {}, PAGE)) as script, Scraper(script.url) as scraper:
        scraper.begin()
        process = scraper._child.process
        assert process is not None
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=30)
        server = scraper.end()
    assert server["failed_scrapes"] == 1
    assert server["errors"] == [{"message": "the scraping process was lost", "count": 1}]
    jsonschema.validate(server, SERVER_METRICS_SCHEMA)
