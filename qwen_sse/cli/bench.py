"""``qwen-sse bench``: load-test a streaming chat endpoint; report vLLM's figures and whether
the client itself was the bottleneck.

The table goes to stdout, the live progress line and warnings to stderr; ``--json``,
``--jsonl`` (as requests finish), ``--csv``, ``--plot`` and ``--html`` write files;
``--metrics-url`` adds the server's own series (both: :mod:`qwen_sse.cli.bench_reports`).
``--repeat N`` runs the same load N times and reports each figure's mean and 95% confidence
interval; ``bench compare`` (:mod:`qwen_sse.cli.compare`) sets two results side by side.
The first SIGINT or SIGTERM stops the run and reports what finished; a second quits at
once. Exit status: 0 when the run finished (whatever the figures), 1 when no request
succeeded, the run stopped early by itself (its first requests all refused alike) or could
not complete, 2 for invalid options or output paths, 130 after a signal.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qwen_sse import protocols
from qwen_sse.bench.benchmark import BenchConfig, BenchResult
from qwen_sse.bench.benchmark import run as run_benchmark
from qwen_sse.bench.live import LiveProgress
from qwen_sse.bench.metrics import Slo
from qwen_sse.bench.mock import MOCK_API_KEY, MockServer
from qwen_sse.bench.monitor import Thresholds
from qwen_sse.bench.plot import level_directory, write_charts, write_sweep_chart
from qwen_sse.bench.repeat import combine, run_repeat
from qwen_sse.bench.report import (
    JsonlWriter,
    format_repeat,
    format_summary,
    format_sweep,
    repeat_banner,
    saturation_banner,
    write_csv,
    write_json,
)
from qwen_sse.bench.runner import STOP_GRACE_S, Target
from qwen_sse.bench.schedule import ARRIVALS, ClosedLoop, OpenLoop
from qwen_sse.bench.scrape import Scraper
from qwen_sse.bench.stop import STOP_SIGNALS, Stop
from qwen_sse.bench.sweep import SweepKind, run_sweep
from qwen_sse.bench.workers import WorkerError
from qwen_sse.bench.workload import Workload
from qwen_sse.cli import compare
from qwen_sse.cli.bench_reports import (
    SweepPages,
    add_report_options,
    check_report_options,
    measured,
    say_scrapes,
    scraping,
    write_run_page,
)
from qwen_sse.cli.chat import (
    add_connection_options,
    api_key_env_vars,
    fields_set_by_command,
    parse_params,
    timeouts_from,
)
from qwen_sse.cli.serve import non_negative
from qwen_sse.cli.words import print_error
from qwen_sse.cli.workloads import (
    add_workload_options,
    mock_answer_tokens,
    planned_requests,
    workload_from,
    workload_notes,
)
from qwen_sse.config import (
    check_transport_security,
    resolve_api_key,
    resolve_base_url,
    shown_url,
)
from qwen_sse.emulator import EmulatorConfig
from qwen_sse.errors import ConfigurationError
from qwen_sse.proxy import check_proxy_security, resolve_proxy

_GOODPUT_KEYS = ("ttft", "tpot", "e2el")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="load-test an endpoint: TTFT, TPOT, ITL, throughput, goodput",
        description="Send a closed-loop (fixed concurrency) or open-loop (arrival rate) load "
        "of streamed chat requests and report vLLM's figures (mean_ttft_ms, p99_itl_ms, "
        "request_throughput, ...). The client watches its own event-loop lag, receive lag and "
        "CPU, and says loudly when it, not the server, limited the figures. "
        "`qwen-sse bench compare A.json B.json` sets two results side by side.",
    )
    load = parser.add_argument_group("load")
    shape = load.add_mutually_exclusive_group()
    shape.add_argument(
        "--concurrency", type=int, help="closed loop: requests kept in flight (default 1)"
    )
    shape.add_argument("--rate", type=float, help="open loop: requests per second ('inf': all)")
    shape.add_argument("--sweep-concurrency", metavar="N,N,...", help="closed-loop levels")
    shape.add_argument("--sweep-rates", metavar="R,R,...", help="open-loop levels, req/s")
    load.add_argument(
        "--arrivals",
        choices=ARRIVALS,
        default="poisson",
        help="open loop: gaps between arrivals (default poisson)",
    )
    load.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="gamma arrivals' shape: <1 burstier, >1 steadier than Poisson (default 1)",
    )
    load.add_argument("--max-concurrency", type=int, help="open loop: cap on requests in flight")
    load.add_argument(
        "--requests", type=int, help="measured requests; multiturn: conversations (default 100)"
    )
    load.add_argument("--duration", type=float, metavar="SECONDS", help="stop sending after this")
    load.add_argument(
        "--warmup", type=int, default=0, help="requests sent first and left out of the figures"
    )
    load.add_argument(
        "--ramp-up",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="closed loop: start the slots evenly over this long, not all at once",
    )
    load.add_argument("--seed", type=int, default=0, help="seed of arrivals and prompts")
    load.add_argument(
        "--workers", type=int, default=1, help="processes sharing the load, one event loop each"
    )
    load.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the same load N times in turn; report each figure's mean and 95%% "
        "confidence interval (default 1)",
    )
    work = parser.add_argument_group("workload")
    add_workload_options(work)
    work.add_argument("--thinking", action="store_true", help="send enable_thinking: true")
    work.add_argument("--search", action="store_true", help="send enable_search: true")
    work.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra top-level body field of every request (repeatable)",
    )
    figures = parser.add_argument_group("figures")
    figures.add_argument(
        "--percentiles",
        default="90,95,99",
        help="percentiles to report besides the median (default 90,95,99)",
    )
    figures.add_argument(
        "--goodput",
        nargs="+",
        metavar="KEY:MS",
        help="SLOs for goodput, e.g. --goodput ttft:500 tpot:50 e2el:5000",
    )
    figures.add_argument(
        "--max-loop-lag-ms",
        type=float,
        default=Thresholds().max_loop_lag_ms,
        help="client verdict: p90 limit of event-loop lag and receive lag (default 10)",
    )
    figures.add_argument(
        "--max-cpu-percent",
        type=float,
        default=Thresholds().max_cpu_fraction * 100,
        help="client verdict: CPU limit per worker, %% of a core (default 90)",
    )
    figures.add_argument(
        "--max-cpu-wait-percent",
        type=float,
        default=Thresholds().max_cpu_wait_fraction * 100,
        help="client verdict: time a worker may wait for a CPU, %% of the run (default 5)",
    )
    figures.add_argument(
        "--max-schedule-lag-ms",
        type=float,
        default=Thresholds().max_schedule_lag_ms,
        help="client verdict: how much schedule lag may grow over the run, a reason only "
        "beside another (default 10)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the summary (or sweep) as JSON")
    out.add_argument("--jsonl", metavar="FILE", help="write every request as a JSON line")
    out.add_argument("--csv", metavar="FILE", help="write every request as a CSV row")
    out.add_argument("--plot", metavar="DIR", help="write PNG charts (needs qwen-sse[plot])")
    out.add_argument("--quiet", action="store_true", help="no live progress line")
    add_report_options(out)
    mock = parser.add_argument_group("emulator timing (with --mock)")
    mock.add_argument(
        "--mock-ttft-ms",
        metavar="MS",
        type=non_negative,
        default=150.0,
        help="the emulator's time to first token, ms (default %(default)g)",
    )
    mock.add_argument(
        "--mock-itl-ms",
        metavar="MS",
        type=non_negative,
        default=20.0,
        help="the emulator's delay between tokens, ms (default %(default)g)",
    )
    mock.add_argument(
        "--mock-jitter-ms",
        metavar="MS",
        type=non_negative,
        default=10.0,
        help="each emulator delay moves by up to this much either way, ms (default %(default)g)",
    )
    add_connection_options(parser)
    parser.set_defaults(func=run)
    compare.add_parser(
        parser.add_subparsers(
            dest="bench_command",
            title="comparing results",
            metavar="compare",
            help="`qwen-sse bench compare A.json B.json`: two results side by side, the "
            "significant differences marked (see its --help)",
        )
    )


def run(args: argparse.Namespace) -> int:
    try:
        config, sweep = _config(args)
        for note in workload_notes(config.workload):
            print(f"qwen-sse bench: {note}", file=sys.stderr)
        if sweep is not None and (args.jsonl or args.csv):
            raise ConfigurationError("--jsonl and --csv record one run; leave them out of a sweep")
        _check_repeat(args, sweep is not None)
        _check_outputs(args)
        check_report_options(args)
    except (ConfigurationError, ValueError) as error:
        print_error("qwen-sse bench", error)
        return 2
    with Stop() as stop, _Interrupts(stop) as interrupts:
        status = _run(args, config, sweep, stop, interrupts)
    # A signal ends the command as an interruption, whatever was written.
    return 130 if interrupts.signal is not None else status


def _run(
    args: argparse.Namespace,
    config: BenchConfig,
    sweep: tuple[SweepKind, list[float]] | None,
    stop: Stop,
    interrupts: _Interrupts,
) -> int:
    try:
        with (
            JsonlWriter(args.jsonl) if args.jsonl else contextlib.nullcontext() as records,
            _endpoint(args, config.workload) as target,
            scraping(args, target) as scraper,
        ):
            if sweep is None and args.repeat > 1:
                return _repeat(args, config, target, stop=stop, interrupts=interrupts)
            if sweep is None:
                return _single(
                    args,
                    config,
                    target,
                    stop=stop,
                    interrupts=interrupts,
                    records=records,
                    scraper=scraper,
                )
            return _sweep(
                args, config, target, sweep, stop=stop, interrupts=interrupts, scraper=scraper
            )
    except (ConfigurationError, ValueError) as error:
        print_error("qwen-sse bench", error)
        return 2
    except OSError as error:
        print(f"qwen-sse bench: {_os_error(error)}", file=sys.stderr)
        return 1
    except WorkerError as error:
        print_error("qwen-sse bench", error)
        return 1


def _single(
    args: argparse.Namespace,
    config: BenchConfig,
    target: Target,
    *,
    stop: Stop,
    interrupts: _Interrupts,
    records: JsonlWriter | None,
    scraper: Scraper | None,
) -> int:
    live = None if args.quiet else _live(config)
    _announce(args, config, target)
    with interrupts.running():
        result = measured(
            scraper,
            lambda: run_benchmark(
                config,
                target,
                live=live,
                on_record=records.write if records is not None else None,
                stop=stop,
            ),
        )
    summary = result.summary
    print(format_summary(summary))
    _warn(summary)
    say_scrapes(summary)
    status = 0 if summary["completed"] else 1
    if _write_files(args, result):
        status = 1
    if summary["stop_reason"] is not None and interrupts.signal is None:
        # The run stopped by itself: its first requests were all refused alike.
        print_error("qwen-sse bench", f"stopped early: {summary['stop_reason']}")
        status = 1
    return status


def _sweep(
    args: argparse.Namespace,
    config: BenchConfig,
    target: Target,
    sweep: tuple[SweepKind, list[float]],
    *,
    stop: Stop,
    interrupts: _Interrupts,
    scraper: Scraper | None,
) -> int:
    pages = SweepPages(args.html) if args.html else None

    def level(level_config: BenchConfig) -> BenchResult:
        live = None if args.quiet else _live(level_config)
        with interrupts.running():
            return measured(
                scraper, lambda: run_benchmark(level_config, target, live=live, stop=stop)
            )

    def show(value: float, result: BenchResult) -> None:
        summary = result.summary
        print(
            f"qwen-sse bench: level {value:g}: {summary['request_throughput']:.2f} req/s, "
            f"TTFT p50 {summary['median_ttft_ms'] or 0:.1f} ms, "
            f"{summary['failed']} failed"
            + (", CLIENT SATURATED" if summary["client_saturated"] else "")
            + (f", stopped early: {summary['stop_reason']}" if summary["stop_reason"] else ""),
            file=sys.stderr,
        )
        say_scrapes(summary, f"level {value:g}: ")
        if pages is not None:
            pages.add(value, result)
        if args.plot:
            where = level_directory(args.plot, value)
            for path in write_charts(summary, result.records, result.loads, where):
                print(f"qwen-sse bench: wrote {path}", file=sys.stderr)

    kind, levels = sweep
    _announce(args, config, target, sweep=sweep)
    document = run_sweep(config, kind, levels, level, on_level=show, stopped=lambda: stop.reason)
    print(format_sweep(document))
    status = 0 if any(run["completed"] for run in document["runs"]) else 1
    if args.json and _write(args.json, lambda: write_json(args.json, document)):
        status = 1

    def chart() -> None:
        print(f"qwen-sse bench: wrote {write_sweep_chart(document, args.plot)}", file=sys.stderr)

    if args.plot and _write(args.plot, chart):
        status = 1
    if pages is not None and _write(pages.path, lambda: pages.write(document)):
        status = 1
    return status


def _announce(
    args: argparse.Namespace,
    config: BenchConfig,
    target: Target,
    *,
    sweep: tuple[SweepKind, list[float]] | None = None,
) -> None:
    """One line before the load starts: where it goes, and how to stop it."""
    if args.quiet:
        return
    planned = config.planned_requests()
    what = f"{planned} requests" if planned is not None else f"for {config.duration_s:g} s"
    if sweep is not None:
        kind, levels = sweep
        named = "rates" if kind == "rates" else "concurrencies"
        what = f"{what} at each of the {named} {', '.join(f'{v:g}' for v in sorted(levels))}"
    print(
        f"qwen-sse bench: sending {what} to {shown_url(target.base_url)}; "
        "Ctrl-C stops and reports what finished",
        file=sys.stderr,
        flush=True,
    )


def _warn(summary: dict[str, Any]) -> None:
    for line in saturation_banner(summary):
        print(line, file=sys.stderr)


def _check_repeat(args: argparse.Namespace, sweep: bool) -> None:
    if args.repeat < 1:
        raise ConfigurationError(f"--repeat must be at least 1, got {args.repeat}")
    if args.repeat == 1:
        return
    if sweep:
        raise ConfigurationError(
            "--repeat repeats one load; a sweep with repeats is not supported: "
            "repeat each level as its own run"
        )
    if args.jsonl or args.csv or args.plot or args.html or args.metrics_url:
        raise ConfigurationError(
            "--jsonl, --csv, --plot, --html and --metrics-url record one run; "
            "leave them out of --repeat"
        )


def _repeat(
    args: argparse.Namespace,
    config: BenchConfig,
    target: Target,
    *,
    stop: Stop,
    interrupts: _Interrupts,
) -> int:
    def once(run_config: BenchConfig) -> BenchResult:
        live = None if args.quiet else _live(run_config)
        with interrupts.running():
            return run_benchmark(run_config, target, live=live, stop=stop)

    def show(number: int, result: BenchResult) -> None:
        summary = result.summary
        print(
            f"qwen-sse bench: run {number} of {args.repeat}: "
            f"{summary['request_throughput']:.2f} req/s, "
            f"TTFT p50 {summary['median_ttft_ms'] or 0:.1f} ms, {summary['failed']} failed"
            + (", CLIENT SATURATED" if summary["client_saturated"] else ""),
            file=sys.stderr,
        )

    _announce(args, config, target)
    repeats = run_repeat(
        config,
        args.repeat,
        once,
        on_run=show,
        stopped=lambda result: result.summary["stop_reason"] is not None,
    )
    whole = repeats.whole
    if len(whole) >= 2:
        document = combine(whole)
        print(format_repeat(document))
        for line in repeat_banner(document):
            print(line, file=sys.stderr)
    else:
        # Fewer than two runs give no interval: the one run there is, as a plain run.
        only = whole[0] if whole else repeats.cut
        assert only is not None  # two runs at least, so one was whole or cut short
        document = only
        print(format_summary(document))
        _warn(document)
    status = 0 if any(summary["completed"] for summary in whole) else 1
    if repeats.cut is not None:
        reason = repeats.cut["stop_reason"]
        left_out = f"run {len(whole) + 1} of {args.repeat} stopped ({reason})"
        print_error("qwen-sse bench", f"{left_out}: " + ("left out" if whole else "reported alone"))
        if interrupts.signal is None:
            status = 1
    if args.json and _write(args.json, lambda: write_json(args.json, document)):
        status = 1
    return status


def _live(config: BenchConfig) -> LiveProgress:
    return LiveProgress(sys.stderr, planned=planned_requests(config), duration_s=config.duration_s)


def _write_files(args: argparse.Namespace, result: BenchResult) -> bool:
    """Write ``--json``, ``--csv`` and ``--plot`` (``--jsonl`` was written as the run went);
    True when one of them could not be written (each failure said on one line)."""
    failed = False
    if args.json:
        failed |= _write(args.json, lambda: write_json(args.json, result.summary))
    if args.csv:
        failed |= _write(args.csv, lambda: write_csv(args.csv, result.records))
    if args.plot:

        def charts() -> None:
            for path in write_charts(result.summary, result.records, result.loads, args.plot):
                print(f"qwen-sse bench: wrote {path}", file=sys.stderr)

        failed |= _write(args.plot, charts)
    if args.html:
        failed |= _write(args.html, lambda: write_run_page(args.html, result))
    return failed


def _write(path: str, write: Callable[[], None]) -> bool:
    """Run ``write``; on failure say so in one line and return True."""
    try:
        write()
    except OSError as error:
        print(f"qwen-sse bench: cannot write {path}: {_os_error(error)}", file=sys.stderr)
        return True
    except ConfigurationError as error:
        print_error("qwen-sse bench", error)
        return True
    return False


def _os_error(error: OSError) -> str:
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse output paths that could not be written, before anything is sent: each file's
    directory must exist and be writable, ``--plot``'s directory must be creatable."""
    options = (
        ("--json", args.json),
        ("--jsonl", args.jsonl),
        ("--csv", args.csv),
        ("--html", args.html),
    )
    files = [(option, path) for option, path in options if path]
    seen: dict[Path, str] = {}
    for option, path in files:
        target = Path(path)
        resolved = target.resolve()
        if resolved in seen:
            raise ConfigurationError(f"{seen[resolved]} and {option} name the same file {path}")
        seen[resolved] = option
        if target.is_dir():
            raise ConfigurationError(f"{option} {path}: is a directory, not a file")
        parent = target.parent
        if not parent.exists():
            raise ConfigurationError(f"{option} {path}: the directory {parent} does not exist")
        if not parent.is_dir():
            raise ConfigurationError(f"{option} {path}: {parent} is not a directory")
        writable = os.access(target, os.W_OK) if target.exists() else os.access(parent, os.W_OK)
        if not writable:
            raise ConfigurationError(f"{option} {path}: not writable")
    if args.plot:
        directory = Path(args.plot)
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigurationError(
                f"--plot {args.plot}: {existing} is not a directory, so it cannot hold charts"
            )
        if not os.access(existing, os.W_OK):
            raise ConfigurationError(f"--plot {args.plot}: {existing} is not writable")
        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigurationError("--plot needs matplotlib: pip install 'qwen-sse[plot]'")


