"""The HTML report: well-formed, self-contained, every figure of the text report, everything
from outside escaped; and (``-m browser``) pages of real ``bench --mock`` runs opened in
headless Chromium: no console error, every chart decoded, not blank."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qwen_sse.bench.benchmark import compose
from qwen_sse.bench.html import (
    NO_CHARTS,
    Chart,
    LevelReport,
    run_charts,
    run_page,
    sweep_charts,
    sweep_page,
    write_html,
)
from qwen_sse.bench.metrics import Slo
from qwen_sse.bench.report import format_summary
from qwen_sse.bench.runner import ShardResult
from qwen_sse.cli import main
from tests.bench_documents import (
    TARGET,
    made_up_config,
    made_up_load,
    made_up_record,
    made_up_result,
    made_up_server_metrics,
)
from tests.browser import Chromium, chromium, ink
from tests.test_bench_plot import sweep_document
from tests.test_cli_bench import FAST_MOCK, SMALL

_VOID = frozenset(("meta", "img", "br", "hr", "link", "input", "col", "wbr", "source"))


class Page(HTMLParser):
    """A page as an HTML parser reads it: its tags, attributes and text; ``problems`` lists
    end tags that close nothing open or close out of order, and tags left open."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str | None]] = []
        self.texts: list[str] = []
        self.problems: list[str] = []
        self._open: list[str] = []
        self._style = False
        self.feed(text)
        self.close()
        self.problems += [f"<{tag}> never closed" for tag in self._open]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._style = tag == "style"
        self.attributes += [(tag, name, value) for name, value in attrs]
        if tag not in _VOID:
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self._open[-1:] or 'nothing'}")
            return
        self._open.pop()

    def handle_data(self, data: str) -> None:
        if not self._style:  # the page's text, not its stylesheet
            self.texts.append(data)
        self._style = False

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())


def check_self_contained(page: Page) -> None:
    """No script, no stylesheet or frame from anywhere, and every image inline."""
    assert "script" not in page.tags
    assert not {"link", "iframe", "object", "embed"} & set(page.tags)
    for tag, name, value in page.attributes:
        assert not name.startswith("on"), (tag, name)
        if name in ("src", "href", "srcset", "action", "data"):
            assert value is not None, (tag, name)
            assert value.startswith("data:image/png;base64,"), (tag, name)


def a_summary(**extra: Any) -> dict[str, Any]:
    summary = made_up_result(slo=Slo(ttft_ms=120, e2el_ms=900)).summary
    return {**summary, "server_metrics": made_up_server_metrics(failed=1), **extra}


def test_a_runs_page_has_every_figure_of_the_text_report() -> None:
    summary = a_summary()
    page_text = run_page(summary, charts=[])
    page = Page(page_text)
    assert page.problems == []
    check_self_contained(page)
    text = page.text
    # Every number the text report prints is on the page: the same figures, as tables.
    for line in format_summary(summary).splitlines():
        if line.startswith(("Workload:", "-", "=")):
            continue  # the page shows the workload field by field
        for number in re.findall(r"\d+(?:\.\d+)?%?", line):
            assert number in text, (number, line)
    for heading in (
        "Settings",
        "Workload",
        "Figures",
        "Latency",
        "Errors",
        "Server (its /metrics)",
        "Client self-check (the load generator)",
    ):
        assert heading in page.texts, heading
    assert "ttft <= 120 ms, e2el <= 900 ms" in text
    assert "HTTP 429 limit_requests" in text
    assert "Scrape failed Times HTTP 503 Service Unavailable 1" in text


def test_a_saturated_stopped_run_opens_with_the_verdict() -> None:
    saturated = made_up_result(lag_ms=30).summary
    page = Page(run_page({**saturated, "stop_reason": "interrupted by SIGINT"}, charts=[]))
    assert page.texts[page.texts.index("CLIENT SATURATED:") + 1].startswith(
        " these figures are limited by the load generator"
    )
    for reason in saturated["client_saturation_reasons"]:
        assert reason in page.texts
    assert "Stopped early: interrupted by SIGINT" in page.text
    assert "Client limited the figures: YES: the client limited these figures" in page.text


