"""What machine and which package versions a benchmark ran on, for its JSON report, and
the options every script's report shares.

Imported by the scripts beside it (``python benchmarks/bench_*.py`` puts this folder on
``sys.path``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "Processor")):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(packages: Iterable[str]) -> dict[str, Any]:
    """Python, platform, CPU, load, and the versions of ``packages``."""
    return {
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "packages": {name: version(name) for name in packages},
    }


def emit(document: dict[str, Any], path: str | Path | None) -> None:
    """The JSON report: to ``path`` when given (saying so on stderr), else to stdout."""
    text = json.dumps(document, indent=2)
    if path is None:
        print(text)
        return
    Path(path).write_text(text + "\n", encoding="utf-8")
    print(f"JSON written to {path}", file=sys.stderr)


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """``--quick`` (tiny sizes: what the smoke tests run) and ``--json FILE`` (where
    :func:`emit` writes the report), the same in every script."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--json", metavar="FILE", help="write the JSON here, not to stdout")
