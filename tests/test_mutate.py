"""Tests of tools/mutate.py's mutants (not of a mutation run: that is its own CI stage).

Each operator is checked on a small module: the exact text it produces, that it keeps the
source valid, and what it leaves alone.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "tools" / "mutate.py"
    spec = importlib.util.spec_from_file_location("qwen_sse_tools_mutate", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mutate = _load()

SOURCE = '''\
"""A docstring with 1 < 2 in it."""

LIMIT: int = 4


def check(value: int, items: list[int]) -> bool:
    if value < LIMIT and value not in items:
        raise ValueError(f"bad {value + 0}")
    if value == 3:
        return True
    flag = value >= 2 or False  # pragma: no mutate
    return value is not None
'''


def mutated_lines(module: str = "m.py", source: str = SOURCE) -> dict[str, list[str]]:
    """Each mutant's name (without its place) -> the new text of the lines it touches."""
    found: dict[str, list[str]] = {}
    for mutant in mutate.sites(module, source):
        assert mutant.name.endswith(f" at {module}:{mutant.line}")
        ((old, new),) = mutant.replacements
        assert source.count(old) == 1
        changed = mutate.apply(source, mutant)
        ast.parse(changed)
        label = mutant.name.removesuffix(f" at {module}:{mutant.line}")
        found.setdefault(label, []).append(new.strip())
    return found


def test_every_operator_makes_exactly_its_change() -> None:
    assert mutated_lines() == {
        "4 -> 5": ["LIMIT: int = 5"],
        "compare < -> <=": ["if value <= LIMIT and value not in items:"],
        "compare not in -> in": ["if value < LIMIT and value in items:"],
        "and -> or": ["if value < LIMIT or value not in items:"],
        "negate condition": [
            "if not (value < LIMIT and value not in items):",
            "if not (value == 3):",
        ],
        "drop raise": ["pass"],
        "compare == -> !=": ["if value != 3:"],
        "3 -> 4": ["if value == 4:"],
        "drop guarded return": ["pass"],
        "True -> False": ["return False"],
        "compare is not -> is": ["return value is None"],
    }


def test_annotations_docstrings_fstrings_and_pragmas_are_left_alone() -> None:
    names = [mutant.name for mutant in mutate.sites("m.py", SOURCE)]
    # The docstring (line 1), the annotation's int (3), the f-string's 0 (8), the pragma
    # line (11) and the signature (6) have no mutant.
    assert {int(name.rsplit(":", 1)[1]) for name in names} == {3, 7, 8, 9, 10, 12}


def test_sites_come_in_a_deterministic_order() -> None:
    first = mutate.sites("m.py", SOURCE)
    assert first == mutate.sites("m.py", SOURCE)
    assert [m.line for m in first] == sorted(m.line for m in first)


def test_a_patch_that_no_longer_matches_exactly_once_does_not_apply() -> None:
    gone = mutate.Mutant("m.py", "gone", 0, (("value > 99", "value < 99"),), must_kill=True)
    twice = mutate.Mutant("m.py", "twice", 0, (("value", "other"),), must_kill=True)
    assert mutate.apply(SOURCE, gone) is None
    assert mutate.apply(SOURCE, twice) is None


def test_every_must_kill_bug_still_applies_to_the_code_it_names() -> None:
    """A must-kill patch whose target text moved would make the mutation stage report
    "not applicable" instead of testing the promise; catch the drift in the main suite."""
    root = Path(__file__).resolve().parent.parent
    for mutant in mutate.MUST_KILL:
        source = (root / mutant.module).read_text(encoding="utf-8")
        mutated = mutate.apply(source, mutant)
        assert mutated is not None, mutant.name
        assert mutated != source, mutant.name
        ast.parse(mutated)


def test_a_failing_test_id_with_spaces_is_read_whole() -> None:
    summary = (
        "FAILED tests/test_sse.py::test_case[one event-LF] - AssertionError: x - y\n"
        "ERROR tests/test_x.py::test_y\n"
    )
    assert mutate._FAILED.findall(summary) == [
        "tests/test_sse.py::test_case[one event-LF]",
        "tests/test_x.py::test_y",
    ]
