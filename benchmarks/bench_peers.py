"""``qwen-sse bench`` side by side with another load generator (GuideLLM) on the same load.

What it runs
------------
For each concurrency level (``--levels``, default 1, 64, 256), each repeat (``--repeats``)
and each tool, in turn:

1. ``qwen-sse serve`` (the emulator) starts afresh in a child process pinned to one CPU,
   set to the ground truth: time to first token ``--ttft-ms`` (150), inter-token delay
   ``--itl-ms`` (20), no jitter, answers of ``--output-tokens`` pieces (128).
2. The tool runs in a child process pinned to another CPU (with everything it spawns): a
   closed loop of that many concurrent streams, ``--requests`` requests in all (default
   two per stream, at least 16), no warm-up, prompts of ``--input-tokens`` (256) billed
   tokens, ``max_tokens`` ``--output-tokens``:

   * ``qwen-sse``: ``qwen-sse bench --concurrency C --requests N --input-tokens 256
     --output-tokens 128 --max-attempts 1 --json FILE``;
   * ``guidellm``: GuideLLM 0.8.1's ``guidellm run`` with a scenario file: backend
     ``openai_http`` (the emulator's ``/compatible-mode/v1/chat/completions`` route),
     profile ``concurrent`` with C streams, constraint ``max_requests`` N, data
     ``synthetic_text`` with the same prompt size (GuideLLM counts the text without the
     chat template, so it is asked for the template's tokens fewer) and 128 output tokens
     (it sends ``max_completion_tokens``, ``ignore_eos`` and ``stop: null``, so every
     answer is 128 pieces long), output ``json``.

   GuideLLM is installed from PyPI, once, into a virtual environment of its own
   (``--venv-dir``, default ``~/.cache/qwen-sse/peers``; about 6 GB, since it depends on
   PyTorch). It counts tokens with a Hugging Face tokenizer: it gets a local one made from
   the bundled Qwen vocabulary (``hf_qwen_tokenizer.py``; ids identical to
   ``qwen_sse.tokens``), and runs with ``HF_HUB_OFFLINE=1``: nothing is downloaded at run
   time. When the environment cannot be built (no network, no space) one line says why
   and the qwen-sse rows still come.
3. The figures are each tool's own report, never recomputed: TTFT median and p99, ITL
   median and p99, output tokens per second, requests completed; with the error of the
   TTFT and ITL medians against the configured truth.
4. CPU: the tool's user + system CPU seconds from ``os.wait4`` on its process, which
   includes every child process it waited for (GuideLLM's worker processes): the whole
   run, start-up and report included, as a user pays it. ``CPU s/1k tok`` divides it by
   the output tokens the tool reports (thousands). ``overhead s`` is the tool's wall time
   minus the benchmark duration it reports: start-up, data preparation and the report.
   ``server CPU %`` is the emulator's CPU time during the tool's run over the duration
   the tool reports (its load window): near 100% the server, not the tool, would limit
   the figures. ``in flight`` is the mean number of requests the tool really kept open
   over that window (Little's law: completed requests x their mean latency / duration);
   below the level, the tool did not hold the load it was asked for. Each tool's own
   warnings about itself (qwen-sse's ``client_saturation_reasons``, GuideLLM's report
   ``warnings``) are printed under its run and kept in the JSON.

Definitions differ and the table keeps each tool's own: qwen-sse's ITL is every gap
between two streamed pieces (vLLM's ITL); GuideLLM's is, per request, (last token time -
first token time) / (output tokens - 1), aggregated over requests weighted by tokens (what
vLLM calls TPOT), so its p99 is a p99 of per-request means. Both count output tokens from
the server's usage report.

The Markdown table of medians over the repeats goes to stderr, the JSON document (every
run, the medians, the environment) to stdout or ``--json FILE``. ``--peers none`` runs
qwen-sse alone (the smoke test: nothing installed, nothing downloaded). Figures vary with
the machine and its load; they are never a pass/fail.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchenv
import hf_qwen_tokenizer

from qwen_sse.tokens import message_token_count

GUIDELLM_VERSION = "0.8.1"
PEERS = ("guidellm",)
# An obviously fake key: the emulator accepts it, and nothing real is ever sent.
API_KEY = "sk-test"
KEY_VARIABLE = "QWEN_SSE_PEERS_KEY"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--levels", default="1,64,256", help="concurrent streams, comma-separated")
    parser.add_argument(
        "--requests", type=int, help="requests per level (default: 2 per stream, at least 16)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tool per level")
    parser.add_argument("--input-tokens", type=int, default=256, help="prompt size, billed")
    parser.add_argument("--output-tokens", type=int, default=128, help="max_tokens")
    parser.add_argument("--ttft-ms", type=float, default=150.0, help="configured TTFT")
    parser.add_argument("--itl-ms", type=float, default=20.0, help="configured ITL")
    parser.add_argument(
        "--peers", default="guidellm", help=f"peer tools ({', '.join(PEERS)}), or 'none'"
    )
    parser.add_argument(
        "--venv-dir",
        type=Path,
        default=Path.home() / ".cache" / "qwen-sse" / "peers",
        help="where the peers' virtual environments and the local tokenizer are kept",
    )
    benchenv.add_report_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.repeats = "1,4", 1
        args.requests = args.requests or 4
        args.input_tokens, args.output_tokens, args.ttft_ms, args.itl_ms = 32, 8, 50.0, 10.0
    try:
        args.levels = [int(part) for part in args.levels.split(",")]
    except ValueError:
        parser.error(f"--levels: {args.levels!r} is not a comma-separated list of integers")
    if min(args.levels) < 1:
        parser.error("--levels: every level must be at least 1 stream")
    for name in ("requests", "repeats", "input_tokens", "output_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.ttft_ms < 0 or args.itl_ms < 0:
        parser.error("--ttft-ms and --itl-ms cannot be negative")
    peers = [] if args.peers == "none" else args.peers.split(",")
    unknown = [peer for peer in peers if peer not in PEERS]
    if unknown:
        parser.error(f"--peers: unknown peer {unknown[0]!r} (known: {', '.join(PEERS)}, none)")
    args.peers = peers
    if args.input_tokens <= template_tokens():
        parser.error(f"--input-tokens must exceed the chat template's {template_tokens()}")
    return args


@functools.cache
def template_tokens() -> int:
    """Billed tokens of a one-message prompt that are not the message's text."""
    return message_token_count([{"role": "user", "content": ""}]).tokens


