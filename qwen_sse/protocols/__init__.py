"""The registry of wire protocols: every streaming chat protocol qwen-sse speaks, by name.

Core package (sans-I/O). Each protocol is one module of this package (see
:class:`~qwen_sse.protocols.base.WireProtocol` for what it owns); adding one is a module
and a line in :data:`PROTOCOLS`. Nothing outside this package compares protocol names:
callers look a protocol up once with :func:`get` and use the object.
"""

from __future__ import annotations

from collections.abc import Mapping

from qwen_sse.errors import ConfigurationError
from qwen_sse.protocols.anthropic import ANTHROPIC
from qwen_sse.protocols.base import FrameReader, RequestFacts, WireProtocol
from qwen_sse.protocols.compatible import COMPATIBLE
from qwen_sse.protocols.native import NATIVE, NATIVE_MULTIMODAL
from qwen_sse.protocols.responses import RESPONSES

__all__ = [
    "DEFAULT",
    "NAMES",
    "PROTOCOLS",
    "FrameReader",
    "RequestFacts",
    "WireProtocol",
    "for_url",
    "get",
]

PROTOCOLS: Mapping[str, WireProtocol] = {
    protocol.name: protocol
    for protocol in (COMPATIBLE, NATIVE, NATIVE_MULTIMODAL, RESPONSES, ANTHROPIC)
}
"""Every protocol, by its ``protocol=`` name."""

NAMES: tuple[str, ...] = tuple(PROTOCOLS)
DEFAULT: WireProtocol = COMPATIBLE


def get(protocol: str | WireProtocol) -> WireProtocol:
    """The protocol named ``protocol`` (a protocol object is returned as it is); an unknown
    name is a :class:`~qwen_sse.errors.ConfigurationError` listing the known ones."""
    if not isinstance(protocol, str):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        known = ", ".join(NAMES)
        raise ConfigurationError(f"unknown protocol {protocol!r}; known: {known}") from None


def for_url(url: str) -> WireProtocol:
    """The protocol whose request path ``url`` ends with (the longest such path), else
    :data:`DEFAULT`: how a recording made before recordings named their protocol is read."""
    path = url.split("?", 1)[0].rstrip("/")
    matches = [protocol for protocol in PROTOCOLS.values() if path.endswith(protocol.path)]
    return max(matches, key=lambda protocol: len(protocol.path), default=DEFAULT)
