"""A locustfile for Qwen (DashScope) and OpenAI-compatible endpoints: ``qwen_sse.locust``.

Every user streams one chat completion (or, with ``--qwen-dataset multiturn``, one
conversation) after another, from ``qwen-sse bench``'s workloads; Locust records TTFT,
ITL, TPOT, E2E and output tokens (and per turn and per conversation) as ``LLM`` request
events (see :mod:`qwen_sse.locust`).

Against a local emulator (``qwen-sse serve --any-key``), one master and two workers::

    export DASHSCOPE_API_KEY=sk-test
    locust -f benchmarks/locustfile.py --master --headless --expect-workers 2 \\
        -u 20 -r 10 -t 60s --host http://127.0.0.1:8000/compatible-mode/v1 \\
        --qwen-input-tokens 256 --qwen-output-tokens 64 --csv run
    locust -f benchmarks/locustfile.py --worker --master-host 127.0.0.1   # in two shells

The master prints the statistics and writes ``run_stats.csv``; on other hosts, give the
workers ``--master-host`` the master's address. A fixed amount of work instead of a time::

    locust -f benchmarks/locustfile.py --master --headless --expect-workers 2 -u 8 -r 8 \
        --host http://127.0.0.1:8000/compatible-mode/v1 --qwen-dataset multiturn \
        --qwen-turns 3 --qwen-requests-per-user 5 --json-file run   # writes run.json
"""

from __future__ import annotations

from locust import constant

from qwen_sse.locust import QwenUser


class ChatUser(QwenUser):
    """Streams answers back to back (Locust's users count is the concurrency)."""

    wait_time = constant(0)
