"""What the kernel alone charges a paced streaming server's core: the floor under
``bench_capacity.py``'s emulator figures.

What it measures
----------------
For each concurrency level (``--levels``), one process pinned to ``--sender-cpu`` holds
that many loopback TCP connections and writes one token's step to each of them every
``--itl-ms``: an HTTP chunk holding one compatible-mode SSE content event, built by the
emulator's own framing (the text "hello", a fixed id). Plain ``socket.send`` calls, round
robin, in 1 ms ticks, and nothing else (no HTTP, no framing, no event loop, no
timestamps). A child process pinned to ``--reader-cpu`` reads every connection, as a
client would.

On loopback the sender's ``send`` also runs the receiving side's TCP processing and wakes
the reader (which costs more per send at low rates, when the reader sleeps between
sends). Its process CPU time counts that work as far as the kernel charges it to the
running process: it does on kernels without ``CONFIG_IRQ_TIME_ACCOUNTING`` unless the
work is deferred to ``ksoftirqd``. Per level, the median over ``--repeat`` runs of
``--seconds`` each:

* **sends/s asked** and **done** (over the ticks that sent; fewer done than asked: the
  sends alone took the core);
* **CPU**: the sender's CPU time over the run, in % of its core;
* **µs/send**: that CPU time over the sends.

Compare µs/send with the emulator's µs/token in ``bench_capacity.py`` at the same level:
the difference is the emulator's own work (HTTP, framing, pacing, records). The table
goes to stderr as Markdown, the JSON document to stdout (or to ``--json FILE``). Figures
vary with the machine and its load; they are never a pass/fail.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import benchenv
from bench_accuracy import show

from qwen_sse.bench.runner import raise_open_files_limit
from qwen_sse.emulator.framing.compatible import CompatibleFrames

TICK_S = 0.001
_SETUP_TIMEOUT_S = 30.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--levels", default="256,512,1024,1536,2048,4096", help="comma-separated streams"
    )
    parser.add_argument(
        "--itl-ms", type=float, default=20.0, help="one token per stream this often"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per level (medians)")
    parser.add_argument("--sender-cpu", type=int, default=0, help="the sender's CPU")
    parser.add_argument("--reader-cpu", type=int, default=1, help="the reader's CPU")
    benchenv.add_report_options(parser)
    args = parser.parse_args(argv)
    usable = sorted(os.sched_getaffinity(0))
    if args.quick:
        args.levels, args.seconds, args.repeat = "4,8", 0.2, 1
        # Whatever CPUs this process may use (a container may offer one).
        args.sender_cpu, args.reader_cpu = usable[0], usable[-1]
    for option, cpu in (("--sender-cpu", args.sender_cpu), ("--reader-cpu", args.reader_cpu)):
        if cpu not in usable:
            parser.error(f"{option} {cpu} is not one this process may use: {usable}")
    return args


def thousands(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def pct(fraction: float | None) -> float | None:
    return None if fraction is None else fraction * 100


def token_step() -> bytes:
    """One content token as the emulator writes it: an HTTP chunk holding one SSE event."""
    frames = CompatibleFrames(
        "chatcmpl-00000000-0000-0000-0000-000000000000", "qwen-plus", 1_764_547_200, "\n"
    )
    event = frames.content("hello", first=False, after_reasoning=False)
    return b"%x\r\n%b\r\n" % (len(event), event)


def read_all(port: int, streams: int, cpu: int, ready: Connection) -> None:
    """The reader: connect ``streams`` times, say so, read until the sender closes all."""
    os.sched_setaffinity(0, {cpu})
    raise_open_files_limit()
    selector = selectors.DefaultSelector()
    for _ in range(streams):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ, connection)
    ready.send(True)
    open_count = streams
    while open_count:
        for key, _ in selector.select():
            readable: socket.socket = key.data
            if not readable.recv(1 << 16):
                selector.unregister(readable)
                readable.close()
                open_count -= 1


def one_run(streams: int, args: argparse.Namespace, step: bytes) -> dict[str, Any]:
    """One run at ``streams`` connections: the sends asked and done, and their CPU."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    connections: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0), backlog=min(streams, 4096)) as listener:
        reader = context.Process(
            target=read_all,
            args=(listener.getsockname()[1], streams, args.reader_cpu, child_end),
            daemon=True,
        )
        reader.start()
        child_end.close()
        try:
            listener.settimeout(_SETUP_TIMEOUT_S)
            for _ in range(streams):
                connection, _address = listener.accept()
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections.append(connection)
            if not parent_end.poll(_SETUP_TIMEOUT_S):
                raise TimeoutError
            parent_end.recv()
            return send_paced(connections, args, step)
        except (TimeoutError, EOFError):
            raise SystemExit(
                f"bench_send_floor: the reader did not open {streams} connections in "
                f"{_SETUP_TIMEOUT_S:g} s (exit code {reader.exitcode})"
            ) from None
        finally:
            for connection in connections:
                connection.close()
            parent_end.close()
            reader.join(timeout=_SETUP_TIMEOUT_S)
            if reader.is_alive():
                reader.terminate()
                reader.join()


