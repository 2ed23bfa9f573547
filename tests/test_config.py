"""Tests of qwen_sse.config: key resolution, regions, transport security, timeouts."""

from __future__ import annotations

import pytest

from qwen_sse import protocols
from qwen_sse.config import (
    COMPATIBLE_ROOT,
    REGIONS,
    Timeouts,
    carries_credentials,
    check_transport_security,
    is_loopback_host,
    redact_key,
    resolve_api_key,
    resolve_base_url,
    shown_url,
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


def test_the_key_from_other_variables() -> None:
    env = {"DASHSCOPE_API_KEY": "sk-test-a", "OPENAI_API_KEY": "sk-test-o"}
    assert resolve_api_key(None, env, env_vars=("OPENAI_API_KEY",)) == "sk-test-o"
    assert resolve_api_key("sk-test-arg", env, env_vars=("OPENAI_API_KEY",)) == "sk-test-arg"
    with pytest.raises(ConfigurationError) as caught:
        resolve_api_key(None, env, env_vars=("MY_KEY",))
    assert str(caught.value) == "no API key: set MY_KEY, or pass api_key=..."


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_regions(region: str) -> None:
    assert resolve_base_url(None, region) == REGIONS[region]
    assert resolve_base_url(None, region.upper()) == REGIONS[region]


def test_default_region_is_beijing_and_base_url_wins() -> None:
    assert resolve_base_url(None, None, environ={}) == (
        "https://dashscope.aliyuncs.com/compatible-mode/v1"
    )
    assert resolve_base_url("https://host/v1/", "singapore", environ={}) == "https://host/v1"


def test_arguments_win_over_the_environment_and_the_environment_over_the_default() -> None:
    env = {"DASHSCOPE_BASE_URL": "http://127.0.0.1:8000/compatible-mode/v1/"}
    assert resolve_base_url(None, None, environ=env) == "http://127.0.0.1:8000/compatible-mode/v1"
    assert resolve_base_url("https://arg/v1", None, environ=env) == "https://arg/v1"
    # A region argument is an argument: it wins over a base URL from the environment.
    assert resolve_base_url(None, "singapore", environ=env) == REGIONS["singapore"]
    assert resolve_base_url(None, None, environ={"DASHSCOPE_REGION": "US"}) == REGIONS["us"]
    assert (
        resolve_base_url(None, None, environ={"QWEN_REGION": "hongkong"}) == (REGIONS["hongkong"])
    )
    # Within the environment, a base URL wins over a region, DASHSCOPE_ over QWEN_.
    both = {**env, "DASHSCOPE_REGION": "us", "QWEN_BASE_URL": "https://other/compatible-mode/v1"}
    assert resolve_base_url(None, None, environ=both) == env["DASHSCOPE_BASE_URL"].rstrip("/")
    assert resolve_base_url(None, None, environ={"QWEN_BASE_URL": "https://q/v1"}) == "https://q/v1"
    # Empty variables are unset.
    assert resolve_base_url(None, None, environ={"DASHSCOPE_BASE_URL": " "}) == (REGIONS["beijing"])


@pytest.mark.parametrize("protocol", protocols.NAMES)
def test_a_base_url_from_the_environment_serves_every_protocol(protocol: str) -> None:
    root = protocols.get(protocol).root
    env = {"DASHSCOPE_BASE_URL": "http://127.0.0.1:8000/compatible-mode/v1"}
    assert resolve_base_url(None, None, root=root, environ=env) == "http://127.0.0.1:8000" + root
    region = resolve_base_url(None, None, root=root, environ={"DASHSCOPE_REGION": "singapore"})
    assert region == "https://dashscope-intl.aliyuncs.com" + root


def test_another_servers_base_url_from_the_environment_serves_its_own_root_only() -> None:
    env = {"DASHSCOPE_BASE_URL": "http://127.0.0.1:8080/v1"}
    for protocol in protocols.PROTOCOLS.values():
        if protocol.root == COMPATIBLE_ROOT:
            assert resolve_base_url(None, None, root=protocol.root, environ=env) == (
                "http://127.0.0.1:8080/v1"
            )
        else:
            with pytest.raises(ConfigurationError) as caught:
                resolve_base_url(None, None, root=protocol.root, environ=env)
            message = str(caught.value)
            assert "DASHSCOPE_BASE_URL (http://127.0.0.1:8080/v1)" in message
            assert protocol.root in message
            assert "base_url=" in message
    # An argument for that protocol settles it.
    assert resolve_base_url("http://127.0.0.1:8080", None, root="/api/v1", environ=env) == (
        "http://127.0.0.1:8080"
    )


def test_bad_values_from_the_environment_name_their_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"^DASHSCOPE_BASE_URL must be an http\(s\) URL"):
        resolve_base_url(None, None, environ={"DASHSCOPE_BASE_URL": "localhost:8000"})
    with pytest.raises(ConfigurationError, match=r"^base_url must be an http\(s\) URL"):
        resolve_base_url("ftp://host", None, environ={})
    with pytest.raises(ConfigurationError, match="unknown region 'mars' in QWEN_REGION; known"):
        resolve_base_url(None, None, environ={"QWEN_REGION": "mars"})
    with pytest.raises(ConfigurationError, match="unknown region 'mars'; known"):
        resolve_base_url(None, "mars", environ={})


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


def test_urls_are_shown_without_their_credentials() -> None:
    assert shown_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert shown_url("https://user:pw@example.com/v1?x=1") == "https://example.com/v1?x=1"
    assert shown_url("http://token@[::1]:8080/metrics") == "http://[::1]:8080/metrics"
    assert shown_url("https://user:p@ss/w@example.com/v1") == "https://example.com/v1"
    assert shown_url("user:pw@example.com/v1") == "example.com/v1"
    # An "@" in the query is not a credential.
    assert shown_url("https://example.com/v1?to=a@b") == "https://example.com/v1?to=a@b"
    assert not carries_credentials("https://example.com/v1?to=a@b")


@pytest.mark.parametrize("port", ["notaport", "99999"])
def test_a_base_url_with_a_bad_port_is_refused_in_one_line(port: str) -> None:
    with pytest.raises(ConfigurationError, match="must have a port from 0 to 65535"):
        resolve_base_url(f"https://example.com:{port}/v1", None)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret-pw@example.com/v1",
        "http://secret-pw@127.0.0.1:8000/v1",
        # Malformed around the credentials: urlsplit finds no user name in these.
        "user:secret-pw@example.com/v1",
        "http:/user:secret-pw@example.com/v1",
        "https//user:secret-pw@example.com/v1",
        # A "/" in the password: urlsplit takes "user" for the host.
        "https://user:secret-pw/x@example.com/v1",
        "https://user:secret-pw@example.com:notaport/v1",
    ],
)
def test_a_base_url_with_credentials_is_refused_without_showing_them(url: str) -> None:
    with pytest.raises(
        ConfigurationError, match="must not carry a user name or password"
    ) as caught:
        resolve_base_url(url, None)
    assert "secret-pw" not in str(caught.value)
    with pytest.raises(
        ConfigurationError, match="must not carry a user name or password"
    ) as caught:
        resolve_base_url(None, None, environ={"DASHSCOPE_BASE_URL": url})
    assert "secret-pw" not in str(caught.value)
