"""The ``qwen-sse`` command line: one subcommand per module in this package.

Edge layer: it uses the public API and the core, and owns nothing but argument parsing and
terminal output. Each subcommand module exposes ``add_parser(subparsers)``, which
registers its parser with ``func=run``, and ``run(args) -> int`` (the exit status).
Being an application, it shows the package's warnings (retries, resumes) on stderr, and
the wire log when ``QWEN_SSE_LOG`` asks for it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

from qwen_sse import wirelog
from qwen_sse.cli import bench, chat, decode, proxy, replay, serve, tokens, trace
from qwen_sse.config import log_switch
from qwen_sse.errors import ConfigurationError

_COMMANDS = (bench, chat, decode, proxy, replay, serve, tokens, trace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-sse",
        description="Streaming client for Qwen (DashScope) and OpenAI-compatible endpoints.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qwen-sse`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        log_switch()
    except ConfigurationError as error:
        print(f"qwen-sse: {error}", file=sys.stderr)
        return 2
    try:
        with _warnings_on_stderr():
            status: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); that is not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    return status


@contextlib.contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """The package's warnings on stderr (``QWEN_SSE_LOG`` may show more), for one command;
    its loggers are left as they were, since ``main`` may run again in the same process."""
    package = logging.getLogger("qwen_sse")
    content = logging.getLogger(wirelog.CONTENT_LOGGER)
    handlers, level, content_level = package.handlers[:], package.level, content.level
    wirelog.log_to_stderr(logging.WARNING)
    wirelog.enable_from_env()
    try:
        yield
    finally:
        package.handlers[:] = handlers
        package.setLevel(level)
        content.setLevel(content_level)


if __name__ == "__main__":
    sys.exit(main())
