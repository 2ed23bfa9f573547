"""Which proxy a request goes through: the proxy environment variables, ``NO_PROXY``
matching, and proxy URLs whose credentials never show.

I/O layer: it reads the environment; it never logs or prints a proxy's password.

The rules are httpx's, as the openai SDK applies them (httpx 0.28 and its successor httpx2,
which the openai SDK ships with):

* ``HTTPS_PROXY`` serves ``https://`` targets, ``HTTP_PROXY`` ``http://`` targets, and
  ``ALL_PROXY`` both when the scheme's own variable is unset. A value without a scheme is
  an ``http://`` proxy. Names are read in any letter case, as :mod:`urllib.request` reads
  them: the lower-case variable wins, an empty lower-case variable unsets the upper-case
  one, and a CGI script (``REQUEST_METHOD`` set) ignores the upper-case ``HTTP_PROXY``,
  which a client can set through a ``Proxy:`` header (CVE-2016-1000110).
* ``NO_PROXY`` is a comma-separated list; a target it matches goes direct. ``*`` matches
  every host; ``example.com`` matches it and its subdomains; ``.example.com`` and
  ``*.example.com`` match its subdomains only; ``localhost`` matches itself; an IPv4 or
  IPv6 address (``::1`` or ``[::1]``) matches itself and a network (``10.0.0.0/8``,
  ``fe80::/10``) every address in it (IP literals only: names are not resolved); a
  ``:PORT`` suffix restricts an entry to that port; ``http://host`` restricts it to one
  scheme (the host then matches exactly). Letter case does not matter; an entry that
  cannot be read is ignored.
* Loopback is not special: a target on 127.0.0.1 or ``localhost`` goes through the proxy
  unless ``NO_PROXY`` names it.

Networks and ``*.example.com`` follow httpx2, which fixed them (httpx 0.28 compares a
network's first address only, and ignores ``*.example.com``). One deliberate difference from
both: a ``:PORT`` entry also matches a URL that leaves the port implicit
(``example.com:443`` matches ``https://example.com``; httpx compares an explicit port only).
aiohttp's own ``trust_env`` is not used: it ignores ``ALL_PROXY`` and ``https://`` proxies.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from qwen_sse.config import is_loopback_host
from qwen_sse.errors import ConfigurationError, ProxyError

__all__ = [
    "PROXY_SCHEMES",
    "NoProxy",
    "Proxy",
    "check_proxy_security",
    "parse_proxy",
    "proxy_environment",
    "resolve_proxy",
]

PROXY_SCHEMES = ("http", "https")
"""The schemes of the proxies qwen-sse can speak to (aiohttp's; no SOCKS)."""
_DEFAULT_PORTS = {"http": 80, "https": 443}
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, repr=False)
class Proxy:
    """A proxy: ``url`` is ``scheme://host:port`` without credentials, ``username`` and
    ``password`` are decoded (empty when absent), ``source`` says where it was configured
    (``HTTPS_PROXY``, ``the proxy argument``). Its repr and :attr:`redacted` never show the
    password (nor a username given without one, which is often a token)."""

    url: str
    host: str
    port: int
    username: str = ""
    password: str = ""
    source: str = ""

    def __repr__(self) -> str:
        return f"Proxy({self.redacted!r}, source={self.source!r})"

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    @property
    def redacted(self) -> str:
        """The URL with ``user:***@`` (or ``***@``) in place of the credentials."""
        if not self.has_credentials:
            return self.url
        shown = f"{quote(self.username, safe='')}:***" if self.password else "***"
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{shown}@{rest}"

    @property
    def headers(self) -> dict[str, str]:
        """``Proxy-Authorization: Basic`` with the credentials (UTF-8, as httpx sends them;
        aiohttp would send Latin-1), or no header: secret, never shown."""
        if not self.has_credentials:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return {"Proxy-Authorization": f"Basic {token}"}

    @property
    def named(self) -> str:
        """The proxy as an error names it: its URL and where it came from."""
        return f"{self.url} (from {self.source})" if self.source else self.url

    def unreachable(self, reason: str) -> ProxyError:
        """The error for a proxy that could not be reached (``reason``: the OS's words)."""
        return ProxyError(f"cannot connect to the proxy {self.named}: {reason}", proxy=self.url)

    def refused(self, status: int, reason: str) -> ProxyError:
        """The error for a proxy that answered ``status`` to the request or its tunnel."""
        message = f"the proxy {self.named} refused the request: {status} {reason}".rstrip()
        if status == 407:
            message += (
                "; it did not accept the credentials in the proxy URL"
                if self.has_credentials
                else "; it wants credentials: http://USER:PASSWORD@host:port"
            )
        return ProxyError(message, proxy=self.url, status=status)


