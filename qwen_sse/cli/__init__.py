"""The ``qwen-sse`` command line: one subcommand per module in this package.

Edge layer: it uses the public API and the core, and owns nothing but argument parsing and
terminal output. Each subcommand module exposes ``add_parser(subparsers)``, which
registers its parser with ``func=run``, and ``run(args) -> int`` (the exit status).
Being an application, it shows the package's warnings (retries, resumes) on stderr, and
the wire log when ``QWEN_SSE_LOG`` asks for it. Every error is one line on stderr
(:mod:`qwen_sse.cli.words`): usage errors, each command's own, and, as a last resort, a
failure no command expected (its traceback only in the ``QWEN_SSE_LOG=debug`` log).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

import qwen_sse
from qwen_sse import wirelog
from qwen_sse.cli import bench, chat, decode, proxy, replay, serve, tokens, trace
from qwen_sse.cli.words import error_line, print_error
from qwen_sse.config import log_switch
from qwen_sse.errors import ConfigurationError

_COMMANDS = (bench, chat, decode, proxy, replay, serve, tokens, trace)
_log = logging.getLogger("qwen_sse.cli")


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (argparse prints the whole usage first),
    pointing at ``--help``; the subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        line = error_line(f"{self.prog}: error", f"{message} (see {self.prog} --help)")
        self.exit(2, line + "\n")


def version() -> str:
    """The installed distribution's version, else the source tree's."""
    try:
        return importlib.metadata.version("qwen-sse")
    except importlib.metadata.PackageNotFoundError:
        return qwen_sse.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qwen-sse",
        description="Streaming client for Qwen (DashScope) and OpenAI-compatible endpoints.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
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
        print_error("qwen-sse", error)
        return 2
    try:
        with _warnings_on_stderr():
            return _run(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); that is not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    """The command's exit status; a failure it did not expect is still one line."""
    try:
        status: int = args.func(args)
    except (BrokenPipeError, KeyboardInterrupt):
        raise
    except Exception as error:  # the last resort: one line, not a traceback
        # A bug of ours, or a failure no command expected. QWEN_SSE_LOG=debug shows where
        # it came from.
        _log.debug("unexpected failure of qwen-sse %s", args.command, exc_info=True)
        print_error(
            f"qwen-sse {args.command}",
            f"unexpected {type(error).__name__}: {error} (please report it; "
            "QWEN_SSE_LOG=debug shows the traceback)",
        )
        return 1
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
