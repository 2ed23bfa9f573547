"""``qwen-sse bench``: a load generator for streaming chat endpoints that says when to trust it.

Edge layer: a client of the public API (:class:`~qwen_sse.client.QwenClient`), the core
(tokens, chat results) and the emulator's public API (``--mock``); nothing below imports
it. One module owns each part:

* :mod:`~qwen_sse.bench.schedule`: load shapes and arrival schedules;
* :mod:`~qwen_sse.bench.workload`: the prompts (synthetic, or from a file) and conversations;
* :mod:`~qwen_sse.bench.sharegpt`: ShareGPT datasets as workloads;
* :mod:`~qwen_sse.bench.tokenizer`: token counts, Qwen's or a local ``tokenizer.json``'s;
* :mod:`~qwen_sse.bench.metrics`: per-request records and vLLM's figures;
* :mod:`~qwen_sse.bench.monitor`: the client's own loop and receive lag and CPU, and the verdict;
* :mod:`~qwen_sse.bench.runner`: one shard of a run in one event loop;
* :mod:`~qwen_sse.bench.workers`: shards in parallel processes;
* :mod:`~qwen_sse.bench.benchmark`: one run from configuration to summary;
* :mod:`~qwen_sse.bench.sweep`: rising levels until saturation;
* :mod:`~qwen_sse.bench.repeat`: the same run N times, each figure's confidence interval;
* :mod:`~qwen_sse.bench.compare`: two results side by side, which differences are significant;
* :mod:`~qwen_sse.bench.stats`: the intervals and tests (Student t, Welch, Mann-Whitney);
* :mod:`~qwen_sse.bench.mock`: the emulator in a child process;
* :mod:`~qwen_sse.bench.child`: a helper process with a pipe to it (the mock's, the scraper's);
* :mod:`~qwen_sse.bench.stop`: ending a run early, and signals left to the parent process;
* :mod:`~qwen_sse.bench.live`, :mod:`~qwen_sse.bench.report`, :mod:`~qwen_sse.bench.plot`:
  the progress line, the table and files, the charts;
* :mod:`~qwen_sse.bench.html`: the self-contained HTML report;
* :mod:`~qwen_sse.bench.prometheus`, :mod:`~qwen_sse.bench.server_metrics`,
  :mod:`~qwen_sse.bench.scrape`: the Prometheus text format, the server's own series of a
  run, and the process that scrapes them;
* :mod:`~qwen_sse.bench.schema`: the documented shapes of the output files.
"""

from __future__ import annotations

from qwen_sse.bench.benchmark import BenchConfig, BenchResult, plan_shards, run, run_async
from qwen_sse.bench.metrics import RequestRecord, Slo, summarize
from qwen_sse.bench.monitor import Thresholds
from qwen_sse.bench.runner import Target
from qwen_sse.bench.schedule import ClosedLoop, OpenLoop, arrival_times
from qwen_sse.bench.sharegpt import read_sharegpt
from qwen_sse.bench.workload import FileWorkload, SyntheticWorkload, read_prompts

__all__ = [
    "BenchConfig",
    "BenchResult",
    "ClosedLoop",
    "FileWorkload",
    "OpenLoop",
    "RequestRecord",
    "Slo",
    "SyntheticWorkload",
    "Target",
    "Thresholds",
    "arrival_times",
    "plan_shards",
    "read_prompts",
    "read_sharegpt",
    "run",
    "run_async",
    "summarize",
]