# -- processes ---------------------------------------------------------------------------


@dataclass
class Cores:
    """Where the emulator and the tools run; None when the machine cannot separate them."""

    server: int | None
    tool: int | None


def choose_cores() -> Cores:
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(available) < 2:
        log(f"only {len(available) or 'an unknown number of'} CPU(s): nothing is pinned")
        return Cores(None, None)
    return Cores(available[0], available[1])


def pinned(core: int | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child (and all it spawns) to ``core``."""
    if core is None:
        return None
    return functools.partial(os.sched_setaffinity, 0, {core})


@dataclass
class Finished:
    returncode: int
    cpu_s: float
    wall_s: float
    timed_out: bool


def run_measured(
    argv: Sequence[str], *, core: int | None, env: dict[str, str], cwd: Path, timeout_s: float
) -> Finished:
    """Run ``argv`` pinned to ``core`` (output to ``cwd/tool.log``); its CPU time from
    ``os.wait4``, its own and that of every child it waited for."""
    started = time.monotonic()
    with (cwd / "tool.log").open("wb") as output:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            preexec_fn=pinned(core),  # noqa: PLW1509 - no threads in this process
            start_new_session=True,
        )
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > timeout_s and not timed_out:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Finished(
        returncode=process.returncode,
        cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=time.monotonic() - started,
        timed_out=timed_out,
    )


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # Fields 14 and 15 of stat(5) (utime, stime); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Emulator:
    """``qwen-sse serve`` in a child process pinned to one CPU, for one run."""

    def __init__(self, args: argparse.Namespace, core: int | None, directory: Path) -> None:
        self._log_path = directory / "serve.log"
        argv = [
            sys.executable,
            "-m",
            "qwen_sse",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ttft-ms",
            str(args.ttft_ms),
            "--itl-ms",
            str(args.itl_ms),
            "--jitter-ms",
            "0",
            "--answer-tokens",
            str(args.output_tokens),
            # A safety net: it stops by itself even if this script is killed.
            "--exit-after-s",
            str(int(args.run_timeout_s) + 60),
        ]
        with self._log_path.open("wb") as output:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=pinned(core),  # noqa: PLW1509 - no threads in this process
                start_new_session=True,
            )
        self.base_url = self._wait_for_url()
        self._warm_up()

    def _warm_up(self) -> None:
        # The emulator loads its vocabulary on the first request (~0.3 s): one request of
        # its own keeps that out of the first TTFT a tool measures.
        body = {"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]}
        request = urllib.request.Request(
            self.base_url + "/chat/completions",
            data=json.dumps({**body, "max_tokens": 1}).encode(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except OSError as error:
            self.stop()
            raise RuntimeError(f"qwen-sse serve did not answer a first request: {error}") from None

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self._log_path.read_text(errors="replace")
            found = re.search(r"emulator at (http://\S+)", text)
            if found:
                return found.group(1)
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = self._log_path.read_text(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"qwen-sse serve did not start: {' '.join(tail) or 'no output'}")

    def cpu_s(self) -> float | None:
        return process_cpu_s(self._process.pid)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


# -- the tools ---------------------------------------------------------------------------


@dataclass
class Figures:
    """One run's figures as the tool reported them."""

    completed: int
    failed: int
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    tpot_p50_ms: float | None
    output_tokens_per_s: float | None
    output_tokens: float
    prompt_tokens_p50: float | None
    duration_s: float
    mean_latency_s: float | None
    warnings: list[str]


def qwen_sse_command(
    args: argparse.Namespace, base_url: str, concurrency: int, requests: int, report: Path
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "qwen_sse",
        "bench",
        "--base-url",
        base_url,
        "--api-key-env",
        KEY_VARIABLE,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--input-tokens",
        str(args.input_tokens),
        "--output-tokens",
        str(args.output_tokens),
        "--max-attempts",
        "1",
        "--seed",
        "42",
        "--json",
        str(report),
        "--quiet",
    ]


def qwen_sse_figures(report: Path) -> Figures:
    summary = json.loads(report.read_text(encoding="utf-8"))
    completed = int(summary["completed"])
    return Figures(
        completed=completed,
        failed=int(summary["failed"]),
        ttft_p50_ms=summary["median_ttft_ms"],
        ttft_p99_ms=summary["p99_ttft_ms"],
        itl_p50_ms=summary["median_itl_ms"],
        itl_p99_ms=summary["p99_itl_ms"],
        tpot_p50_ms=summary["median_tpot_ms"],
        output_tokens_per_s=summary["output_throughput"],
        output_tokens=float(summary["total_output_tokens"]),
        prompt_tokens_p50=summary["total_input_tokens"] / completed if completed else None,
        duration_s=float(summary["duration"]),
        mean_latency_s=None if summary["mean_e2el_ms"] is None else summary["mean_e2el_ms"] / 1000,
        warnings=list(summary["client_saturation_reasons"]),
    )


def guidellm_scenario(
    args: argparse.Namespace,
    *,
    base_url: str,
    concurrency: int,
    requests: int,
    report: Path,
    tokenizer: Path,
) -> dict[str, Any]:
    origin, _, root = base_url.partition("/compatible-mode/")
    return {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": origin,
                "model": "qwen-plus",
                "api_key": API_KEY,
                # The emulator has no /health route; the chat route is DashScope's.
                "validate_backend": False,
                "api_routes": {"/v1/chat/completions": f"compatible-mode/{root}/chat/completions"},
            },
            "profile": {"kind": "concurrent", "streams": [concurrency]},
            "constraints": [{"kind": "max_requests", "count": requests}],
            "tokenizer": {"kind": "huggingface_auto", "model": str(tokenizer)},
            "data": [
                {
                    "kind": "synthetic_text",
                    "prompt_tokens": args.input_tokens - template_tokens(),
                    "output_tokens": args.output_tokens,
                }
            ],
            "seed": {"kind": "static", "value": 42},
            "outputs": [{"kind": "json", "path": str(report)}],
        }
    }


