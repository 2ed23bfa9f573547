"""``qwen-sse chat``: stream one answer to the terminal, or its chunks as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import wave
from collections.abc import AsyncIterator
from typing import Any, TextIO

from qwen_sse import protocols
from qwen_sse.chat import AudioResult, ChatResult
from qwen_sse.chunks import encode_chunk
from qwen_sse.cli.words import in_cli_words
from qwen_sse.client import QwenClient
from qwen_sse.config import API_KEY_ENV_VARS, Timeouts, resolve_api_key
from qwen_sse.emulator import Emulator, EmulatorConfig
from qwen_sse.errors import ConfigurationError, QwenSSEError
from qwen_sse.retry import RetryPolicy

_MOCK_KEY = "sk-mock"
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RefuseKeyValue(argparse.Action):
    """``--api-key``, taken only to be refused without showing its value: a key on the command
    line stays in the shell's history and shows in process lists (``ps``)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            "no option takes the key itself (it would stay in the shell history and show in "
            "process lists): put it in DASHSCOPE_API_KEY, or in another variable and name "
            "that with --api-key-env NAME"
        )


def env_var_name(text: str) -> str:
    """An ``--api-key-env`` value: the name of an environment variable. Anything else is
    refused without being shown: it may be a key typed where its variable's name belongs."""
    if not _ENV_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            "wants the name of an environment variable (letters, digits and _), such as "
            "OPENAI_API_KEY; the key itself never goes on the command line"
        )
    return text


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that talks to an endpoint (chat, trace, bench)."""
    target = parser.add_argument_group("endpoint")
    target.add_argument("--model", default="qwen-plus", help="model name (default qwen-plus)")
    target.add_argument(
        "--region",
        choices=("beijing", "singapore", "us", "hongkong"),
        help="DashScope region (default: DASHSCOPE_REGION, else beijing; the key must "
        "belong to it)",
    )
    target.add_argument(
        "--protocol",
        choices=protocols.NAMES,
        default=protocols.DEFAULT.name,
        help="the wire protocol (default %(default)s)",
    )
    target.add_argument(
        "--native",
        dest="protocol",
        action="store_const",
        const="native",
        help="same as --protocol native",
    )
    target.add_argument(
        "--base-url",
        help="the protocol's base URL on any compatible server (overrides --region and "
        "DASHSCOPE_BASE_URL), e.g. https://host/compatible-mode/v1",
    )
    target.add_argument(
        "--mock",
        action="store_true",
        help="start the built-in DashScope emulator in-process: no key, no network",
    )
    target.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="an extra request header (repeatable), e.g. an emulator fault",
    )
    target.add_argument("--api-key", action=RefuseKeyValue)
    target.add_argument(
        "--api-key-env",
        metavar="NAME",
        type=env_var_name,
        help="read the key from environment variable NAME instead of DASHSCOPE_API_KEY "
        "(or QWEN_API_KEY), e.g. OPENAI_API_KEY for another OpenAI-compatible server; "
        "no option takes the key itself",
    )
    target.add_argument(
        "--proxy",
        metavar="URL",
        help="send requests through this proxy, http://[USER:PASSWORD@]HOST:PORT ('' for "
        "none); default: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY (a password is "
        "safer there than on the command line)",
    )
    target.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow sending the key over plain http to a non-loopback host",
    )
    resilience = parser.add_argument_group("retries")
    resilience.add_argument(
        "--max-attempts",
        type=int,
        default=RetryPolicy().max_attempts,
        help="requests per call, retries included (1: no retries; default %(default)s)",
    )
    resilience.add_argument(
        "--resume",
        action="store_true",
        help="continue a stream that breaks mid-answer (DashScope partial mode)",
    )
    limits = parser.add_argument_group("timeouts (seconds; 0 switches one off)")
    defaults = Timeouts()
    limits.add_argument("--connect-timeout", type=float, default=defaults.connect_s)
    limits.add_argument("--first-token-timeout", type=float, default=defaults.first_token_s)
    limits.add_argument("--idle-timeout", type=float, default=defaults.idle_s)
    limits.add_argument("--total-timeout", type=float, default=0.0)


def api_key_env_vars(args: argparse.Namespace) -> tuple[str, ...]:
    """The variables the key is read from: ``--api-key-env``'s, else the usual ones."""
    return (args.api_key_env,) if args.api_key_env else API_KEY_ENV_VARS


def headers_from(args: argparse.Namespace) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ConfigurationError(f"--header wants NAME:VALUE, got {item!r}")
        headers[name.strip()] = value.strip()
    return headers