def _redact_text(text: str) -> str:
    """``text`` (a proxy URL that may not parse) with any userinfo redacted: everything
    before the last ``@`` (a password may hold ``/``, ``?`` or ``#``, which would otherwise
    end the host part early)."""
    scheme, sep, rest = text.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not at:
        return text
    user, colon, _ = userinfo.partition(":")
    user = user.split("/", 1)[0]
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{shown}@{after}"


def parse_proxy(value: str, *, source: str) -> Proxy:
    """The :class:`Proxy` ``value`` names (``http://user:pass@host:3128``, or ``host:3128``
    for an ``http://`` proxy); :class:`~qwen_sse.errors.ConfigurationError` names ``source``
    and the value, credentials redacted, when it is not an ``http(s)://`` URL with a host."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    shown = _redact_text(text)
    if scheme not in PROXY_SCHEMES:
        raise ConfigurationError(
            f"{source} names a {scheme} proxy ({shown}); qwen-sse speaks to http:// and "
            "https:// proxies only"
        )
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        port = 0
    host = parts.hostname or ""
    if not host or not port:
        raise ConfigurationError(f"{source} is not a proxy URL with a host and a port: {shown}")
    location = f"[{host}]" if ":" in host else host
    return Proxy(
        url=f"{scheme}://{location}:{port}",
        host=host,
        port=port,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        source=source,
    )


def proxy_environment(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{scheme: (value, variable name)}`` of the ``<scheme>_proxy`` variables (``http``,
    ``https``, ``all``, ``no``...), read as :func:`urllib.request.getproxies_environment`
    reads them (see the module's docstring); empty values are absent."""
    found: dict[str, tuple[str, str]] = {}
    for name, value in environ.items():
        lowered = name.lower()
        if value and lowered.endswith("_proxy"):
            found[lowered[:-6]] = (value, name)
    if "REQUEST_METHOD" in environ:
        found.pop("http", None)
    # Second pass: the lower-case spelling wins, and an empty one unsets.
    for name, value in environ.items():
        if name.endswith("_proxy"):
            scheme = name.lower()[:-6]
            if value:
                found[scheme] = (value, name)
            else:
                found.pop(scheme, None)
    return found


@dataclass(frozen=True, slots=True)
class _Entry:
    """One ``NO_PROXY`` entry. ``scheme`` "" is any scheme; ``port`` None is any port.
    Host rule: ``network`` if set, else ``host`` exactly, or (``subdomains``) any host
    below it, or (``domain``) it or any host below it; ``host`` "" is any host."""

    scheme: str = ""
    host: str = ""
    port: int | None = None
    network: _IPNetwork | None = None
    subdomains: bool = False
    domain: bool = False

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.scheme and self.scheme != scheme:
            return False
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        if not self.host:
            return True
        if host == self.host:
            return not self.subdomains
        return (self.subdomains or self.domain) and host.endswith("." + self.host)


_HOST_PORT = re.compile(r"^(?P<host>[^:/\[\]]*)(?::(?P<port>\d+))?$")


