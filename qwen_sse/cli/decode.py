"""``qwen-sse decode``: decode a saved event stream offline, as SSE events or chat chunks."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, BinaryIO

import msgspec

from qwen_sse import protocols
from qwen_sse.chat import ChatStreamDecoder
from qwen_sse.chunks import encode_chunk
from qwen_sse.cli.words import print_error
from qwen_sse.errors import QwenSSEError
from qwen_sse.sse import SSEComment, SSEDecoder

_READ_BYTES = 64 * 1024


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "decode",
        help="decode a saved SSE stream (file or stdin) into events or chat chunks",
        description="Decode a saved event stream offline. By default it is read as a chat "
        "completion stream and the answer and usage are printed.",
    )
    parser.add_argument("file", nargs="?", default="-", help="stream to read ('-' = stdin)")
    parser.add_argument(
        "--events", action="store_true", help="print every SSE event and comment as JSON"
    )
    parser.add_argument("--json", action="store_true", help="print every chat chunk as JSON")
    parser.add_argument(
        "--protocol",
        choices=protocols.NAMES,
        default=protocols.DEFAULT.name,
        help="the wire protocol the stream speaks (default %(default)s)",
    )
    parser.add_argument(
        "--request",
        metavar="FILE",
        help="the request body (JSON) the stream answered: what the answer must hold "
        "(n choices, the native incremental_output)",
    )
    parser.set_defaults(func=run)


def _chunks(source: BinaryIO) -> list[bytes]:
    pieces = []
    while piece := source.read(_READ_BYTES):
        pieces.append(piece)
    return pieces


def run(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            pieces = _chunks(sys.stdin.buffer)
        else:
            with open(args.file, "rb") as source:
                pieces = _chunks(source)
    except OSError as error:
        print_error("qwen-sse decode", f"cannot read {args.file}: {error.strerror}")
        return 2
    if args.events:
        decoder = SSEDecoder()
        for piece in pieces:
            for item in decoder.feed_with_comments(piece):
                kind = "comment" if isinstance(item, SSEComment) else "event"
                print(json.dumps({kind: msgspec.to_builtins(item)}, ensure_ascii=False))
        if decoder.in_event:
            print("qwen-sse decode: the stream ends inside an event; discarded", file=sys.stderr)
        return 0
    try:
        request = _request(args.request)
    except (OSError, ValueError) as error:
        print_error("qwen-sse decode", f"--request {args.request}: {error}")
        return 2
    chat = ChatStreamDecoder(protocol=args.protocol, request=request)
    try:
        for piece in pieces:
            for chunk in chat.feed(piece):
                if args.json:
                    print(encode_chunk(chunk).decode())
        chat.feed_eof()
    except QwenSSEError as error:
        if chat.result().timing.events:
            _print_result(chat, args.json)  # what was decoded before the failure
        print_error("qwen-sse decode", error)
        return 1
    _print_result(chat, args.json)
    return 0


def _request(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as source:
        body = json.load(source)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return body


def _print_result(chat: ChatStreamDecoder, as_json: bool) -> None:
    if as_json:
        return
    result = chat.result()
    if result.reasoning_content:
        print(f"[reasoning] {result.reasoning_content}")
    print(result.content)
    usage = result.usage
    summary = f"finish_reason={result.finish_reason} events={result.timing.events}"
    if usage is not None:
        summary += (
            f" prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens}"
            f" total_tokens={usage.total_tokens}"
        )
    print(summary, file=sys.stderr)
