"""The layering rule: core modules import no I/O, and imports only point downward."""

from __future__ import annotations

import ast
from pathlib import Path

from qwen_sse import protocols

PACKAGE = Path(__file__).resolve().parents[1] / "qwen_sse"

CORE = {"sse", "chunks", "chat", "protocols", "retry", "ratelimit", "tokens", "models", "errors"}
IO = {"client", "limiter", "config", "proxy", "wirelog", "telemetry"}
EDGE = {"cli", "emulator", "bench", "trace", "recording", "locust", "debugproxy"}
FORBIDDEN_IN_CORE = {"aiohttp", "asyncio", "os", "time", "random", "logging"}


def module_layer(name: str) -> str:
    """'core', 'io' or 'edge' for a module path below the package, e.g. 'cli.chat'."""
    top = name.split(".", maxsplit=1)[0]
    if top in CORE:
        return "core"
    if top in IO:
        return "io"
    if top in EDGE:
        return "edge"
    raise LookupError(f"qwen_sse.{name} is in no layer: add it to CORE, IO or EDGE")


RANK = {"core": 0, "io": 1, "edge": 2}


def imports_of(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def package_modules(package: Path) -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).with_suffix("")
        parts = [p for p in relative.parts if p != "__init__"]
        modules.append((".".join(parts) or "__init__", path))
    return modules


def violations(package: Path = PACKAGE) -> list[str]:
    found = []
    for name, path in package_modules(package):
        if name in ("__init__", "__main__"):
            continue
        layer = module_layer(name)
        for imported, line in imports_of(path):
            where = f"qwen_sse/{path.relative_to(package)}:{line}"
            root = imported.split(".")[0]
            if layer == "core" and root in FORBIDDEN_IN_CORE:
                found.append(f"{where}: core module imports {imported}")
            if root == "qwen_sse" and imported != "qwen_sse":
                target = imported.removeprefix("qwen_sse.")
                if RANK[module_layer(target)] > RANK[layer]:
                    found.append(
                        f"{where}: {layer} module imports {module_layer(target)} {imported}"
                    )
    return found


def test_core_imports_no_io_and_imports_point_downward() -> None:
    assert violations() == []


def test_the_check_catches_a_violation(tmp_path: Path) -> None:
    fake = tmp_path / "qwen_sse"
    fake.mkdir()
    (fake / "sse.py").write_text("import asyncio\nfrom qwen_sse.client import QwenClient\n")
    (fake / "client.py").write_text("import os\nfrom qwen_sse.cli import main\n")
    assert violations(fake) == [
        "qwen_sse/client.py:2: io module imports edge qwen_sse.cli",
        "qwen_sse/sse.py:1: core module imports asyncio",
        "qwen_sse/sse.py:2: core module imports io qwen_sse.client",
    ]


def test_every_module_has_a_layer() -> None:
    for name, _ in package_modules(PACKAGE):
        if name not in ("__init__", "__main__"):
            assert module_layer(name) in RANK


PROTOCOL_NAMES = frozenset({"compatible", "native", "native-multimodal", "responses", "anthropic"})


def protocol_name_branches(package: Path = PACKAGE) -> list[str]:
    """Every comparison with a protocol's name (``==``, ``!=``, ``in``, ``match`` case)
    outside ``protocols/``: a protocol is looked up once in the registry, never branched on."""
    found = []
    for name, path in package_modules(package):
        if name.split(".")[0] == "protocols":
            continue
        tree = ast.parse(path.read_text("utf-8"), str(path))
        for node in ast.walk(tree):
            operands: list[ast.expr] = []
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.MatchValue):
                operands = [node.value]
            for operand in operands:
                elements = (
                    operand.elts
                    if isinstance(operand, ast.Tuple | ast.Set | ast.List)
                    else [operand]
                )
                for element in elements:
                    if isinstance(element, ast.Constant) and element.value in PROTOCOL_NAMES:
                        where = f"qwen_sse/{path.relative_to(package)}:{getattr(node, 'lineno', 0)}"
                        found.append(f"{where}: compares with protocol name {element.value!r}")
    return found


def test_protocols_are_core_and_registered() -> None:
    assert set(protocols.NAMES) == PROTOCOL_NAMES
    for name, _ in package_modules(PACKAGE):
        if name.startswith("protocols"):
            assert module_layer(name) == "core"


def test_nothing_outside_the_protocols_branches_on_a_protocol_name() -> None:
    assert protocol_name_branches() == []


def test_the_name_check_catches_a_branch(tmp_path: Path) -> None:
    fake = tmp_path / "qwen_sse"
    (fake / "protocols").mkdir(parents=True)
    (fake / "client.py").write_text(
        "if protocol == 'native':\n    pass\nok = name in ('anthropic', 'x')\n"
    )
    (fake / "protocols" / "native.py").write_text("same = name == 'native'\n")
    assert protocol_name_branches(fake) == [
        "qwen_sse/client.py:1: compares with protocol name 'native'",
        "qwen_sse/client.py:3: compares with protocol name 'anthropic'",
    ]
