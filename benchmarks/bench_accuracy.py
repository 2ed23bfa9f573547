"""How close ``qwen-sse bench`` comes to a server's configured delays, at high concurrency.

What it measures
----------------
For each concurrency level (``--levels``), a closed-loop run of ``qwen-sse bench``'s load
generator (:func:`qwen_sse.bench.benchmark.run`, one worker) against the emulator in a
child process (:class:`qwen_sse.bench.mock.MockServer`) set to a fixed time to first
token and inter-token gap (``--ttft-ms``, ``--itl-ms``, no jitter), answers of
``--tokens`` tokens. One warm-up request per slot opens the connections; then
``--requests`` measured requests (default: two per slot, at least 32). Three figures per
level:

* **configured**: the emulator's delays.
* **served**: what the emulator really did, from its record of when each request arrived
  and when it wrote each piece (medians under the load generator's definitions,
  :func:`qwen_sse.bench.mock.served_medians_s`). It never writes a token before its time,
  so the served TTFT is at or above the configured one; a busy server's late token does
  not delay the next (each is due on its stream's schedule), so the served ITL stays near
  the configured one while the server keeps up. The gap is the server's, not a measuring
  error.
* **measured**: the load generator's median TTFT and ITL, with their error against both,
  and its verdict on itself (``client limited``: the reasons it gives).

The tests hold the load generator to the served figures (within 5%, or it must say that
it limited them: tests/test_bench_benchmark.py); this script shows, as information, how
far the whole (server and client on one machine) drifts from the configured delays as the
concurrency grows. The table goes to stderr, the JSON document to stdout (or to ``--json
FILE``). Figures vary with the machine and its load; they are never a pass/fail.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import benchenv

from qwen_sse.bench.benchmark import BenchConfig, run
from qwen_sse.bench.mock import MOCK_API_KEY, MockServer, served_medians_s
from qwen_sse.bench.runner import Target
from qwen_sse.bench.schedule import ClosedLoop
from qwen_sse.bench.workload import SyntheticWorkload
from qwen_sse.emulator import EmulatorConfig


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--levels", default="1,64,256,512,1024", help="concurrency levels, comma-separated"
    )
    parser.add_argument(
        "--requests", type=int, help="measured requests per level (default: 2 per slot, >= 32)"
    )
    parser.add_argument("--ttft-ms", type=float, default=400.0, help="configured TTFT")
    parser.add_argument("--itl-ms", type=float, default=40.0, help="configured ITL")
    parser.add_argument("--tokens", type=int, default=10, help="tokens per answer")
    benchenv.add_report_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.requests, args.ttft_ms, args.itl_ms, args.tokens = "1,8", 8, 50, 10, 4
    return args


def error_pct(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / reference * 100


def level(concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop run at ``concurrency``, with its three kinds of figures."""
    requests = args.requests or max(32, 2 * concurrency)
    config = BenchConfig(
        shape=ClosedLoop(concurrency=concurrency, ramp_up_s=0.5 if concurrency > 1 else 0),
        workload=SyntheticWorkload(input_tokens=32, output_tokens=args.tokens),
        requests=requests,
        warmup=concurrency,
    )
    emulator = EmulatorConfig(ttft_s=args.ttft_ms / 1000, itl_s=args.itl_ms / 1000, jitter_s=0)
    with MockServer(emulator, timings=True) as server:
        target = Target(base_url=server.base_url, model="qwen-plus", api_key=MOCK_API_KEY)
        result = run(config, target)
        served = {timing.request_id: timing for timing in server.timings()}
    summary = result.summary
    measured = [served[r.request_id] for r in result.records if r.request_id in served]
    served_ttft_s, served_itl_s = served_medians_s(measured)
    served_ttft_ms = None if served_ttft_s is None else served_ttft_s * 1000
    served_itl_ms = None if served_itl_s is None else served_itl_s * 1000
    ttft_ms, itl_ms = summary["median_ttft_ms"], summary["median_itl_ms"]
    return {
        "concurrency": concurrency,
        "requests": requests,
        "completed": summary["completed"],
        "configured": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms},
        "served": {"median_ttft_ms": served_ttft_ms, "median_itl_ms": served_itl_ms},
        "measured": {"median_ttft_ms": ttft_ms, "median_itl_ms": itl_ms},
        "error_vs_configured_pct": {
            "ttft": error_pct(ttft_ms, args.ttft_ms),
            "itl": error_pct(itl_ms, args.itl_ms),
        },
        "error_vs_served_pct": {
            "ttft": error_pct(ttft_ms, served_ttft_ms),
            "itl": error_pct(itl_ms, served_itl_ms),
        },
        "client_limited": summary["client_saturated"],
        "client_reasons": summary["client_saturation_reasons"],
        "client": {
            "loop_lag_p90_ms": summary["client"]["loop_lag_ms"]["p90"],
            "receive_lag_p90_ms": summary["client"]["receive_lag_ms"]["p90"],
            "cpu_fraction_max": summary["client"]["cpu_fraction_max"],
            "cpu_wait_fraction_max": summary["client"]["cpu_wait_fraction_max"],
        },
    }


def show(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    levels = [int(part) for part in args.levels.split(",")]
    log(
        f"configured TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms, {args.tokens} tokens; "
        "medians in ms; errors in % of the configured / served figure"
    )
    log(
        f"{'conc':>5}{'reqs':>6}{'served TTFT':>12}{'ITL':>7}{'measured TTFT':>14}{'ITL':>7}"
        f"{'err cfg':>14}{'err served':>14}  client limited"
    )
    rows = []
    for concurrency in levels:
        row = level(concurrency, args)
        rows.append(row)
        served, measured = row["served"], row["measured"]
        configured_err, served_err = row["error_vs_configured_pct"], row["error_vs_served_pct"]
        log(
            f"{concurrency:>5}{row['completed']:>6}"
            f"{show(served['median_ttft_ms']):>12}{show(served['median_itl_ms']):>7}"
            f"{show(measured['median_ttft_ms']):>14}{show(measured['median_itl_ms']):>7}"
            f"{show(configured_err['ttft']):>7}/{show(configured_err['itl']):>6}"
            f"{show(served_err['ttft']):>7}/{show(served_err['itl']):>6}"
            f"  {'YES: ' + '; '.join(row['client_reasons']) if row['client_limited'] else 'no'}"
        )
    document: dict[str, Any] = {
        "quick": args.quick,
        "environment": benchenv.environment(["aiohttp", "msgspec"]),
        "levels": rows,
    }
    benchenv.emit(document, args.json or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
