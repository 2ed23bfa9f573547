"""PNG charts (the plot extra): the figures' panels and axes, the smoothed series, and the
files read back (size, not blank), for a run, a run without successes and a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from qwen_sse.bench.metrics import percentile_key
from qwen_sse.bench.plot import (
    DISTRIBUTIONS_PNG,
    SERVER_PNG,
    SWEEP_PNG,
    TIMELINE_PNG,
    distributions_figure,
    level_directory,
    rate_series,
    server_figure,
    smoothing_window_s,
    sweep_figure,
    timeline_figure,
    write_charts,
    write_sweep_chart,
)
from tests.bench_documents import made_up_result, made_up_server_metrics


def read_back(path: Path, figure: Figure) -> None:
    """The PNG at ``path`` is ``figure``'s size and has something drawn on it."""
    pixels = imread(path)
    width, height = figure.get_size_inches() * figure.dpi
    assert pixels.shape[:2] == (round(height), round(width))
    colours = pixels[..., :3]
    # Not one flat colour, and a fair share of it is ink, not background.
    assert colours.std() > 0.05
    assert (colours.min(axis=2) < 0.8).mean() > 0.01


def titled(figure: Figure) -> dict[str, Any]:
    return {axes.get_title(): axes for axes in figure.axes if axes.get_title()}


def test_a_run_draws_both_files(tmp_path: Path) -> None:
    result = made_up_result(lag_ms=30)
    paths = write_charts(result.summary, result.records, result.loads, tmp_path / "charts")
    assert paths == [tmp_path / "charts" / DISTRIBUTIONS_PNG, tmp_path / "charts" / TIMELINE_PNG]
    read_back(paths[0], distributions_figure(result.summary, result.records))
    read_back(paths[1], timeline_figure(result.summary, result.records, result.loads))


def test_distributions_have_histograms_and_cumulative_distributions() -> None:
    result = made_up_result()
    figure = distributions_figure(result.summary, result.records)
    assert len(figure.axes) == 4
    panels = titled(figure)
    assert set(panels) == {
        "Time to first token",
        "Inter-token latency",
        "Time to first token, cumulative",
        "Inter-token latency, cumulative",
    }
    cdf = panels["Time to first token, cumulative"]
    assert cdf.get_ylim() == pytest.approx((0, 1.02))
    assert cdf.get_ylabel() == "share of requests at or below"
    # The curve climbs to 1 over the measured TTFTs, and p50, p90 and p99 are marked with
    # the summary's own values.
    curve = cdf.lines[0]
    ys = list(curve.get_ydata())
    assert ys == sorted(ys)
    assert ys[-1] == pytest.approx(1.0)
    assert len(ys) == result.summary["completed"]
    marks = {text.get_text() for text in cdf.texts}
    for p in (50, 90, 99):
        key = "median_ttft_ms" if p == 50 else percentile_key(p, "ttft")
        assert f"p{p} {result.summary[key]:.1f} ms" in marks
    itl = panels["Inter-token latency, cumulative"]
    assert len(itl.lines[0].get_ydata()) == sum(len(r.itl_s) for r in result.records if r.ok)


def test_the_timeline_keeps_ttft_readable() -> None:
    result = made_up_result()
    figure = timeline_figure(result.summary, result.records, result.loads)
    # Four panels, and the throughput panel's twin axis for tokens.
    assert len(figure.axes) == 5
    panels = titled(figure)
    ttft = panels["Time to first token, by send time"]
    e2e = panels["End-to-end latency, by send time"]
    ok = [record for record in result.records if record.ok]
    longest_ttft_ms = max((r.ttft_s or 0.0) * 1000 for r in ok)
    shortest_e2e_ms = min(r.e2e_s * 1000 for r in ok)
    assert longest_ttft_ms < shortest_e2e_ms
    # TTFT has an axis of its own: its scale ends near its own values, below any
    # end-to-end latency; on one axis with them it would be squeezed into the bottom.
    assert ttft.get_ylim()[1] < shortest_e2e_ms
    assert ttft.get_ylim()[1] >= longest_ttft_ms
    assert e2e.get_ylim()[1] >= max(r.e2e_s * 1000 for r in ok)
    # The failed requests show, marked apart.
    assert any("failed (2)" in text.get_text() for text in e2e.get_legend().get_texts())
    lateness = panels["Client: how late its event loop was"]
    labels = [text.get_text() for text in lateness.get_legend().get_texts()]
    assert labels[:2] == ["event-loop lag, worker 0", "receive lag, worker 0"]
    # A short run: the window is the whole run, and says so.
    start = min(r.sent_at_s for r in result.records)
    span = max(r.end_at_s for r in result.records) - start
    throughput = panels["Throughput"]
    (label,) = [text.get_text() for text in throughput.get_legend().get_texts()]
    assert label == f"requests/s ({span:.3g} s window)"
    (line,) = throughput.lines
    assert min(line.get_xdata()) == pytest.approx(start)


