"""Cost of qwen-sse's Qwen token counting: first load, counting rate, prompt counting.

What it measures
----------------
1. **First load.** A fresh interpreter (``sys.executable``) imports ``qwen_sse.tokens``
   and counts one character, which loads the shipped vocabulary (tiktoken import, gunzip,
   parsing 151,643 ranks, building the encoding). ``--loads`` processes; the median and
   minimum of the import and of the first count are reported, in seconds.
2. **Counting rate.** ``count_tokens`` on a ``--size``-character mixed Chinese/English
   text (sentences drawn with a fixed seed; about a third of the characters are Chinese),
   after the vocabulary is loaded: characters, UTF-8 bytes and tokens per second, from the
   median of ``--repeat`` runs. The same for a text of that many spaces, the input that
   tiktoken's regex engine cannot take whole and that is encoded by runs.
3. **Prompts.** ``count_message_tokens`` on the documented two-message prompt and on a
   ten-turn conversation (about 1,000 tokens): microseconds per call, median of
   ``--repeat`` runs of ``--calls`` calls.

The table goes to stderr, the JSON document to stdout (or to ``--json FILE``). Figures
vary with the machine; they are information, never a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import benchenv

from qwen_sse.tokens import count_message_tokens, count_tokens

SENTENCES = (
    "通义千问具有强大的能力。",
    "我是来自阿里云的超大规模语言模型，我叫通义千问。",
    "今天天气很好，我们去公园散步吧！",
    "流式输出可以显著降低首个词元的等待时间。",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming clients decode server-sent events, one data line at a time.\n",
    "Rate limits are counted per minute: 600 requests and 1,000,000 tokens for qwen-max.",
    "Token counts decide whether a prompt fits the model's context window.\n",
)

FIRST_LOAD = """
import json, time
start = time.perf_counter()
import qwen_sse.tokens as tokens
imported = time.perf_counter()
tokens.count_tokens("x")
counted = time.perf_counter()
print(json.dumps({"import_s": imported - start, "first_count_s": counted - imported}))
"""


def mixed_text(size_chars: int) -> str:
    rng = random.Random(7)
    parts: list[str] = []
    size = 0
    while size < size_chars:
        parts.append(rng.choice(SENTENCES))
        size += len(parts[-1])
    return "".join(parts)[:size_chars]


def conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{SENTENCES[turn % 4]} {SENTENCES[4]}"})
        messages.append({"role": "assistant", "content": " ".join(SENTENCES[turn % 8 :])})
    return messages


def median_s(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_load(processes: int) -> dict[str, float]:
    runs = []
    for _ in range(processes):
        done = subprocess.run(
            [sys.executable, "-c", FIRST_LOAD], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(done.stdout))
    imports = [run["import_s"] for run in runs]
    loads = [run["first_count_s"] for run in runs]
    return {
        "processes": processes,
        "import_median_s": statistics.median(imports),
        "first_count_median_s": statistics.median(loads),
        "first_count_min_s": min(loads),
    }


def counting_rate(text: str, repeat: int) -> dict[str, float]:
    tokens = count_tokens(text)  # also the warm-up
    seconds = median_s(lambda: count_tokens(text), repeat)
    return {
        "chars": len(text),
        "bytes": len(text.encode("utf-8")),
        "tokens": tokens,
        "median_s": seconds,
        "chars_per_s": len(text) / seconds,
        "bytes_per_s": len(text.encode("utf-8")) / seconds,
        "tokens_per_s": tokens / seconds,
    }


def prompt_cost(messages: list[dict[str, str]], calls: int, repeat: int) -> dict[str, float]:
    tokens = count_message_tokens(messages)

    def many() -> None:
        for _ in range(calls):
            count_message_tokens(messages)

    return {
        "messages": len(messages),
        "tokens": tokens,
        "us_per_call": median_s(many, repeat) / calls * 1e6,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--size", type=int, default=1_000_000, help="characters of text")
    parser.add_argument("--loads", type=int, default=5, help="fresh processes for first load")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement")
    parser.add_argument("--calls", type=int, default=1_000, help="prompt counts per run")
    benchenv.add_report_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.loads, args.repeat, args.calls = 10_000, 1, 2, 10
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    load = first_load(args.loads)
    log(
        f"first load ({load['processes']} fresh processes, median): "
        f"import {load['import_median_s'] * 1e3:.0f} ms, "
        f"first count {load['first_count_median_s'] * 1e3:.0f} ms "
        f"(min {load['first_count_min_s'] * 1e3:.0f} ms)"
    )
    rates = {
        "mixed": counting_rate(mixed_text(args.size), args.repeat),
        "spaces": counting_rate(" " * args.size, args.repeat),
    }
    log(f"{'text':<8}{'chars':>10}{'tokens':>10}{'ms':>9}{'Mchar/s':>9}{'MB/s':>7}{'Mtok/s':>8}")
    for name, rate in rates.items():
        log(
            f"{name:<8}{rate['chars']:>10}{rate['tokens']:>10}{rate['median_s'] * 1e3:>9.1f}"
            f"{rate['chars_per_s'] / 1e6:>9.2f}{rate['bytes_per_s'] / 1e6:>7.1f}"
            f"{rate['tokens_per_s'] / 1e6:>8.2f}"
        )
    prompts = {
        "documented": prompt_cost(
            [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "你是谁？"},
            ],
            args.calls,
            args.repeat,
        ),
        "ten_turns": prompt_cost(conversation(10), args.calls, args.repeat),
    }
    for name, cost in prompts.items():
        log(
            f"count_message_tokens {name}: {cost['messages']} messages, {cost['tokens']} "
            f"tokens, {cost['us_per_call']:.1f} us per call"
        )
    document: dict[str, Any] = {
        "python": sys.version.split()[0],
        "quick": args.quick,
        "first_load": load,
        "counting": rates,
        "prompts": prompts,
    }
    benchenv.emit(document, args.json or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
