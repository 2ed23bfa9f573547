"""Tests of qwen_sse.proxy: the proxy variables, NO_PROXY matching, proxy URLs and their
credentials; then the client through a real forward proxy on loopback (tests/forwardproxy.py)."""

from __future__ import annotations

import base64
import os
import pickle
import ssl
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import trustme
from hypothesis import assume, given
from hypothesis import strategies as st

from qwen_sse.client import QwenClient
from qwen_sse.emulator import Emulator, EmulatorConfig
from qwen_sse.errors import ConfigurationError, ProxyError, TransportError
from qwen_sse.proxy import (
    NoProxy,
    check_proxy_security,
    parse_proxy,
    proxy_environment,
    resolve_proxy,
)
from qwen_sse.retry import NO_RETRIES, RetryPolicy
from tests.fakesleep import FakeSleep
from tests.forwardproxy import closed_port, forward_proxy, tls_front
from tests.test_client import RecordingTap, assert_key_unreachable, raised_by

KEY = "sk-test-proxy-not-a-real-key-0123"
PASSWORD = "p@ss:w/rd é-密码-hunter22"
HELLO = [{"role": "user", "content": "你好"}]


def credentialed(url: str, username: str = "alice", password: str = PASSWORD) -> str:
    """``url`` (``http://host:port``) with credentials, percent-encoded."""
    return url.replace("://", f"://{quote(username, safe='')}:{quote(password, safe='')}@")


def basic(username: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


# -- which proxy: the environment ------------------------------------------------------------

EVERY = {"HTTPS_PROXY": "http://hp:1", "HTTP_PROXY": "hq:3", "ALL_PROXY": "http://ap:2"}


@pytest.mark.parametrize(
    ("environ", "url", "expected"),
    [
        # Each scheme its own variable; ALL_PROXY only where that one is unset.
        (EVERY, "https://a.com", "http://hp:1"),
        (EVERY, "http://a.com", "http://hq:3"),
        ({"ALL_PROXY": "http://ap:2"}, "https://a.com", "http://ap:2"),
        ({"ALL_PROXY": "http://ap:2"}, "http://a.com", "http://ap:2"),
        ({"HTTP_PROXY": "http://hq:3"}, "https://a.com", None),
        ({"HTTPS_PROXY": "http://hp:1"}, "http://a.com", None),
        ({}, "https://a.com", None),
        # Loopback is not special.
        (EVERY, "https://127.0.0.1:8000", "http://hp:1"),
        (EVERY, "http://localhost:8080", "http://hq:3"),
        # Lower case wins; an empty lower-case variable unsets; an empty one is absent.
        ({"all_proxy": "http://lower:2", "ALL_PROXY": "http://upper:2"}, "https://a", "lower"),
        ({"https_proxy": "", "HTTPS_PROXY": "http://hp:1"}, "https://a.com", None),
        ({"HTTPS_PROXY": "", "ALL_PROXY": "http://ap:2"}, "https://a.com", "http://ap:2"),
        # A CGI script ignores HTTP_PROXY (a client can set it with a Proxy: header).
        ({"REQUEST_METHOD": "GET", "HTTP_PROXY": "http://hq:3"}, "http://a.com", None),
        ({"REQUEST_METHOD": "GET", "http_proxy": "http://hq:3"}, "http://a.com", "hq"),
        # NO_PROXY wins over every proxy variable.
        ({**EVERY, "NO_PROXY": "a.com"}, "https://a.com", None),
        ({**EVERY, "NO_PROXY": "a.com"}, "http://a.com", None),
        ({**EVERY, "no_proxy": "", "NO_PROXY": "a.com"}, "https://a.com", "http://hp:1"),
        ({**EVERY, "NO_PROXY": "b.com, *"}, "https://a.com", None),
    ],
)
def test_the_environment_chooses_as_httpx_does(
    environ: dict[str, str], url: str, expected: str | None
) -> None:
    proxy = resolve_proxy(url, None, environ)
    if expected is None:
        assert proxy is None
    else:
        assert proxy is not None
        assert expected in proxy.url


def test_a_proxy_says_which_variable_it_came_from() -> None:
    proxy = resolve_proxy("https://a.com", None, {"https_proxy": "http://hp:1"})
    assert proxy is not None
    assert proxy.source == "https_proxy"
    assert proxy.named == "http://hp:1 (from https_proxy)"


def test_the_argument_overrides_the_environment_and_no_proxy() -> None:
    environ = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}
    proxy = resolve_proxy("https://a.com", "http://arg:2", environ)
    assert proxy is not None
    assert proxy.url == "http://arg:2"
    assert proxy.source == "the proxy argument"
    # "" turns proxies off, whatever the environment says.
    assert resolve_proxy("https://a.com", "", {"HTTPS_PROXY": "http://env:1"}) is None
    assert resolve_proxy("https://a.com", "  ", {"HTTPS_PROXY": "http://env:1"}) is None


