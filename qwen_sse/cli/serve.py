"""``qwen-sse serve``: run the DashScope emulator in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from collections.abc import Coroutine
from typing import Any

import msgspec

from qwen_sse import protocols
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault
from qwen_sse.errors import QwenSSEError
from qwen_sse.recording import ReplayServer, load_recording

_DEFAULTS = EmulatorConfig()
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a local emulator of DashScope's OpenAI-compatible endpoint",
        description="Serve an emulated DashScope compatible-mode chat endpoint, with "
        "deterministic answers, configurable timing and injectable faults, until Ctrl-C. "
        "A request may carry its own fault in an X-Emulator-Fault header (JSON).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key", default=_DEFAULTS.api_key, help="the bearer key accepted (default: sk-test)"
    )
    keys.add_argument("--any-key", action="store_true", help="accept any bearer key")
    parser.add_argument(
        "--ttft-ms",
        type=float,
        default=_DEFAULTS.ttft_s * 1000,
        help="time to first token, ms",
    )
    parser.add_argument(
        "--itl-ms", type=float, default=_DEFAULTS.itl_s * 1000, help="delay between tokens, ms"
    )
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=_DEFAULTS.jitter_s * 1000,
        help="each delay moves by up to this much either way, ms",
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="answer and jitter seed")
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=_DEFAULTS.answer_tokens,
        help="answer length in pieces when a request sets no max_tokens",
    )
    parser.add_argument(
        "--fault", metavar="JSON", help="default fault for every request, e.g. '{\"status\": 429}'"
    )
    parser.add_argument(
        "--replay",
        metavar="RECORDING",
        help="serve a recording (qwen-sse trace --record) byte for byte with its timing",
    )
    parser.add_argument(
        "--exit-after-s",
        type=float,
        metavar="SECONDS",
        help="stop by itself after this many seconds (for scripts and tests)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.replay:
        return _run_replay(args)
    try:
        fault = msgspec.json.decode(args.fault, type=Fault) if args.fault else None
        config = EmulatorConfig(
            api_key=None if args.any_key else args.api_key,
            ttft_s=args.ttft_ms / 1000,
            itl_s=args.itl_ms / 1000,
            jitter_s=args.jitter_ms / 1000,
            seed=args.seed,
            answer_tokens=args.answer_tokens,
            fault=fault,
            record_requests=False,
        )
    except ValueError as error:
        print(f"qwen-sse serve: invalid setting: {error}", file=sys.stderr)
        return 2
    return _run_until_stopped(_serve(config, args.host, args.port, args.exit_after_s), args)


def _run_until_stopped(server: Coroutine[Any, Any, None], args: argparse.Namespace) -> int:
    try:
        asyncio.run(server)
    except KeyboardInterrupt:
        # Ctrl-C is how this command is meant to end.
        return 0
    except OSError as error:
        print(
            f"qwen-sse serve: cannot listen on {args.host}:{args.port}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    try:
        server = ReplayServer(load_recording(args.replay), host=args.host, port=args.port)
    except QwenSSEError as error:
        print(f"qwen-sse serve: {error}", file=sys.stderr)
        return 2
    return _run_until_stopped(_serve_replay(server, args.exit_after_s), args)


async def _serve_replay(server: ReplayServer, exit_after_s: float | None) -> None:
    async with server:
        print(
            f"qwen-sse serve: replaying {server.attempts} recorded response(s) at {server.base_url}"
        )
        print(
            "every POST gets the next one, with its original timing; stop with Ctrl-C", flush=True
        )
        await _wait(exit_after_s)


async def _wait(exit_after_s: float | None) -> None:
    if exit_after_s is None:
        await asyncio.Event().wait()
    else:
        await asyncio.sleep(exit_after_s)


async def _serve(config: EmulatorConfig, host: str, port: int, exit_after_s: float | None) -> None:
    async with Emulator(config, host=host, port=port) as emulator:
        _announce(emulator, config)
        await _wait(exit_after_s)


def _announce(emulator: Emulator, config: EmulatorConfig) -> None:
    key = config.api_key or "sk-test"
    accepted = "any bearer key" if config.api_key is None else f"bearer key {config.api_key}"
    body = json.dumps(
        {
            "model": "qwen-plus",
            "messages": [{"role": "user", "content": "你好"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        ensure_ascii=False,
    )
    curl = " ".join(
        (
            "curl -N",
            shlex.quote(f"{emulator.base_url}/chat/completions"),
            "-H",
            shlex.quote(f"Authorization: Bearer {key}"),
            "-H",
            shlex.quote("Content-Type: application/json"),
            "-d",
            shlex.quote(body),
        )
    )
    print(f"qwen-sse serve: DashScope emulator at {emulator.base_url}")
    for protocol in protocols.PROTOCOLS.values():
        print(f"  {protocol.name:<18} POST {emulator.base_url_for(protocol)}{protocol.path}")
    print(f"accepting {accepted}; stop with Ctrl-C")
    print(f"try: {curl}", flush=True)
    if emulator.host not in _LOOPBACK:
        print(
            f"qwen-sse serve: warning: listening on {emulator.host}, reachable beyond this machine",
            file=sys.stderr,
        )
