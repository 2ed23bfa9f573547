"""``qwen-sse bench compare`` end to end: real runs against the emulator (``bench --mock``)
compared through the command line, its JSON validated, and one-line refusals of files that
cannot be compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from qwen_sse.bench.schema import COMPARISON_SCHEMA
from qwen_sse.cli import main

# The warm-up keeps the emulator's cold start (its first requests) out of the figures.
SMALL = ["--input-tokens", "24", "--output-tokens", "4", "--quiet", "--warmup", "2"]
CONCURRENT = ["--concurrency", "2"]


def mock(ttft_ms: int) -> list[str]:
    return ["--mock", "--mock-ttft-ms", str(ttft_ms), "--mock-itl-ms", "5", "--mock-jitter-ms", "1"]


def bench(*options: str) -> None:
    assert main(["bench", *options]) == 0


def figure(document: dict[str, Any], name: str, part: str = "figures") -> dict[str, Any]:
    return next(row for row in document["levels"][0][part] if row["figure"] == name)


def test_repeated_runs_of_a_slower_server_compare_as_significantly_worse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, out_json = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "compare.json"
    # Ten times the time to first token: no busy machine hides that.
    bench(*mock(30), *SMALL, *CONCURRENT, "--requests", "4", "--repeat", "3", "--json", str(a))
    bench(*mock(300), *SMALL, *CONCURRENT, "--requests", "4", "--repeat", "3", "--json", str(b))
    capsys.readouterr()
    assert main(["bench", "compare", str(a), str(b), "--json", str(out_json)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    document: dict[str, Any] = json.loads(out_json.read_text())
    jsonschema.validate(document, COMPARISON_SCHEMA)
    ttft = figure(document, "median_ttft_ms")
    assert ttft["test"] == "welch"
    assert (ttft["significant"], ttft["better"]) == (True, "a")
    assert ttft["difference_percent"] > 100
    lines = out.splitlines()
    assert lines[0] == f"A = {a}: 3 runs, qwen-plus, closed loop, concurrency 2"
    assert "Welch's t-test" in lines[2]
    row = next(line for line in lines if line.startswith("TTFT median (ms)"))
    assert "YES (p" in row
    assert row.endswith("A better")


def test_single_runs_with_their_records_compare_the_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {name: tmp_path / name for name in ("a.json", "a.jsonl", "b.json", "b.jsonl")}
    for side, ttft_ms in (("a", 30), ("b", 300)):
        bench(
            *mock(ttft_ms),
            *SMALL,
            *CONCURRENT,
            "--requests",
            "6",
            "--json",
            str(files[f"{side}.json"]),
            "--jsonl",
            str(files[f"{side}.jsonl"]),
        )
    capsys.readouterr()
    options = [str(files["a.json"]), str(files["b.json"])]
    records = ["--jsonl", str(files["a.jsonl"]), str(files["b.jsonl"])]
    out_json = tmp_path / "compare.json"
    assert main(["bench", "compare", *options, *records, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    document: dict[str, Any] = json.loads(out_json.read_text())
    jsonschema.validate(document, COMPARISON_SCHEMA)
    assert figure(document, "median_ttft_ms")["test"] is None
    ttft = figure(document, "ttft", "distributions")
    assert ttft["test"] == "mann-whitney"
    assert ttft["a"]["n"] == ttft["b"]["n"] == 6
    # Six requests each, all of B's slower than all of A's: p = 0.005.
    assert (ttft["significant"], ttft["better"]) == (True, "a")
    assert "Significance not judged" in out
    assert "Per-request latencies: median; Mann-Whitney U test, p < 0.05" in out
    # Without the records: the table alone.
    assert main(["bench", "compare", *options]) == 0
    assert "Per-request" not in capsys.readouterr().out


def test_files_that_cannot_be_compared_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.json"
    bench(*mock(30), *SMALL, "--requests", "2", "--json", str(run))
    sweep = tmp_path / "sweep.json"
    bench(*mock(30), *SMALL, "--sweep-concurrency", "1", "--requests", "2", "--json", str(sweep))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    capsys.readouterr()
    cases = [
        ([str(tmp_path / "absent.json"), str(run)], "absent.json: cannot read it"),
        ([str(garbage), str(run)], "garbage.json: not JSON"),
        ([str(sweep), str(run)], "sweep.json is a sweep and"),
        ([str(run), str(run), "--jsonl", str(run), str(run)], "run.json, line 1: not a request"),
        ([str(run), str(run), "--json", str(tmp_path / "no" / "dir.json")], "cannot write"),
    ]
    for arguments, message in cases:
        assert main(["bench", "compare", *arguments]) == 2, message
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith("qwen-sse bench compare: ")
        assert message in err
        assert len(err.splitlines()) == 1


def test_bench_help_documents_compare_and_compare_has_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "qwen-sse bench compare A.json B.json" in text
    assert "--repeat N" in text
    with pytest.raises(SystemExit) as exited:
        main(["bench", "compare", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "usage: qwen-sse bench compare [-h] [--jsonl A.jsonl B.jsonl]" in text
    assert "Welch's t-test across runs at 95%, when" in " ".join(text.split())
    with pytest.raises(SystemExit) as exited:
        main(["bench", "compare", "only-one.json"])
    assert exited.value.code == 2