# Were it let through, the browser would run the script, fail to load the image and run its
# handler: each a problem it reports.
HOSTILE = '</td><script>console.error("x")</script><img src=x onerror="console.error(1)">&amp;'


def test_everything_from_outside_is_escaped() -> None:
    result = made_up_result(failed=0)
    bad = msgspec.structs.replace(
        made_up_record(99, ok=False), error_type="ServerError", error=f"HTTP 500: {HOSTILE}"
    )
    summary = compose(
        made_up_config(),
        msgspec.structs.replace(
            TARGET, model=HOSTILE, base_url="http://user:sk-test-secret@h:1/v1"
        ),
        [ShardResult(worker=0, records=[*result.records, bad], load=made_up_load(0.3))],
        stopped=HOSTILE,
    ).summary
    server = made_up_server_metrics()
    server["errors"] = [{"message": HOSTILE, "count": 1}]
    summary.update(
        params={"x": HOSTILE},
        workload={**summary["workload"], "tokenizer": HOSTILE},
        client_saturated=True,
        client_saturation_reasons=[HOSTILE],
        server_metrics=server,
    )
    png = Chart(HOSTILE, b"\x89PNG not really")
    page_text = run_page(summary, charts=[png])
    page = Page(page_text)
    assert page.problems == []
    check_self_contained(page)
    assert page.tags.count("img") == 1  # the chart's, none injected
    assert "sk-test-secret" not in page_text
    text = " ".join(page.texts)
    # The text arrives intact: escaped in the page, read back as it was.
    assert f"HTTP 500: {HOSTILE}" in page.texts
    assert text.count(HOSTILE) >= 7  # title, model, stop, reasons, params, tokenizer, scrape


def test_without_matplotlib_the_page_says_so_and_has_no_image() -> None:
    page = Page(run_page(a_summary(), charts=None))
    assert NO_CHARTS in page.texts
    assert "img" not in page.tags


def test_a_sweeps_page_has_its_levels_table_and_each_level() -> None:
    document = sweep_document()
    document["runs"][0] = {**document["runs"][0], "server_metrics": made_up_server_metrics()}
    levels = [
        LevelReport(level, run, charts=[Chart("c", b"png")] if level < 4 else None)
        for level, run in zip(document["levels"], document["runs"], strict=True)
    ]
    page = Page(sweep_page(document, [Chart("sweep", b"png")], levels))
    assert page.problems == []
    check_self_contained(page)
    assert page.tags.count("section") == 4
    assert page.tags.count("img") == 1 + 2
    assert page.texts.count(NO_CHARTS) == 2
    text = page.text
    for level in (1, 2, 4, 8):
        assert f"Level: concurrency {level}" in text
    # The server's peak where a level was scraped, a dash where not.
    assert "concurrency 1 10.00 100.0 150.0 200.0" in text
    assert "Server running max" in page.texts
    assert "SATURATED" in page.texts
    assert f"Stopped at concurrency 8: {document['stop_reason']}" in text


def test_charts_are_the_plot_modules_figures_as_png(tmp_path: Path) -> None:
    result = made_up_result()
    charts = run_charts(
        {**result.summary, "server_metrics": made_up_server_metrics()},
        result.records,
        result.loads,
    )
    assert charts is not None
    assert [chart.png[:8] for chart in charts] == [b"\x89PNG\r\n\x1a\n"] * 3
    sweep = sweep_charts(sweep_document())
    assert sweep is not None
    path = tmp_path / "r.html"
    write_html(path, run_page(result.summary, charts))
    assert Page(path.read_text("utf-8")).tags.count("img") == 3


