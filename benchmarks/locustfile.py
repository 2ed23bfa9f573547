"""A locustfile for Qwen (DashScope) and OpenAI-compatible endpoints: ``qwen_sse.locust``.

Every user streams one chat completion after another; Locust records TTFT, ITL, TPOT,
E2E and output tokens as ``LLM`` request events (see :mod:`qwen_sse.locust`).

Against a local emulator (``qwen-sse serve --any-key``), one master and two workers::

    export DASHSCOPE_API_KEY=sk-test
    locust -f benchmarks/locustfile.py --master --headless --expect-workers 2 \\
        -u 20 -r 10 -t 60s --host http://127.0.0.1:8000/compatible-mode/v1 \\
        --qwen-input-tokens 256 --qwen-output-tokens 64 --csv run
    locust -f benchmarks/locustfile.py --worker --master-host 127.0.0.1   # in two shells

The master prints the statistics and writes ``run_stats.csv``; on other hosts, give the
workers ``--master-host`` the master's address.
"""

from __future__ import annotations

from locust import constant

from qwen_sse.locust import QwenUser


class ChatUser(QwenUser):
    """Streams answers back to back (Locust's users count is the concurrency)."""

    wait_time = constant(0)
