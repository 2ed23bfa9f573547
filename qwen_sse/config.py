"""Where requests go and with what credentials: regions, base URLs, the API key, timeouts.

I/O layer: it reads the environment; it never logs, stores or prints the key.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

from qwen_sse.errors import ConfigurationError

__all__ = [
    "API_KEY_ENV_VARS",
    "COMPATIBLE_ROOT",
    "DEFAULT_REGION",
    "NATIVE_REGIONS",
    "REGIONS",
    "REGION_ORIGINS",
    "Timeouts",
    "check_transport_security",
    "is_loopback_host",
    "redact_key",
    "resolve_api_key",
    "resolve_base_url",
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


def resolve_api_key(api_key: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The key from the argument, else ``DASHSCOPE_API_KEY``, else ``QWEN_API_KEY``;
    surrounding whitespace (a key read from a file) is dropped, and a key with whitespace or
    control characters inside is refused without being shown."""
    candidates = [("the api_key argument", api_key or "")]
    env = os.environ if environ is None else environ
    candidates += [(name, env.get(name, "")) for name in API_KEY_ENV_VARS]
    for source, raw in candidates:
        key = raw.strip()
        if not key:
            continue
        if any(ch.isspace() or not ch.isprintable() for ch in key):
            raise ConfigurationError(
                f"the API key from {source} contains whitespace or control characters"
            )
        return key
    raise ConfigurationError(
        "no API key: pass api_key=... or set DASHSCOPE_API_KEY (or QWEN_API_KEY)"
    )


def resolve_base_url(
    base_url: str | None, region: str | None, *, root: str = COMPATIBLE_ROOT
) -> str:
    """``base_url`` if given (any compatible server), else the region's host with ``root``,
    the protocol's base path (``/compatible-mode/v1``, ``/api/v1``, ``/apps/anthropic``)."""
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"base_url must be an http(s) URL with a host: {base_url!r}")
        return base_url.rstrip("/")
    name = (region or DEFAULT_REGION).lower()
    try:
        return REGION_ORIGINS[name] + root
    except KeyError:
        known = ", ".join(REGIONS)
        raise ConfigurationError(f"unknown region {region!r}; known regions: {known}") from None


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
