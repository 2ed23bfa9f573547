"""The command line's error lines: one line each (the README promises it), in the command
line's words: text that names the option to change (``--allow-insecure-http``), not the
Python argument (``allow_insecure_http=True``).

Edge layer (cli). Every error a command prints goes through :func:`print_error` (or
:func:`error_line`). The library's messages name its arguments; every message a
command-line user can meet is listed here with the option it means
(``tests/test_cli_words.py`` raises each one and checks that no Python spelling is left).
"""

from __future__ import annotations

import sys

from qwen_sse.errors import one_line

__all__ = ["error_line", "in_cli_words", "print_error"]

# The library's phrase, then the command line's; a phrase is replaced wherever it appears.
_PHRASES = (
    ("pass allow_insecure_http=True", "pass --allow-insecure-http"),
    ("pass allow_remote=True", "pass --allow-remote"),
    (", or pass api_key=...", ", or name the variable that holds it with --api-key-env"),
    ("pass base_url=... for this protocol", "pass --base-url for this protocol"),
    ("base_url must be", "--base-url must be"),
    ("base_url must have", "--base-url must have"),
    ("base_url must not carry", "--base-url must not carry"),
    ("max_attempts must be", "--max-attempts must be"),
    ("timeout connect_s", "--connect-timeout"),
    ("timeout first_token_s", "--first-token-timeout"),
    ("timeout idle_s", "--idle-timeout"),
    ("timeout total_s", "--total-timeout"),
    ("must be positive or None", "must be positive, or 0 to switch it off"),
    ("would pass total_s=", "would pass --total-timeout "),
    ("answer_tokens must be", "--answer-tokens must be"),
    ("backlog must be", "--backlog must be"),
    ("context_cache_entries must be", "--context-cache-entries must be"),
)


def in_cli_words(text: str) -> str:
    """``text`` (an error message, its notes included) in the command line's words."""
    for library, command_line in _PHRASES:
        text = text.replace(library, command_line)
    return text


def error_line(prog: str, message: object) -> str:
    """``prog: message`` as the one line a command prints for an error, in its words."""
    return in_cli_words(one_line(f"{prog}: {message}"))


def print_error(prog: str, message: object) -> None:
    """Print :func:`error_line` on stderr."""
    print(error_line(prog, message), file=sys.stderr)
