"""The command line's words for the library's settings: error text that names the option to
change (``--allow-insecure-http``), not the Python argument (``allow_insecure_http=True``).

Edge layer (cli). The library's messages name its arguments; every message a command-line
user can meet is listed here with the option it means (``tests/test_cli_words.py`` raises
each one and checks that no Python spelling is left).
"""

from __future__ import annotations

__all__ = ["in_cli_words"]

# The library's phrase, then the command line's; a phrase is replaced wherever it appears.
_PHRASES = (
    ("pass allow_insecure_http=True", "pass --allow-insecure-http"),
    ("pass allow_remote=True", "pass --allow-remote"),
    (", or pass api_key=...", ", or name the variable that holds it with --api-key-env"),
    ("pass base_url=... for this protocol", "pass --base-url for this protocol"),
    ("base_url must be", "--base-url must be"),
    ("max_attempts must be", "--max-attempts must be"),
    ("timeout connect_s", "--connect-timeout"),
    ("timeout first_token_s", "--first-token-timeout"),
    ("timeout idle_s", "--idle-timeout"),
    ("timeout total_s", "--total-timeout"),
    ("must be positive or None", "must be positive, or 0 to switch it off"),
    ("would pass total_s=", "would pass --total-timeout "),
    ("answer_tokens must be", "--answer-tokens must be"),
)


def in_cli_words(text: str) -> str:
    """``text`` (an error message, its notes included) in the command line's words."""
    for library, command_line in _PHRASES:
        text = text.replace(library, command_line)
    return text