def test_a_run_without_successes_still_draws(tmp_path: Path) -> None:
    result = made_up_result(requests=3, failed=3)
    paths = write_charts(result.summary, result.records, result.loads, tmp_path)
    assert paths == [tmp_path / DISTRIBUTIONS_PNG, tmp_path / TIMELINE_PNG]
    figure = distributions_figure(result.summary, result.records)
    assert all(axes.texts[0].get_text() == "no data" for axes in figure.axes)
    read_back(paths[0], figure)
    read_back(paths[1], timeline_figure(result.summary, result.records, result.loads))


def test_the_window_is_several_seconds_and_never_longer_than_the_run() -> None:
    assert smoothing_window_s(60.0) == 5.0
    assert smoothing_window_s(400.0) == 20.0
    assert smoothing_window_s(2.0) == 2.0


def test_a_steady_rate_is_level_to_the_edges() -> None:
    # One completion every 0.25 s for 30 s: 4 per second everywhere, ends included.
    points = [(0.25 * (k + 1), 1.0) for k in range(120)]
    xs, rates, window = rate_series(points, 0.0, 30.0)
    assert window == 5.0
    assert len(xs) == len(rates) == 200
    assert xs[0] == 0.0
    assert xs[-1] == pytest.approx(30.0)
    # Within one completion over the narrowest window (half of one, at either end).
    assert rates == pytest.approx([4.0] * 200, abs=1 / (window / 2))
    assert rates[100] == pytest.approx(4.0, abs=1 / window)


def test_slots_ending_together_do_not_swing_the_rate() -> None:
    # A closed loop of 8 slots in lockstep: 8 completions at once every second. Bins of
    # one second would read 8 or 0 depending on where they fall (and 16 in the
    # unluckiest); the sliding window reads the 8 per second it is.
    points = [(second + 0.5, 1.0) for second in range(60) for _ in range(8)]
    _, rates, _ = rate_series(points, 0.0, 60.0)
    assert min(rates) >= 8 * 0.8
    assert max(rates) <= 8 * 1.2
    # Amounts weigh in: tokens spread over chunks add up to the same rate.
    tokens = [(at, 0.5) for at, _ in points for _ in range(2)]
    assert rate_series(tokens, 0.0, 60.0)[1] == pytest.approx(rates)


def test_nothing_to_smooth() -> None:
    assert rate_series([], 0.0, 10.0) == ([], [], 0.0)
    assert rate_series([(1.0, 1.0)], 1.0, 1.0) == ([], [], 0.0)


def sweep_document(saturated_last: bool = True) -> dict[str, Any]:
    runs = []
    for level in (1, 2, 4, 8):
        summary: dict[str, Any] = dict(made_up_result().summary)
        # Throughput rises with the level, then latency with it (as an endpoint saturates).
        summary["output_throughput"] = 100.0 * min(level, 4)
        summary["request_throughput"] = 10.0 * min(level, 4)
        summary["median_ttft_ms"] = 150.0 * (1 + (level == 8) * 3)
        summary[percentile_key(99, "ttft")] = 200.0 * (1 + (level == 8) * 3)
        summary["client_saturated"] = saturated_last and level == 8
        runs.append(summary)
    return {
        "schema": "urn:qwen-sse:bench-sweep:1",
        "kind": "concurrency",
        "levels": [1, 2, 4, 8],
        "runs": runs,
        "saturated_at": 8,
        "stop_reason": "throughput 40.00 req/s gained less than 10% over 40.00 req/s",
    }


