"""Tests of qwen_sse.config: key resolution, regions, transport security, timeouts."""

from __future__ import annotations

import pytest

from qwen_sse.config import (
    REGIONS,
    Timeouts,
    check_transport_security,
    is_loopback_host,
    redact_key,
    resolve_api_key,
    resolve_base_url,
)
from qwen_sse.errors import ConfigurationError


def test_key_precedence() -> None:
    env = {"DASHSCOPE_API_KEY": "sk-test-a", "QWEN_API_KEY": "sk-test-b"}
    assert resolve_api_key("sk-test-arg", env) == "sk-test-arg"
    assert resolve_api_key(None, env) == "sk-test-a"
    assert resolve_api_key(None, {"QWEN_API_KEY": "sk-test-b"}) == "sk-test-b"
    assert resolve_api_key(None, {"DASHSCOPE_API_KEY": "  ", "QWEN_API_KEY": "sk-test-b"}) == (
        "sk-test-b"
    )


def test_missing_key_names_both_variables() -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_api_key(None, {})
    assert "DASHSCOPE_API_KEY" in str(caught.value)
    assert "QWEN_API_KEY" in str(caught.value)


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_regions(region: str) -> None:
    assert resolve_base_url(None, region) == REGIONS[region]
    assert resolve_base_url(None, region.upper()) == REGIONS[region]


def test_default_region_is_beijing_and_base_url_wins() -> None:
    assert resolve_base_url(None, None) == "https://dashscope.aliyuncs.com/compatible-mode/v1"
    assert resolve_base_url("https://host/v1/", "singapore") == "https://host/v1"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_plain_http_only_to_loopback_unless_allowed() -> None:
    check_transport_security("http://127.0.0.1:8000/v1", allow_insecure_http=False)
    check_transport_security("https://example.com/v1", allow_insecure_http=False)
    check_transport_security("http://example.com/v1", allow_insecure_http=True)
    with pytest.raises(ConfigurationError, match=r"example\.com"):
        check_transport_security("http://example.com/v1", allow_insecure_http=False)


def test_timeouts_validate() -> None:
    assert Timeouts().total_s is None
    assert Timeouts(idle_s=None).idle_s is None
    with pytest.raises(ConfigurationError, match="idle_s"):
        Timeouts(idle_s=0)
    with pytest.raises(ConfigurationError, match="connect_s"):
        Timeouts(connect_s=-1)


def test_redact_key_shows_at_most_a_prefix() -> None:
    assert redact_key("sk-test-0123456789abcdef") == "sk-***"
    assert redact_key("short") == "***"


def test_a_key_read_from_a_file_loses_its_newline_and_a_broken_key_is_refused() -> None:
    assert resolve_api_key("sk-test-abc\n", {}) == "sk-test-abc"
    assert resolve_api_key(None, {"DASHSCOPE_API_KEY": " sk-test-env \n"}) == "sk-test-env"
    with pytest.raises(ConfigurationError, match="whitespace or control") as caught:
        resolve_api_key("sk-test with-space", {})
    assert "with-space" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="DASHSCOPE_API_KEY"):
        resolve_api_key(None, {"DASHSCOPE_API_KEY": "sk-test\x00x"})