def test_proxy_environment_reads_every_scheme_variable() -> None:
    environ = {"HTTPS_PROXY": "http://hp:1", "no_proxy": "a.com", "PATH": "/bin", "FTP_PROXY": ""}
    assert proxy_environment(environ) == {
        "https": ("http://hp:1", "HTTPS_PROXY"),
        "no": ("a.com", "no_proxy"),
    }


def test_a_variable_the_target_does_not_use_is_never_checked() -> None:
    environ = {"ALL_PROXY": "socks5://s:1080", "HTTPS_PROXY": "http://hp:1"}
    proxy = resolve_proxy("https://a.com", None, environ)
    assert proxy is not None
    assert proxy.url == "http://hp:1"
    with pytest.raises(ConfigurationError, match=r"ALL_PROXY names a socks5 proxy"):
        resolve_proxy("http://a.com", None, environ)


# -- NO_PROXY ----------------------------------------------------------------------------------

# Decisions checked against httpx2 2.16.2 (the openai SDK's HTTP client) and, apart from the
# networks, httpx 0.28.1; True means direct.
NO_PROXY_CASES = [
    ("example.com", "https://example.com", True),
    ("example.com", "https://www.example.com", True),
    ("example.com", "https://notexample.com", False),
    ("example.com", "https://EXAMPLE.com", True),
    ("Example.COM", "https://example.com", True),
    (".foo.org", "https://x.foo.org", True),
    (".foo.org", "https://foo.org", False),
    ("*.a.com", "https://x.a.com", True),
    ("*.a.com", "https://a.com", False),
    ("192.168.0.0/16", "https://192.168.0.0", True),
    ("192.168.0.0/16", "https://192.168.1.1", True),
    ("10.0.0.0/8", "http://11.0.0.1", False),
    ("127.0.0.1", "http://127.0.0.1:8000", True),
    ("127.0.0.1", "http://localhost:8000", False),  # names are not resolved
    ("localhost", "http://localhost:9", True),
    ("localhost", "http://127.0.0.1:9", False),
    ("::1", "http://[::1]:80", True),
    ("[::1]", "http://[::1]", True),
    ("fe80::/10", "http://[fe80::1]", True),
    ("[2001:db8::]/32", "http://[2001:db8::5]", True),
    ("bar.net:8443", "https://bar.net:8443", True),
    ("bar.net:8443", "https://bar.net", False),
    ("http://plain.io", "http://plain.io", True),
    ("http://plain.io", "https://plain.io", False),
    ("http://plain.io", "http://www.plain.io", False),
    ("all://plain.io", "https://plain.io", True),
    ("example.com.", "http://example.com", False),
    ("example.com.", "http://example.com.", True),
    ("*", "https://anything.example", True),
    ("bad/x, a.com:port, [::1, a.com", "https://a.com", True),  # unreadable entries ignored
    ("", "https://a.com", False),
    (" , ,", "https://a.com", False),
    # Where qwen-sse differs from httpx (which compares only an explicit port).
    ("example.com:443", "https://example.com", True),
    ("example.com:443", "http://example.com", False),
]


@pytest.mark.parametrize(("no_proxy", "url", "direct"), NO_PROXY_CASES)
def test_no_proxy_matching(no_proxy: str, url: str, direct: bool) -> None:
    assert NoProxy(no_proxy).matches(url) is direct


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=3).map(".".join)


