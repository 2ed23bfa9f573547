"""The README's promises: two Quick start commands, the second run verbatim by CI."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)]


def test_quick_start_is_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    assert 'qwen-sse chat --mock "你好"' in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_test_command_verbatim() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text("utf-8").splitlines()
    assert quick_start_commands()[1] in ci_lines


def test_no_figure_placeholder_is_left() -> None:
    assert "BENCHMARK_TABLES" not in (ROOT / "README.md").read_text("utf-8")


def test_python_examples_compile() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks
    for number, block in enumerate(blocks, 1):
        compile(block, f"README.md python block {number}", "exec")