# -- in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> str:
    """Chromium's binary, found before any report is made for it (or the test skips)."""
    return chromium()


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pages of real runs against the emulator: one run (with the server's series), a sweep,
    and a run whose every request failed with a message full of markup."""
    where = tmp_path_factory.mktemp("reports")
    runs = {
        "run": [
            "--concurrency",
            "4",
            "--requests",
            "12",
            "--metrics-url",
            "auto",
            "--metrics-interval",
            "0.05",
        ],
        "sweep": [
            "--sweep-concurrency",
            "1,2",
            "--requests",
            "4",
            "--metrics-url",
            "auto",
            "--json",
            str(where / "sweep.json"),
        ],
        "failed": ["--model", HOSTILE, "--requests", "8"],
    }
    for name, options in runs.items():
        status = main(
            ["bench", *FAST_MOCK, *SMALL, *options, "--html", str(where / f"{name}.html")]
        )
        assert status == (1 if name == "failed" else 0), name
    return {name: where / f"{name}.html" for name in runs}


def check_in_the_browser(visit: Any, charts: int) -> None:
    assert visit.problems == []
    # Nothing but the page itself and its inline images was asked for.
    assert visit.requested
    for url in visit.requested:
        assert url.startswith(("file://", "data:image/png;base64,")), url[:80]
    assert len(visit.images) == charts
    for image, shot in zip(visit.images, visit.image_shots, strict=True):
        # Decoded, and laid out on the page.
        assert min(image["width"], image["height"], image["w"], image["h"]) > 0, image
        spread, dark = ink(shot)
        # The chart as painted on the page: lines and text, not one flat colour.
        assert spread > 0.05, image["alt"]
        assert dark > 0.01, image["alt"]
    spread, dark = ink(visit.screenshot)
    assert spread > 0.05
    assert dark > 0.001


@pytest.mark.browser
async def test_a_runs_page_in_chromium(browser: str, reports: dict[str, Path]) -> None:
    async with Chromium(browser) as chromium:
        visit = await chromium.visit(reports["run"])
    check_in_the_browser(visit, charts=3)


@pytest.mark.browser
async def test_a_sweeps_page_in_chromium(browser: str, reports: dict[str, Path]) -> None:
    async with Chromium(browser) as chromium:
        visit = await chromium.visit(reports["sweep"])
    # The sweep's chart, and each level's three (a busy machine may end it after one).
    levels = json.loads((reports["sweep"].parent / "sweep.json").read_text())["levels"]
    assert levels[0] == 1
    check_in_the_browser(visit, charts=1 + 3 * len(levels))


@pytest.mark.browser
async def test_markup_in_an_error_message_stays_text_in_chromium(
    browser: str, reports: dict[str, Path]
) -> None:
    # Had the page let the model's name or the server's message through, its script would
    # log an error and its image fail to load: the browser would see it.
    async with Chromium(browser) as chromium:
        visit = await chromium.visit(reports["failed"])
    assert visit.problems == []
    assert [image["alt"] for image in visit.images] == [
        "TTFT and ITL: histograms and cumulative distributions",
        "The run over time: latency by send time, throughput, the client's lag",
    ]
    text = reports["failed"].read_text("utf-8")
    assert "does not exist" in text
    assert HOSTILE not in text


@pytest.mark.browser
async def test_the_browser_checks_can_fail(browser: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><body>"
        '<img alt="gone" src="missing.png">'
        '<img alt="blank" src="data:image/png;base64,'
        # A 1x1 white PNG.
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
        '" width="200" height="100">'
        '<script>console.error("boom")</script>'
        "</body></html>"
    )
    async with Chromium(browser) as chromium:
        visit = await chromium.visit(broken)
    problems = " | ".join(visit.problems)
    assert "console.error: boom" in problems
    assert "missing.png" in problems
    gone, blank = visit.images
    assert gone["width"] == 0
    assert blank["width"] == 1
    assert ink(visit.image_shots[1])[0] < 0.01  # a blank image reads as blank
    assert any(url.endswith("missing.png") for url in visit.requested)
