"""The live progress line: drawn in place on a terminal, silent elsewhere; informative from
its first draw (starting, in flight, first tokens), never a "0 done" lull."""

from __future__ import annotations

import io
from types import SimpleNamespace

import msgspec
import pytest

from qwen_sse.bench import live as live_module
from qwen_sse.bench.live import LiveProgress
from tests.bench_documents import made_up_record


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_unless_the_stream_is_a_terminal() -> None:
    stream = io.StringIO()
    live = LiveProgress(stream, planned=10)
    assert not live.enabled
    live.add([made_up_record(1)])
    live.refresh(force=True)
    live.close()
    assert stream.getvalue() == ""


def test_before_anything_is_sent_it_says_starting() -> None:
    live = LiveProgress(Terminal(), planned=10)
    assert live.line(0.0) == "  0.0 s · starting"
    live.flight(0, sent=0, in_flight=0, streaming=0)
    assert live.line(0.2) == "  0.2 s · starting"


def test_before_any_request_ends_it_shows_what_is_in_flight_and_first_tokens() -> None:
    live = LiveProgress(Terminal(), planned=200)
    live.flight(0, sent=8, in_flight=8, streaming=0)
    assert live.line(0.1) == "  0.1 s · 8 in flight (0 streaming)"
    live.flight(0, sent=8, in_flight=8, streaming=3)
    live.first_tokens([0.150, 0.152, 0.160])
    line = live.line(0.4)
    assert line == "  0.4 s · 8 in flight (3 streaming) · TTFT p50 152 ms p99 160 ms"
    assert "done" not in line
    assert "errors" not in line


def test_the_line_counts_rates_percentiles_and_errors() -> None:
    terminal = Terminal()
    live = LiveProgress(terminal, planned=10, interval_s=3600)
    live.flight(0, sent=9, in_flight=4, streaming=2)
    live.first_tokens([0.1, 0.11])
    live.add([made_up_record(i) for i in range(4)])
    live.add([made_up_record(9, ok=False)])
    line = live.line(2.0)
    assert line.startswith(
        "  2.0 s · 4 in flight (2 streaming) · 5/10 done · 2.5 req/s · TTFT p50 "
    )
    assert "TPOT p50 " in line
    assert line.endswith("1 errors")
    live.refresh()
    live.refresh()  # within the interval: not drawn again
    assert terminal.getvalue().count("\r\x1b[2K") == 1
    live.close()
    assert terminal.getvalue().endswith("\n")


def test_a_cancelled_request_is_neither_done_nor_an_error() -> None:
    live = LiveProgress(Terminal(), planned=10)
    live.flight(0, sent=2, in_flight=0, streaming=0)
    cut = msgspec.structs.replace(made_up_record(1, ok=False), cancelled=True)
    live.add([made_up_record(0), cut])
    assert (live.done, live.failed) == (1, 0)
    assert live.line(1.0).endswith("1/10 done · 1.0 req/s · TPOT p50 21.0 ms · 0 errors")


def test_workers_in_flight_add_up() -> None:
    live = LiveProgress(Terminal(), planned=None, duration_s=30)
    live.flight(0, sent=3, in_flight=3, streaming=1)
    live.flight(1, sent=4, in_flight=4, streaming=2)
    live.flight(0, sent=5, in_flight=2, streaming=2)  # a newer report replaces the older
    assert live.line(1.0) == "  1.0/30 s · 6 in flight (4 streaming)"


class FakeClock:
    """A monotonic clock that starts where a freshly booted machine's does: at zero."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def monotonic(self) -> float:
        return self.now_s


@pytest.mark.parametrize("boot_s", [0.0, 0.2, 5000.0])
def test_redraws_follow_the_interval_whatever_the_clock_reads_at_start(
    boot_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    clock.now_s = boot_s
    monkeypatch.setattr(live_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    terminal = Terminal()
    live = LiveProgress(terminal, planned=3, interval_s=0.5)
    live.refresh()  # the first refresh draws, however soon after boot
    assert terminal.getvalue() == "\r\x1b[2K" + live.line(0.0)
    clock.now_s += 0.3
    live.refresh()
    assert terminal.getvalue().count("\r\x1b[2K") == 1
    clock.now_s += 0.3
    live.add([made_up_record(0)])
    live.refresh()
    assert terminal.getvalue().count("\r\x1b[2K") == 2
    assert terminal.getvalue().endswith(live.line(0.6))
    live.close()
    assert terminal.getvalue().count("\r\x1b[2K") == 3
    assert terminal.getvalue().endswith(live.line(0.6) + "\n")


def test_closing_before_any_draw_writes_nothing() -> None:
    terminal = Terminal()
    LiveProgress(terminal, planned=3).close()
    assert terminal.getvalue() == ""
