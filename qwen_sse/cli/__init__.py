"""The ``qwen-sse`` command line: one subcommand per module in this package.

Edge layer: it uses the public API and the core, and owns nothing but argument parsing and
terminal output. Each subcommand module exposes ``add_parser(subparsers)``, which
registers its parser with ``func=run``, and ``run(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qwen_sse.cli import bench, chat, decode, replay, serve, tokens, trace

_COMMANDS = (bench, chat, decode, replay, serve, tokens, trace)


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
        status: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); that is not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
