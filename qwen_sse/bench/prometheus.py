"""The Prometheus text exposition format (version 0.0.4, what ``/metrics`` of vLLM,
llama.cpp's server and TGI serve), parsed into samples and their families' types.

Edge layer (bench); pure: text in, values out, no I/O. It reads what the format allows:
``# HELP`` and ``# TYPE`` lines (any other ``#`` line is a comment, ``# EOF`` included),
blank lines, label values with the escapes ``\\\\``, ``\\"`` and ``\\n``, a trailing
comma in a label set, ``NaN``, ``+Inf`` and ``-Inf``, optional millisecond timestamps, and
the samples of histograms (``_bucket``, ``_sum``, ``_count``) and summaries (``_sum``,
``_count``) under their family's name. A line it cannot read raises
:class:`PrometheusFormatError` naming its line number: a page half understood would give
figures that look right and are not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CUMULATIVE_SUFFIXES",
    "Exposition",
    "PrometheusFormatError",
    "Sample",
    "family_of",
    "parse",
]

METRIC_TYPES = frozenset(("counter", "gauge", "histogram", "summary", "untyped"))
# The samples of a family that are not named as the family itself.
_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    # OpenMetrics names a counter's family without _total; text 0.0.4 exporters may too.
    "counter": ("_total",),
}
CUMULATIVE_SUFFIXES = ("_sum", "_count")
"""The samples of a histogram or summary that only grow, as a counter does."""

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Go's strconv.ParseFloat as Prometheus writes numbers; Python's float() alone would also
# take "1_000" and " 1 ".
_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[Nn][Aa][Nn]|[Ii][Nn][Ff](?:inity)?)"
)
_TIMESTAMP = re.compile(r"-?[0-9]+")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class PrometheusFormatError(ValueError):
    """A ``/metrics`` page that is not the text exposition format; the message names the
    line and what was wrong with it."""


class Sample(NamedTuple):
    """One sample line: its metric ``name`` (``vllm:e2e_request_latency_seconds_bucket``),
    its labels as sorted ``(name, value)`` pairs, its ``value`` and its timestamp in
    milliseconds, if the line carried one."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Exposition:
    """A parsed page: its ``samples`` in order, the ``types`` its ``# TYPE`` lines declared
    and the ``helps`` of its ``# HELP`` lines, both by family name."""

    samples: tuple[Sample, ...]
    types: dict[str, str]
    helps: dict[str, str]

    def type_of(self, name: str) -> tuple[str, str]:
        """``(family, type)`` of a sample name: see :func:`family_of`."""
        return family_of(name, self.types)


def family_of(name: str, types: dict[str, str]) -> tuple[str, str]:
    """The family a sample of ``name`` belongs to and the family's type: the name itself
    when it was declared, else the declared histogram, summary or counter it is a
    ``_bucket``/``_sum``/``_count``/``_total`` sample of, else ``(name, "untyped")``."""
    declared = types.get(name)
    if declared is not None:
        return name, declared
    for kind, suffixes in _SUFFIXES.items():
        for suffix in suffixes:
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                if types.get(base) == kind:
                    return base, kind
    return name, "untyped"


def parse(text: str) -> Exposition:
    """Parse a whole ``/metrics`` page (see the module for what it accepts)."""
    samples: list[Sample] = []
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            if line.lstrip(" \t").startswith("#"):
                _comment(line.lstrip(" \t"), types, helps)
            else:
                samples.append(_sample(line))
        except PrometheusFormatError as error:
            raise PrometheusFormatError(f"line {number}: {error}") from None
    return Exposition(tuple(samples), types, helps)


def _comment(line: str, types: dict[str, str], helps: dict[str, str]) -> None:
    parts = line[1:].strip(" \t").split(None, 2)
    if len(parts) < 2 or parts[0] not in ("HELP", "TYPE"):
        return  # a plain comment
    keyword, name = parts[0], parts[1]
    if not _NAME.fullmatch(name):
        raise PrometheusFormatError(f"# {keyword} of an invalid metric name {name!r}")
    rest = parts[2] if len(parts) > 2 else ""
    if keyword == "HELP":
        helps[name] = _help_text(rest)
        return
    kind = rest.strip().lower()
    if kind not in METRIC_TYPES:
        raise PrometheusFormatError(f"# TYPE {name} {rest.strip()!r}: not a metric type")
    if name in types:
        raise PrometheusFormatError(f"a second # TYPE line for {name}")
    types[name] = kind


