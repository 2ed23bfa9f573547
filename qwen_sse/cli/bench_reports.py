"""``qwen-sse bench``'s report options, ``--html FILE`` and ``--metrics-url URL`` (with
``--metrics-interval``): their definitions and checks, the scraper around each run, and
the HTML page at the end.

Edge layer (cli). The run itself is :mod:`qwen_sse.cli.bench`'s; this module adds what
these options add to it: a run's summary gains ``server_metrics`` (scraped by
:class:`~qwen_sse.bench.scrape.Scraper`), and the page is written from the summary (or
the sweep document) and the charts (:mod:`qwen_sse.bench.html`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from qwen_sse.bench.benchmark import BenchResult
from qwen_sse.bench.html import (
    NO_CHARTS,
    LevelReport,
    run_charts,
    run_page,
    sweep_charts,
    sweep_page,
    write_html,
)
from qwen_sse.bench.runner import Target
from qwen_sse.bench.scrape import DEFAULT_INTERVAL_S, Scraper
from qwen_sse.config import carries_credentials, shown_url
from qwen_sse.errors import ConfigurationError

__all__ = [
    "AUTO",
    "SweepPages",
    "add_report_options",
    "check_report_options",
    "measured",
    "metrics_url_of",
    "say_scrapes",
    "scraping",
    "write_run_page",
]

AUTO = "auto"
_PROG = "qwen-sse bench"


def add_report_options(group: Any) -> None:
    """Add ``--html``, ``--metrics-url`` and ``--metrics-interval`` to an option group."""
    group.add_argument(
        "--html",
        metavar="FILE",
        help="write a self-contained HTML report: summary, settings, charts (with "
        "qwen-sse[plot]), the client's self-check",
    )
    group.add_argument(
        "--metrics-url",
        metavar="URL",
        help="scrape the server's Prometheus /metrics before, during and after the run "
        "(vLLM, SGLang, llama.cpp, TGI); 'auto': /metrics at the target's host (the "
        "emulator's with --mock)",
    )
    group.add_argument(
        "--metrics-interval",
        metavar="SECONDS",
        type=float,
        help=f"seconds between scrapes during the run (default {DEFAULT_INTERVAL_S:g})",
    )


def check_report_options(args: argparse.Namespace) -> None:
    """Refuse bad values before anything is sent; say when the page will have no charts."""
    interval = args.metrics_interval
    if interval is not None:
        if not args.metrics_url:
            raise ConfigurationError("--metrics-interval needs --metrics-url")
        if not 0 < interval < math.inf:
            raise ConfigurationError(
                f"--metrics-interval must be a positive number of seconds, got {interval:g}"
            )
    if args.metrics_url and args.metrics_url != AUTO:
        _check_url(args.metrics_url)
    if args.html and importlib.util.find_spec("matplotlib") is None:
        print(f"{_PROG}: --html: the page will have no charts. {NO_CHARTS}", file=sys.stderr)


def _check_url(url: str) -> None:
    if carries_credentials(url):
        raise ConfigurationError(
            "--metrics-url must not carry a user name or password: the scrape sends no credentials"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"--metrics-url wants an http:// or https:// URL (or {AUTO}), got {url!r}"
        )


def metrics_url_of(option: str, target: Target) -> str:
    """The URL to scrape: ``option``, or for ``auto`` ``/metrics`` at the target's scheme,
    host and port (where vLLM, SGLang, llama.cpp's server, TGI and the emulator serve it)."""
    if option != AUTO:
        return option
    parts = urllib.parse.urlsplit(target.base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, "/metrics", "", ""))


@contextlib.contextmanager
def scraping(args: argparse.Namespace, target: Target) -> Iterator[Scraper | None]:
    """The scraper of ``--metrics-url`` for the whole command (None without the option)."""
    if not args.metrics_url:
        yield None
        return
    url = metrics_url_of(args.metrics_url, target)
    interval = args.metrics_interval or DEFAULT_INTERVAL_S
    if not args.quiet:
        print(
            f"{_PROG}: scraping {shown_url(url)} before and after the run and every "
            f"{interval:g} s during it",
            file=sys.stderr,
        )
    scraper = Scraper(url, interval_s=interval)
    try:
        scraper.start()
    except RuntimeError as error:
        # Never a reason to give up the run: it goes on without the server's figures.
        print(f"{_PROG}: cannot scrape {shown_url(url)}: {error}", file=sys.stderr)
        yield None
        return
    try:
        yield scraper
    finally:
        scraper.close()


def measured(scraper: Scraper | None, run: Callable[[], BenchResult]) -> BenchResult:
    """``run()``, scraped before, during and after when there is a scraper: its summary
    then has ``server_metrics``."""
    if scraper is None:
        return run()
    scraper.begin()
    result = run()
    server = scraper.end()
    return msgspec.structs.replace(result, summary={**result.summary, "server_metrics": server})


def say_scrapes(summary: dict[str, Any], where: str = "") -> None:
    """One line on stderr when scrapes failed: how many, and the most frequent reason."""
    server = summary.get("server_metrics")
    if server is None or not server["failed_scrapes"]:
        return
    reason = server["errors"][0]["message"]
    others = len(server["errors"]) - 1
    print(
        f"{_PROG}: {where}{server['failed_scrapes']} of {server['scrapes']} scrapes of "
        f"{shown_url(server['url'])} failed: {reason}"
        + (f" (and {others} other reasons, see the report)" if others else ""),
        file=sys.stderr,
    )


def write_run_page(path: str, result: BenchResult) -> None:
    """``--html`` of one run."""
    charts = run_charts(result.summary, result.records, result.loads)
    write_html(path, run_page(result.summary, charts))
    print(f"{_PROG}: wrote {path}", file=sys.stderr)


class SweepPages:
    """``--html`` of a sweep: each level's charts drawn as it ends (its records are not
    kept), the page written at the end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.levels: list[LevelReport] = []

    def add(self, level: float, result: BenchResult) -> None:
        charts = run_charts(result.summary, result.records, result.loads)
        self.levels.append(LevelReport(level, result.summary, charts))

    def write(self, sweep: dict[str, Any]) -> None:
        # The level summaries in the document are the ones the page shows.
        write_html(self.path, sweep_page(sweep, sweep_charts(sweep), self.levels))
        print(f"{_PROG}: wrote {self.path}", file=sys.stderr)
