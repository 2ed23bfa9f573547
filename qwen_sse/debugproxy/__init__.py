"""The debugging proxy (``qwen-sse proxy``): a reverse proxy that an application points its
base URL at, to see, record and break the wire of its streaming calls to DashScope (or any
server that speaks one of the five protocols).

Edge layer: an ``aiohttp`` server and client session, built on the core (the SSE decoder,
the protocols' readers), the trace view, the recording format and the emulator's fault
vocabulary. It must not import the client (the calls it carries are the application's,
made by whatever client it uses) nor the CLI. The package's modules each own one thing:

* :mod:`~qwen_sse.debugproxy.server`: :class:`DebugProxy` (listening, refusing,
  forwarding byte for byte, applying faults);
* :mod:`~qwen_sse.debugproxy.exchange`: :class:`ExchangeSummary` and the view of one
  exchange (the tee into the trace view, the recording, the live lines);
* :mod:`~qwen_sse.debugproxy.faults`: :class:`ProxyFault`, which exchanges take it, and
  where it cuts a body;
* :mod:`~qwen_sse.debugproxy.secrets`: the application's credentials, masked in everything
  shown or recorded.
"""

from __future__ import annotations

from qwen_sse.debugproxy.exchange import ExchangeSummary
from qwen_sse.debugproxy.faults import ProxyFault, parse_fault
from qwen_sse.debugproxy.server import DEFAULT_MAX_REQUEST_BYTES, DebugProxy

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "DebugProxy",
    "ExchangeSummary",
    "ProxyFault",
    "parse_fault",
]