@given(domain=_DOMAIN, below=st.lists(_LABEL, max_size=3))
def test_a_domain_entry_matches_the_domain_and_everything_below_it(
    domain: str, below: list[str]
) -> None:
    host = ".".join([*below, domain])
    assert NoProxy(domain).matches(f"https://{host}/v1")
    assert NoProxy(f".{domain}").matches(f"https://{host}/v1") is bool(below)
    assert not NoProxy(domain).matches(f"https://x{domain}/v1")


_URL = st.builds(
    "{}://{}:{}/v1".format, st.sampled_from(["http", "https"]), _DOMAIN, st.integers(1, 65535)
)


@given(url=_URL)
def test_a_star_sends_everything_direct(url: str) -> None:
    assert NoProxy("other.example, *").matches(url)
    assert resolve_proxy(url, None, {"ALL_PROXY": "http://ap:2", "NO_PROXY": "*"}) is None


# -- proxy URLs and their credentials ----------------------------------------------------------


def test_a_proxy_url_is_read_with_its_credentials() -> None:
    proxy = parse_proxy("http://alice:s3cr%40t@Proxy.Example:3128/", source="HTTPS_PROXY")
    assert proxy.url == "http://proxy.example:3128"
    assert (proxy.host, proxy.port) == ("proxy.example", 3128)
    assert (proxy.username, proxy.password) == ("alice", "s3cr@t")
    assert proxy.redacted == "http://alice:***@proxy.example:3128"
    assert proxy.headers == {"Proxy-Authorization": "Basic YWxpY2U6czNjckB0"}
    assert repr(proxy) == "Proxy('http://alice:***@proxy.example:3128', source='HTTPS_PROXY')"


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("proxy:3128", "http://proxy:3128"),
        ("http://proxy", "http://proxy:80"),
        ("https://proxy", "https://proxy:443"),
        ("HTTP://[::1]:3128", "http://[::1]:3128"),
        ("  http://proxy:1  ", "http://proxy:1"),
    ],
)
def test_proxy_url_forms(value: str, url: str) -> None:
    assert parse_proxy(value, source="x").url == url


