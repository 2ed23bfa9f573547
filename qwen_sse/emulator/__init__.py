"""A local emulator of DashScope's chat endpoints, every protocol of it, with faults.

Edge layer: an ``aiohttp.web`` server built on the core (SSE framing, token counting, model
limits, the wire protocols' endpoints); it must not import the client, the limiter or the
CLI. The tests, ``qwen-sse chat --mock``, ``qwen-sse serve`` and the benchmarks all talk to
it over real loopback sockets.

Its answers are a pure function of the request (:func:`emulated_answer`), so a test can
predict every piece: each protocol's request is read as the equivalent compatible-mode
body, and the same conversation gets the same answer, the same usage, the same faults,
limits and timing in every protocol; only the bytes differ. Besides the rate limits and
the request ids (numbered in order of arrival), the requests before one change only its
usage's cached tokens (the context cache's hits). The package's modules each own one
thing:

* :mod:`~qwen_sse.emulator.answers`: the deterministic answers, in tokens;
* :mod:`~qwen_sse.emulator.corpus`: the sentences answers are made of;
* :mod:`~qwen_sse.emulator.accounting`: prompt and answer tokens;
* :mod:`~qwen_sse.emulator.context_cache`: which leading prompt tokens count as cached;
* :mod:`~qwen_sse.emulator.rejects`: the error vocabulary;
* :mod:`~qwen_sse.emulator.faults`: :class:`Fault`, and the streamer that applies faults
  and pacing;
* :mod:`~qwen_sse.emulator.config`: :class:`EmulatorConfig`;
* :mod:`~qwen_sse.emulator.records`: :class:`RecordedRequest`;
* :mod:`~qwen_sse.emulator.framing`: one module per protocol (how its request maps to the
  answer request, its stream frames, its non-stream body, its error bodies and codes);
* :mod:`~qwen_sse.emulator.server`: :class:`Emulator` (routes, key check, validation
  order, rate windows, the model list);
* :mod:`~qwen_sse.emulator.metrics`: its Prometheus ``GET /metrics`` page;
* :mod:`~qwen_sse.emulator.loop`: the event loop of a process that serves it (uvloop's
  when installed).

Faults (:class:`Fault`) come from three places; the first that has one wins:

1. the server's queue, filled by :meth:`Emulator.schedule` (every chat request takes one);
2. the request's ``X-Emulator-Fault`` header, a JSON object of :class:`Fault` fields;
3. :attr:`EmulatorConfig.fault`, the server default.
"""

from __future__ import annotations

from qwen_sse.emulator.answers import EmulatedAnswer, Piece, emulated_answer
from qwen_sse.emulator.config import DEFAULT_MODELS, EmulatorConfig
from qwen_sse.emulator.faults import FAULT_HEADER, Fault
from qwen_sse.emulator.framing.native import NATIVE_SSE_HEADER
from qwen_sse.emulator.records import Outcome, RecordedRequest
from qwen_sse.emulator.server import MODERATION_TRIGGER, Emulator
from qwen_sse.protocols.compatible import COMPATIBLE
from qwen_sse.protocols.native import NATIVE

__all__ = [
    "CHAT_PATH",
    "DEFAULT_MODELS",
    "FAULT_HEADER",
    "MODERATION_TRIGGER",
    "NATIVE_PATH",
    "NATIVE_SSE_HEADER",
    "EmulatedAnswer",
    "Emulator",
    "EmulatorConfig",
    "Fault",
    "Outcome",
    "Piece",
    "RecordedRequest",
    "emulated_answer",
]

CHAT_PATH = COMPATIBLE.root + COMPATIBLE.path
"""The compatible-mode path (``POST``); ``base_url`` is everything before ``/chat``."""

NATIVE_PATH = NATIVE.root + NATIVE.path
"""The native-protocol path (``POST``); ``native_base_url`` is everything before
``/services``."""