class _Interrupts:
    """SIGINT and SIGTERM during a bench command. The first asks the run to stop (``stop``)
    and is remembered (``signal``, its name: the command then exits 130); a second exits at
    once, with status 130, killing the run's child processes."""

    def __init__(self, stop: Stop) -> None:
        self.stop = stop
        self.signal: str | None = None
        self._running = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        # Only the main thread receives signals (and may set their handlers): called
        # from another thread, the command has none of its own.
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Mark the time load is being sent (a signal then says what it does)."""
        self._running = True
        try:
            yield
        finally:
            self._running = False

    def _handle(self, number: int, frame: object) -> None:
        name = signal.Signals(number).name
        # os.write, not print: the handler may interrupt a print to the same stream.
        if self.signal is None:
            self.signal = name
            self.stop.set(f"interrupted by {name}")
            if self._running:
                _say(
                    f"{name}: stopping: no new requests; those in flight get up to "
                    f"{STOP_GRACE_S:g} s, then the report (again to quit at once)"
                )
            return
        _say(f"{name} again: quitting at once")
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(130)


def _say(text: str) -> None:
    """One line on stderr from a signal handler, on a line of its own."""
    clear = "\r\x1b[2K" if sys.stderr.isatty() else ""
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), f"{clear}qwen-sse bench: {text}\n".encode())


@contextlib.contextmanager
def _endpoint(args: argparse.Namespace, workload: Workload) -> Iterator[Target]:
    """The target of the run; with ``--mock``, an emulator in a child process that answers
    ``workload``'s requests."""
    timeouts = timeouts_from(args)
    if args.mock:
        emulator = EmulatorConfig(
            ttft_s=args.mock_ttft_ms / 1000,
            itl_s=args.mock_itl_ms / 1000,
            jitter_s=args.mock_jitter_ms / 1000,
            seed=args.seed,
            answer_tokens=mock_answer_tokens(workload),
        )
        with MockServer(emulator, protocol=args.protocol) as server:
            yield Target(
                base_url=server.base_url,
                model=args.model,
                protocol=args.protocol,
                api_key=MOCK_API_KEY,
                timeouts=timeouts,
                # The emulator runs on this machine: no proxy of the environment between.
                proxy=args.proxy or "",
            )
        return
    base_url = resolve_base_url(args.base_url, args.region, root=protocols.get(args.protocol).root)
    check_transport_security(base_url, allow_insecure_http=args.allow_insecure_http)
    proxy = resolve_proxy(base_url, args.proxy)
    check_proxy_security(base_url, proxy, allow_insecure_http=args.allow_insecure_http)
    # Fail now, not in every worker. The key itself stays in the environment: the workers
    # get the name of its variable and read it there.
    resolve_api_key(None, env_vars=api_key_env_vars(args))
    yield Target(
        base_url=base_url,
        model=args.model,
        protocol=args.protocol,
        api_key_env=args.api_key_env,
        timeouts=timeouts,
        allow_insecure_http=args.allow_insecure_http,
        proxy=args.proxy,
    )


