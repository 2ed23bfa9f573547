"""Mutation testing by hand: one deliberate bug at a time, on a copy of the repository.

Run from the repository root (it never edits the working tree)::

    /work/venv/bin/python tools/mutate.py                       # must-kills + every site
    /work/venv/bin/python tools/mutate.py --limit 30 --seed 1 \\
        --modules qwen_sse/chat.py qwen_sse/retry.py               # a sample
    /work/venv/bin/python tools/mutate.py --must-kill-only        # the curated bugs only

The tracked (and untracked, not ignored) files are copied to a temporary directory. Each
mutant changes one module of the copy, runs the tests that mirror it
(``tests/test_<module>.py``) plus the client's (``tests/test_client.py``) with
``pytest -x -q``, and restores the module. A mutant is *killed* when a test fails (or the
run exceeds its timeout), else it *survives*; every survivor is run once more, so a kill
missed by chance is not reported as a gap, and every kill is rechecked in isolation: the
failing test alone must fail with the mutant (twice) and pass without it (else the test
is flaky: the kill is reported as unconfirmed and not counted).

Two kinds of mutants:

* **must-kill**: the curated bugs of issue 16 item 8, exact text patches against the
  current code (:data:`MUST_KILL`). Each runs every time. A patch whose target text is no
  longer in the module is reported loudly as ``PATCH NO LONGER APPLIES`` (update it with
  the code; never let it skip silently).
* **sampled**: sites found with :mod:`ast`, in a deterministic order: comparisons flipped
  (``<`` / ``<=``, ``>`` / ``>=``, ``==`` / ``!=``, ``is`` / ``is not``, ``in`` /
  ``not in``), ``if`` / ``while`` / ternary conditions negated, ``True`` / ``False``
  swapped, ``and`` / ``or`` swapped, numbers ``n -> n + 1``, and ``raise`` / a ``return``
  guarded by an ``if`` dropped (replaced by ``pass``). ``--limit N`` runs a sample of N
  chosen with ``--seed``. A line ending in ``# pragma: no mutate`` is skipped.

The exit status is 1 when a must-kill survives or no longer applies, or the unmutated
tests fail, else 0. Not part of the main suite: run it by hand or in its own CI stage.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_MODULES = (
    "qwen_sse/sse.py",
    "qwen_sse/chat.py",
    "qwen_sse/chunks.py",
    "qwen_sse/native.py",
    "qwen_sse/retry.py",
    "qwen_sse/ratelimit.py",
    "qwen_sse/errors.py",
    "qwen_sse/client.py",
)
"""The core modules and the client (its deadline and completion rules)."""

ALWAYS_TESTS = ("tests/test_client.py",)


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One bug: ``replacements`` (old text, new text) applied once each to ``module``."""

    module: str
    name: str
    line: int
    replacements: tuple[tuple[str, str], ...]
    must_kill: bool = False


@dataclasses.dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, timeout, survived, unconfirmed, not-applicable
    detail: str = ""
    seconds: float = 0.0


# --- the curated must-kill bugs (issue 16, item 8) -------------------------------------