def retry_from(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(max_attempts=args.max_attempts, resume=args.resume)


def timeouts_from(args: argparse.Namespace) -> Timeouts:
    def value(seconds: float | None) -> float | None:
        return seconds if seconds else None

    return Timeouts(
        connect_s=value(args.connect_timeout),
        first_token_s=value(args.first_token_timeout),
        idle_s=value(args.idle_timeout),
        total_s=value(args.total_timeout),
    )


@contextlib.asynccontextmanager
async def open_client(args: argparse.Namespace, **options: Any) -> AsyncIterator[QwenClient]:
    """The client the options describe (``--protocol`` included); with ``--mock``, pointed
    at a fresh emulator. ``options`` go to :class:`QwenClient` as they are (e.g.
    ``wire_tap``)."""
    if args.mock:
        config = EmulatorConfig(api_key=None, ttft_s=0.15, itl_s=0.02, jitter_s=0.01)
        async with (
            Emulator(config) as emulator,
            QwenClient(
                _MOCK_KEY,
                emulator.base_url_for(args.protocol),
                protocol=args.protocol,
                model=args.model,
                timeouts=timeouts_from(args),
                retry=retry_from(args),
                default_headers=headers_from(args),
                # The emulator is in-process: no proxy of the environment stands between.
                proxy=args.proxy or "",
                **options,
            ) as client,
        ):
            yield client
        return
    async with QwenClient(
        resolve_api_key(None, env_vars=api_key_env_vars(args)),
        base_url=args.base_url,
        region=args.region,
        model=args.model,
        timeouts=timeouts_from(args),
        retry=retry_from(args),
        allow_insecure_http=args.allow_insecure_http,
        default_headers=headers_from(args),
        protocol=args.protocol,
        proxy=args.proxy,
        **options,
    ) as client:
        yield client


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="stream an answer as it arrives",
        description="Stream one chat answer to the terminal: reasoning (if any) apart from "
        "the answer, then a one-line summary on stderr. The key comes from "
        "DASHSCOPE_API_KEY or QWEN_API_KEY (or the variable --api-key-env names); "
        "DASHSCOPE_BASE_URL and DASHSCOPE_REGION stand in for --base-url and --region; "
        "QWEN_SSE_LOG=info|debug logs every HTTP attempt on stderr.",
    )
    add_prompt_options(parser)
    parser.add_argument("--json", action="store_true", help="print every chunk as a JSON line")
    parser.add_argument(
        "--audio",
        metavar="OUT.wav",
        help="ask for a spoken answer too (Qwen-Omni models in compatible mode, voice "
        "Cherry), print its transcript and write the audio to OUT.wav",
    )
    add_connection_options(parser)
    parser.set_defaults(func=run)


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """The prompt and the request options, shared by chat and trace."""
    parser.add_argument("prompt", help="the user message ('-' reads it from stdin)")
    parser.add_argument("--system", help="a system message to send first")
    parser.add_argument("--thinking", action="store_true", help="send enable_thinking: true")
    parser.add_argument("--search", action="store_true", help="send enable_search: true")
    parser.add_argument("--max-tokens", type=int, help="max_tokens for the answer")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra body field, e.g. --param top_k=20 (repeatable; where the protocol puts "
        "options: the top level, or under parameters for the native protocols)",
    )


