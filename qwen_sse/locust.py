"""Locust integration: a user that streams chat completions over Locust's own HTTP client.

Edge layer. Locust runs users as gevent greenlets, where asyncio and aiohttp have no
place, so :class:`QwenUser` does not use the client: it posts with Locust's
``HttpUser`` session (``stream=True``), reads the body with ``response.raw.read1`` (each
read returns as soon as bytes arrive, as a streamed answer needs) and feeds the bytes to
the same sans-I/O :class:`~qwen_sse.chat.ChatStreamDecoder` the asyncio client uses. The
workloads (:mod:`qwen_sse.bench.workload`, :mod:`qwen_sse.bench.sharegpt`, read from the
options of :mod:`qwen_sse.cli.workloads`), the conversations' later turns
(:func:`~qwen_sse.bench.workload.follow_up`) and the token accounting
(:func:`qwen_sse.bench.metrics.output_tokens_of`) are ``qwen-sse bench``'s own.

Each answer is reported to Locust as request events of type ``LLM`` (``REQUEST_TYPE``),
one row each in Locust's statistics and CSV files, ``response_time`` in milliseconds:

* ``TTFT``: time to the first content or reasoning text;
* ``ITL``: one event per gap between text-bearing chunks;
* ``TPOT``: per answer, ``(e2e - ttft) / (output tokens - 1)``;
* ``E2E``: the whole answer (a failed answer is a failed ``E2E`` event);
* ``output tokens``: the answer's output tokens as the "response time" (a count, not
  milliseconds), from the server's usage, else counted with the workload's tokenizer.

In a multi-turn workload every turn is also reported under its number (``TTFT turn 2``,
``E2E turn 2``, a failed turn failing the latter), and each conversation as a whole as
``conversation``: from its first request to its last answer's end, failed when a turn
failed (the turns after it are not sent). Locust's own event for the POST
(``chat/completions (headers)``) times the response headers only.

Use it from a locustfile (``benchmarks/locustfile.py``)::

    from locust import constant
    from qwen_sse.locust import QwenUser

    class ChatUser(QwenUser):
        wait_time = constant(0)

and run, for example, one master and two workers, headless, against ``qwen-sse serve``::

    locust -f benchmarks/locustfile.py --master --headless --expect-workers 2 \\
        -u 20 -r 10 -t 60s --host http://127.0.0.1:8000/compatible-mode/v1 --csv run
    locust -f benchmarks/locustfile.py --worker --master-host 127.0.0.1   # twice

Options (given to the master, passed on to the workers): ``--qwen-model``, the workload
options of ``qwen-sse bench`` with ``qwen-`` before each name (``--qwen-dataset``,
``--qwen-prompts``, ``--qwen-input-tokens``, ``--qwen-output-tokens``,
``--qwen-random-range-ratio``, ``--qwen-prefix-tokens``, ``--qwen-prefix-groups``,
``--qwen-turns``, ``--qwen-sample``, ``--qwen-tokenizer``, ``--qwen-seed``),
``--qwen-requests-per-user N`` (each user sends N requests, or N conversations, then
stops; the run ends when every user has), ``--qwen-params JSON`` and
``--qwen-protocol``. The master checks them at start-up (a bad one ends it with one line);
each worker builds the same workload (a file must be at the same path on every worker),
and sends requests ``w, w + W, w + 2W...`` of it, ``w`` its index from the master and
``W`` the ``--expect-workers``. The key comes from ``DASHSCOPE_API_KEY`` or
``QWEN_API_KEY`` on each worker.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import sys
import time
from typing import Any

import gevent
from locust import HttpUser, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import Runner, WorkerRunner
from urllib3.exceptions import HTTPError

from qwen_sse import protocols
from qwen_sse.bench.metrics import output_tokens_of, tpot_of
from qwen_sse.bench.tokenizer import counter
from qwen_sse.bench.workload import RequestSpec, Workload, follow_up
from qwen_sse.chat import ChatResult, ChatStreamDecoder
from qwen_sse.cli.workloads import add_workload_options, workload_from
from qwen_sse.config import resolve_api_key
from qwen_sse.errors import ConfigurationError, QwenSSEError
from qwen_sse.tokens import count_tokens

__all__ = ["REQUEST_TYPE", "QwenUser"]

REQUEST_TYPE = "LLM"
_READ_BYTES = 64 * 1024
_PREFIX = "qwen-"
# The custom message a user's process sends when the user has sent all its requests.
_USER_DONE = "qwen_sse_user_done"
_requests = itertools.count()
_log = logging.getLogger(__name__)


def _add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("qwen-sse")
    group.add_argument("--qwen-model", default="qwen-plus", help="model to ask")
    add_workload_options(group, prefix=_PREFIX)
    group.add_argument(
        "--qwen-seed", type=int, default=0, help="seed of the prompts, sizes and ShareGPT sample"
    )
    group.add_argument(
        "--qwen-requests-per-user",
        type=int,
        metavar="N",
        help="each user sends N requests (multiturn: N conversations), then stops; the run "
        "ends when every user has (default: until --run-time or a stop)",
    )
    group.add_argument(
        "--qwen-params", default="{}", help="JSON object of extra body fields, e.g. thinking"
    )
    group.add_argument(
        "--qwen-protocol",
        choices=protocols.NAMES,
        default=protocols.DEFAULT.name,
        help="the wire protocol; --host is its base URL (default %(default)s)",
    )


def _options(environment: Environment) -> argparse.Namespace:
    """The run's options: Locust's, or, for an environment made without them, defaults."""
    if environment.parsed_options is not None:
        options: argparse.Namespace = environment.parsed_options
        return options
    parser = argparse.ArgumentParser()
    _add_options(parser)
    return parser.parse_args([])


def _workload(options: argparse.Namespace) -> Workload:
    """The workload the options describe, built once per process and set of options."""
    names = sorted(name for name in vars(options) if name.startswith("qwen_"))
    return _built(tuple((name, _hashable(getattr(options, name))) for name in names))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@functools.cache
def _built(options: tuple[tuple[str, Any], ...]) -> Workload:
    return workload_from(argparse.Namespace(**dict(options)), units=None, prefix=_PREFIX)


def _params(options: argparse.Namespace) -> dict[str, Any]:
    """The ``--qwen-params`` object; ConfigurationError when it is not one."""
    try:
        params = json.loads(options.qwen_params or "{}")
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"--qwen-params is not JSON: {error.msg}") from None
    if not isinstance(params, dict):
        raise ConfigurationError("--qwen-params must be a JSON object")
    return params


def _check(options: argparse.Namespace) -> None:
    """Build the workload and read the parameters (ConfigurationError if they are bad)."""
    _workload(options)
    _params(options)
    per_user = options.qwen_requests_per_user
    if per_user is not None and per_user < 1:
        raise ConfigurationError(f"--qwen-requests-per-user must be at least 1, got {per_user}")


def _on_init(environment: Environment, runner: Runner | None = None, **_: Any) -> None:
    # gevent's timers count from the time its loop last read the clock, which may be as
    # old as the process: Locust's --run-time timer, started after init, would then end the
    # run at once after a slow start (a busy machine).
    gevent.get_hub().loop.update_now()
    if runner is None or isinstance(runner, WorkerRunner):
        return  # a worker learns the options from its master, at the start of the test
    try:
        _check(_options(environment))
    except ConfigurationError as error:
        sys.exit(f"qwen-sse: {error}")
    finished = _FinishedUsers(environment)
    runner.register_message(_USER_DONE, finished.one_more, concurrent=True)
    environment.events.test_start.add_listener(finished.reset)  # type: ignore[no-untyped-call]


def _on_test_start(environment: Environment, **_: Any) -> None:
    # A worker builds its workload before its users start (reading a file or loading a
    # tokenizer in the first user would stall the others); the master built it at init.
    if not isinstance(environment.runner, WorkerRunner):
        return
    try:
        _check(_options(environment))
    except ConfigurationError as error:
        _log.error("qwen-sse: %s; this worker quits", error)
        environment.process_exit_code = 1
        gevent.spawn(environment.runner.quit)


class _FinishedUsers:
    """Counts, on the master (or the one process), the users that have sent all their
    requests, and ends the run when all have."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.count = 0

    def reset(self, **_: Any) -> None:
        self.count = 0

    def one_more(self, **_: Any) -> None:
        self.count += 1
        runner = self.environment.runner
        if runner is None or self.count < runner.target_user_count:
            return
        options = self.environment.parsed_options
        headless = options is not None and options.headless
        # Not from this greenlet: a one-process runner calls this from the user's own.
        gevent.spawn(runner.quit if headless else runner.stop)