def test_a_sweep_draws_throughput_against_latency(tmp_path: Path) -> None:
    document = sweep_document()
    figure = sweep_figure(document)
    # Three latency panels, the throughput panel and its twin axis for tokens.
    assert len(figure.axes) == 5
    panels = titled(figure)
    ttft = panels["Time to first token against output throughput"]
    assert ttft.get_xlabel() == "output tokens/s"
    assert ttft.get_ylabel() == "TTFT, ms"
    p50, p99 = ttft.lines
    assert list(p50.get_xdata()) == [100.0, 200.0, 400.0, 400.0]
    assert list(p50.get_ydata()) == [150.0, 150.0, 150.0, 600.0]
    assert list(p99.get_ydata()) == [200.0, 200.0, 200.0, 800.0]
    # One point per level, labelled with it.
    assert [text.get_text() for text in ttft.texts] == ["c=1", "c=2", "c=4", "c=8"]
    legend = [text.get_text() for text in ttft.get_legend().get_texts()]
    assert legend == ["p50", "p99", "client saturated"]
    assert {"Inter-token latency against output throughput", "Throughput by level"} <= set(panels)
    assert panels["End-to-end latency against output throughput"].get_ylabel() == ("end-to-end, ms")
    assert panels["Throughput by level"].get_xlabel() == "concurrency"
    assert figure.get_suptitle().startswith("qwen-plus · sweep of concurrency · stopped at c=8")
    path = write_sweep_chart(document, tmp_path / "charts")
    assert path == tmp_path / "charts" / SWEEP_PNG
    read_back(path, figure)


def test_a_sweep_of_rates_shows_the_offered_rate() -> None:
    document = sweep_document(saturated_last=False)
    document["kind"] = "rates"
    document["saturated_at"] = None
    figure = sweep_figure(document)
    panels = titled(figure)
    ttft = panels["Time to first token against output throughput"]
    assert [text.get_text() for text in ttft.texts] == ["1 req/s", "2 req/s", "4 req/s", "8 req/s"]
    assert [text.get_text() for text in ttft.get_legend().get_texts()] == ["p50", "p99"]
    by_level = panels["Throughput by level"]
    offered = by_level.lines[1]
    assert list(offered.get_xdata()) == list(offered.get_ydata()) == [1, 2, 4, 8]
    assert by_level.get_xlabel() == "req/s offered"
    assert figure.get_suptitle().endswith("no saturation within the levels given")


def test_a_level_without_successes_leaves_a_gap(tmp_path: Path) -> None:
    document = sweep_document()
    failed = made_up_result(requests=3, failed=3).summary
    document["runs"][1] = failed
    figure = sweep_figure(document)
    ttft = titled(figure)["Time to first token against output throughput"]
    assert [text.get_text() for text in ttft.texts] == ["c=1", "c=4", "c=8"]
    empty = sweep_figure({**document, "levels": [], "runs": []})
    assert all(axes.texts[0].get_text() == "no data" for axes in empty.axes if axes.get_title())
    read_back(write_sweep_chart(document, tmp_path), figure)


def test_each_level_has_a_directory_of_its_own(tmp_path: Path) -> None:
    assert level_directory(tmp_path, 8) == tmp_path / "level-8"
    assert level_directory(tmp_path, 2.5) == tmp_path / "level-2.5"


def test_the_servers_series_are_drawn_at_each_scrape(tmp_path: Path) -> None:
    result = made_up_result()
    server = made_up_server_metrics(failed=1)
    summary = {**result.summary, "server_metrics": server}
    paths = write_charts(summary, result.records, result.loads, tmp_path)
    assert paths[2] == tmp_path / SERVER_PNG
    figure = server_figure(server)
    read_back(paths[2], figure)
    panels = titled(figure)
    requests = panels["Requests the server was running and queueing, at each scrape"]
    running, waiting = requests.lines
    assert list(running.get_xdata()) == server["series"]["requests_running"]["at_s"]
    assert list(running.get_ydata()) == [0.0, 4.0, 8.0, 6.0, 0.0]
    assert list(waiting.get_ydata()) == [0.0, 0.0, 2.0, 0.0, 0.0]
    labels = [text.get_text() for text in requests.get_legend().get_texts()]
    assert labels == ["running (vllm:num_requests_running)", "waiting (vllm:num_requests_waiting)"]
    cache = panels["KV-cache use"]
    assert max(cache.lines[0].get_ydata()) == 50.0  # percent
    assert figure.get_suptitle() == "The server's /metrics: 6 scrapes, 1 failed"


def test_without_a_cache_series_one_panel_and_without_series_no_file(tmp_path: Path) -> None:
    figure = server_figure(made_up_server_metrics(kv_cache=False))
    assert len(figure.axes) == 1
    result = made_up_result()
    nothing = {**made_up_server_metrics(), "series": {}}
    paths = write_charts(
        {**result.summary, "server_metrics": nothing}, result.records, result.loads, tmp_path
    )
    assert paths == [tmp_path / DISTRIBUTIONS_PNG, tmp_path / TIMELINE_PNG]
