"""Locust integration: a user that streams chat completions over Locust's own HTTP client.

Edge layer. Locust runs users as gevent greenlets, where asyncio and aiohttp have no
place, so :class:`QwenUser` does not use the client: it posts with Locust's
``HttpUser`` session (``stream=True``), reads the body with ``response.raw.read1`` (each
read returns as soon as bytes arrive, as a streamed answer needs) and feeds the bytes to
the same sans-I/O :class:`~qwen_sse.chat.ChatStreamDecoder` the asyncio client uses. The
workload (:mod:`qwen_sse.bench.workload`) and the token accounting
(:func:`qwen_sse.bench.metrics.output_tokens_of`) are ``qwen-sse bench``'s own.

Each answer is reported to Locust as request events of type ``LLM`` (``REQUEST_TYPE``),
one row each in Locust's statistics and CSV files, ``response_time`` in milliseconds:

* ``TTFT``: time to the first content or reasoning text;
* ``ITL``: one event per gap between text-bearing chunks;
* ``TPOT``: per answer, ``(e2e - ttft) / (output tokens - 1)``;
* ``E2E``: the whole answer (a failed answer is a failed ``E2E`` event);
* ``output tokens``: the answer's output tokens as the "response time" (a count, not
  milliseconds), from the server's usage, else counted with the Qwen tokenizer.

Locust's own event for the POST (``chat/completions (headers)``) times the response
headers only.

Use it from a locustfile (``benchmarks/locustfile.py``)::

    from locust import constant
    from qwen_sse.locust import QwenUser

    class ChatUser(QwenUser):
        wait_time = constant(0)

and run, for example, one master and two workers, headless, against ``qwen-sse serve``::

    locust -f benchmarks/locustfile.py --master --headless --expect-workers 2 \\
        -u 20 -r 10 -t 60s --host http://127.0.0.1:8000/compatible-mode/v1 --csv run
    locust -f benchmarks/locustfile.py --worker --master-host 127.0.0.1   # twice

Options (given to the master, passed on to the workers): ``--qwen-model``,
``--qwen-input-tokens``, ``--qwen-output-tokens``, ``--qwen-prompts FILE.jsonl``,
``--qwen-params JSON``. The key comes from ``DASHSCOPE_API_KEY`` or ``QWEN_API_KEY`` on
each worker.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import time
from typing import Any

import gevent
from locust import HttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from urllib3.exceptions import HTTPError

from qwen_sse import protocols
from qwen_sse.bench.metrics import output_tokens_of, tpot_of
from qwen_sse.bench.workload import SyntheticWorkload, Workload, read_prompts
from qwen_sse.chat import ChatResult, ChatStreamDecoder
from qwen_sse.config import resolve_api_key
from qwen_sse.errors import QwenSSEError
from qwen_sse.tokens import count_tokens

__all__ = ["REQUEST_TYPE", "QwenUser"]

REQUEST_TYPE = "LLM"
_READ_BYTES = 64 * 1024
_requests = itertools.count()


def _add_options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("qwen-sse")
    group.add_argument("--qwen-model", default="qwen-plus", help="model to ask")
    group.add_argument(
        "--qwen-input-tokens", type=int, default=256, help="synthetic prompt size in tokens"
    )
    group.add_argument(
        "--qwen-output-tokens", type=int, default=128, help="max_tokens of every request"
    )
    group.add_argument("--qwen-prompts", default="", help="JSONL prompts file (overrides sizes)")
    group.add_argument(
        "--qwen-params", default="{}", help="JSON object of extra body fields, e.g. thinking"
    )
    group.add_argument(
        "--qwen-protocol",
        choices=protocols.NAMES,
        default=protocols.DEFAULT.name,
        help="the wire protocol; --host is its base URL (default %(default)s)",
    )


def _refresh_clock(**_: Any) -> None:
    # gevent's timers count from the time its loop last read the clock, which may be as
    # old as the process: Locust's --run-time timer, started after init, would then end the
    # run at once after a slow start (a busy machine).
    gevent.get_hub().loop.update_now()


# Synthetic prompts are sized, and answers without usage counted, with the Qwen vocabulary.
# Loaded by the first user, it would take the first second or more of the run (far more on
# a busy machine); loaded here, at import, a worker has it before it connects to its master.
count_tokens("qwen-sse locust")

# Locust's event hooks are untyped; the listeners' own signatures are checked above.
events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_refresh_clock)  # type: ignore[no-untyped-call]


@functools.cache
def _workload(prompts: str, input_tokens: int, output_tokens: int) -> Workload:
    """One workload per process (a prompts file is read once, not once per user)."""
    if prompts:
        return read_prompts(prompts, output_tokens=output_tokens)
    # Fresh words in every process, so no two workers send the same prompts.
    seed = random.SystemRandom().randrange(1 << 32)
    return SyntheticWorkload(input_tokens=input_tokens, output_tokens=output_tokens, seed=seed)


class QwenUser(HttpUser):
    """A Locust user streaming one chat completion per task run (see the module).

    Subclass it in a locustfile (it is ``abstract``) and set ``wait_time``;
    ``--qwen-protocol`` picks the wire protocol and ``--host`` is its base URL
    (``.../compatible-mode/v1`` for the default). Override :meth:`next_request` to send
    something else than the workload's prompts.
    """

    abstract = True

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model: str = getattr(options, "qwen_model", "qwen-plus")
        self.workload = _workload(
            getattr(options, "qwen_prompts", ""),
            getattr(options, "qwen_input_tokens", 256),
            getattr(options, "qwen_output_tokens", 128),
        )
        params = json.loads(getattr(options, "qwen_params", "{}") or "{}")
        if not isinstance(params, dict):
            raise ValueError("--qwen-params must be a JSON object")
        self.params: dict[str, Any] = params
        self.protocol = protocols.get(getattr(options, "qwen_protocol", protocols.DEFAULT.name))
        self.headers = {
            **self.protocol.headers(resolve_api_key(None)),
            "Accept": "text/event-stream",
            # A compressed stream would reach the decoder in compressor-sized bursts.
            "Accept-Encoding": "identity",
        }

    def next_request(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages and body parameters of the next request."""
        spec = self.workload.request(next(_requests))
        params = dict(self.params)
        if spec.max_tokens is not None:
            params["max_tokens"] = spec.max_tokens
        return spec.messages, params

    @task
    def chat(self) -> None:
        messages, params = self.next_request()
        self.stream_chat(messages, **params)

    def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult | None:
        """Stream one completion, report its events; the result, or None if it failed."""
        protocol = self.protocol
        body = protocol.request_body(self.model, messages, params, include_usage=True)
        started = time.perf_counter()
        decoder = ChatStreamDecoder(protocol=protocol, request=body, started_at_s=started)
        with self.client.post(
            protocol.path,
            json=body,
            headers=self.headers,
            stream=True,
            catch_response=True,
            name=f"{protocol.path.lstrip('/')} (headers)",
        ) as response:
            if response.status_code != 200:
                # Status 0: no response at all; Locust keeps the connection error.
                detail = str(response.error) if response.error else (response.text or "")[:200]
                reason = f"HTTP {response.status_code}: {detail}"
                response.failure(reason)
                self._fail(started, RuntimeError(reason))
                return None
            ended = started
            try:
                while True:
                    data = response.raw.read1(_READ_BYTES)
                    now = time.perf_counter()
                    if not data:
                        decoder.feed_eof(now)
                        break
                    done_before = decoder.done
                    decoder.feed(data, now)
                    if decoder.done and not done_before:
                        ended = now
                    # Reading on to the end of the body (the chunked terminator) keeps
                    # the connection reusable; the decoder ignores bytes after [DONE].
            except (QwenSSEError, OSError, HTTPError) as error:
                response.failure(str(error))
                self._fail(started, error)
                return None
            response.success()
        result = decoder.result(ended)
        self._report(result)
        return result

    def _fire(
        self,
        name: str,
        value: float,
        *,
        length: int = 0,
        exception: BaseException | None = None,
    ) -> None:
        """One Locust request event of type ``LLM``; ``value`` goes in the response time."""
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=value,
            response_length=length,
            exception=exception,
            context={},
        )

    def _fail(self, started: float, error: BaseException) -> None:
        self._fire("E2E", (time.perf_counter() - started) * 1000, exception=error)

    def _report(self, result: ChatResult) -> None:
        timing = result.timing
        tokens, _ = output_tokens_of(result)
        if timing.ttft_s is not None:
            self._fire("TTFT", timing.ttft_s * 1000)
        for gap in timing.inter_token_gaps_s:
            self._fire("ITL", gap * 1000)
        e2e_s = timing.total_s or 0.0
        tpot = tpot_of(e2e_s, timing.ttft_s, tokens)
        if tpot is not None:
            self._fire("TPOT", tpot * 1000)
        self._fire("E2E", e2e_s * 1000, length=timing.bytes_received)
        self._fire("output tokens", tokens, length=tokens)
