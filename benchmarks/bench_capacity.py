"""How many concurrent streams the emulator serves on one core, and ``qwen-sse bench``
measures truthfully on another.

What it measures
----------------
For each concurrency level (``--levels``, by default 256 to 4,096 streams) and each
generator (``--generators``), ``--repeat`` closed-loop runs against the emulator in a
child process (:class:`qwen_sse.bench.mock.MockServer`, recording what it really did; on
uvloop when it is installed, as ``qwen-sse serve`` runs it, which records each request's
arrival to the millisecond: ``--emulator-loop asyncio`` for a clock to the microsecond) set
to a fixed time to first token and inter-token delay (``--ttft-ms`` 150, ``--itl-ms`` 20,
no jitter) and answers of ``--tokens`` tokens (96, compatible mode). The emulator is
pinned to ``--server-cpu``, the generator to ``--client-cpu``. One warm-up request per
stream opens the connections; then ``--requests`` measured ones (by default two per
stream). The streams start evenly over one request's duration (TTFT plus the tokens), so
the load is steady rather than in waves.

The generators:

* ``qwen-sse``: ``qwen-sse bench``'s load generator (:func:`qwen_sse.bench.benchmark.run`,
  ``--workers`` processes), with its own verdict on itself;
* ``floor``: a minimal HTTP/1.1 client on the same core (raw asyncio protocol, uvloop
  when installed; :class:`FloorClient`) that only finds where each SSE event ends and
  notes when: the cheapest reader there is, to show what the emulator serves when the
  client is not the limit. It measures TTFT (request written to the read that completes
  the first text event) and ITL (between the reads that complete consecutive text
  events) under ``bench``'s definitions.

Per level and generator, the median over the repeats of:

* **emulator**: its CPU in % of its core, over its busiest 2 seconds (the steady load)
  and over the whole run (ramp-up and tail included), and in microseconds per token it
  wrote (all it did, requests included, over the tokens); its **served** TTFT and ITL
  (median and p99, from its record of when each request arrived and each piece was
  written: :func:`qwen_sse.bench.mock.served_pools_s`) and their error against the
  configured delays (its own accuracy; target: within 5% at 2,048 streams);
* **generator**: its measured TTFT and ITL (median and p99) and their error against the
  served figures, its CPU (% of a core over its busiest 2 seconds; the busiest worker's
  for ``qwen-sse``, as its verdict measures it) and, for ``qwen-sse``, its verdict
  (``client limited``: in how many repeats, and why).

``limited by`` says what limited the level: ``server`` when the emulator used 90% of its
core or more (busiest 2 seconds) or missed a configured median by more than 5%; ``client`` when
``qwen-sse`` said it limited its figures, or the floor client used 90% of its core. The
load average before each run is recorded: other work on the machine shows there first.

The table goes to stderr as Markdown, the JSON document to stdout (or to ``--json
FILE``). Figures vary with the machine and its load; they are never a pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import benchenv
import msgspec
from bench_accuracy import error_pct, show

from qwen_sse.bench.benchmark import BenchConfig, run
from qwen_sse.bench.metrics import percentile
from qwen_sse.bench.mock import MOCK_API_KEY, MockServer, ServedTiming, served_pools_s
from qwen_sse.bench.runner import Target, raise_open_files_limit
from qwen_sse.bench.schedule import ClosedLoop
from qwen_sse.bench.workload import SyntheticWorkload
from qwen_sse.emulator import EmulatorConfig
from qwen_sse.emulator import loop as emulator_loop

GENERATORS = ("floor", "qwen-sse")
LIMIT_CPU = 0.90
LIMIT_ERROR_PCT = 5.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--levels", default="256,512,1024,2048,4096", help="concurrency levels, comma-separated"
    )
    parser.add_argument("--generators", default=",".join(GENERATORS), help="floor and/or qwen-sse")
    parser.add_argument(
        "--requests", type=int, help="measured requests per level (default: 2 per stream)"
    )
    parser.add_argument("--ttft-ms", type=float, default=150.0, help="configured TTFT")
    parser.add_argument("--itl-ms", type=float, default=20.0, help="configured ITL")
    parser.add_argument("--tokens", type=int, default=96, help="tokens per answer")
    parser.add_argument("--repeat", type=int, default=3, help="runs per level (medians)")
    parser.add_argument("--workers", type=int, default=1, help="qwen-sse generator processes")
    parser.add_argument(
        "--emulator-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the emulator's event loop (uvloop: as qwen-sse serve runs it, when installed)",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="the emulator's CPU")
    parser.add_argument("--client-cpu", type=int, default=1, help="the generator's CPU")
    benchenv.add_report_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.requests, args.repeat = "4,8", 8, 1
        args.ttft_ms, args.itl_ms, args.tokens = 30.0, 5.0, 6
    args.generators = [name.strip() for name in args.generators.split(",") if name.strip()]
    unknown = sorted(set(args.generators) - set(GENERATORS))
    if unknown or not args.generators:
        parser.error(f"--generators: {', '.join(unknown) or 'none'}; choose from {GENERATORS}")
    cpus = os.sched_getaffinity(0)
    for name in ("server_cpu", "client_cpu"):
        cpu = getattr(args, name)
        if cpu not in cpus:
            option = "--" + name.replace("_", "-")
            parser.error(f"{option} {cpu}: not a CPU this process may use ({sorted(cpus)})")
    return args


def process_cpu_s(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5), counted here from the state (3).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CpuSampler:
    """Samples the CPU time of process ``pid`` every ``every_s`` in a thread, for its
    busiest window of ``window_s`` (the steady load, without the ramp-up and the tail)."""

    def __init__(self, pid: int, *, every_s: float = 0.25, window_s: float = 2.0) -> None:
        self.pid = pid
        self.every_s = every_s
        self.window_s = window_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.samples.append((time.monotonic(), process_cpu_s(self.pid)))
            if self._stop.wait(self.every_s):
                self.samples.append((time.monotonic(), process_cpu_s(self.pid)))
                return

    def busiest_fraction(self) -> float | None:
        """The most CPU the process used over ``window_s``, in fractions of a core."""
        best = None
        for start, (at_s, cpu_s) in enumerate(self.samples):
            for later_s, later_cpu_s in self.samples[start + 1 :]:
                if later_s - at_s >= self.window_s:
                    fraction = (later_cpu_s - cpu_s) / (later_s - at_s)
                    best = fraction if best is None else max(best, fraction)
                    break
        return best


def figures_ms(values_s: list[float]) -> dict[str, float | None]:
    ordered = sorted(values_s)
    if not ordered:
        return {"median": None, "p99": None}
    return {"median": percentile(ordered, 50) * 1000, "p99": percentile(ordered, 99) * 1000}


def warm_up(base_url: str) -> None:
    """One small request, so that the emulator's start-up work (its tokenizer's first
    load) does not count as the run's."""
    body = json.dumps({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {MOCK_API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


# --- the floor client ------------------------------------------------------------------------

# An SSE event of the emulator's compatible stream ends with a blank line, and its HTTP
# chunk right after (JSON text holds no raw newline); the body ends with the last chunk.
_EVENT_END = b"\n\n\r\n"
_BODY_END = b"\r\n0\r\n\r\n"


class FloorRequest(msgspec.Struct):
    """One request of the floor client: when it was written, the server's request id,
    and when each SSE event was complete."""

    index: int
    sent_at_s: float
    request_id: str = ""
    status: int = 0
    events_at_s: list[float] = msgspec.field(default_factory=list)


class _FloorConnection(asyncio.Protocol):
    """One slot of the floor client: a keep-alive connection sending its requests one
    after the other."""

    def __init__(self, client: FloorClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.request: FloorRequest | None = None
        self.head = b""
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but write alike.
        self.transport = cast(asyncio.Transport, transport)
        self.send()

    def send(self) -> None:
        index = self.client.next_index()
        if index is None or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        self.head = b""
        self.tail = b""
        self.request = FloorRequest(index, time.monotonic())
        self.transport.write(self.client.payloads[index])

    def data_received(self, data: bytes) -> None:
        now_s = time.monotonic()
        request = self.request
        if request is None:
            return
        if not request.status:
            self.head += data
            head, found, body = self.head.partition(b"\r\n\r\n")
            if not found:
                return
            lines = head.split(b"\r\n")
            request.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"x-request-id":
                    request.request_id = value.strip().decode()
            data = body
        seen = self.tail + data
        # Events whose end is in this read (the tail keeps an end split across reads).
        ends = seen.count(_EVENT_END) - self.tail.count(_EVENT_END)
        request.events_at_s += [now_s] * ends
        self.tail = seen[-8:]
        if seen.endswith(_BODY_END) or (request.status != 200 and seen.endswith(b"\r\n\r\n")):
            self.request = None
            self.client.done(request)
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.request is not None:
            self.client.done(self.request)
            self.request = None
        self.client.closed()


class FloorClient:
    """A closed loop of ``concurrency`` connections sending ``payloads`` in order (the
    first ``warmup`` left out of the results), the slots started evenly over
    ``ramp_up_s``."""

    def __init__(
        self, payloads: list[bytes], concurrency: int, warmup: int, ramp_up_s: float
    ) -> None:
        self.payloads = payloads
        self.concurrency = concurrency
        self.warmup = warmup
        self.ramp_up_s = ramp_up_s
        self.results: list[FloorRequest] = []
        self._next = 0
        self._open = 0
        self._finished: asyncio.Future[None] | None = None

    def next_index(self) -> int | None:
        if self._next >= len(self.payloads):
            return None
        self._next += 1
        return self._next - 1

    def done(self, request: FloorRequest) -> None:
        if request.index >= self.warmup:
            self.results.append(request)

    def closed(self) -> None:
        self._open -= 1
        if not self._open and self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    async def run(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        self._open = self.concurrency
        started_s = loop.time()
        for slot in range(self.concurrency):
            wait_s = started_s + self.ramp_up_s * slot / self.concurrency - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            await loop.create_connection(lambda: _FloorConnection(self), host, port)
        await self._finished


def floor_payloads(workload: SyntheticWorkload, count: int, host: str, path: str) -> list[bytes]:
    """The HTTP/1.1 requests of the floor client: ``workload``'s prompts, streamed."""
    payloads = []
    for index in range(count):
        spec = workload.request(index)
        body = msgspec.json.encode(
            {
                "model": "qwen-plus",
                "messages": spec.messages,
                "max_tokens": spec.max_tokens,
                "stream": True,
            }
        )
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {MOCK_API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        payloads.append(head.encode() + body)
    return payloads


def run_floor(
    base_url: str, workload: SyntheticWorkload, concurrency: int, requests: int, ramp_up_s: float
) -> tuple[list[FloorRequest], float, float]:
    """The floor client's requests, its CPU time and wall time."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payloads = floor_payloads(
        workload, concurrency + requests, f"{host}:{port}", f"{parts.path}/chat/completions"
    )
    client = FloorClient(payloads, concurrency, concurrency, ramp_up_s)
    times_before = os.times()
    started_s = time.monotonic()
    emulator_loop.run(client.run(host, port))
    wall_s = time.monotonic() - started_s
    times_after = os.times()
    cpu_s = (times_after.user - times_before.user) + (times_after.system - times_before.system)
    return client.results, cpu_s, wall_s


def floor_figures(
    results: list[FloorRequest], served: dict[str, ServedTiming]
) -> tuple[list[float], list[float], int, int]:
    """TTFTs and ITLs the floor client measured on the requests the server answered
    whole (its role event, one event per text piece, the finish and ``[DONE]``), the
    count of those requests and of the others."""
    ttft: list[float] = []
    itl: list[float] = []
    whole = 0
    for request in results:
        timing = served.get(request.request_id)
        pieces = len(timing.text_written_at_s) if timing is not None else -1
        events = request.events_at_s
        if request.status != 200 or pieces < 1 or len(events) != pieces + 3:
            continue
        whole += 1
        texts = events[1 : 1 + pieces]
        ttft.append(texts[0] - request.sent_at_s)
        itl.extend(after - before for before, after in itertools.pairwise(texts))
    return ttft, itl, whole, len(results) - whole


# --- one run, one level ----------------------------------------------------------------------


def one_run(concurrency: int, generator: str, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop run of ``generator`` at ``concurrency``, the emulator pinned apart."""
    requests = args.requests or 2 * concurrency
    workload = SyntheticWorkload(input_tokens=32, output_tokens=args.tokens)
    # The streams start evenly over one request's duration: a steady load, not waves.
    ramp_up_s = (args.ttft_ms + args.tokens * args.itl_ms) / 1000
    emulator = EmulatorConfig(
        ttft_s=args.ttft_ms / 1000,
        itl_s=args.itl_ms / 1000,
        jitter_s=0,
        # One token more than asked: max_tokens ends every answer (as bench --mock does).
        answer_tokens=args.tokens + 1,
    )
    load_average = os.getloadavg()
    with MockServer(
        emulator, timings=True, uvloop_timings=args.emulator_loop == "uvloop"
    ) as server:
        os.sched_setaffinity(server.pid, {args.server_cpu})
        warm_up(server.base_url)
        server_cpu_before_s = process_cpu_s(server.pid)
        started_s = time.monotonic()
        sampler = CpuSampler(server.pid)
        client_sampler = CpuSampler(os.getpid())
        with sampler, client_sampler:
            if generator == "floor":
                floor, client_cpu_s, client_wall_s = run_floor(
                    server.base_url, workload, concurrency, requests, ramp_up_s
                )
            else:
                config = BenchConfig(
                    shape=ClosedLoop(concurrency=concurrency, ramp_up_s=ramp_up_s),
                    workload=workload,
                    requests=requests,
                    warmup=concurrency,
                    workers=args.workers,
                )
                target = Target(base_url=server.base_url, model="qwen-plus", api_key=MOCK_API_KEY)
                result = run(config, target)
        wall_s = time.monotonic() - started_s
        server_cpu_s = process_cpu_s(server.pid) - server_cpu_before_s
        server_rss_mib = process_rss_mib(server.pid)
        timings = server.timings()
        event_loop = server.event_loop
    served = {timing.request_id: timing for timing in timings}
    tokens_written = sum(len(timing.text_written_at_s) for timing in timings)
    if generator == "floor":
        ids = [request.request_id for request in floor]
        measured_ttft_s, measured_itl_s, completed, failed = floor_figures(floor, served)
        ttft_ms, itl_ms = figures_ms(measured_ttft_s), figures_ms(measured_itl_s)
        client: dict[str, Any] = {
            "cpu_fraction_max": client_sampler.busiest_fraction(),
            "cpu_fraction_mean": client_cpu_s / client_wall_s,
            "client_limited": None,
            "client_reasons": [],
        }
    else:
        summary = result.summary
        ids = [record.request_id for record in result.records]
        completed, failed = summary["completed"], summary["failed"]
        ttft_ms = {"median": summary["median_ttft_ms"], "p99": summary["p99_ttft_ms"]}
        itl_ms = {"median": summary["median_itl_ms"], "p99": summary["p99_itl_ms"]}
        client = {
            "cpu_fraction_max": summary["client"]["cpu_fraction_max"],
            "loop_lag_p90_ms": summary["client"]["loop_lag_ms"]["p90"],
            "receive_lag_p90_ms": summary["client"]["receive_lag_ms"]["p90"],
            "client_limited": summary["client_saturated"],
            "client_reasons": summary["client_saturation_reasons"],
        }
    served_ttft_s, served_itl_s = served_pools_s(served[i] for i in ids if i in served)
    served_ttft, served_itl = figures_ms(served_ttft_s), figures_ms(served_itl_s)
    return {
        "concurrency": concurrency,
        "generator": generator,
        "requests": requests,
        "completed": completed,
        "failed": failed,
        "load_average_before": list(load_average),
        "load_average_1min_before": load_average[0],
        "wall_s": wall_s,
        "emulator": {
            "event_loop": event_loop,
            "cpu_fraction": server_cpu_s / wall_s,
            "cpu_fraction_busiest_2s": sampler.busiest_fraction(),
            "cpu_us_per_token": server_cpu_s / tokens_written * 1e6 if tokens_written else None,
            "tokens_written": tokens_written,
            "rss_mib": server_rss_mib,
            "served_ttft_ms": served_ttft,
            "served_itl_ms": served_itl,
            "error_vs_configured_pct": {
                "ttft": error_pct(served_ttft["median"], args.ttft_ms),
                "itl": error_pct(served_itl["median"], args.itl_ms),
            },
        },
        "generator_figures": {
            "ttft_ms": ttft_ms,
            "itl_ms": itl_ms,
            "error_vs_served_pct": {
                "ttft": error_pct(ttft_ms["median"], served_ttft["median"]),
                "itl": error_pct(itl_ms["median"], served_itl["median"]),
                "p99_ttft": error_pct(ttft_ms["p99"], served_ttft["p99"]),
                "p99_itl": error_pct(itl_ms["p99"], served_itl["p99"]),
            },
            **client,
        },
    }


def median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for row in runs:
        value: Any = row
        for key in path:
            value = value[key]
        if value is not None:
            values.append(float(value))
    return statistics.median(values) if values else None


def level(concurrency: int, generator: str, args: argparse.Namespace) -> dict[str, Any]:
    """``--repeat`` runs of ``generator`` at ``concurrency``, and their medians."""
    runs = [one_run(concurrency, generator, args) for _ in range(args.repeat)]
    limited = sum(bool(row["generator_figures"]["client_limited"]) for row in runs)
    reasons = sorted({r for row in runs for r in row["generator_figures"]["client_reasons"]})
    m: dict[str, float | None] = {
        "completed": median_of(runs, "completed"),
        "failed": median_of(runs, "failed"),
        "cpu_fraction": median_of(runs, "emulator", "cpu_fraction"),
        "cpu_fraction_busiest": median_of(runs, "emulator", "cpu_fraction_busiest_2s"),
        "cpu_us_per_token": median_of(runs, "emulator", "cpu_us_per_token"),
        "rss_mib": median_of(runs, "emulator", "rss_mib"),
        "load_average_before": median_of(runs, "load_average_1min_before"),
        "client_cpu_fraction": median_of(runs, "generator_figures", "cpu_fraction_max"),
    }
    for metric in ("ttft", "itl"):
        for stat in ("median", "p99"):
            m[f"served_{metric}_ms_{stat}"] = median_of(
                runs, "emulator", f"served_{metric}_ms", stat
            )
            m[f"measured_{metric}_ms_{stat}"] = median_of(
                runs, "generator_figures", f"{metric}_ms", stat
            )
        m[f"served_vs_configured_{metric}_pct"] = median_of(
            runs, "emulator", "error_vs_configured_pct", metric
        )
    for key in ("ttft", "itl", "p99_ttft", "p99_itl"):
        m[f"measured_vs_served_{key}_pct"] = median_of(
            runs, "generator_figures", "error_vs_served_pct", key
        )
    server_limited = (m["cpu_fraction_busiest"] or 0) >= LIMIT_CPU or any(
        abs(m[f"served_vs_configured_{metric}_pct"] or 0) > LIMIT_ERROR_PCT
        for metric in ("ttft", "itl")
    )
    client_limited = limited > 0 or (
        generator == "floor" and (m["client_cpu_fraction"] or 0) >= LIMIT_CPU
    )
    limits = [name for name, hit in (("server", server_limited), ("client", client_limited)) if hit]
    return {
        "concurrency": concurrency,
        "generator": generator,
        "runs": runs,
        "medians": m,
        "client_limited_runs": limited if generator == "qwen-sse" else None,
        "client_reasons": reasons,
        "limited_by": limits,
    }


# --- the table -------------------------------------------------------------------------------

HEADER = (
    "| streams | generator | emulator CPU busiest / mean | µs/token | served TTFT p50 / p99 "
    "| served ITL p50 / p99 | served vs configured TTFT / ITL | measured TTFT p50 / p99 "
    "| measured ITL p50 / p99 | measured vs served TTFT / ITL | generator CPU "
    "| client limited | limited by | load |"
)


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def row_line(row: dict[str, Any], repeat: int) -> str:
    m = row["medians"]
    verdict = (
        "-" if row["client_limited_runs"] is None else f"{row['client_limited_runs']}/{repeat}"
    )
    return (
        f"| {row['concurrency']:,} | {row['generator']} "
        f"| {percent(m['cpu_fraction_busiest'])} / "
        f"{percent(m['cpu_fraction'])} | {show(m['cpu_us_per_token'])} "
        f"| {show(m['served_ttft_ms_median'])} / {show(m['served_ttft_ms_p99'])} "
        f"| {show(m['served_itl_ms_median'])} / {show(m['served_itl_ms_p99'])} "
        f"| {pct(m['served_vs_configured_ttft_pct'])} / {pct(m['served_vs_configured_itl_pct'])} "
        f"| {show(m['measured_ttft_ms_median'])} / {show(m['measured_ttft_ms_p99'])} "
        f"| {show(m['measured_itl_ms_median'])} / {show(m['measured_itl_ms_p99'])} "
        f"| {pct(m['measured_vs_served_ttft_pct'])} / {pct(m['measured_vs_served_itl_pct'])} "
        f"| {percent(m['client_cpu_fraction'])} | {verdict} "
        f"| {', '.join(row['limited_by']) or '-'} | {show(m['load_average_before'], 2)} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    open_files = raise_open_files_limit()
    # This process (the generator, and the workers it starts) on its CPU; the emulator's
    # child is moved to its own as soon as it starts.
    os.sched_setaffinity(0, {args.client_cpu})
    levels = [int(part) for part in args.levels.split(",")]
    log(
        f"configured TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms, {args.tokens} tokens; "
        f"emulator on CPU {args.server_cpu} ({args.emulator_loop} asked), "
        f"generator on CPU {args.client_cpu} "
        f"(qwen-sse: {args.workers} worker(s)); medians of {args.repeat} run(s); times in ms; "
        f"open files {open_files if open_files is not None else 'unlimited'}"
    )
    log("")
    log(HEADER)
    log("|" + "---|" * (HEADER.count(" | ") + 1))
    rows = []
    for concurrency in levels:
        for generator in args.generators:
            row = level(concurrency, generator, args)
            rows.append(row)
            log(row_line(row, args.repeat))
    loops = sorted({run["emulator"]["event_loop"] for row in rows for run in row["runs"]})
    log(f"the emulator ran on {' and '.join(loops)}'s event loop")
    for row in rows:
        if row["client_reasons"]:
            reasons = "; ".join(row["client_reasons"])
            log(f"{row['concurrency']:,} streams, {row['generator']} client limited: {reasons}")
    settings = (
        "ttft_ms",
        "itl_ms",
        "tokens",
        "repeat",
        "workers",
        "emulator_loop",
        "server_cpu",
        "client_cpu",
    )
    document: dict[str, Any] = {
        "quick": args.quick,
        "environment": benchenv.environment(["aiohttp", "msgspec", "uvloop"]),
        "settings": {key: getattr(args, key) for key in settings},
        "levels": rows,
    }
    benchenv.emit(document, args.json or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
