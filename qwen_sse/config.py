"""Where requests go and with what credentials: regions, base URLs, the API key, timeouts.

I/O layer, and the one module of the library that reads the environment (see the README's
table of environment variables); it never logs, stores or prints the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

from qwen_sse.errors import ConfigurationError

__all__ = [
    "API_KEY_ENV_VARS",
    "BASE_URL_ENV_VARS",
    "COMPATIBLE_ROOT",
    "DEFAULT_REGION",
    "LOG_CONTENT_ENV_VAR",
    "LOG_ENV_VAR",
    "LOG_ENV_VARS",
    "NATIVE_REGIONS",
    "REGIONS",
    "REGION_ENV_VARS",
    "REGION_ORIGINS",
    "LogSwitch",
    "Timeouts",
    "carries_credentials",
    "check_transport_security",
    "is_loopback_host",
    "log_switch",
    "redact_key",
    "resolve_api_key",
    "resolve_base_url",
    "shown_url",
]

REGION_ORIGINS: Mapping[str, str] = {
    "beijing": "https://dashscope.aliyuncs.com",
    "singapore": "https://dashscope-intl.aliyuncs.com",
    "us": "https://dashscope-us.aliyuncs.com",
    "hongkong": "https://cn-hongkong.dashscope.aliyuncs.com",
}
"""DashScope's host in each region; a protocol's base URL is its host plus the protocol's
root (protocol.md documents Beijing's roots; the other regions follow the same pattern)."""
COMPATIBLE_ROOT = "/compatible-mode/v1"
REGIONS: Mapping[str, str] = {
    region: origin + COMPATIBLE_ROOT for region, origin in REGION_ORIGINS.items()
}
"""Base URLs of the OpenAI-compatible mode."""
NATIVE_REGIONS: Mapping[str, str] = {
    region: origin + "/api/v1" for region, origin in REGION_ORIGINS.items()
}
"""Base URLs of the native protocols."""
DEFAULT_REGION = "beijing"
API_KEY_ENV_VARS = ("DASHSCOPE_API_KEY", "QWEN_API_KEY")
BASE_URL_ENV_VARS = ("DASHSCOPE_BASE_URL", "QWEN_BASE_URL")
"""Where the base URL comes from when no argument names one, first set first: the
compatible-mode base URL (see :func:`resolve_base_url`)."""
REGION_ENV_VARS = ("DASHSCOPE_REGION", "QWEN_REGION")
"""Where the region comes from when no argument and no base URL variable names one."""
LOG_ENV_VAR = "QWEN_SSE_LOG"
LOG_CONTENT_ENV_VAR = "QWEN_SSE_LOG_CONTENT"
LOG_ENV_VARS = (LOG_ENV_VAR, LOG_CONTENT_ENV_VAR)
_LOG_LEVELS = ("debug", "info")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class Timeouts(msgspec.Struct, frozen=True):
    """Deadlines of one request, in seconds; None switches one off.

    ``connect_s``: TCP and TLS set-up. ``first_token_s``: from sending until the first
    content or reasoning text (response headers and the role-only chunk do not stop it).
    ``idle_s``: the longest silence between SSE events; comments (keep-alives) do not
    count as events. ``total_s``: the whole call, retries, their sleeps and resumes included
    (a retry whose delay would pass it is not made: the last error is raised at once, with
    a note); off by default because long generations legitimately take minutes.
    """

    connect_s: float | None = 10.0
    first_token_s: float | None = 120.0
    idle_s: float | None = 60.0
    total_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_token_s", "idle_s", "total_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(f"timeout {name} must be positive or None, got {value}")


def resolve_api_key(
    api_key: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    env_vars: tuple[str, ...] = API_KEY_ENV_VARS,
) -> str:
    """The key from the argument, else from the first of ``env_vars`` that is set
    (``DASHSCOPE_API_KEY``, then ``QWEN_API_KEY``); surrounding whitespace (a key read from a
    file) is dropped, and a key with whitespace or control characters inside is refused
    without being shown."""
    candidates = [("the api_key argument", api_key or "")]
    env = os.environ if environ is None else environ
    candidates += [(name, env.get(name, "")) for name in env_vars]
    for source, raw in candidates:
        key = raw.strip()
        if not key:
            continue
        if any(ch.isspace() or not ch.isprintable() for ch in key):
            raise ConfigurationError(
                f"the API key from {source} contains whitespace or control characters"
            )
        return key
    raise ConfigurationError(f"no API key: set {_either(env_vars)}, or pass api_key=...")


def resolve_base_url(
    base_url: str | None,
    region: str | None,
    *,
    root: str = COMPATIBLE_ROOT,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The base URL of a protocol whose root on a DashScope host is ``root``
    (``/compatible-mode/v1``, ``/api/v1``, ``/apps/anthropic``).

    Arguments first, then the environment, then the default: ``base_url`` if given (the
    protocol's base URL on any server), else ``region``'s host with ``root``; else
    ``DASHSCOPE_BASE_URL`` (or ``QWEN_BASE_URL``), else ``DASHSCOPE_REGION`` (or
    ``QWEN_REGION``); else Beijing. A base URL from the environment is the compatible-mode
    base URL, the one DashScope documents and ``qwen-sse serve`` prints
    (``https://host/compatible-mode/v1``, or any OpenAI-compatible server's ``.../v1``), so
    that one variable serves every protocol: a protocol with another root gets that URL
    with ``/compatible-mode/v1`` replaced by its root, and a URL that does not end in it
    (another server's layout) is refused for such a protocol, saying so.
    """
    if base_url:
        return _checked_url(base_url, "base_url")
    if region:
        return _region_url(region, root)
    env = os.environ if environ is None else environ
    for name in BASE_URL_ENV_VARS:
        if value := env.get(name, "").strip():
            return _from_compatible_url(_checked_url(value, name), name, root)
    for name in REGION_ENV_VARS:
        if value := env.get(name, "").strip():
            return _region_url(value, root, source=name)
    return REGION_ORIGINS[DEFAULT_REGION] + root


def _checked_url(url: str, source: str) -> str:
    """``url`` without a trailing slash, if it is an http(s) URL with a host and a valid
    port and without credentials (a password in it would travel into every report and
    error; the key has its own argument and variables). The error never shows them."""
    if carries_credentials(url):
        raise ConfigurationError(
            f"{source} must not carry a user name or password: {shown_url(url)!r} "
            "(the API key has an argument and environment variables of its own)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{source} must be an http(s) URL with a host: {url!r}")
    try:
        parts.port  # noqa: B018  (parsing it is the check)
    except ValueError:
        raise ConfigurationError(f"{source} must have a port from 0 to 65535: {url!r}") from None
    return url.rstrip("/")


def _region_url(region: str, root: str, *, source: str = "") -> str:
    """``region``'s host with ``root``; ``source`` names the variable it came from, if any."""
    try:
        return REGION_ORIGINS[region.lower()] + root
    except KeyError:
        known = ", ".join(REGIONS)
        where = f" in {source}" if source else ""
        raise ConfigurationError(
            f"unknown region {region!r}{where}; known regions: {known}"
        ) from None


def _from_compatible_url(url: str, source: str, root: str) -> str:
    """The base URL for ``root`` on the server whose compatible-mode base URL is ``url``."""
    if root == COMPATIBLE_ROOT:
        return url
    if not url.endswith(COMPATIBLE_ROOT):
        raise ConfigurationError(
            f"{source} ({url}) is a compatible-mode base URL that does not end in "
            f"{COMPATIBLE_ROOT}, so this protocol's base URL (its root is {root}) cannot be "
            "derived from it: pass base_url=... for this protocol"
        )
    return url.removesuffix(COMPATIBLE_ROOT) + root


def _either(names: tuple[str, ...]) -> str:
    """``A``, ``A (or B)``, ``A (or B or C)``."""
    first, *others = names
    return f"{first} (or {' or '.join(others)})" if others else first


class LogSwitch(msgspec.Struct, frozen=True):
    """What ``QWEN_SSE_LOG`` and ``QWEN_SSE_LOG_CONTENT`` ask for: ``level`` ``"debug"``,
    ``"info"`` or None (unset: the application's logging configuration rules), and whether
    to show prompt and answer content (``content``, which only the debug level shows)."""

    level: str | None = None
    content: bool = False


def log_switch(environ: Mapping[str, str] | None = None) -> LogSwitch:
    """The log switch the environment sets; an unknown value is a
    :class:`~qwen_sse.errors.ConfigurationError` naming the variable and what it accepts."""
    env = os.environ if environ is None else environ
    level = env.get(LOG_ENV_VAR, "").strip().lower()
    if level and level not in _LOG_LEVELS:
        raise ConfigurationError(
            f"{LOG_ENV_VAR}={env[LOG_ENV_VAR]!r} is not one of {', '.join(_LOG_LEVELS)}"
        )
    content = env.get(LOG_CONTENT_ENV_VAR, "").strip().lower()
    if content not in _TRUE + _FALSE:
        raise ConfigurationError(
            f"{LOG_CONTENT_ENV_VAR}={env[LOG_CONTENT_ENV_VAR]!r} is not 1 or 0"
        )
    return LogSwitch(level=level or None, content=content in _TRUE)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport_security(url: str, *, allow_insecure_http: bool) -> None:
    """Refuse to send a key over plain ``http://`` to a host that is not loopback."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_insecure_http:
        host = parts.hostname or ""
        if not is_loopback_host(host):
            raise ConfigurationError(
                f"refusing to send the API key over plain http to {host}; use https, "
                "or pass allow_insecure_http=True if this network is trusted"
            )


def redact_key(key: str) -> str:
    """A form of the key safe to show: never more than its first three characters."""
    return f"{key[:3]}***" if len(key) > 8 else "***"


def carries_credentials(url: str) -> bool:
    """Whether ``url`` has an ``@`` before its query: a user name or password, however
    malformed the URL around it (a ``/`` in a password moves ``urlsplit``'s host)."""
    return "@" in _BEFORE_QUERY.split(url, maxsplit=1)[0]


def shown_url(url: str) -> str:
    """``url`` as it may be shown: without what stands before an ``@`` ahead of its query
    (see :func:`carries_credentials`), scheme kept when it is well formed."""
    return _USERINFO.sub(r"\1", url, count=1)


_BEFORE_QUERY = re.compile(r"[?#]")
# A scheme with "//" (kept), then anything up to the last "@" before a query or fragment.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^?#]*@")