def send_paced(
    connections: list[socket.socket], args: argparse.Namespace, step: bytes
) -> dict[str, Any]:
    """Send ``step`` to each connection every ``--itl-ms`` for ``--seconds``, in ticks."""
    streams = len(connections)
    rate_per_s = streams / (args.itl_ms / 1000)
    send = [connection.send for connection in connections]
    sent = 0
    sending_s = 0.0
    started_s = time.monotonic()
    cpu_before_s = time.process_time()
    while (elapsed_s := time.monotonic() - started_s) < args.seconds:
        due = int(elapsed_s * rate_per_s)
        while sent < due:
            send[sent % streams](step)
            sent += 1
        sending_s = elapsed_s
        time.sleep(max(0.0, TICK_S - (time.monotonic() - started_s - elapsed_s)))
    cpu_s = time.process_time() - cpu_before_s
    wall_s = time.monotonic() - started_s
    return {
        "sends_per_s_asked": rate_per_s,
        # Over the ticks that sent: the last tick's sleep is no time to send in.
        "sends_per_s_done": sent / sending_s if sending_s else None,
        "cpu_fraction": cpu_s / wall_s,
        "cpu_us_per_send": cpu_s / sent * 1e6 if sent else None,
    }


def level(streams: int, args: argparse.Namespace, step: bytes) -> dict[str, Any]:
    runs = [one_run(streams, args, step) for _ in range(args.repeat)]
    medians = {
        key: statistics.median(values)
        if (values := [run[key] for run in runs if run[key] is not None])
        else None
        for key in ("sends_per_s_done", "cpu_fraction", "cpu_us_per_send")
    }
    return {
        "streams": streams,
        "sends_per_s_asked": runs[0]["sends_per_s_asked"],
        "medians": medians,
        "runs": runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    raise_open_files_limit()
    os.sched_setaffinity(0, {args.sender_cpu})
    step = token_step()
    levels = [int(part) for part in args.levels.split(",")]
    log(
        f"one {len(step)}-byte token step per stream every {args.itl_ms:g} ms; sender on CPU "
        f"{args.sender_cpu}, reader on CPU {args.reader_cpu}; medians of {args.repeat} "
        f"run(s) of {args.seconds:g} s"
    )
    log("")
    log("| streams | sends/s asked | sends/s done | sender CPU | µs/send |")
    log("|---|---|---|---|---|")
    rows = []
    for streams in levels:
        row = level(streams, args, step)
        rows.append(row)
        medians = row["medians"]
        log(
            f"| {streams:,} | {row['sends_per_s_asked']:,.0f} "
            f"| {thousands(medians['sends_per_s_done'])} "
            f"| {show(pct(medians['cpu_fraction']), 0)}% "
            f"| {show(medians['cpu_us_per_send'], 2)} |"
        )
    settings = ("itl_ms", "seconds", "repeat", "sender_cpu", "reader_cpu")
    document: dict[str, Any] = {
        "quick": args.quick,
        "environment": benchenv.environment([]),
        "settings": {key: getattr(args, key) for key in settings},
        "step_bytes": len(step),
        "levels": rows,
    }
    benchenv.emit(document, args.json or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