def request_from(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(messages, params)`` from the prompt options; ``ValueError`` names a bad option."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = _params(args)
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    return messages, params


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.thinking:
        params["enable_thinking"] = True
    if args.search:
        params["enable_search"] = True
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.seed is not None:
        params["seed"] = args.seed
    params.update(parse_params(args.param))
    return params


def parse_params(items: list[str]) -> dict[str, Any]:
    """``--param KEY=JSON`` options as body fields; a value that is not JSON is a string."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--param wants KEY=JSON, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw  # a bare word is a string
    return params


def run(args: argparse.Namespace) -> int:
    try:
        messages, params = request_from(args)
    except ValueError as error:
        print(f"qwen-sse chat: {in_cli_words(str(error))}", file=sys.stderr)
        return 2
    if args.audio:
        # Compatible mode's request for speech (Qwen-Omni streams it as delta.audio).
        params.update(modalities=["text", "audio"], audio={"voice": "Cherry", "format": "wav"})
    return asyncio.run(_chat(args, messages, params))


async def _chat(args: argparse.Namespace, messages: list[dict[str, Any]], params: Any) -> int:
    out = sys.stdout
    styled = out.isatty()
    try:
        async with open_client(args) as client:
            async with client.stream_chat(messages, args.model, **params) as stream:
                phase = ""
                async for chunk in stream:
                    if args.json:
                        out.write(encode_chunk(chunk).decode() + "\n")
                        continue
                    for choice in chunk.choices[:1]:
                        delta = choice.delta
                        if delta.reasoning_content:
                            if phase != "reasoning":
                                phase = "reasoning"
                                out.write(_style("[thinking] ", styled))
                            out.write(_style(delta.reasoning_content, styled))
                        answer = delta.content
                        if not answer and delta.audio is not None:
                            answer = delta.audio.transcript  # a spoken answer's text
                        if answer:
                            if phase == "reasoning":
                                out.write("\n\n")
                            phase = "answer"
                            out.write(answer)
                    out.flush()
            if not args.json:
                out.write("\n")
            print(summary_line(stream.result), file=sys.stderr)
    except QwenSSEError as error:
        out.flush()
        report_error(error, sys.stderr)
        if args.audio and error.partial is not None and error.partial.audio is not None:
            save_audio(error.partial, args.audio, sys.stderr)  # what was spoken is kept
        return 2 if isinstance(error, ValueError) else 1
    if args.audio:
        return save_audio(stream.result, args.audio, sys.stderr)
    return 0


def save_audio(result: ChatResult, path: str, err: TextIO) -> int:
    """Write the answer's audio to ``path`` as a WAV file (its transcript was streamed
    as the answer); one error line and 1 when no audio arrived."""
    audio = result.audio
    if audio is None or not audio.data:
        print(
            f"qwen-sse chat: no audio arrived, so {path} was not written "
            f"(model {result.model or '?'}; Qwen-Omni models speak)",
            file=err,
        )
        return 1
    try:
        write_wav(path, audio)
    except OSError as error:
        print(f"qwen-sse chat: cannot write {path}: {error.strerror}", file=err)
        return 1
    lost = f"; {audio.invalid_pieces} bad base64 piece(s) left out" if audio.invalid_pieces else ""
    print(f"qwen-sse chat: wrote {audio.duration_s:.2f} s of audio to {path}{lost}", file=err)
    return 0


def write_wav(path: str, audio: AudioResult) -> None:
    """``audio`` as a playable WAV file: a RIFF header, then the PCM samples."""
    frame_bytes = audio.sample_width_bytes * audio.channels
    # The file is opened first: a wave.Wave_write whose open() failed breaks in __del__.
    with open(path, "wb") as file, wave.open(file, "wb") as wav:
        wav.setnchannels(audio.channels)
        wav.setsampwidth(audio.sample_width_bytes)
        wav.setframerate(audio.sample_rate_hz)
        # A cut stream can end inside a sample; a WAV holds whole frames only.
        wav.writeframes(audio.data[: len(audio.data) - len(audio.data) % frame_bytes])


def _style(text: str, styled: bool) -> str:
    return f"{_DIM}{text}{_RESET}" if styled else text


def summary_line(result: ChatResult) -> str:
    """Tokens, time to first token and generation speed, on one line."""
    parts = []
    usage = result.usage
    if usage is not None:
        parts.append(
            f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion"
            f" = {usage.total_tokens} tokens"
        )
    timing = result.timing
    if timing.ttft_s is not None:
        parts.append(f"first token {timing.ttft_s:.2f} s")
    if timing.total_s is not None:
        parts.append(f"total {timing.total_s:.2f} s")
        generating_s = timing.total_s - (timing.ttft_s or 0.0)
        if usage is not None and generating_s > 0 and usage.completion_tokens > 1:
            parts.append(f"{(usage.completion_tokens - 1) / generating_s:.1f} tokens/s")
    if result.finish_reason:
        parts.append(f"finish {result.finish_reason}")
    if result.request_id:
        parts.append(f"request {result.request_id}")
    return " · ".join(parts)


def report_error(error: QwenSSEError, err: TextIO) -> None:
    """One line for the error (and its notes); a second when an answer was cut short."""
    notes = "; ".join(getattr(error, "__notes__", ()))
    line = f"qwen-sse: error: {error}" + (f" ({notes})" if notes else "")
    print(in_cli_words(line), file=err)
    partial = error.partial
    if partial is not None and (partial.content or partial.reasoning_content):
        received = len(partial.content) + len(partial.reasoning_content)
        print(
            f"qwen-sse: the answer above is incomplete ({received} characters received)",
            file=err,
        )
