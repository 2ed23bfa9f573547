"""Tests of qwen_sse.proxy: the proxy variables, NO_PROXY matching, proxy URLs and their
credentials; then the client through a real forward proxy on loopback (tests/forwardproxy.py)."""

from __future__ import annotations

import pickle
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from qwen_sse.errors import ConfigurationError
from qwen_sse.proxy import (
    NoProxy,
    Proxy,
    check_proxy_security,
    parse_proxy,
    proxy_environment,
    resolve_proxy,
)

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
    assert (proxy.host, proxy.port, proxy.scheme) == ("proxy.example", 3128, "http")
    assert (proxy.username, proxy.password) == ("alice", "s3cr@t")
    assert proxy.redacted == "http://alice:***@proxy.example:3128"
    assert proxy.url_with_credentials == "http://alice:s3cr%40t@proxy.example:3128"
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


def test_a_username_alone_is_redacted_too() -> None:
    # A proxy token often travels as the username.
    proxy = parse_proxy("http://tok-123456@proxy:3128", source="x")
    assert proxy.redacted == "http://***@proxy:3128"
    assert "tok-123456" not in repr(proxy)
    assert proxy.url_with_credentials == "http://tok-123456@proxy:3128"


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
def test_credentials_round_trip_and_never_show(username: str, password: str) -> None:
    assume(password not in username and quote(password, safe="") not in quote(username, safe=""))
    proxy = Proxy(
        url="http://proxy.example:3128",
        host="proxy.example",
        port=3128,
        username=username,
        password=password,
        source="the proxy argument",
    )
    again = parse_proxy(proxy.url_with_credentials, source="x")
    assert (again.username, again.password, again.url) == (username, password, proxy.url)
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
