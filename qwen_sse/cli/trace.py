"""``qwen-sse trace``: one call with its wire shown as it arrives, anomalies flagged."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import IO, Any

from qwen_sse.cli.chat import (
    add_connection_options,
    add_prompt_options,
    open_client,
    report_error,
    request_from,
)
from qwen_sse.cli.words import print_error
from qwen_sse.client import WireTap
from qwen_sse.errors import QwenSSEError
from qwen_sse.limiter import Outcome
from qwen_sse.recording import Recorder
from qwen_sse.trace import TraceView


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="show the wire of one call: request, headers, every line with its time",
        description="Send one chat request and print the request (key redacted), the "
        "response head, then every read with its arrival time in ms since the request was "
        "sent, its raw lines, comments, event boundaries with compact JSON, and anomalies "
        "(stalls, a missing end marker, an end marker without a finish reason, in-band "
        "errors, events the protocol does not allow there, broken or joined JSON frames, "
        "non-UTF-8 bytes, usage that contradicts the text). Ends with a summary.",
    )
    add_prompt_options(parser)
    parser.add_argument("--record", metavar="FILE", help="also write a recording to FILE")
    parser.add_argument(
        "--stall-ms", type=float, default=2000.0, help="flag silences longer than this"
    )
    add_connection_options(parser)
    parser.set_defaults(func=run)


class _Tee:
    """Hands every wire event to several taps."""

    def __init__(self, *taps: WireTap) -> None:
        self._taps = taps

    def request(self, *, method: str, url: str, headers: Mapping[str, str], body: bytes) -> None:
        for tap in self._taps:
            tap.request(method=method, url=url, headers=headers, body=body)

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        for tap in self._taps:
            tap.response(status=status, headers=headers, at_s=at_s)

    def data(self, chunk: bytes, at_s: float) -> None:
        for tap in self._taps:
            tap.data(chunk, at_s)

    def end(self, *, at_s: float, outcome: Outcome, error: QwenSSEError | None) -> None:
        for tap in self._taps:
            tap.end(at_s=at_s, outcome=outcome, error=error)


def run(args: argparse.Namespace) -> int:
    try:
        messages, params = request_from(args)
    except ValueError as error:
        print_error("qwen-sse trace", error)
        return 2
    record: IO[str] | None = None
    if args.record:
        try:
            record = open(args.record, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as error:
            print_error("qwen-sse trace", f"cannot write {args.record}: {error.strerror}")
            return 2
    try:
        return asyncio.run(_trace(args, messages, params, record))
    finally:
        if record is not None:
            record.close()


async def _trace(
    args: argparse.Namespace,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    record: IO[str] | None,
) -> int:
    view = TraceView(sys.stdout, protocol=args.protocol, stall_ms=args.stall_ms)
    tap: WireTap = view if record is None else _Tee(view, Recorder(record, protocol=args.protocol))
    status = 0
    try:
        async with open_client(args, wire_tap=tap) as client:
            await client.chat(messages, args.model, **params)
    except QwenSSEError as error:
        report_error(error, sys.stderr)
        status = 2 if isinstance(error, ValueError) else 1
    if view.attempts:
        print(view.summary())
    return status