# Options that count something of which a run needs at least one (or, for --warmup, none);
# the token sizes are checked where they are read (cli.workloads).
_AT_LEAST = (
    ("--concurrency", "concurrency", 1),
    ("--max-concurrency", "max_concurrency", 1),
    ("--requests", "requests", 1),
    ("--workers", "workers", 1),
    ("--warmup", "warmup", 0),
)


def _check_counts(args: argparse.Namespace) -> None:
    for option, name, minimum in _AT_LEAST:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ConfigurationError(f"{option} must be at least {minimum}, got {value}")
    if args.duration is not None and not 0 < args.duration < math.inf:
        raise ConfigurationError(
            f"--duration must be a positive number of seconds, got {args.duration:g}"
        )
    if not 0 <= args.ramp_up < math.inf:
        raise ConfigurationError(f"--ramp-up must be a number of seconds, got {args.ramp_up:g}")


def _config(args: argparse.Namespace) -> tuple[BenchConfig, tuple[SweepKind, list[float]] | None]:
    _check_counts(args)
    sweep: tuple[SweepKind, list[float]] | None = None
    shape: ClosedLoop | OpenLoop
    if args.sweep_rates:
        rates = _numbers(args.sweep_rates, "--sweep-rates")
        if min(rates) <= 0:
            raise ConfigurationError(f"--sweep-rates must all be positive, got {args.sweep_rates}")
        sweep = ("rates", rates)
        shape = _open(args, min(rates))
    elif args.sweep_concurrency:
        levels = _numbers(args.sweep_concurrency, "--sweep-concurrency")
        if min(levels) < 1 or not all(float(level).is_integer() for level in levels):
            raise ConfigurationError(
                "--sweep-concurrency wants whole numbers of at least 1, "
                f"got {args.sweep_concurrency}"
            )
        sweep = ("concurrency", levels)
        shape = ClosedLoop(concurrency=int(min(levels)), ramp_up_s=args.ramp_up)
    elif args.rate is not None:
        shape = _open(args, args.rate)
    else:
        if args.max_concurrency is not None:
            raise ConfigurationError("--max-concurrency caps an open loop: give --rate too")
        concurrency = 1 if args.concurrency is None else args.concurrency
        shape = ClosedLoop(concurrency=concurrency, ramp_up_s=args.ramp_up)
    requests = args.requests
    if requests is None and args.duration is None:
        requests = 100
    config = BenchConfig(
        shape=shape,
        workload=workload_from(args, units=None if requests is None else requests + args.warmup),
        requests=requests,
        duration_s=args.duration,
        warmup=args.warmup,
        workers=args.workers,
        seed=args.seed,
        params=_params(args),
        percentiles=_numbers(args.percentiles, "--percentiles"),
        slo=_slo(args.goodput),
        thresholds=Thresholds(
            max_loop_lag_ms=args.max_loop_lag_ms,
            max_cpu_fraction=args.max_cpu_percent / 100,
            max_schedule_lag_ms=args.max_schedule_lag_ms,
            max_cpu_wait_fraction=args.max_cpu_wait_percent / 100,
        ),
    )
    return config, sweep