@pytest.mark.parametrize("password", ["s3cr/et", "s3cr?et", "s3cr#et", "a/b@c"])
def test_a_password_with_url_delimiters_never_shows_in_an_error(
    password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://alice:{password}@proxy.example:3128")
    try:
        resolve_proxy("https://dashscope.aliyuncs.com/compatible-mode/v1")
    except ConfigurationError as error:
        assert password not in str(error)
        assert "alice:***@" in str(error)
    else:
        proxy = resolve_proxy("https://dashscope.aliyuncs.com/compatible-mode/v1")
        assert proxy is not None
        assert password not in repr(proxy)


def test_a_username_alone_is_redacted_too() -> None:
    # A proxy token often travels as the username.
    proxy = parse_proxy("http://tok-123456@proxy:3128", source="x")
    assert proxy.redacted == "http://***@proxy:3128"
    assert "tok-123456" not in repr(proxy)
    assert proxy.headers == {"Proxy-Authorization": "Basic dG9rLTEyMzQ1Njo="}
    assert parse_proxy("http://proxy:3128", source="x").headers == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("socks5://user:hunter22@s:1080", "names a socks5 proxy (socks5://user:***@s:1080)"),
        ("http://user:hunter22@:3128", "not a proxy URL with a host and a port"),
        ("http://user:hunter22@proxy:99999", "not a proxy URL with a host and a port"),
        ("http://user:hunter22@proxy:port", "not a proxy URL with a host and a port"),
    ],
)
def test_an_unusable_proxy_is_a_configuration_error_without_its_password(
    value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_proxy(value, source="HTTPS_PROXY")
    text = str(caught.value)
    assert text.startswith("HTTPS_PROXY ")
    assert message in text
    assert "hunter22" not in text


_SECRET = st.text(min_size=1, max_size=20).map(lambda s: "pw-" + s)


@given(username=st.text(max_size=12), password=_SECRET)
def test_credentials_are_read_back_exactly_and_never_show(username: str, password: str) -> None:
    assume(password not in username and quote(password, safe="") not in quote(username, safe=""))
    url = "http://proxy.example:3128"
    proxy = parse_proxy(credentialed(url, username, password), source="the proxy argument")
    assert (proxy.username, proxy.password, proxy.url) == (username, password, url)
    assert proxy.headers == {"Proxy-Authorization": basic(username, password).decode()}
    for shown in (repr(proxy), str(proxy), proxy.redacted, proxy.named):
        assert password not in shown
        assert quote(password, safe="") not in shown


def test_a_proxy_pickles_and_compares() -> None:
    proxy = parse_proxy("http://u:p@proxy:1", source="x")
    assert pickle.loads(pickle.dumps(proxy)) == proxy


# -- the key and plain http --------------------------------------------------------------------


def test_plain_http_through_a_remote_proxy_is_refused() -> None:
    remote = parse_proxy("http://user:hunter22@proxy.corp:3128", source="HTTP_PROXY")
    with pytest.raises(ConfigurationError) as caught:
        check_proxy_security("http://127.0.0.1:8000/v1", remote, allow_insecure_http=False)
    text = str(caught.value)
    assert "http://proxy.corp:3128 (from HTTP_PROXY)" in text
    assert "NO_PROXY" in text
    assert "hunter22" not in text
    # Allowed: https targets, loopback proxies, no proxy, or the caller says the network is
    # trusted.
    check_proxy_security("https://a.com/v1", remote, allow_insecure_http=False)
    check_proxy_security("http://127.0.0.1:8000/v1", remote, allow_insecure_http=True)
    check_proxy_security("http://127.0.0.1:8000/v1", None, allow_insecure_http=False)
    local = parse_proxy("http://127.0.0.1:3128", source="HTTP_PROXY")
    check_proxy_security("http://127.0.0.1:8000/v1", local, allow_insecure_http=False)


# -- the client through a real proxy on loopback -----------------------------------------------


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the proxy variables it means; none leaks in from the machine."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_key=KEY, ttft_s=0.0, itl_s=0.0)) as server:
        yield server


@dataclass
class Tls:
    """An https address of the emulator, the context that trusts its certificate, and a
    server context with a certificate for 127.0.0.1 from the same CA (for a TLS proxy)."""

    base_url: str
    port: int
    client_context: ssl.SSLContext
    server_context: ssl.SSLContext


@pytest.fixture
async def tls(emulator: Emulator) -> AsyncIterator[Tls]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with tls_front(emulator.port, server_context) as port:
        url = f"https://127.0.0.1:{port}/compatible-mode/v1"
        yield Tls(url, port, client_context, server_context)


async def test_http_proxy_carries_a_plain_http_request_key_and_all(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with forward_proxy() as seen:
        monkeypatch.setenv("HTTP_PROXY", seen.url)
        async with QwenClient(KEY, emulator.base_url, retry=NO_RETRIES) as client:
            assert client.proxy is not None
            assert client.proxy.named == f"{seen.url} (from HTTP_PROXY)"
            result = await client.chat(HELLO)
    assert result.complete
    assert len(emulator.requests) == 1
    # Loopback is proxied like any host; over plain http the proxy reads the whole request,
    # the key included (which is why a proxy off loopback needs allow_insecure_http).
    [head] = seen.heads
    assert head.startswith(f"POST {emulator.base_url}/chat/completions HTTP/1.1\r\n".encode())
    assert f"Bearer {KEY}".encode() in head


async def test_https_goes_through_connect_and_the_proxy_never_sees_the_key(
    tls: Tls, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with forward_proxy() as seen:
        monkeypatch.setenv("https_proxy", seen.url)
        async with QwenClient(
            KEY, tls.base_url, retry=NO_RETRIES, ssl_context=tls.client_context
        ) as client:
            result = await client.chat(HELLO)
    assert result.complete
    assert result.content
    assert len(emulator.requests) == 1
    assert seen.connects == [f"127.0.0.1:{tls.port}"]
    # The proxy saw CONNECT host:port, then TLS records: neither the key, nor the path,
    # nor the answer.
    assert seen.relayed[:1] == b"\x16"  # a TLS handshake record
    everything = seen.everything
    assert KEY.encode() not in everything
    assert b"Authorization" not in everything
    assert b"/chat/completions" not in everything
    assert b"\r\n\r\n" not in bytes(seen.relayed)


async def test_an_https_proxy_is_spoken_to_over_tls_with_the_same_trust(
    tls: Tls, emulator: Emulator
) -> None:
    async with forward_proxy(tls=tls.server_context, credentials=("alice", PASSWORD)) as seen:
        assert seen.url.startswith("https://")
        client = QwenClient(
            KEY, tls.base_url, proxy=credentialed(seen.url), ssl_context=tls.client_context
        )
        async with client:
            assert (await client.chat(HELLO)).complete
    # The proxy decrypted the CONNECT (its credentials included); inside, TLS again.
    assert seen.connects == [f"127.0.0.1:{tls.port}"]
    assert seen.relayed[:1] == b"\x16"
    assert KEY.encode() not in seen.everything


async def test_without_a_proxy_https_reaches_the_tls_front_directly(tls: Tls) -> None:
    # The TLS set-up itself works, so the CONNECT test above tests the tunnel.
    async with QwenClient(KEY, tls.base_url, ssl_context=tls.client_context) as client:
        assert client.proxy is None
        assert (await client.chat(HELLO)).complete


@pytest.mark.parametrize(
    ("no_proxy", "direct"),
    [
        ("127.0.0.1", True),
        ("127.0.0.0/8", True),
        ("127.0.0.1:{port}", True),
        ("example.com, 127.0.0.1", True),
        ("*", True),
        ("localhost", False),  # the target is 127.0.0.1: names are not resolved
        ("127.0.0.1:1", False),
        ("", False),
    ],
)
async def test_no_proxy_decides_which_requests_go_direct(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, no_proxy: str, direct: bool
) -> None:
    async with forward_proxy() as seen:
        monkeypatch.setenv("ALL_PROXY", seen.url)
        monkeypatch.setenv("NO_PROXY", no_proxy.format(port=emulator.port))
        async with QwenClient(KEY, emulator.base_url, retry=NO_RETRIES) as client:
            assert (client.proxy is None) is direct
            assert (await client.chat(HELLO)).complete
    assert len(seen.heads) == (0 if direct else 1)
    assert len(emulator.requests) == 1


async def test_proxy_empty_turns_the_environment_off(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with forward_proxy() as seen:
        monkeypatch.setenv("HTTP_PROXY", seen.url)
        async with QwenClient(KEY, emulator.base_url, proxy="") as client:
            assert (await client.chat(HELLO)).complete
            assert "proxy" not in repr(client)
    assert seen.heads == []


async def test_credentials_go_to_the_proxy_on_connect_and_the_key_does_not(
    tls: Tls, emulator: Emulator
) -> None:
    async with forward_proxy(credentials=("alice", PASSWORD)) as seen:
        proxy = credentialed(seen.url)
        async with QwenClient(
            KEY, tls.base_url, proxy=proxy, retry=NO_RETRIES, ssl_context=tls.client_context
        ) as client:
            shown = repr(client)
            assert (await client.chat(HELLO)).complete
    assert f"proxy='{seen.url.replace('://', '://alice:***@')}'" in shown
    assert quote(PASSWORD, safe="") not in shown
    [head] = seen.heads
    assert head.startswith(b"CONNECT ")
    assert b"Proxy-Authorization: " + basic("alice", PASSWORD) in head
    assert KEY.encode() not in seen.everything


async def test_credentials_go_to_the_proxy_on_plain_http_and_the_wire_tap_sees_stars(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    tap = RecordingTap()
    async with forward_proxy(credentials=("alice", PASSWORD)) as seen:
        monkeypatch.setenv("HTTP_PROXY", credentialed(seen.url))
        async with QwenClient(KEY, emulator.base_url, retry=NO_RETRIES, wire_tap=tap) as client:
            assert (await client.chat(HELLO)).complete
    [head] = seen.heads
    assert b"Proxy-Authorization: " + basic("alice", PASSWORD) in head
    [(_, (_, _, headers, _))] = [call for call in tap.calls if call[0] == "request"]
    assert headers["Proxy-Authorization"] == "***"
    assert headers["Authorization"] == "Bearer ***"


async def test_an_https_request_never_carries_the_proxy_credentials_to_the_server(
    tls: Tls, emulator: Emulator
) -> None:
    tap = RecordingTap()
    async with forward_proxy(credentials=("alice", PASSWORD)) as seen:
        client = QwenClient(
            KEY,
            tls.base_url,
            proxy=credentialed(seen.url),
            ssl_context=tls.client_context,
            wire_tap=tap,
        )
        async with client:
            assert (await client.chat(HELLO)).complete
    [(_, (_, _, headers, _))] = [call for call in tap.calls if call[0] == "request"]
    assert "Proxy-Authorization" not in headers
    [received] = emulator.requests
    assert "proxy-authorization" not in received.headers


def assert_hidden(error: BaseException, *secrets: str) -> None:
    """No secret, nor the Proxy-Authorization made of PASSWORD, is reachable from ``error``."""
    for secret in (*secrets, basic("alice", PASSWORD).decode()):
        assert_key_unreachable(error, secret)


async def test_an_unreachable_proxy_is_a_proxy_error_retried_like_a_refused_connection(
    emulator: Emulator,
) -> None:
    port = closed_port()
    sleep = FakeSleep()
    client = QwenClient(
        KEY,
        emulator.base_url,
        proxy=credentialed(f"http://127.0.0.1:{port}"),
        retry=RetryPolicy(max_attempts=2),
        sleep=sleep,
    )
    async with client:
        error = await raised_by(client.chat(HELLO))
    assert type(error) is ProxyError
    assert isinstance(error, TransportError)
    assert str(error).startswith(
        f"cannot connect to the proxy http://127.0.0.1:{port} (from the proxy argument): "
    )
    assert (error.proxy, error.status) == (f"http://127.0.0.1:{port}", None)
    assert len(sleep.delays) == 1
    assert emulator.requests == []
    assert_hidden(error, KEY, PASSWORD, quote(PASSWORD, safe=""))


@pytest.mark.parametrize("https", [True, False], ids=["connect", "plain-http"])
@pytest.mark.parametrize("sent", [None, ("alice", "wrong-password-123")], ids=["none", "wrong"])
async def test_a_407_is_a_proxy_error_not_retried(
    tls: Tls, emulator: Emulator, https: bool, sent: tuple[str, str] | None
) -> None:
    sleep = FakeSleep()
    async with forward_proxy(credentials=("alice", PASSWORD)) as seen:
        proxy = seen.url if sent is None else credentialed(seen.url, *sent)
        client = QwenClient(
            KEY,
            tls.base_url if https else emulator.base_url,
            proxy=proxy,
            sleep=sleep,
            ssl_context=tls.client_context,
        )
        async with client:
            error = await raised_by(client.chat(HELLO))
    assert type(error) is ProxyError
    assert error.status == 407
    assert str(error).startswith(
        f"the proxy {seen.url} (from the proxy argument) refused the request: "
        "407 Proxy Authentication Required; "
    )
    if sent is None:
        assert str(error).endswith("it wants credentials: http://USER:PASSWORD@host:port")
    else:
        assert str(error).endswith("it did not accept the credentials in the proxy URL")
    assert len(seen.heads) == 1  # not retried
    assert sleep.delays == []
    assert emulator.requests == []
    assert_hidden(error, KEY, "wrong-password-123")


async def test_a_403_to_connect_is_a_proxy_error(tls: Tls, emulator: Emulator) -> None:
    async with forward_proxy(deny_connect=True) as seen:
        client = QwenClient(KEY, tls.base_url, proxy=seen.url, ssl_context=tls.client_context)
        async with client:
            error = await raised_by(client.chat(HELLO))
    assert type(error) is ProxyError
    assert error.status == 403
    assert str(error) == (
        f"the proxy {seen.url} (from the proxy argument) refused the request: 403 Forbidden"
    )
    assert len(seen.heads) == 1
    assert_hidden(error, KEY)


def test_a_remote_proxy_for_a_plain_http_target_is_refused_before_any_traffic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", credentialed("http://proxy.example:3128"))
    with pytest.raises(ConfigurationError) as caught:
        QwenClient(KEY, "http://127.0.0.1:8000/v1")
    assert "http://proxy.example:3128 (from HTTP_PROXY)" in str(caught.value)
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert PASSWORD not in shown
    assert quote(PASSWORD, safe="") not in shown
    trusted = QwenClient(KEY, "http://127.0.0.1:8000/v1", allow_insecure_http=True)
    assert trusted.proxy is not None


def test_a_socks_proxy_in_the_environment_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ConfigurationError, match=r"^ALL_PROXY names a socks5 proxy"):
        QwenClient(KEY, "https://dashscope.aliyuncs.com/compatible-mode/v1")