MUST_KILL: tuple[Mutant, ...] = (
    Mutant(
        "qwen_sse/chat.py",
        "(1) a cut after the finish reason, before [DONE], counted complete",
        0,
        (
            (
                "        self._raise_pending()\n        if self.done:\n            return []\n",
                "        self._raise_pending()\n"
                "        if self.done or any(\n"
                "            state.finish_reason for state in self.accumulator._choices.values()\n"
                "        ):\n"
                "            self.done = True\n"
                "            return []\n",
            ),
        ),
        must_kill=True,
    ),
    Mutant(
        "qwen_sse/client.py",
        "(2) the role-only first chunk stops the first-token timer",
        0,
        (
            (
                "deadlines.first_token_at is not None and _has_output(decoder, chunks):",
                "deadlines.first_token_at is not None and bool(chunks):",
            ),
        ),
        must_kill=True,
    ),
    Mutant(
        "qwen_sse/chat.py",
        "(3) reasoning text does not start the time to first token",
        0,
        (
            (
                "                state.reasoning.append(reasoning)\n"
                "                text_chars += len(reasoning)\n",
                "                state.reasoning.append(reasoning)\n"
                "                self._chars += len(reasoning)\n",
            ),
        ),
        must_kill=True,
    ),
    Mutant(
        "qwen_sse/client.py",
        "(4) the idle timer counts the consumer's time (idle since the last event)",
        0,
        (
            (
                "        self.read_started_at = now = self.loop.time()\n",
                "        now = self.loop.time()\n",
            ),
            (
                "        self.idle_waited_s = 0.0 if event else "
                "self.idle_waited_s + now - self.read_started_at\n",
                "        if event:\n            self.read_started_at = now\n"
                "        self.idle_waited_s = 0.0\n",
            ),
        ),
        must_kill=True,
    ),
    Mutant(
        "qwen_sse/sse.py",
        "(5) the SSE fast path ignores a pending event: or retry: field",
        0,
        (
            (
                'if self._data or self._event_type or self._retry is not None or b"\\r" in data:',
                'if self._data or b"\\r" in data:',
            ),
        ),
        must_kill=True,
    ),
    Mutant(
        "qwen_sse/retry.py",
        "(6) x-should-retry compared case-sensitively",
        0,
        (
            (
                'should_retry = error.headers.get("x-should-retry", "").lower()',
                'should_retry = error.headers.get("x-should-retry", "")',
            ),
        ),
        must_kill=True,
    ),
    Mutant(
        "qwen_sse/retry.py",
        "(7) a negative Retry-After accepted as a negative delay",
        0,
        (("    return seconds if seconds >= 0 else None\n", "    return seconds\n"),),
        must_kill=True,
    ),
    Mutant(
        "qwen_sse/client.py",
        "(8) the default max_connections back at aiohttp's 100",
        0,
        (("        max_connections: int = 4096,\n", "        max_connections: int = 100,\n"),),
        must_kill=True,
    ),
)


def apply(source: str, mutant: Mutant) -> str | None:
    """``source`` with the mutant's replacements, or None if one of them no longer
    matches exactly once."""
    for old, new in mutant.replacements:
        if source.count(old) != 1:
            return None
        source = source.replace(old, new)
    return source


# --- sampled sites -------------------------------------------------------------------

_COMPARE_SWAPS: dict[type[ast.cmpop], tuple[str, str, str]] = {
    # operator: (pattern in the source, replacement, label)
    ast.Lt: (r"<(?!=)", "<=", "< -> <="),
    ast.LtE: (r"<=", "<", "<= -> <"),
    ast.Gt: (r"(?<!-)>(?!=)", ">=", "> -> >="),
    ast.GtE: (r">=", ">", ">= -> >"),
    ast.Eq: (r"==", "!=", "== -> !="),
    ast.NotEq: (r"!=", "==", "!= -> =="),
    ast.Is: (r"\bis\b(?!\s+not\b)", "is not", "is -> is not"),
    ast.IsNot: (r"\bis\s+not\b", "is", "is not -> is"),
    ast.In: (r"(?<!not )\bin\b", "not in", "in -> not in"),
    ast.NotIn: (r"\bnot\s+in\b", "in", "not in -> in"),
}


