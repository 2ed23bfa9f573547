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
from qwen_sse.cli.chat import RefuseKeyValue, env_var_name
from qwen_sse.cli.words import print_error
from qwen_sse.config import resolve_api_key
from qwen_sse.emulator import Emulator, EmulatorConfig, Fault
from qwen_sse.emulator import loop as emulator_loop
from qwen_sse.emulator.loop import loop_name
from qwen_sse.errors import QwenSSEError
from qwen_sse.recording import ReplayServer, load_recording

_DEFAULTS = EmulatorConfig()
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def non_negative(text: str) -> float:
    """An option's number that may be 0 but not less (nor NaN): the emulator's delays."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a local emulator of DashScope's streaming endpoints (all five protocols)",
        description="Serve an emulated DashScope (compatible mode, native, native multimodal, "
        "Responses, Anthropic Messages), with deterministic readable answers measured in "
        "Qwen tokens (one token a delta), configurable timing and injectable faults, until "
        "Ctrl-C. A request may carry its own fault in an X-Emulator-Fault header (JSON). "
        "Runs on uvloop when it is installed.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument("--api-key", action=RefuseKeyValue)
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key-env",
        metavar="NAME",
        type=env_var_name,
        help=f"accept only the key held by environment variable NAME (default: accept "
        f"{_DEFAULTS.api_key}); no option takes a key itself",
    )
    keys.add_argument("--any-key", action="store_true", help="accept any bearer key")
    parser.add_argument(
        "--ttft-ms",
        type=non_negative,
        default=_DEFAULTS.ttft_s * 1000,
        help="time to first token, ms",
    )
    parser.add_argument(
        "--itl-ms",
        type=non_negative,
        default=_DEFAULTS.itl_s * 1000,
        help="delay between tokens, ms",
    )
    parser.add_argument(
        "--jitter-ms",
        type=non_negative,
        default=_DEFAULTS.jitter_s * 1000,
        help="each delay moves by up to this much either way, ms",
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="answer and jitter seed")
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=_DEFAULTS.answer_tokens,
        help="answer length in tokens when a request sets no max_tokens (at least: an "
        "answer ends with its sentence)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=_DEFAULTS.backlog,
        help="connections the listening socket queues before they are accepted (the "
        "kernel caps it at net.core.somaxconn)",
    )
    parser.add_argument(
        "--context-cache-entries",
        type=int,
        default=_DEFAULTS.context_cache_entries,
        metavar="N",
        help="leading message runs the implicit context cache remembers, whose tokens a "
        "later prompt's usage reports as cached (0: no cache)",
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
    except (msgspec.DecodeError, ValueError) as error:
        print_error("qwen-sse serve", f"invalid setting: --fault {args.fault!r}: {error}")
        return 2
    try:
        config = EmulatorConfig(
            api_key=None if args.any_key else _accepted_key(args.api_key_env),
            ttft_s=args.ttft_ms / 1000,
            itl_s=args.itl_ms / 1000,
            jitter_s=args.jitter_ms / 1000,
            seed=args.seed,
            answer_tokens=args.answer_tokens,
            backlog=args.backlog,
            context_cache_entries=args.context_cache_entries,
            fault=fault,
            record_requests=False,
        )
    except ValueError as error:
        print_error("qwen-sse serve", f"invalid setting: {error}")
        return 2
    served = _serve(config, args.host, args.port, args.exit_after_s, args.api_key_env)
    return _run_until_stopped(served, args)


def _accepted_key(env_var: str | None) -> str:
    """The key the emulator accepts: the one ``env_var`` holds, else the default test key."""
    if env_var is None:
        return _DEFAULTS.api_key or "sk-test"
    return resolve_api_key(None, env_vars=(env_var,))


def _run_until_stopped(server: Coroutine[Any, Any, None], args: argparse.Namespace) -> int:
    emulator_loop.collect_rarely()
    try:
        emulator_loop.run(server)
    except KeyboardInterrupt:
        # Ctrl-C is how this command is meant to end.
        return 0
    except OSError as error:
        print_error(
            "qwen-sse serve", f"cannot listen on {args.host}:{args.port}: {error.strerror or error}"
        )
        return 1
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    try:
        attempts = load_recording(args.replay)  # its errors name the file
    except QwenSSEError as error:
        print_error("qwen-sse serve", error)
        return 2
    try:
        server = ReplayServer(attempts, host=args.host, port=args.port)
    except QwenSSEError as error:
        print_error("qwen-sse serve", f"{args.replay}: {error}")
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


async def _serve(
    config: EmulatorConfig,
    host: str,
    port: int,
    exit_after_s: float | None,
    key_env: str | None,
) -> None:
    async with Emulator(config, host=host, port=port) as emulator:
        _announce(emulator, config, key_env)
        await _wait(exit_after_s)


def _announce(emulator: Emulator, config: EmulatorConfig, key_env: str | None) -> None:
    """What is served where, and a curl command to try it. A key from the environment is
    named, never shown: the command refers to its variable."""
    if config.api_key is None:
        accepted, authorization = "any bearer key", shlex.quote("Authorization: Bearer sk-test")
    elif key_env is not None:
        accepted, authorization = (
            f"the bearer key in ${key_env}",
            f'"Authorization: Bearer ${key_env}"',
        )
    else:
        accepted = f"bearer key {config.api_key}"
        authorization = shlex.quote(f"Authorization: Bearer {config.api_key}")
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
            authorization,
            "-H",
            shlex.quote("Content-Type: application/json"),
            "-d",
            shlex.quote(body),
        )
    )
    print(f"qwen-sse serve: DashScope emulator at {emulator.base_url}")
    for protocol in protocols.PROTOCOLS.values():
        print(f"  {protocol.name:<18} POST {emulator.base_url_for(protocol)}{protocol.path}")
    loop = loop_name(asyncio.get_running_loop())
    print(f"event loop: {loop}; listen backlog: {config.backlog} connections")
    print(f"accepting {accepted}; stop with Ctrl-C")
    print(f"try: {curl}", flush=True)
    if emulator.host not in _LOOPBACK:
        print(
            f"qwen-sse serve: warning: listening on {emulator.host}, reachable beyond this machine",
            file=sys.stderr,
        )