def guidellm_figures(report: Path) -> Figures:
    benchmark = json.loads(report.read_text(encoding="utf-8"))["benchmarks"][0]
    metrics = benchmark["metrics"]
    totals = metrics["request_totals"]

    def successful(name: str) -> dict[str, Any]:
        value: dict[str, Any] = metrics[name]["successful"]
        return value

    def median(name: str) -> float | None:
        return successful(name)["median"] if successful(name)["count"] else None

    def p99(name: str) -> float | None:
        return successful(name)["percentiles"]["p99"] if successful(name)["count"] else None

    return Figures(
        completed=int(totals["successful"]),
        failed=int(totals["errored"]) + int(totals["incomplete"]),
        ttft_p50_ms=median("time_to_first_token_ms"),
        ttft_p99_ms=p99("time_to_first_token_ms"),
        itl_p50_ms=median("inter_token_latency_ms"),
        itl_p99_ms=p99("inter_token_latency_ms"),
        # GuideLLM's ITL is vLLM's TPOT: (last token - first token) / (tokens - 1).
        tpot_p50_ms=median("inter_token_latency_ms"),
        output_tokens_per_s=successful("output_tokens_per_second")["mean"],
        output_tokens=float(successful("output_token_count")["total_sum"]),
        prompt_tokens_p50=median("prompt_token_count"),
        duration_s=float(benchmark["duration"]),
        mean_latency_s=successful("request_latency")["mean"],
        warnings=[warning["message"] for warning in benchmark.get("warnings") or ()],
    )


