"""PNG charts (the plot extra): both files are drawn, with data and without."""

from __future__ import annotations

from pathlib import Path

from qwen_sse.bench.plot import DISTRIBUTIONS_PNG, TIMELINE_PNG, write_charts
from tests.bench_documents import made_up_result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_charts_are_written(tmp_path: Path) -> None:
    result = made_up_result(lag_ms=30)
    paths = write_charts(result.summary, result.records, result.loads, tmp_path / "charts")
    assert [path.name for path in paths] == [DISTRIBUTIONS_PNG, TIMELINE_PNG]
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        assert path.stat().st_size > 10_000


def test_a_run_without_successes_still_draws(tmp_path: Path) -> None:
    result = made_up_result(requests=3, failed=3)
    paths = write_charts(result.summary, result.records, result.loads, tmp_path)
    assert paths == [tmp_path / DISTRIBUTIONS_PNG, tmp_path / TIMELINE_PNG]
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