class _Sites:
    """Finds the mutation sites of one module's source, as exact text replacements."""

    def __init__(self, module: str, source: str) -> None:
        self.module = module
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.found: list[Mutant] = []

    def offset(self, line: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets.
        text = self.lines[line - 1].encode()[:col].decode()
        return self.starts[line - 1] + len(text)

    def span(self, node: ast.AST) -> tuple[int, int]:
        start = self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        return start, end

    def skipped(self, line: int) -> bool:
        return self.lines[line - 1].rstrip().endswith("# pragma: no mutate")

    def add(self, node: ast.AST, label: str, start: int, end: int, new: str) -> None:
        line: int = node.lineno  # type: ignore[attr-defined]
        if self.skipped(line):
            return
        # The smallest text that identifies the site: the whole lines it touches.
        first = self.source.rfind("\n", 0, start) + 1
        last = self.source.find("\n", end)
        last = len(self.source) if last < 0 else last + 1
        old_text = self.source[first:last]
        new_text = old_text[: start - first] + new + old_text[end - first :]
        name = f"{label} at {self.module}:{line}"
        self.found.append(Mutant(self.module, name, line, ((old_text, new_text),)))

    def visit(self, tree: ast.AST) -> list[Mutant]:
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                # Positions inside f-strings are unreliable before Python 3.12.
                skip.update(id(child) for child in ast.walk(node))
            if (isinstance(node, ast.If) and _is_type_checking(node.test)) or (
                isinstance(node, ast.keyword) and node.arg in ("frozen", "gc", "slots", "kw_only")
            ):
                # Struct options and imports for the type checker: not behaviour.
                skip.update(id(child) for child in ast.walk(node))
            if isinstance(node, ast.arg | ast.AnnAssign | ast.FunctionDef | ast.AsyncFunctionDef):
                # Annotations are types, not behaviour.
                annotation = getattr(node, "annotation", None) or getattr(node, "returns", None)
                if annotation is not None:
                    skip.update(id(child) for child in ast.walk(annotation))
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            self._node(node)
        unique = {(m.line, m.name, m.replacements): m for m in self.found}
        return sorted(unique.values(), key=lambda m: (m.line, m.name))

    def _node(self, node: ast.AST) -> None:
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for index, op in enumerate(node.ops):
                pattern, new, label = _COMPARE_SWAPS[type(op)]
                start = self.span(operands[index])[1]
                end = self.span(operands[index + 1])[0]
                match = re.search(pattern, self.source[start:end])
                if match is not None:
                    self.add(
                        node, f"compare {label}", start + match.start(), start + match.end(), new
                    )
        elif isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            start, end = self.span(node)
            text = self.source[start:end]
            # Every operator of the chain, between its operands only.
            pieces = [self.span(value) for value in node.values]
            mutated = list(text)
            for (_, left_end), (right_start, _) in reversed(list(itertools.pairwise(pieces))):
                between = self.source[left_end:right_start]
                match = re.search(rf"\b{old}\b", between)
                if match is None:
                    return
                at = left_end - start + match.start()
                mutated[at : at + len(old)] = list(new)
            self.add(node, f"{old} -> {new}", start, end, "".join(mutated))
        elif isinstance(node, ast.If | ast.While | ast.IfExp):
            start, end = self.span(node.test)
            test = self.source[start:end]
            self.add(node.test, "negate condition", start, end, f"not ({test})")
        elif isinstance(node, ast.Constant):
            start, end = self.span(node)
            if isinstance(node.value, bool):
                self.add(node, f"{node.value} -> {not node.value}", start, end, str(not node.value))
            elif isinstance(node.value, int | float) and not isinstance(node.value, complex):
                bumped = node.value + 1
                self.add(node, f"{node.value!r} -> {bumped!r}", start, end, repr(bumped))
        elif isinstance(node, ast.Raise):
            start, end = self.span(node)
            self.add(node, "drop raise", start, end, "pass")
        self._guarded_returns(node)

    def _guarded_returns(self, node: ast.AST) -> None:
        if isinstance(node, ast.If):
            for statement in node.body:
                if isinstance(statement, ast.Return):
                    start, end = self.span(statement)
                    self.add(statement, "drop guarded return", start, end, "pass")


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def sites(module: str, source: str) -> list[Mutant]:
    """Every sampled mutant of ``module``, in source order; each one compiles."""
    tree = ast.parse(source)
    found = _Sites(module, source).visit(tree)
    valid = []
    for mutant in found:
        mutated = apply(source, mutant)
        if mutated is None:
            continue
        try:
            ast.parse(mutated)
        except SyntaxError:
            continue
        valid.append(mutant)
    return valid


# --- running ----------------------------------------------------------------------------


def copy_repository(destination: Path) -> None:
    """The tracked and untracked-but-not-ignored files, as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        relative = raw.decode()
        source = ROOT / relative
        if not source.is_file():
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def chosen_tests(module: str, extra: Sequence[str], *, client: bool) -> list[str]:
    """The tests that mirror ``module``, the client's (unless not ``client``), and
    ``extra``."""
    chosen: list[str] = []
    mirror = f"tests/test_{Path(module).stem}.py"
    for test in (mirror, *(ALWAYS_TESTS if client else ()), *extra):
        if (ROOT / test).is_file() and test not in chosen:
            chosen.append(test)
    return chosen


# A node id may hold spaces (parametrize ids); pytest's summary line ends it with " - ".
_FAILED = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)


def run_pytest(
    copy: Path, tests: Sequence[str], timeout_s: float, python: str
) -> tuple[bool | None, str, float]:
    """(passed, first failing test or last output line, seconds); passed is None when
    the run timed out."""
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE"]
    command += ["-p", "no:randomly", *tests]
    environment = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command,
            cwd=copy,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.0f} s", time.monotonic() - started
    seconds = time.monotonic() - started
    if completed.returncode == 0:
        return True, "", seconds
    failed = _FAILED.search(completed.stdout)
    if failed is not None:
        return False, failed.group(1), seconds
    tail = (completed.stdout + completed.stderr).strip().splitlines()
    return False, tail[-1] if tail else f"pytest exited {completed.returncode}", seconds


class Worker:
    """One copy of the repository; mutants run on it one at a time."""

    def __init__(self, directory: Path, python: str, timeout_s: float) -> None:
        self.copy = directory
        self.python = python
        self.timeout_s = timeout_s
        copy_repository(directory)

    def run(self, mutant: Mutant, tests: Sequence[str]) -> Outcome:
        path = self.copy / mutant.module
        original = path.read_text()
        mutated = apply(original, mutant)
        if mutated is None:
            return Outcome(mutant, "not-applicable", "PATCH NO LONGER APPLIES")
        try:
            ast.parse(mutated)
        except SyntaxError as error:
            return Outcome(mutant, "not-applicable", f"PATCH BREAKS THE SYNTAX: {error}")
        path.write_text(mutated)
        try:
            passed, detail, seconds = run_pytest(self.copy, tests, self.timeout_s, self.python)
            if passed:
                # A survivor is run once more: a kill missed by chance is not a gap.
                passed, detail, more = run_pytest(self.copy, tests, self.timeout_s, self.python)
                seconds += more
            if passed is None:
                return Outcome(mutant, "timeout", detail, seconds)
            if passed:
                return Outcome(mutant, "survived", "", seconds)
            if "::" not in detail:
                return Outcome(mutant, "killed", detail, seconds)
            # Every kill is rechecked in isolation: the failing test alone fails with the
            # mutant (twice: a flaky test fails by chance) and passes without it; else the
            # kill is unproven.
            passed_alone = False
            for _ in range(2):
                again, _, more = run_pytest(self.copy, [detail], self.timeout_s, self.python)
                passed_alone = passed_alone or bool(again)
                seconds += more
        finally:
            path.write_text(original)
        if passed_alone:
            return Outcome(mutant, "unconfirmed", f"{detail} passes alone with the mutant", seconds)
        without, _, more = run_pytest(self.copy, [detail], self.timeout_s, self.python)
        seconds += more
        if not without:
            return Outcome(mutant, "unconfirmed", f"{detail} fails without the mutant too", seconds)
        return Outcome(mutant, "killed", detail, seconds)


def diff_lines(mutant: Mutant) -> Iterator[str]:
    for old, new in mutant.replacements:
        for line in old.rstrip("\n").splitlines():
            yield f"      - {line.strip()}"
        for line in new.rstrip("\n").splitlines():
            yield f"      + {line.strip()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--modules", nargs="+", default=list(DEFAULT_MODULES))
    parser.add_argument("--limit", type=int, default=None, help="sample N sampled sites")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--tests", nargs="*", default=[], help="more tests for every mutant")
    parser.add_argument(
        "--no-client-tests",
        action="store_true",
        help="only the mirror tests (and --tests): a quick look, a lower kill rate",
    )
    parser.add_argument("--must-kill-only", action="store_true")
    parser.add_argument("--no-must-kill", action="store_true")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--timeout-factor", type=float, default=4.0)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)

    mutants: list[Mutant] = [] if args.no_must_kill else list(MUST_KILL)
    if not args.must_kill_only:
        sampled: list[Mutant] = []
        for module in args.modules:
            sampled += sites(module, (ROOT / module).read_text())
        if args.limit is not None and args.limit < len(sampled):
            picked = random.Random(args.seed).sample(range(len(sampled)), args.limit)
            sampled = [sampled[index] for index in sorted(picked)]
        mutants += sampled
    if args.list:
        for mutant in mutants:
            print(("must-kill " if mutant.must_kill else "") + mutant.name)
            print("\n".join(diff_lines(mutant)))
        return 0

    with tempfile.TemporaryDirectory(prefix="qwen-sse-mutants-") as scratch:
        jobs = max(1, args.jobs)
        baseline_tests = sorted(
            {
                t
                for m in mutants
                for t in chosen_tests(m.module, args.tests, client=not args.no_client_tests)
            }
        )
        first = Worker(Path(scratch) / "0", args.python, timeout_s=3600.0)
        passed, detail, baseline_s = run_pytest(first.copy, baseline_tests, 3600.0, args.python)
        print(f"baseline: {len(baseline_tests)} test files, {baseline_s:.1f} s", flush=True)
        if not passed:
            print(f"the unmutated tests fail ({detail}): nothing to measure", file=sys.stderr)
            return 1
        timeout_s = max(60.0, args.timeout_factor * baseline_s)
        first.timeout_s = timeout_s
        workers = [first] + [
            Worker(Path(scratch) / str(n), args.python, timeout_s) for n in range(1, jobs)
        ]
        free = list(workers)

        def one(mutant: Mutant) -> Outcome:
            worker = free.pop()
            try:
                return worker.run(
                    mutant, chosen_tests(mutant.module, args.tests, client=not args.no_client_tests)
                )
            finally:
                free.append(worker)

        outcomes: list[Outcome] = []
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for number, outcome in enumerate(pool.map(one, mutants), start=1):
                outcomes.append(outcome)
                kind = "must-kill " if outcome.mutant.must_kill else ""
                print(
                    f"[{number}/{len(mutants)}] {outcome.status.upper():<14} {kind}"
                    f"{outcome.mutant.name} ({outcome.seconds:.0f} s)"
                    + (f": {outcome.detail}" if outcome.detail else ""),
                    flush=True,
                )
                if outcome.status in ("survived", "not-applicable"):
                    print("\n".join(diff_lines(outcome.mutant)), flush=True)
    return report(outcomes)


def report(outcomes: Sequence[Outcome]) -> int:
    def rate(group: Sequence[Outcome]) -> str:
        counted = [o for o in group if o.status in ("killed", "timeout", "survived")]
        killed = sum(o.status in ("killed", "timeout") for o in counted)
        if not counted:
            return "none run"
        return f"{killed}/{len(counted)} killed ({100 * killed / len(counted):.0f}%)"

    must = [o for o in outcomes if o.mutant.must_kill]
    sampled = [o for o in outcomes if not o.mutant.must_kill]
    print()
    print(f"must-kill: {rate(must)}")
    for outcome in must:
        if outcome.status not in ("killed", "timeout"):
            print(f"  {outcome.status.upper()}: {outcome.mutant.name}")
    print(f"sampled:   {rate(sampled)}")
    for outcome in sampled:
        if outcome.status == "survived":
            print(f"  SURVIVED: {outcome.mutant.name}")
    unconfirmed = [o for o in outcomes if o.status == "unconfirmed"]
    if unconfirmed:
        print(f"unconfirmed (flaky test, not counted): {len(unconfirmed)}")
    print(f"overall:   {rate(outcomes)}")
    failing = [o for o in must if o.status in ("survived", "not-applicable", "unconfirmed")]
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