def _network(text: str) -> _IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _parse_entry(raw: str) -> _Entry | None:
    """The entry ``raw`` (stripped, not ``*``) describes, or None if it cannot be read."""
    text = raw.lower()
    scheme = ""
    # A scheme-qualified entry is a URL pattern to httpx: its host matches exactly.
    qualified = "://" in text
    if qualified:
        scheme, _, text = text.partition("://")
        scheme = "" if scheme == "all" else scheme
        text = text.rstrip("/")
    # A bare IP address or network: 10.0.0.0/8, ::1, fe80::/10.
    if (network := _network(text)) is not None:
        return _Entry(scheme=scheme, network=network)
    # [v6 address] or [v6 network], with an optional port: [::1]:8080, [2001:db8::]/32.
    if text.startswith("["):
        address, _, after = text[1:].partition("]")
        suffix_port: int | None = None
        if after.startswith("/"):
            address += after
        elif after.startswith(":") and after[1:].isdigit():
            suffix_port = int(after[1:])
        elif after:
            return None
        network = _network(address)
        if network is None:
            return None
        return _Entry(scheme=scheme, network=network, port=suffix_port)
    match = _HOST_PORT.match(text)
    if match is None:
        return None
    host = match["host"]
    port = int(match["port"]) if match["port"] else None
    if (network := _network(host)) is not None:
        return _Entry(scheme=scheme, network=network, port=port)
    if host in ("", "*"):
        return _Entry(scheme=scheme, port=port)
    if host.startswith("*."):
        return _Entry(scheme=scheme, host=host[2:], port=port, subdomains=True)
    if host.startswith("."):
        return _Entry(scheme=scheme, host=host[1:], port=port, subdomains=True)
    if host.startswith("*"):
        return _Entry(scheme=scheme, host=host[1:], port=port, domain=True)
    if qualified or host == "localhost":
        return _Entry(scheme=scheme, host=host, port=port)
    return _Entry(scheme=scheme, host=host, port=port, domain=True)


class NoProxy:
    """The targets a ``NO_PROXY`` value sends direct (rules in the module's docstring)."""

    __slots__ = ("_entries", "_everything", "value")

    def __init__(self, value: str) -> None:
        self.value = value
        raw = [item.strip() for item in value.split(",")]
        self._everything = "*" in raw
        entries = (_parse_entry(item) for item in raw if item and item != "*")
        self._entries = tuple(entry for entry in entries if entry is not None)

    def __repr__(self) -> str:
        return f"NoProxy({self.value!r})"

    def matches(self, url: str) -> bool:
        """True when requests to ``url`` must not use a proxy."""
        if self._everything:
            return True
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        except ValueError:
            return False
        return any(entry.matches(scheme, host, port) for entry in self._entries)


def resolve_proxy(
    url: str, proxy: str | None = None, environ: Mapping[str, str] | None = None
) -> Proxy | None:
    """The proxy requests to ``url`` go through, or None for a direct connection.

    ``proxy`` is the caller's choice: a URL is used for every request (``NO_PROXY`` is not
    consulted, as httpx's ``proxy=`` does), ``""`` means no proxy whatever the environment
    says, None means the environment decides (``environ``, by default ``os.environ``).
    :class:`~qwen_sse.errors.ConfigurationError` for a proxy that cannot be used (a SOCKS
    proxy, no host); a proxy variable the target does not use is never checked.
    """
    if proxy is not None:
        return parse_proxy(proxy, source="the proxy argument") if proxy.strip() else None
    found = proxy_environment(os.environ if environ is None else environ)
    no_proxy = found.get("no")
    if no_proxy is not None and NoProxy(no_proxy[0]).matches(url):
        return None
    chosen = found.get(urlsplit(url).scheme.lower()) or found.get("all")
    if chosen is None:
        return None
    value, name = chosen
    return parse_proxy(value, source=name)


def check_proxy_security(url: str, proxy: Proxy | None, *, allow_insecure_http: bool) -> None:
    """Refuse a plain ``http://`` target through a proxy that is not on loopback: such a
    proxy reads the whole request, API key included (with ``https://`` targets it sees only
    ``CONNECT host:port`` and encrypted bytes)."""
    if proxy is None or allow_insecure_http or urlsplit(url).scheme != "http":
        return
    if is_loopback_host(proxy.host):
        return
    raise ConfigurationError(
        f"refusing to send the API key over plain http through the proxy {proxy.named}: "
        "the proxy would read it; add the host to NO_PROXY, use https, or pass "
        "allow_insecure_http=True if this network is trusted"
    )
