"""Tests of the package's public surface (qwen_sse/__init__.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import qwen_sse

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_every_public_name_resolves() -> None:
    # Each name is the object its own module defines under that name (the lazy ones too),
    # listed once; the version is pyproject's.
    assert len(set(qwen_sse.__all__)) == len(qwen_sse.__all__)
    for name in qwen_sse.__all__:
        value = getattr(qwen_sse, name)
        if name == "__version__":
            assert value == PYPROJECT["project"]["version"]
            continue
        assert value.__name__ == name
        assert value.__module__.startswith("qwen_sse.")
        assert getattr(importlib.import_module(value.__module__), name) is value


def test_the_design_contract_names_are_public() -> None:
    contract = {
        "SSEDecoder",
        "ServerSentEvent",
        "QwenClient",
        "ChatResult",
        "QwenSSEError",
        "count_tokens",
        "count_message_tokens",
        "decode",
    }
    assert contract <= set(qwen_sse.__all__)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = qwen_sse.no_such_name


def test_the_core_imports_without_aiohttp() -> None:
    code = "import sys, qwen_sse; qwen_sse.SSEDecoder; print('aiohttp' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout.strip() == "False"