def _user_done(environment: Environment) -> None:
    """Tell the master (or the one process) that a user has sent all its requests. A
    worker first reports its statistics, so that they reach the master before this."""
    runner = environment.runner
    if runner is None:
        return
    if isinstance(runner, WorkerRunner):
        data: dict[str, Any] = {}
        report = environment.events.report_to_master
        report.fire(client_id=runner.client_id, data=data)  # type: ignore[no-untyped-call]
        runner.send_message("stats", data)
    runner.send_message(_USER_DONE)


# Synthetic prompts are sized, and answers without usage counted, with the Qwen vocabulary.
# Loaded by the first user, it would take the first second or more of the run (far more on
# a busy machine); loaded here, at import, a worker has it before it connects to its master.
count_tokens("qwen-sse locust")

# Locust's event hooks are untyped; the listeners' own signatures are checked above.
events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_on_test_start)  # type: ignore[no-untyped-call]


class QwenUser(HttpUser):
    """A Locust user sending one request, or one conversation turn after turn, per task
    run (see the module).

    Subclass it in a locustfile (it is ``abstract``) and set ``wait_time``;
    ``--qwen-protocol`` picks the wire protocol and ``--host`` is its base URL
    (``.../compatible-mode/v1`` for the default). Override :meth:`next_request` to send
    something else than the workload's requests.
    """

    abstract = True

    def on_start(self) -> None:
        options = _options(self.environment)
        try:
            self.workload = _workload(options)
            self.params = _params(options)
        except ConfigurationError:
            raise StopUser from None  # the worker said why once, and quits
        self.model: str = options.qwen_model
        self.requests_per_user: int | None = options.qwen_requests_per_user
        self.units_sent = 0
        runner = self.environment.runner
        self.index_offset: int = getattr(runner, "worker_index", 0)
        self.index_stride: int = max(1, getattr(options, "expect_workers", 1) or 1)
        self.count_text = counter(self.workload.tokenizer).text
        self.protocol = protocols.get(options.qwen_protocol)
        self.headers = {
            **self.protocol.headers(resolve_api_key(None)),
            "Accept": "text/event-stream",
            # A compressed stream would reach the decoder in compressor-sized bursts.
            "Accept-Encoding": "identity",
        }

    def next_request(self) -> RequestSpec:
        """The next request of the workload (a conversation's first turn, with the later
        ones): this process's next index ``w + W * n`` (see the module)."""
        return self.workload.request(self.index_offset + self.index_stride * next(_requests))

    @task
    def chat(self) -> None:
        self.converse(self.next_request())
        self.units_sent += 1
        if self.units_sent == self.requests_per_user:
            _user_done(self.environment)
            raise StopUser

    def converse(self, spec: RequestSpec) -> None:
        """Send ``spec``; in a conversation, then each later turn with the server's answers
        so far, until the last turn or the first that fails (see the module's events)."""
        started = time.perf_counter()
        while True:
            params = dict(self.params)
            if spec.max_tokens is not None:
                params["max_tokens"] = spec.max_tokens
            turn_started = time.perf_counter()
            result = self.stream_chat(spec.messages, **params)
            if spec.turn is not None:
                self._report_turn(spec.turn, result, turn_started)
            if result is None or not spec.later_turns:
                break
            spec = follow_up(spec, result.content, tokenizer=self.workload.tokenizer)
        if spec.turn is None:
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        failure = None if result is not None else RuntimeError(f"turn {spec.turn} failed")
        self._fire("conversation", elapsed_ms, exception=failure)

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
        tokens, _ = output_tokens_of(result, self.count_text)
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

    def _report_turn(self, turn: int, result: ChatResult | None, started: float) -> None:
        """A conversation turn's own rows: ``TTFT turn N`` and ``E2E turn N``."""
        if result is None:
            failure = RuntimeError(f"turn {turn} failed")
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._fire(f"E2E turn {turn}", elapsed_ms, exception=failure)
            return
        timing = result.timing
        if timing.ttft_s is not None:
            self._fire(f"TTFT turn {turn}", timing.ttft_s * 1000)
        self._fire(f"E2E turn {turn}", (timing.total_s or 0.0) * 1000)
