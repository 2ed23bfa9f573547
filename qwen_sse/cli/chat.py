"""``qwen-sse chat``: stream one answer to the terminal, or its chunks as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import wave
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TextIO

from qwen_sse import protocols
from qwen_sse.chat import AudioResult, ChatResult
from qwen_sse.chunks import ChatCompletionChunk, ChoiceDeltaToolCall, encode_chunk
from qwen_sse.cli.words import error_line, print_error
from qwen_sse.client import QwenClient
from qwen_sse.config import API_KEY_ENV_VARS, Timeouts, resolve_api_key
from qwen_sse.emulator import Emulator, EmulatorConfig
from qwen_sse.errors import ConfigurationError, QwenSSEError
from qwen_sse.retry import RetryPolicy

_MOCK_KEY = "sk-mock"
_EMULATED = "qwen-sse chat: the answer comes from the built-in emulator (--mock), not from a model"
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
    limits.add_argument(
        "--connect-timeout",
        type=float,
        default=defaults.connect_s,
        help="TCP and TLS set-up (default %(default)g)",
    )
    limits.add_argument(
        "--first-token-timeout",
        type=float,
        default=defaults.first_token_s,
        help="from sending until the first text of the answer (default %(default)g)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_s,
        help="the longest silence between events; keep-alives do not count (default %(default)g)",
    )
    limits.add_argument(
        "--total-timeout",
        type=float,
        default=0.0,
        help="the whole call, retries included (default: off)",
    )


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
    parser.add_argument("--temperature", type=float, help="temperature for the answer")
    parser.add_argument("--seed", type=int, help="seed for the answer")
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
    prompt = read_stdin_text() if args.prompt == "-" else args.prompt
    params = _params(args)
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    return messages, params


def read_stdin_text() -> str:
    """All of stdin as text; bytes that are not UTF-8 are a ``ConfigurationError``."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"stdin is not UTF-8 text ({error.reason} at byte {error.start}): the prompt "
            "must be text"
        ) from None


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    given: dict[str, str] = {}
    for field, option, value in (
        ("enable_thinking", "--thinking", True if args.thinking else None),
        ("enable_search", "--search", True if args.search else None),
        ("max_tokens", "--max-tokens", args.max_tokens),
        ("temperature", "--temperature", args.temperature),
        ("seed", "--seed", args.seed),
        ("modalities", "--audio", _AUDIO_MODALITIES if getattr(args, "audio", None) else None),
        ("audio", "--audio", _AUDIO_OUTPUT if getattr(args, "audio", None) else None),
    ):
        if value is not None:
            params[field] = value
            given[field] = option
    params.update(parse_params(args.param, fields_set_by_command(args.protocol, given)))
    return params


# Compatible mode's request for speech (Qwen-Omni streams it as delta.audio).
_AUDIO_MODALITIES = ["text", "audio"]
_AUDIO_OUTPUT = {"voice": "Cherry", "format": "wav"}

# What every command that sends chat requests sets itself, and how: --param may not.
# ``timeouts``, ``retry`` and ``extra_headers`` are no body fields but arguments of the
# client's call, which the call's keyword parameters would take.
_SET_BY_EVERY_COMMAND = {
    "model": "--model",
    "messages": "the prompt and --system",
    "stream": "it always streams",
    "timeouts": "--connect-timeout, --first-token-timeout, --idle-timeout, --total-timeout",
    "retry": "--max-attempts, --resume",
    "extra_headers": "--header",
}


def fields_set_by_command(protocol: str, given: Mapping[str, str]) -> dict[str, str]:
    """The fields a command sets itself, each with what sets it (for ``--param``'s refusal):
    the model, messages and streaming, the client's own arguments, what ``protocol``
    builds, and ``given``, the fields the command's own options set (field: option)."""
    wire = protocols.get(protocol)
    taken = {field: f"the {wire.name} protocol builds it" for field in wire.built_fields}
    taken.update(_SET_BY_EVERY_COMMAND)
    taken.update(given)
    return taken


def parse_params(items: Sequence[str], taken: Mapping[str, str]) -> dict[str, Any]:
    """``--param KEY=JSON`` options as body fields. ``ConfigurationError`` (naming the key)
    for a value that is not JSON (``top_k=abc``: a string needs its quotes) and for a key
    in ``taken``, a field the command sets itself (key: what sets it)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--param wants KEY=JSON, got {item!r}")
        if key in taken:
            raise ConfigurationError(
                f"--param {key}: the command sets this itself ({taken[key]}); leave it out"
            )
        try:
            params[key] = json.loads(raw, parse_constant=_not_json)
        except ValueError as error:
            if raw and raw[0] not in "{[" and not {'"', "'"} & set(raw):
                why = f"a string needs its quotes: --param {key}='{json.dumps(raw)}'"
            else:
                why = str(error)
            raise ConfigurationError(f"--param {key}: {raw!r} is not JSON ({why})") from None
    return params


def _not_json(constant: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON does not have."""
    raise ValueError(f"{constant} is not a JSON value")


