"""Tests of the package's public surface (qwen_sse/__init__.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import qwen_sse


def test_every_public_name_resolves() -> None:
    for name in qwen_sse.__all__:
        assert getattr(qwen_sse, name) is not None, name


def test_the_design_contract_names_are_public() -> None:
    contract = {
        "SSEDecoder",
        "ServerSentEvent",
        "QwenClient",
        "ChatResult",
        "QwenSSEError",
        "count_tokens",
        "count_message_tokens",
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