class Peer:
    """The GuideLLM peer: its virtual environment (built once) and the tokenizer it gets."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.venv = directory / f"{name}-{GUIDELLM_VERSION}"
        self.tokenizer = directory / "qwen-tokenizer"
        self.install_s: float | None = None

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "guidellm"

    def prepare(self) -> str | None:
        """Build the environment unless already built; the reason when it cannot be."""
        marker = self.venv / ".qwen-sse-installed"
        try:
            hf_qwen_tokenizer.ensure_tokenizer(self.tokenizer)
            if marker.exists() and self.executable.exists():
                return None
            log(
                f"{self.name}: installing guidellm=={GUIDELLM_VERSION} from PyPI into "
                f"{self.venv} (once; about 6 GB with PyTorch, minutes)"
            )
            started = time.monotonic()
            install_log = self.venv.parent / f"{self.name}-install.log"
            self.venv.parent.mkdir(parents=True, exist_ok=True)
            with install_log.open("wb") as output:
                steps = (
                    [sys.executable, "-m", "venv", str(self.venv)],
                    [
                        str(self.venv / "bin" / "python"),
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        f"guidellm=={GUIDELLM_VERSION}",
                    ],
                )
                for step in steps:
                    if subprocess.run(
                        step, check=False, stdout=output, stderr=subprocess.STDOUT
                    ).returncode:
                        lines = install_log.read_text(errors="replace").strip().splitlines()
                        last = lines[-1] if lines else "no output"
                        return f"{Path(step[0]).name} {step[2]} failed ({last}; see {install_log})"
            self.install_s = time.monotonic() - started
            marker.write_text(GUIDELLM_VERSION + "\n")
        except OSError as error:
            return f"cannot prepare {self.venv}: {error.strerror or error}"
        return None


@dataclass
class Run:
    tool: str
    level: int
    repeat: int
    requests: int
    returncode: int
    timed_out: bool
    cpu_s: float
    wall_s: float
    server_cpu_s: float | None
    load_average_after: float
    figures: Figures | None
    error: str | None

    def row(self, args: argparse.Namespace) -> dict[str, Any]:
        """The run's figures and the ones derived from them, by name."""
        figures = self.figures
        row: dict[str, Any] = {
            "tool": self.tool,
            "level": self.level,
            "repeat": self.repeat,
            "requests": self.requests,
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "error": self.error,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "server_cpu_s": self.server_cpu_s,
            "load_average_after": self.load_average_after,
        }
        if figures is None:
            return row
        row.update(vars(figures))
        row["ttft_error_pct"] = error_pct(figures.ttft_p50_ms, args.ttft_ms)
        row["itl_error_pct"] = error_pct(figures.itl_p50_ms, args.itl_ms)
        row["cpu_s_per_1k_output_tokens"] = (
            self.cpu_s / figures.output_tokens * 1000 if figures.output_tokens else None
        )
        row["overhead_s"] = self.wall_s - figures.duration_s
        # Little's law: the streams the tool really kept in flight over its load window.
        row["mean_in_flight"] = (
            figures.completed * figures.mean_latency_s / figures.duration_s
            if figures.mean_latency_s is not None and figures.duration_s > 0
            else None
        )
        row["server_cpu_pct"] = (
            self.server_cpu_s / figures.duration_s * 100
            if self.server_cpu_s is not None and figures.duration_s > 0
            else None
        )
        return row