def run(args: argparse.Namespace) -> int:
    try:
        messages, params = request_from(args)
    except ValueError as error:
        print_error("qwen-sse chat", error)
        return 2
    return asyncio.run(_chat(args, messages, params))


async def _chat(args: argparse.Namespace, messages: list[dict[str, Any]], params: Any) -> int:
    out = sys.stdout
    printer = AnswerPrinter(out, terminal=out.isatty())
    emulated = args.mock  # said once, before the first chunk of the answer
    try:
        async with open_client(args) as client:
            async with client.stream_chat(messages, args.model, **params) as stream:
                async for chunk in stream:
                    if emulated:
                        emulated = False
                        print(_EMULATED, file=sys.stderr, flush=True)
                    if args.json:
                        out.write(encode_chunk(chunk).decode() + "\n")
                    else:
                        printer.chunk(chunk)
                    out.flush()
            if not args.json:
                printer.end()
            print(summary_line(stream.result), file=sys.stderr)
    except QwenSSEError as error:
        printer.interrupted()
        out.flush()
        report_error(error, sys.stderr)
        if args.audio and error.partial is not None and error.partial.audio is not None:
            save_audio(error.partial, args.audio, sys.stderr)  # what was spoken is kept
        return 2 if isinstance(error, ValueError) else 1
    if args.audio:
        return save_audio(stream.result, args.audio, sys.stderr)
    return 0


class AnswerPrinter:
    """Writes the first choice of a streamed answer as a person reads it, piece by piece as
    it arrives: reasoning after ``[thinking]`` (dimmed on a ``terminal``), a blank line, the
    answer (or a spoken answer's transcript), and each tool call on a line of its own,
    ``→ tool call NAME(`` then its arguments as they stream, then ``)``."""

    def __init__(self, out: TextIO, *, terminal: bool) -> None:
        self._out = out
        self._terminal = terminal
        self._phase = ""  # "", "reasoning", "answer" or "call"
        self._call_index = -1
        self._names: dict[int, str] = {}
        self._line_open = False  # the last character written ends no line

    def _write(self, text: str) -> None:
        if text:
            self._out.write(text)
            self._line_open = not text.endswith("\n")

    def _end_call(self) -> None:
        if self._phase == "call":
            self._write(")\n")
            self._phase = ""

    def chunk(self, chunk: ChatCompletionChunk) -> None:
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # n > 1: the first choice stands for the answer
            delta = choice.delta
            if delta.reasoning_content:
                if self._phase != "reasoning":
                    self._end_call()
                    if self._line_open:
                        self._write("\n")
                    self._phase = "reasoning"
                    self._write(_style("[thinking] ", self._terminal))
                self._write(_style(delta.reasoning_content, self._terminal))
            answer = delta.content
            if not answer and delta.audio is not None:
                answer = delta.audio.transcript  # a spoken answer's text
            if answer:
                if self._phase == "reasoning":
                    self._write("\n\n")
                self._end_call()
                self._phase = "answer"
                self._write(answer)
            for call in delta.tool_calls or ():
                self._tool_call(call)

    def _tool_call(self, call: ChoiceDeltaToolCall) -> None:
        function = call.function
        name = function.name if function is not None else None
        arguments = function.arguments if function is not None else None
        if name:
            self._names.setdefault(call.index, name)
        if self._phase != "call" or call.index != self._call_index:
            if not name and not arguments:
                return  # an id or type alone: the call shows when its name comes
            self._end_call()
            if self._line_open:
                self._write("\n")
            self._write(f"→ tool call {self._names.get(call.index, '?')}(")
            self._phase, self._call_index = "call", call.index
        if arguments:
            self._write(arguments)

    def end(self) -> None:
        """The answer ended: close an open call, or end the answer's line."""
        if self._phase == "call":
            self._write(")\n")
        else:
            self._write("\n")

    def interrupted(self) -> None:
        """The answer broke off. On a terminal the line ends, so that the error line on
        stderr starts a line of its own; elsewhere the output stays exactly what arrived
        (an open call stays unclosed either way)."""
        if self._line_open and self._terminal:
            self._write("\n")


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
        print(error_line("qwen-sse chat", f"cannot write {path}: {error.strerror}"), file=err)
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
    print(error_line("qwen-sse: error", f"{error}" + (f" ({notes})" if notes else "")), file=err)
    partial = error.partial
    calls = partial.tool_calls if partial is not None else []
    if partial is not None and (partial.content or partial.reasoning_content or calls):
        received = len(partial.content) + len(partial.reasoning_content)
        received += sum(len(call.function.arguments) for call in calls)
        print(
            f"qwen-sse: the answer above is incomplete ({received} characters received)",
            file=err,
        )
