"""The emulator's ``GET /metrics``: what it is doing and has done, in the Prometheus text
format, under vLLM's names where vLLM has a series for it (so what reads vLLM's page reads
this one: ``qwen-sse bench --metrics-url``, Grafana dashboards) and ``qwen_emulator_*``
names for the rest.

Edge layer (part of :mod:`qwen_sse.emulator`). The series, none with labels but the
responses' ``code``:

* ``vllm:num_requests_running`` (gauge): chat requests being answered, from the moment
  the server takes one until its answer has ended or its client went away, the time to
  first token included (as vLLM counts a request in prefill as running);
* ``vllm:num_requests_waiting`` (gauge): always 0, since the emulator queues nothing:
  every request is answered at once;
* ``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total`` (counters): the prompt
  and completion tokens of every answer begun. The emulator decides an answer whole
  before it sends a byte, so an answer cut short (a fault, a client gone) counts in full;
* ``qwen_emulator_requests_total`` (counter): chat requests received, refused ones too;
* ``qwen_emulator_responses_total{code="..."}`` (counter): chat requests ended, by HTTP
  status (``code="cancelled"``: the client went away before the handler returned);
* ``qwen_emulator_streams_active`` (gauge): streaming responses open
  (:attr:`~qwen_sse.emulator.Emulator.active_streams`).

The page needs no API key, as vLLM's does not. A chat request is a ``POST`` to a route
of the emulator (each is a protocol's chat endpoint); a ``POST`` to a path it does not
serve is not counted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from qwen_sse.emulator.accounting import AnswerUsage

if TYPE_CHECKING:
    from qwen_sse.emulator.server import Emulator

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "add_metrics", "count_answer"]

METRICS_PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Counts:
    """What the page reports, kept up to date by the middleware and :func:`count_answer`."""

    __slots__ = ("generation_tokens", "prompt_tokens", "received", "responses", "running")

    def __init__(self) -> None:
        self.running = 0
        self.received = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.responses: Counter[str] = Counter()


_COUNTS = web.AppKey("qwen_sse.emulator.metrics", _Counts)


def add_metrics(app: web.Application, emulator: Emulator) -> None:
    """Serve ``GET /metrics`` on ``app`` (before it starts) and count its chat requests."""
    counts = _Counts()
    app[_COUNTS] = counts

    @web.middleware
    async def count(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.method != "POST" or request.match_info.http_exception is not None:
            return await handler(request)
        counts.received += 1
        counts.running += 1
        try:
            response = await handler(request)
        except web.HTTPException as error:
            code = str(error.status)
            raise
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        except Exception:
            code = "500"  # what aiohttp answers for it
            raise
        else:
            code = str(response.status)
            return response
        finally:
            counts.running -= 1
            counts.responses[code] += 1

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=_page(counts, emulator.active_streams).encode(),
            headers={"Content-Type": CONTENT_TYPE},
        )

    app.middlewares.append(count)
    app.router.add_get(METRICS_PATH, page)


def count_answer(request: web.Request, usage: AnswerUsage) -> None:
    """Count the tokens of an answer about to be sent (nothing when the app has no page)."""
    counts = request.app.get(_COUNTS)
    if counts is not None:
        counts.prompt_tokens += usage.prompt_tokens
        counts.generation_tokens += usage.completion_tokens


def _page(counts: _Counts, streams: int) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, *samples: tuple[str, int]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    family(
        "vllm:num_requests_running",
        "gauge",
        "Chat requests being answered, the time to first token included.",
        ("", counts.running),
    )
    family(
        "vllm:num_requests_waiting",
        "gauge",
        "Requests waiting to be answered: always 0, the emulator queues nothing.",
        ("", 0),
    )
    family(
        "vllm:prompt_tokens_total",
        "counter",
        "Prompt tokens of the answers begun.",
        ("", counts.prompt_tokens),
    )
    family(
        "vllm:generation_tokens_total",
        "counter",
        "Completion tokens of the answers begun (an answer cut short counts in full).",
        ("", counts.generation_tokens),
    )
    family(
        "qwen_emulator_requests_total",
        "counter",
        "Chat requests received, refused ones included.",
        ("", counts.received),
    )
    family(
        "qwen_emulator_responses_total",
        "counter",
        "Chat requests ended, by HTTP status (cancelled: the client went away).",
        *((f'{{code="{code}"}}', number) for code, number in sorted(counts.responses.items())),
    )
    family(
        "qwen_emulator_streams_active",
        "gauge",
        "Streaming responses open.",
        ("", streams),
    )
    return "\n".join(lines) + "\n"