def _open(args: argparse.Namespace, rate: float) -> OpenLoop:
    return OpenLoop(
        rate=rate,
        arrivals=args.arrivals,
        burstiness=args.burstiness,
        max_concurrency=args.max_concurrency,
    )


def _numbers(text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigurationError(
            f"{option} wants numbers separated by commas, got {text!r}"
        ) from None
    if not values or any(math.isnan(value) for value in values):
        raise ConfigurationError(f"{option} wants numbers separated by commas, got {text!r}")
    return values


def _slo(items: list[str] | None) -> Slo | None:
    if not items:
        return None
    limits: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in _GOODPUT_KEYS:
            raise ConfigurationError(
                f"--goodput wants KEY:MS with KEY one of {', '.join(_GOODPUT_KEYS)}, got {item!r}"
            )
        try:
            limits[key] = float(value)
        except ValueError:
            raise ConfigurationError(f"--goodput {item!r}: {value!r} is not a number") from None
        if limits[key] < 0:
            raise ConfigurationError(f"--goodput {item!r}: an SLO cannot be negative")
    return Slo(ttft_ms=limits.get("ttft"), tpot_ms=limits.get("tpot"), e2el_ms=limits.get("e2el"))


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    # Every request's messages and max_tokens come from the workload.
    given = {"messages": "the workload", "max_tokens": "--output-tokens, or the prompts file"}
    if args.thinking:
        params["enable_thinking"] = True
        given["enable_thinking"] = "--thinking"
    if args.search:
        params["enable_search"] = True
        given["enable_search"] = "--search"
    params.update(parse_params(args.param, fields_set_by_command(args.protocol, given)))
    return params