def error_pct(value: float | None, truth: float) -> float | None:
    return None if value is None or truth == 0 else (value - truth) / truth * 100


def run_once(
    tool: str, level: int, repeat: int, *, args: argparse.Namespace, cores: Cores, peer: Peer | None
) -> Run:
    """One run of ``tool`` at ``level`` streams against a fresh emulator."""
    requests = args.requests or max(16, 2 * level)
    with tempfile.TemporaryDirectory(prefix=f"bench-peers-{tool}-") as scratch:
        directory = Path(scratch)
        report = directory / "report.json"
        env = {**os.environ, KEY_VARIABLE: API_KEY}
        emulator = Emulator(args, cores.server, directory)
        try:
            if tool == "qwen-sse":
                argv = qwen_sse_command(args, emulator.base_url, level, requests, report)
                read: Callable[[Path], Figures] = qwen_sse_figures
            else:
                assert peer is not None
                scenario = guidellm_scenario(
                    args,
                    base_url=emulator.base_url,
                    concurrency=level,
                    requests=requests,
                    report=report,
                    tokenizer=peer.tokenizer,
                )
                (directory / "scenario.json").write_text(json.dumps(scenario), encoding="utf-8")
                argv = [
                    str(peer.executable),
                    "run",
                    "--config",
                    str(directory / "scenario.json"),
                    "--disable-console-interactive",
                ]
                env = {key: value for key, value in env.items() if key != "PYTHONPATH"}
                env.update(OFFLINE)
                read = guidellm_figures
            server_before = emulator.cpu_s()
            finished = run_measured(
                argv, core=cores.tool, env=env, cwd=directory, timeout_s=args.run_timeout_s
            )
            server_after = emulator.cpu_s()
        finally:
            emulator.stop()
        server_cpu_s = (
            server_after - server_before
            if server_before is not None and server_after is not None
            else None
        )
        figures, error = None, None
        try:
            figures = read(report)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as problem:
            tail = (directory / "tool.log").read_text(errors="replace").strip().splitlines()
            error = f"no report ({type(problem).__name__}: {problem}); log ends: " + (
                tail[-1] if tail else "(empty)"
            )
    return Run(
        tool=tool,
        level=level,
        repeat=repeat,
        requests=requests,
        returncode=finished.returncode,
        timed_out=finished.timed_out,
        cpu_s=finished.cpu_s,
        wall_s=finished.wall_s,
        server_cpu_s=server_cpu_s,
        load_average_after=os.getloadavg()[0],
        figures=figures,
        error=error,
    )


# -- the report --------------------------------------------------------------------------

MEDIAN_FIELDS = (
    "completed",
    "failed",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "ttft_error_pct",
    "itl_p50_ms",
    "itl_p99_ms",
    "itl_error_pct",
    "tpot_p50_ms",
    "output_tokens_per_s",
    "output_tokens",
    "prompt_tokens_p50",
    "cpu_s",
    "cpu_s_per_1k_output_tokens",
    "wall_s",
    "overhead_s",
    "mean_in_flight",
    "server_cpu_pct",
)


def medians(rows: list[dict[str, Any]], tools: Sequence[str], levels: Sequence[int]) -> list[Any]:
    """Per level and tool, the median of each figure over the runs that reported it."""
    out = []
    for level in levels:
        for tool in tools:
            runs = [row for row in rows if row["tool"] == tool and row["level"] == level]
            if not runs:
                continue
            entry: dict[str, Any] = {"level": level, "tool": tool, "runs": len(runs)}
            for field in MEDIAN_FIELDS:
                values = [row[field] for row in runs if row.get(field) is not None]
                entry[field] = statistics.median(values) if values else None
            entry["requests"] = runs[0]["requests"]
            entry["warnings"] = sorted({text for row in runs for text in row.get("warnings", ())})
            out.append(entry)
    return out


