"""``qwen-sse proxy``: the debugging proxy in the foreground, one line per exchange, until
Ctrl-C (or SIGTERM), then the totals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from qwen_sse import protocols
from qwen_sse.chat import DEFAULT_MAX_STREAM_BYTES
from qwen_sse.cli.serve import non_negative
from qwen_sse.cli.words import in_cli_words
from qwen_sse.config import is_loopback_host
from qwen_sse.debugproxy import DEFAULT_MAX_REQUEST_BYTES, DebugProxy, ProxyFault, parse_fault
from qwen_sse.errors import ConfigurationError
from qwen_sse.tokens import count_tokens

_DEFAULT_LISTEN = "127.0.0.1:8001"


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``PORT`` alone listens on 127.0.0.1)."""
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants HOST:PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be 0-65535, got {number}")
    return host, number


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="a reverse proxy that shows, records and breaks another application's calls",
        description="Forward every request to --upstream unchanged (the application's own "
        "key passes through, and is never shown or recorded) and stream each response back "
        "byte for byte, while decoding it with the protocol its path names: one line as each "
        "exchange starts, anomalies as they happen (stalls, a missing end marker, an end "
        "marker without a finish reason, in-band errors, events out of order, broken JSON, "
        "usage that contradicts the text), and a summary as it ends (status, protocol, "
        "model, request id, time to head, first byte and first token, inter-token gaps, "
        "bytes, events). Point the application's base URL at the proxy: the same path "
        "below the proxy's URL as below the upstream's.",
    )
    parser.add_argument(
        "--upstream",
        required=True,
        metavar="URL",
        help="where requests go, e.g. https://dashscope.aliyuncs.com (https; plain http only "
        "on loopback unless --allow-insecure-http)",
    )
    parser.add_argument(
        "--listen",
        type=listen_address,
        default=_DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the application connects (default {_DEFAULT_LISTEN}; port 0: any free "
        "port; a host off loopback needs --allow-remote)",
    )
    parser.add_argument(
        "--record",
        metavar="DIR",
        help="write one recording per exchange into DIR (for qwen-sse replay and serve "
        "--replay), keys redacted",
    )
    parser.add_argument(
        "--fault",
        metavar="JSON",
        help="break the exchanges it picks, in the emulator's words, e.g. "
        '\'{"drop_after_events": 5, "fraction": 0.5, "seed": 1, "model": "qwen-plus"}\'; '
        "also status, code, message, retry_after, retry_after_ms, drop_after_bytes, "
        "stall_after_events, stall_s, keepalive_every_s, no_done",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show every exchange's whole wire, as qwen-sse trace does",
    )
    parser.add_argument(
        "--stall-ms", type=non_negative, default=2000.0, help="flag silences longer than this"
    )
    parser.add_argument(
        "--max-request-bytes",
        type=positive_int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="refuse (413) a larger request body",
    )
    parser.add_argument(
        "--max-stream-bytes",
        type=positive_int,
        default=DEFAULT_MAX_STREAM_BYTES,
        help="watch and record at most this much of a response (all of it is forwarded)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=non_negative,
        default=30.0,
        metavar="SECONDS",
        help="to the upstream (no read timeout: the application's are the ones under test)",
    )
    parser.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="forward to a plain http:// upstream off loopback (keys travel unencrypted)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen off loopback: anyone who reaches the port can send requests through it",
    )
    parser.add_argument(
        "--exit-after-s",
        type=float,
        metavar="SECONDS",
        help="stop by itself after this many seconds (for scripts and tests)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host, port = args.listen
    try:
        fault = parse_fault(args.fault) if args.fault is not None else None
    except ValueError as error:
        print(f"qwen-sse proxy: invalid --fault: {error}", file=sys.stderr)
        return 2
    try:
        proxy = DebugProxy(
            args.upstream,
            host=host,
            port=port,
            out=sys.stdout,
            verbose=args.verbose,
            record_dir=args.record,
            fault=fault,
            stall_ms=args.stall_ms,
            max_request_bytes=args.max_request_bytes,
            max_stream_bytes=args.max_stream_bytes,
            connect_timeout_s=args.connect_timeout or None,
            allow_insecure_http=args.allow_insecure_http,
            allow_remote=args.allow_remote,
            keep_exchanges=0,  # each summary is printed, and counted in the totals
        )
    except ConfigurationError as error:
        print(f"qwen-sse proxy: {in_cli_words(str(error))}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(proxy, args))
    except ConfigurationError as error:
        print(f"qwen-sse proxy: {in_cli_words(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:
        # asyncio's message repeats the address; the errno's own words say it all.
        reason = os.strerror(error.errno) if error.errno else str(error)
        print(f"qwen-sse proxy: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return 1
    print(totals_line(proxy.totals), flush=True)
    return 0


async def _serve(proxy: DebugProxy, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    async with proxy:
        _settle()
        _announce(proxy, args, proxy.fault)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.exit_after_s)


def _settle() -> None:
    """Ready the process to carry streams for hours: the Qwen vocabulary loaded now (the
    usage check needs it) rather than in the middle of the first stream, and everything
    alive now (modules, the vocabulary) moved out of the garbage collector's way. A full
    collection then walks only what the exchanges in flight hold: it stops every stream
    for a millisecond, not for tens of them (measured with benchmarks/bench_proxy.py)."""
    count_tokens("你好")
    gc.collect()
    gc.freeze()


def _announce(proxy: DebugProxy, args: argparse.Namespace, fault: ProxyFault | None) -> None:
    print(f"qwen-sse proxy: {proxy.base_url} -> {proxy.upstream}")
    if not urlsplit(proxy.upstream).path:
        print("point the application's base URL at the same path below the proxy:")
        for protocol in protocols.PROTOCOLS.values():
            print(f"  {protocol.name:<18} {proxy.base_url}{protocol.root}")
    else:
        print(f"point the application's base URL at {proxy.base_url} (plus what follows")
        print(f"{proxy.upstream} in the URL it uses now)")
    if args.record:
        print(f"recording each exchange into {args.record} (NNNNNN-<protocol>.jsonl)")
    if fault is not None:
        print(f"fault: {fault.describe()}")
    print("stop with Ctrl-C", flush=True)
    if not is_loopback_host(proxy.host):
        print(
            f"qwen-sse proxy: warning: listening on {proxy.host}, reachable beyond this machine",
            file=sys.stderr,
        )


def totals_line(totals: Counter[str]) -> str:
    """The closing line: exchanges, complete and incomplete streams, outcomes, anomalies."""
    exchanges = totals["exchanges"]
    parts = [f"qwen-sse proxy: {exchanges} exchange{'s' if exchanges != 1 else ''}"]
    if totals["complete"] or totals["incomplete"]:
        parts.append(f"streams: {totals['complete']} complete, {totals['incomplete']} incomplete")
    outcomes = [
        f"{name} {count}"
        for name, count in sorted(totals.items())
        if ":" not in name and name not in ("exchanges", "complete", "incomplete")
    ]
    if outcomes:
        parts.append(f"outcomes: {', '.join(outcomes)}")
    anomalies = [
        f"{name.split(':', 1)[1]} {count}"
        for name, count in sorted(totals.items())
        if name.startswith("anomaly:")
    ]
    parts.append(f"anomalies: {', '.join(anomalies) if anomalies else 'none'}")
    return "; ".join(parts)