def _sample(line: str) -> Sample:
    at = _skip(line, 0)
    name_match = _NAME.match(line, at)
    if name_match is None:
        raise PrometheusFormatError(f"no metric name at {_excerpt(line[at:])}")
    name = name_match.group()
    at = name_match.end()
    labels: list[tuple[str, str]] = []
    if line.startswith("{", at):
        at = _labels(line, at + 1, labels)
    elif at < len(line) and line[at] not in " \t":
        raise PrometheusFormatError(f"{name}: unexpected {_excerpt(line[at:])} after the name")
    fields = line[at:].split()
    if not fields:
        raise PrometheusFormatError(f"{name}: no value")
    if len(fields) > 2:
        raise PrometheusFormatError(f"{name}: more than a value and a timestamp")
    if not _NUMBER.fullmatch(fields[0]):
        raise PrometheusFormatError(f"{name}: {fields[0]!r} is not a number")
    timestamp: int | None = None
    if len(fields) == 2:
        if not _TIMESTAMP.fullmatch(fields[1]):
            raise PrometheusFormatError(f"{name}: timestamp {fields[1]!r} is not an integer")
        timestamp = int(fields[1])
    names = [label for label, _ in labels]
    if len(set(names)) != len(names):
        raise PrometheusFormatError(f"{name}: a label given twice")
    return Sample(name, tuple(sorted(labels)), float(fields[0]), timestamp)


def _labels(line: str, at: int, labels: list[tuple[str, str]]) -> int:
    """Read ``label="value", ...}`` from ``at`` (just after the brace) into ``labels``;
    return the index after the closing brace."""
    while True:
        at = _skip(line, at)
        if line.startswith("}", at):
            return at + 1
        label = _LABEL_NAME.match(line, at)
        if label is None:
            raise PrometheusFormatError(f"expected a label name at {_excerpt(line[at:])}")
        name = label.group()
        at = _skip(line, label.end())
        if not line.startswith("=", at):
            raise PrometheusFormatError(f"label {name}: expected = after the name")
        at = _skip(line, at + 1)
        if not line.startswith('"', at):
            raise PrometheusFormatError(f"label {name}: expected a quoted value")
        value, at = _quoted(line, at + 1, name)
        labels.append((name, value))
        at = _skip(line, at)
        if line.startswith(",", at):
            at += 1
        elif not line.startswith("}", at):
            raise PrometheusFormatError(
                f"after label {name}: expected ',' or '}}' at {_excerpt(line[at:])}"
            )


def _quoted(line: str, at: int, label: str) -> tuple[str, int]:
    """The label value from ``at`` (just after its opening quote) to its closing quote,
    unescaped, and the index after the closing quote."""
    out: list[str] = []
    while at < len(line):
        char = line[at]
        if char == '"':
            return "".join(out), at + 1
        if char == "\\":
            escaped = line[at + 1 : at + 2]
            if not escaped:
                break
            if escaped not in _ESCAPES:
                raise PrometheusFormatError(f"label {label}: unknown escape \\{escaped}")
            out.append(_ESCAPES[escaped])
            at += 2
            continue
        out.append(char)
        at += 1
    raise PrometheusFormatError(f"label {label}: the value's closing quote is missing")


def _help_text(text: str) -> str:
    """A HELP text's escapes, ``\\\\`` and ``\\n``; any other backslash stays as it is,
    as Prometheus reads it."""
    return re.sub(r"\\([\\n])", lambda m: "\n" if m.group(1) == "n" else "\\", text)


def _skip(line: str, at: int) -> int:
    """The index of the first character at or after ``at`` that is not a blank or tab."""
    while at < len(line) and line[at] in " \t":
        at += 1
    return at


def _excerpt(text: str) -> str:
    return repr(text[:40] + ("…" if len(text) > 40 else ""))