def show(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(entries: list[dict[str, Any]]) -> str:
    header = (
        "| streams | tool | completed | in flight | TTFT p50 ms | TTFT p99 ms | TTFT err "
        "| ITL p50 ms | ITL p99 ms | ITL err | TPOT p50 ms | output tok/s | CPU s "
        "| CPU s/1k tok | overhead s | server CPU |"
    )
    lines = [header, "| " + " | ".join(["---"] * (header.count("|") - 1)) + " |"]
    for entry in entries:
        completed = entry["completed"]
        lines.append(
            "| "
            + " | ".join(
                [
                    str(entry["level"]),
                    entry["tool"],
                    f"{show(completed, 0)}/{entry['requests']:,}",
                    show(entry["mean_in_flight"]),
                    show(entry["ttft_p50_ms"]),
                    show(entry["ttft_p99_ms"]),
                    show(entry["ttft_error_pct"]) + "%",
                    show(entry["itl_p50_ms"], 2),
                    show(entry["itl_p99_ms"], 2),
                    show(entry["itl_error_pct"]) + "%",
                    show(entry["tpot_p50_ms"], 2),
                    show(entry["output_tokens_per_s"], 0),
                    show(entry["cpu_s"], 2),
                    show(entry["cpu_s_per_1k_output_tokens"], 3),
                    show(entry["overhead_s"]),
                    show(entry["server_cpu_pct"], 0) + "%",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    longest_s = (
        max(-(-(args.requests or max(16, 2 * level)) // level) for level in args.levels)
        * (args.ttft_ms + args.output_tokens * args.itl_ms)
        / 1000
    )
    # Start-up (GuideLLM: ~20 s) plus three times the load's own length.
    args.run_timeout_s = 300 + 3 * longest_s
    cores = choose_cores()
    tools = ["qwen-sse"]
    peers: dict[str, Peer] = {}
    peer_status: dict[str, Any] = {}
    for name in args.peers:
        peer = Peer(name, args.venv_dir.expanduser())
        reason = peer.prepare()
        if reason is None:
            tools.append(name)
            peers[name] = peer
            peer_status[name] = {"status": "ran", "venv": str(peer.venv)}
            if peer.install_s is not None:
                peer_status[name]["install_s"] = peer.install_s
        else:
            log(f"{name}: not run: {reason}")
            peer_status[name] = {"status": "not run", "reason": reason}
    log(
        f"truth: TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms; prompts {args.input_tokens} "
        f"tokens, max_tokens {args.output_tokens}; emulator on CPU {cores.server}, tools on "
        f"CPU {cores.tool}; {args.repeats} repeat(s)"
    )
    rows: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        for level in args.levels:
            for tool in tools:
                try:
                    run = run_once(
                        tool, level, repeat, args=args, cores=cores, peer=peers.get(tool)
                    )
                except RuntimeError as error:  # the emulator would not start
                    log(f"bench_peers: {error}")
                    return 1
                row = run.row(args)
                rows.append(row)
                log(
                    f"repeat {repeat} streams {level:>4} {tool:<9} "
                    + (
                        f"{row['completed']}/{run.requests} done, TTFT p50 "
                        f"{show(row['ttft_p50_ms'])} ms, ITL p50 {show(row['itl_p50_ms'], 2)} "
                        f"ms, CPU {run.cpu_s:.2f} s, wall {run.wall_s:.1f} s, "
                        f"load {run.load_average_after:.1f}"
                        + "".join(f"\n    the tool warns: {text}" for text in run.figures.warnings)
                        if run.figures
                        else f"failed (exit {run.returncode}): {run.error}"
                    )
                )
    entries = medians(rows, tools, args.levels)
    log("")
    log(markdown(entries))
    document: dict[str, Any] = {
        "quick": args.quick,
        "settings": {
            "levels": args.levels,
            "requests": args.requests,
            "repeats": args.repeats,
            "input_tokens": args.input_tokens,
            "output_tokens": args.output_tokens,
            "ttft_ms": args.ttft_ms,
            "itl_ms": args.itl_ms,
            "server_cpu": cores.server,
            "tool_cpu": cores.tool,
        },
        "peers": peer_status,
        "environment": benchenv.environment(["aiohttp", "msgspec", "uvloop"]),
        "runs": rows,
        "medians": entries,
    }
    benchenv.emit(document, args.json or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
