"""What every test starts from: no qwen-sse setting inherited from the shell that runs pytest."""

from __future__ import annotations

import os

import pytest

from qwen_sse.config import BASE_URL_ENV_VARS, LOG_ENV_VARS, REGION_ENV_VARS


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's ``DASHSCOPE_BASE_URL``, ``QWEN_SSE_LOG`` or ``HTTPS_PROXY`` would change
    where requests go and what stderr shows; tests that want them set them (subprocesses
    inherit this)."""
    for name in (*BASE_URL_ENV_VARS, *REGION_ENV_VARS, *LOG_ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.lower() in _PROXY_VARIABLES:
            monkeypatch.delenv(name, raising=False)


_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})
