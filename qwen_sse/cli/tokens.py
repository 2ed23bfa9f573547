"""``qwen-sse tokens``: count the Qwen tokens of a text or of a chat prompt, offline."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qwen_sse.cli.words import print_error
from qwen_sse.errors import ConfigurationError, TokenLimitError
from qwen_sse.models import MODEL_LIMITS, model_limits
from qwen_sse.tokens import encode, message_token_count

_PROG = "qwen-sse tokens"


class _InputError(Exception):
    """Input the command cannot use; its message is the one line printed."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tokens",
        help="count Qwen tokens in a text, stdin or a JSON messages file",
        description="Count Qwen tokens offline. A text is counted as it is given (from stdin "
        "including any trailing newline); a messages file is counted as the prompt DashScope "
        "bills. The first line printed is the count.",
    )
    parser.add_argument(
        "text", nargs="?", help="text to count ('-' or nothing with piped input = stdin)"
    )
    parser.add_argument(
        "--messages",
        metavar="FILE",
        help="JSON file ('-' = stdin): a list of messages, or an object with \"messages\" "
        'and optionally "tools"',
    )
    parser.add_argument(
        "--model",
        help="also print the model's input limit and the room the count leaves (a model "
        "without documented limits gets the count and a note)",
    )
    parser.add_argument("--ids", action="store_true", help="also print the token ids (text only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        limits = None if args.model is None else model_limits(args.model)
        if args.messages is not None:
            if args.text is not None or args.ids:
                raise _InputError("--messages takes neither a TEXT argument nor --ids")
            count = message_token_count(*_read_messages(args.messages))
            tokens, notes, ids = count.tokens, count.notes, None
        else:
            ids = encode(_read_text(args.text))
            tokens, notes = len(ids), ()
    except (_InputError, ConfigurationError) as error:
        print_error(_PROG, error)
        return 2
    print(tokens)
    if ids is not None and args.ids:
        print(json.dumps(ids))
    for note in notes:
        print(f"{_PROG}: note: {note}", file=sys.stderr)
    if limits is None:
        if args.model is not None:
            # The count stands on its own; only the check against limits is skipped.
            known = ", ".join(MODEL_LIMITS)
            print(
                f"{_PROG}: note: the limits of model {args.model!r} are not documented, so"
                f" the count is not checked against them (known: {known})",
                file=sys.stderr,
            )
        return 0
    if tokens > limits.max_input_tokens:
        over = TokenLimitError(
            model=limits.model, prompt_tokens=tokens, limit=limits.max_input_tokens
        )
        print_error(_PROG, over)
        return 1
    print(
        f"{limits.model}: input limit {limits.max_input_tokens} tokens, "
        f"{limits.input_room_tokens(tokens)} left; "
        f"reply up to {limits.output_room_tokens(tokens)} tokens"
    )
    return 0


def _read_text(text: str | None) -> str:
    if text is not None and text != "-":
        return text
    if text is None and sys.stdin.isatty():
        raise _InputError("give a TEXT, '-' to read stdin, or --messages FILE")
    return _decode(sys.stdin.buffer.read(), "stdin", "utf-8")


def _read_messages(path: str) -> tuple[Any, Any]:
    """(messages, tools) from a JSON file or stdin."""
    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as source:
                data = source.read()
    except OSError as error:
        raise _InputError(f"cannot read {name}: {error.strerror}") from None
    try:
        # utf-8-sig: a byte order mark, as some editors write, is not part of the JSON.
        document = json.loads(_decode(data, name, "utf-8-sig"))
    except json.JSONDecodeError as error:
        raise _InputError(f"{name} is not valid JSON: {error}") from None
    if isinstance(document, list):
        return document, None
    if isinstance(document, dict) and isinstance(document.get("messages"), list):
        return document["messages"], document.get("tools")
    raise _InputError(f'{name} must hold a JSON list of messages or an object with "messages"')


def _decode(data: bytes, name: str, codec: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        raise _InputError(
            f"{name} is not UTF-8 text: {error.reason} at byte {error.start}"
        ) from None
