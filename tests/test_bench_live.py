"""The live progress line: drawn in place on a terminal, silent elsewhere."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from qwen_sse.bench import live as live_module
from qwen_sse.bench.live import LiveProgress, sample_of
from tests.bench_documents import made_up_record


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_unless_the_stream_is_a_terminal() -> None:
    stream = io.StringIO()
    live = LiveProgress(stream, planned=10)
    assert not live.enabled
    live.add([sample_of(made_up_record(1))])
    live.refresh(force=True)
    live.close()
    assert stream.getvalue() == ""


def test_the_line_counts_rates_percentiles_and_errors() -> None:
    terminal = Terminal()
    live = LiveProgress(terminal, planned=10, interval_s=3600)
    live.add([sample_of(made_up_record(i)) for i in range(4)])
    live.add([sample_of(made_up_record(9, ok=False))])
    line = live.line(2.0)
    assert line.startswith("  2.0 s · 5/10 done · 2.5 req/s · TTFT p50 ")
    assert "TPOT p50 " in line
    assert line.endswith("1 errors")
    live.refresh()
    live.refresh()  # within the interval: not drawn again
    assert terminal.getvalue().count("\r\x1b[2K") == 1
    live.close()
    assert terminal.getvalue().endswith("\n")


def test_a_timed_run_shows_its_duration() -> None:
    live = LiveProgress(Terminal(), planned=None, duration_s=30)
    assert live.line(1.0).startswith("  1.0/30 s · 0 done")


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
    live.add([sample_of(made_up_record(0))])
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
