"""``qwen-sse replay``: run a recording through the decoders offline."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, cast

from qwen_sse import protocols
from qwen_sse.chat import ChatStreamDecoder
from qwen_sse.chunks import encode_chunk
from qwen_sse.cli.words import print_error
from qwen_sse.errors import ConfigurationError, QwenSSEError
from qwen_sse.limiter import Outcome
from qwen_sse.protocols import WireProtocol
from qwen_sse.recording import RecordedAttempt, load_recording
from qwen_sse.trace import TraceView


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="decode a recording offline: the trace view, or the chunks as JSON",
        description="Run a recording made with `qwen-sse trace --record` through the same "
        "decoders, read by read as it was received, and print the trace view (default) or, "
        "with --json, the decoded chunks of every attempt as JSON lines.",
    )
    parser.add_argument("file", help="a recording")
    parser.add_argument("--json", action="store_true", help="print the decoded chunks")
    parser.add_argument(
        "--stall-ms", type=float, default=2000.0, help="flag silences longer than this"
    )
    parser.add_argument(
        "--protocol",
        choices=protocols.NAMES,
        help="the wire protocol (default: the one the recording names, else its URL's)",
    )
    parser.set_defaults(func=run)


def _protocol(args: argparse.Namespace, attempts: list[RecordedAttempt]) -> WireProtocol:
    if args.protocol:
        return protocols.get(args.protocol)
    first = attempts[0] if attempts else RecordedAttempt(attempt=1)
    return protocols.get(first.protocol) if first.protocol else protocols.for_url(first.url)


def run(args: argparse.Namespace) -> int:
    try:
        attempts = load_recording(args.file)
        if not attempts:
            raise ConfigurationError(f"{args.file} is an empty recording: it holds no attempt")
        protocol = _protocol(args, attempts)
    except QwenSSEError as error:
        print_error("qwen-sse replay", error)
        return 2
    if args.json:
        return _print_chunks(attempts, protocol)
    view = TraceView(sys.stdout, protocol=protocol, stall_ms=args.stall_ms)
    for attempt in attempts:
        view.request(
            method=attempt.method,
            url=attempt.url,
            headers=attempt.request_headers,
            body=_body_bytes(attempt.body),
        )
        if attempt.status is not None:
            view.response(
                status=attempt.status, headers=attempt.response_headers, at_s=attempt.response_at_s
            )
        for at_s, piece in attempt.pieces:
            view.data(piece, at_s)
        recorded = None
        if attempt.error is not None:
            recorded = QwenSSEError(f"{attempt.error_type}: {attempt.error}")
        view.end(at_s=attempt.end_at_s, outcome=_outcome(attempt.outcome), error=recorded)
    print(view.summary())
    return 0


def _print_chunks(attempts: list[RecordedAttempt], protocol: WireProtocol) -> int:
    status = 0
    for attempt in attempts:
        if attempt.status is None or attempt.status >= 400:
            continue
        body = attempt.body if isinstance(attempt.body, dict) else None
        decoder = ChatStreamDecoder(protocol=protocol, request=body)
        try:
            for at_s, piece in attempt.pieces:
                for chunk in decoder.feed(piece, at_s):
                    print(encode_chunk(chunk).decode())
            if attempt.outcome == "ok":
                decoder.feed_eof(attempt.end_at_s)
        except QwenSSEError as error:
            print_error("qwen-sse replay", f"attempt {attempt.attempt}: {error}")
            status = 1
    return status


def _body_bytes(body: object) -> bytes:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return text.encode()


def _outcome(value: str) -> Outcome:
    return cast(Outcome, value) if value in ("ok", "throttled", "error", "cancelled") else "error"
