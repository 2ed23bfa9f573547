"""``qwen-sse bench compare A.json B.json``: two bench results side by side, each figure's
difference and whether it is significant.

Edge layer (cli). A subcommand of ``bench`` (registered by :mod:`qwen_sse.cli.bench`); the
comparison is :mod:`qwen_sse.bench.compare`'s, the table :mod:`qwen_sse.bench.report`'s.
Exit status: 0 when the table was printed (whatever it says), 2 when a file cannot be read
or the two cannot be compared (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qwen_sse.bench.compare import DocumentError, compare, read_document, read_records
from qwen_sse.bench.report import format_comparison, write_json

_PROG = "qwen-sse bench compare"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        description="Compare two results of `qwen-sse bench --json` (single runs, "
        "--repeat runs, or sweeps, matched by level) or of vLLM's benchmark_serving: "
        "each figure of A and of B, B's difference from A, and whether it is significant "
        "(Welch's t-test across runs at 95%, when both sides have at least 2 runs).",
    )
    parser.add_argument("a", metavar="A.json", help="the baseline")
    parser.add_argument("b", metavar="B.json", help="the result compared with it")
    parser.add_argument(
        "--jsonl",
        nargs=2,
        metavar=("A.jsonl", "B.jsonl"),
        help="the per-request records of two single runs (bench --jsonl): compare each "
        "latency's requests by the Mann-Whitney U test",
    )
    parser.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        a, b = read_document(args.a), read_document(args.b)
        records = None
        if args.jsonl:
            records = (read_records(args.jsonl[0]), read_records(args.jsonl[1]))
        document = compare(a, b, names=(args.a, args.b), records=records)
    except DocumentError as error:
        print(f"{_PROG}: {error}", file=sys.stderr)
        return 2
    if args.json:
        try:
            write_json(args.json, document)
        except OSError as error:
            print(f"{_PROG}: cannot write {args.json}: {error.strerror}", file=sys.stderr)
            return 2
    print(format_comparison(document))
    return 0
