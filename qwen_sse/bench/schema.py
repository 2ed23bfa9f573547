"""The documented shapes of ``qwen-sse bench``'s output files, as JSON Schemas (draft 2020-12).

Edge layer (bench). Data only; imports nothing from the package. The tests validate real
outputs against these, so the documentation cannot drift from the files:

* :data:`SUMMARY_SCHEMA`: the JSON summary (``--json``), vLLM's keys plus the load, the
  workload, the verdict on the client and, with ``--metrics-url``, the server's own series.
* :data:`RECORD_SCHEMA`: one line of the per-request JSONL (``--jsonl``).
* :data:`SWEEP_SCHEMA`: the JSON of a sweep (``--sweep-*`` with ``--json``).
* :data:`REPEAT_SCHEMA`: the JSON of repeated runs (``--repeat N`` with ``--json``).
* :data:`COMPARISON_SCHEMA`: the JSON of ``bench compare`` (with ``--json``).
* :data:`CSV_COLUMNS`: the header of the per-request CSV (``--csv``); list fields are
  summarised there (``itl_count``, ``itl_mean_s``, ``itl_max_s``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "COMPARISON_SCHEMA",
    "COMPARISON_SCHEMA_ID",
    "CSV_COLUMNS",
    "RECORD_SCHEMA",
    "REPEAT_SCHEMA",
    "REPEAT_SCHEMA_ID",
    "SUMMARY_SCHEMA",
    "SUMMARY_SCHEMA_ID",
    "SWEEP_SCHEMA",
    "SWEEP_SCHEMA_ID",
]

SUMMARY_SCHEMA_ID = "urn:qwen-sse:bench-summary:1"
SWEEP_SCHEMA_ID = "urn:qwen-sse:bench-sweep:1"
REPEAT_SCHEMA_ID = "urn:qwen-sse:bench-repeat:1"
COMPARISON_SCHEMA_ID = "urn:qwen-sse:bench-comparison:1"

_NUMBER = {"type": "number"}
_COUNT = {"type": "integer", "minimum": 0}
_MS = {"type": ["number", "null"], "minimum": 0}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_SOURCES = {
    "type": "object",
    "propertyNames": {"enum": ["usage", "local"]},
    "additionalProperties": _COUNT,
}
_LAG = {
    "type": "object",
    "required": ["mean", "median", "p90", "p99", "max"],
    "additionalProperties": _MS,
}

_STAT_NAMES = ("ttft", "tpot", "itl", "e2el", "schedule_lag", "queue_wait")

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:qwen-sse:bench-record:1",
    "title": "One request of a qwen-sse bench run (a line of the --jsonl file)",
    "description": (
        "Seconds throughout. Instants (*_at_s) count from the start of the run, on one "
        "clock shared by all workers. scheduled_at_s + schedule_lag_s is when the client "
        "got round to the request; + queue_wait_s is sent_at_s. ttft_s, itl_s, e2e_s and "
        "tpot_s count from sent_at_s."
    ),
    "type": "object",
    "required": [
        "index",
        "worker",
        "scheduled_at_s",
        "schedule_lag_s",
        "queue_wait_s",
        "sent_at_s",
        "ttft_s",
        "itl_s",
        "e2e_s",
        "tpot_s",
        "output_tokens",
        "output_tokens_source",
        "prompt_tokens",
        "prompt_tokens_source",
        "ok",
        "error_type",
        "error",
        "status",
        "attempts",
        "finish_reason",
        "request_id",
        "cached_tokens",
        "uncounted_parts",
        "turn",
        "turns",
        "cancelled",
    ],
    "additionalProperties": False,
    "properties": {
        "index": {**_COUNT, "description": "position in the run; warm-up requests come first"},
        "worker": {**_COUNT, "description": "the worker process that sent it"},
        "scheduled_at_s": {**_NUMBER, "description": "when the schedule meant it to go"},
        "schedule_lag_s": {"type": "number", "minimum": 0},
        "queue_wait_s": {
            "type": "number",
            "minimum": 0,
            "description": "waiting under --max-concurrency (or a limiter) before sending",
        },
        "sent_at_s": _NUMBER,
        "ttft_s": {
            "type": ["number", "null"],
            "description": "to the first content or reasoning text; null if none came",
        },
        "itl_s": {
            "type": "array",
            "items": {"type": "number"},
            "description": "every gap between consecutive text-bearing chunks",
        },
        "e2e_s": {"type": "number", "minimum": 0},
        "tpot_s": {
            "type": ["number", "null"],
            "description": "(e2e_s - ttft_s) / (output_tokens - 1); null below 2 tokens",
        },
        "output_tokens": _COUNT,
        "output_tokens_source": {"enum": ["usage", "local"]},
        "prompt_tokens": _COUNT,
        "prompt_tokens_source": {"enum": ["usage", "local"]},
        "ok": {"type": "boolean"},
        "error_type": {"type": ["string", "null"], "description": "the exception's class"},
        "error": {"type": ["string", "null"]},
        "status": {"type": ["integer", "null"], "description": "HTTP status of a failure"},
        "attempts": {"type": "integer", "minimum": 1},
        "finish_reason": {"type": ["string", "null"]},
        "request_id": {"type": "string"},
        "cached_tokens": {
            "type": ["integer", "null"],
            "minimum": 0,
            "description": "usage.prompt_tokens_details.cached_tokens; null if not reported",
        },
        "uncounted_parts": {
            **_COUNT,
            "description": "image, audio and video parts of the prompt, left out of a local count",
        },
        "turn": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "place in its conversation (index is the conversation's)",
        },
        "turns": {"type": ["integer", "null"], "minimum": 1, "description": "of its conversation"},
        "cancelled": {
            "type": "boolean",
            "description": "the run was stopped early and this request cut off (ok is false; "
            "it counts in no figure)",
        },
    },
}


def _stats_of(name: str) -> dict[str, Any]:
    """mean/median/std of ``name`` in ms, and its percentiles."""
    return {
        "properties": {f"{kind}_{name}_ms": _MS for kind in ("mean", "median", "std")},
        "patternProperties": {rf"^p[0-9]+(\.[0-9]+)?_{name}_ms$": _MS},
        "required": [f"{kind}_{name}_ms" for kind in ("mean", "median", "std")],
    }


def _object_with_stats(
    properties: dict[str, Any], required: list[str], stats: tuple[str, ...]
) -> dict[str, Any]:
    parts = [_stats_of(name) for name in stats]
    return {
        "type": "object",
        "required": required + [key for part in parts for key in part["required"]],
        "additionalProperties": False,
        "properties": {**properties, **{k: v for p in parts for k, v in p["properties"].items()}},
        "patternProperties": {k: v for p in parts for k, v in p["patternProperties"].items()},
    }


_TURN = _object_with_stats(
    {
        "turn": {"type": "integer", "minimum": 1},
        "completed": _COUNT,
        "failed": _COUNT,
        "mean_prompt_tokens": _NULLABLE_NUMBER,
        "mean_output_tokens": _NULLABLE_NUMBER,
    },
    ["turn", "completed", "failed", "mean_prompt_tokens", "mean_output_tokens"],
    ("ttft", "e2el"),
)
_CONVERSATIONS = _object_with_stats(
    {
        "completed": {**_COUNT, "description": "every turn succeeded"},
        "failed": {**_COUNT, "description": "a turn failed; later turns were not sent"},
        "unfinished": {**_COUNT, "description": "the run ended before the last turn"},
        "mean_turns": {"type": "number", "minimum": 1, "description": "turns planned"},
    },
    ["completed", "failed", "unfinished", "mean_turns"],
    ("conversation",),
)
_SIZES = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
    ]
}
_SYNTHETIC_WORKLOAD = {
    "type": "object",
    "description": "synthetic prompts of exact billed sizes (--dataset random, shared-prefix, "
    "multiturn without a file)",
    "required": [
        "type",
        "input_tokens",
        "output_tokens",
        "seed",
        "range_ratio",
        "prefix_tokens",
        "prefix_groups",
        "turns",
        "tokenizer",
    ],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "synthetic"},
        "input_tokens": _SIZES,
        "output_tokens": {"oneOf": [{"type": "null"}, _SIZES]},
        "seed": {"type": "integer"},
        "range_ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "prefix_tokens": _COUNT,
        "prefix_groups": {"type": "integer", "minimum": 1},
        "turns": {"type": "integer", "minimum": 1},
        "tokenizer": {"type": ["string", "null"], "description": "tokenizer.json; null: Qwen"},
    },
}
_FILE_WORKLOAD = {
    "type": "object",
    "description": "prompts from a file (--prompts, --dataset sharegpt:, multiturn:)",
    "required": [
        "type",
        "source",
        "path",
        "entries",
        "output_tokens",
        "conversations",
        "mean_turns",
        "skipped",
        "uncounted_parts",
        "tokenizer",
    ],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "file"},
        "source": {"enum": ["prompts", "sharegpt"]},
        "path": {"type": "string"},
        "entries": {"type": "integer", "minimum": 1},
        "output_tokens": {"type": ["integer", "null"], "minimum": 1},
        "conversations": {"type": "boolean"},
        "mean_turns": {"type": "number", "minimum": 1},
        "skipped": {
            "type": "object",
            "additionalProperties": _COUNT,
            "description": "entries left out, by reason",
        },
        "uncounted_parts": {**_COUNT, "description": "media parts in the entries' prompts"},
        "tokenizer": {"type": ["string", "null"]},
    },
}


_SERVER_SERIES = {
    "type": "object",
    "required": ["metric", "min", "mean", "max", "at_s", "values"],
    "additionalProperties": False,
    "properties": {
        "metric": {"type": "string", "description": "the server's name of the series"},
        "min": _NUMBER,
        "mean": _NUMBER,
        "max": _NUMBER,
        "at_s": {
            "type": "array",
            "items": _NUMBER,
            "description": "when each successful scrape was sent, seconds from the run's "
            "start (the scrape before it is negative)",
        },
        "values": {"type": "array", "items": _NUMBER},
    },
}
_SERVER_METRICS = {
    "type": "object",
    "description": "--metrics-url: the server's own series from its Prometheus /metrics, "
    "scraped before, every interval_s during, and after the run (min, mean and max over the "
    "scrapes during it), and the increase of every counter over the run",
    "required": [
        "url",
        "interval_s",
        "scrapes",
        "failed_scrapes",
        "errors",
        "series",
        "counters_window_s",
        "counters",
    ],
    "additionalProperties": False,
    "properties": {
        "url": {"type": "string"},
        "interval_s": {"type": "number", "exclusiveMinimum": 0},
        "scrapes": _COUNT,
        "failed_scrapes": _COUNT,
        "errors": {
            "type": "array",
            "description": "why scrapes failed, most frequent first",
            "items": {
                "type": "object",
                "required": ["message", "count"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                },
            },
        },
        "series": {
            "type": "object",
            "description": "requests_running and requests_waiting (summed over label sets), "
            "kv_cache_usage (a fraction, the fullest label set); those the page had",
            "propertyNames": {"enum": ["requests_running", "requests_waiting", "kv_cache_usage"]},
            "additionalProperties": _SERVER_SERIES,
        },
        "counters_window_s": {
            "type": ["number", "null"],
            "description": "from the first successful scrape to the last; null below two",
        },
        "counters": {
            "type": "object",
            "description": "every counter sample name (histograms' and summaries' _sum and "
            "_count too), summed over its labels: its increase over the window",
            "additionalProperties": _NUMBER,
        },
    },
}


def _stat_properties() -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name in _STAT_NAMES:
        for kind in ("mean", "median", "std"):
            properties[f"{kind}_{name}_ms"] = _MS
    return properties


def _stat_required() -> list[str]:
    return [f"{kind}_{name}_ms" for name in _STAT_NAMES for kind in ("mean", "median", "std")]


SUMMARY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SUMMARY_SCHEMA_ID,
    "title": "Summary of a qwen-sse bench run (the --json file)",
    "description": (
        "Keys shared with vLLM's benchmark_serving mean the same there and here: "
        "durations in seconds, latencies in milliseconds, throughputs per second. "
        "Figures over no data are null. p<N>_<metric>_ms exist for every N in "
        "'percentiles'. Percentiles are computed from the merged raw records of every "
        "worker, never from per-worker figures."
    ),
    "type": "object",
    "required": [
        "schema",
        "date",
        "backend",
        "model_id",
        "tokenizer_id",
        "base_url",
        "protocol",
        "num_prompts",
        "request_rate",
        "burstiness",
        "max_concurrency",
        "load",
        "workload",
        "params",
        "percentiles",
        "goodput_slo_ms",
        "duration",
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
        "max_output_tokens_per_s",
        "max_concurrent_requests",
        "send_rate",
        "errors",
        "total_cached_tokens",
        "mean_cached_tokens",
        "requests_with_cache_report",
        "uncounted_input_parts",
        "turns",
        "conversations",
        "error_groups",
        "cancelled",
        "stop_reason",
        "output_tokens_source",
        "prompt_tokens_source",
        "client_saturated",
        "client_saturation_reasons",
        "client",
        "python",
        *_stat_required(),
    ],
    "properties": {
        "schema": {"const": SUMMARY_SCHEMA_ID},
        "date": {"type": "string", "description": "UTC, ISO 8601"},
        "backend": {"const": "openai-chat"},
        "model_id": {"type": "string"},
        "tokenizer_id": {
            "type": "string",
            "description": "qwen (the bundled tokenizer) or the --tokenizer path",
        },
        "base_url": {"type": "string", "description": "the protocol's base URL"},
        "protocol": {
            "type": "string",
            "description": "the wire protocol the requests spoke (qwen_sse.protocols)",
        },
        "num_prompts": {
            "type": ["integer", "null"],
            "description": "measured requests planned; null when bounded by time only",
        },
        "request_rate": {
            "oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "inf"}],
            "description": "open loop: the configured rate; closed loop: 'inf' (vLLM's way)",
        },
        "burstiness": {"type": ["number", "null"]},
        "max_concurrency": {"type": ["integer", "null"], "minimum": 1},
        "load": {
            "type": "object",
            "required": ["mode", "requests", "duration_s", "warmup", "workers", "seed"],
            "properties": {
                "mode": {"enum": ["closed", "open"]},
                "requests": {"type": ["integer", "null"]},
                "duration_s": _NULLABLE_NUMBER,
                "warmup": _COUNT,
                "workers": {"type": "integer", "minimum": 1},
                "seed": {"type": "integer"},
                "concurrency": {"type": "integer", "minimum": 1},
                "ramp_up_s": {"type": "number", "minimum": 0},
                "rate": _NULLABLE_NUMBER,
                "arrivals": {"enum": ["poisson", "gamma", "constant"]},
                "burstiness": _NUMBER,
                "max_concurrency": {"type": ["integer", "null"]},
            },
        },
        "workload": {
            "oneOf": [_SYNTHETIC_WORKLOAD, _FILE_WORKLOAD],
        },
        "params": {"type": "object"},
        "percentiles": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 100}},
        "goodput_slo_ms": {
            "type": ["object", "null"],
            "propertyNames": {"enum": ["ttft", "tpot", "e2el"]},
            "additionalProperties": {"type": "number", "minimum": 0},
        },
        "duration": {"type": "number", "minimum": 0, "description": "seconds of the window"},
        "completed": _COUNT,
        "failed": _COUNT,
        "total_input_tokens": _COUNT,
        "total_output_tokens": _COUNT,
        "request_throughput": {"type": "number", "minimum": 0},
        "request_goodput": _MS,
        "output_throughput": {"type": "number", "minimum": 0},
        "total_token_throughput": {"type": "number", "minimum": 0},
        "max_output_tokens_per_s": {"type": "number", "minimum": 0},
        "max_concurrent_requests": _COUNT,
        "send_rate": {
            "type": ["number", "null"],
            "description": "(requests - 1) over the span from the first send to the last",
        },
        "errors": {"type": "object", "additionalProperties": _COUNT},
        "error_examples": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "the first message of each error type in errors",
        },
        "error_groups": {
            "type": "array",
            "description": "the failed requests by error type and message (request ids "
            "left out), most frequent first: why they failed",
            "items": {
                "type": "object",
                "required": ["type", "message", "count"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                },
            },
        },
        "cancelled": {
            **_COUNT,
            "description": "requests cut off when the run was stopped early; they count in "
            "no other figure",
        },
        "stop_reason": {
            "type": ["string", "null"],
            "description": "why the run ended before its plan (a signal, or its first "
            "requests all refused alike); null when it ran to its end",
        },
        "output_tokens_source": _SOURCES,
        "prompt_tokens_source": _SOURCES,
        "total_cached_tokens": {
            **_COUNT,
            "description": "prompt tokens the server's usage reported as read from its cache",
        },
        "mean_cached_tokens": {
            "type": ["number", "null"],
            "description": "per request that reported cached_tokens; null if none did",
        },
        "requests_with_cache_report": _COUNT,
        "uncounted_input_parts": {
            **_COUNT,
            "description": "media parts of the successful prompts; a local count leaves them "
            "out (where prompt_tokens_source is local, total_input_tokens is a lower bound)",
        },
        "turns": {
            "type": ["array", "null"],
            "description": "multi-turn runs: figures by turn number; null otherwise",
            "items": _TURN,
        },
        "conversations": {
            "oneOf": [{"type": "null"}, _CONVERSATIONS],
            "description": "multi-turn runs: figures by conversation; null otherwise",
        },
        "client_saturated": {
            "type": "boolean",
            "description": "true when the client, not the server, may have limited the figures",
        },
        "client_saturation_reasons": {"type": "array", "items": {"type": "string"}},
        "client": {
            "type": "object",
            "required": [
                "loop_lag_ms",
                "receive_lag_ms",
                "cpu_fraction_max",
                "schedule_lag_p90_ms",
                "schedule_lag_first_tenth_ms",
                "schedule_lag_last_tenth_ms",
                "workers",
                "thresholds",
            ],
            "description": (
                "the monitors' figures: loop_lag_ms (a timer's lateness) and receive_lag_ms "
                "(how long data sat in a socket before the client read it) over the samples "
                "taken while successful requests were in flight"
            ),
            "properties": {
                "loop_lag_ms": _LAG,
                "receive_lag_ms": _LAG,
                "cpu_fraction_max": {"type": "number", "minimum": 0},
                "cpu_wait_fraction_max": {"type": ["number", "null"], "minimum": 0},
                "schedule_lag_p90_ms": _MS,
                "schedule_lag_first_tenth_ms": _MS,
                "schedule_lag_last_tenth_ms": _MS,
                "workers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "worker",
                            "cpu_fraction",
                            "cpu_fraction_max",
                            "loop_lag_ms",
                            "receive_lag_ms",
                            "open_files_limit",
                        ],
                        "properties": {
                            "worker": _COUNT,
                            "cpu_fraction": {"type": "number", "minimum": 0},
                            "cpu_fraction_max": {"type": "number", "minimum": 0},
                            "cpu_wait_fraction": {
                                "type": ["number", "null"],
                                "minimum": 0,
                                "description": "time the worker's event loop waited for a "
                                "CPU over wall time (null where the kernel does not say)",
                            },
                            "loop_lag_ms": _LAG,
                            "receive_lag_ms": _LAG,
                            "open_files_limit": {"type": ["integer", "null"]},
                        },
                    },
                },
                "thresholds": {
                    "type": "object",
                    "required": ["max_loop_lag_ms", "max_cpu_fraction", "max_schedule_lag_ms"],
                    "additionalProperties": _NUMBER,
                },
            },
        },
        "python": {"type": "string"},
        "server_metrics": _SERVER_METRICS,
        **_stat_properties(),
    },
    "patternProperties": {
        r"^p[0-9]+(\.[0-9]+)?_(ttft|tpot|itl|e2el|schedule_lag|queue_wait)_ms$": _MS,
    },
    "additionalProperties": False,
}

SWEEP_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SWEEP_SCHEMA_ID,
    "title": "A sweep of qwen-sse bench runs (--sweep-rates or --sweep-concurrency)",
    "type": "object",
    "required": ["schema", "kind", "levels", "runs", "saturated_at", "stop_reason"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SWEEP_SCHEMA_ID},
        "kind": {"enum": ["rates", "concurrency"]},
        "levels": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}},
        "runs": {"type": "array", "items": SUMMARY_SCHEMA},
        "saturated_at": {
            "type": ["number", "null"],
            "description": "the level at which the sweep saturated; null if it ran them all or was "
            "stopped (stop_reason says why)",
        },
        "stop_reason": {"type": ["string", "null"]},
    },
}

_FIGURE_ACROSS_RUNS = {
    "type": "object",
    "required": ["n", "mean", "std", "half_width", "low", "high", "values"],
    "additionalProperties": False,
    "properties": {
        "n": {**_COUNT, "description": "runs in which the figure is not null"},
        "mean": _NULLABLE_NUMBER,
        "std": {
            "type": ["number", "null"],
            "minimum": 0,
            "description": "sample standard deviation across runs (n - 1); null below 2",
        },
        "half_width": {
            "type": ["number", "null"],
            "minimum": 0,
            "description": "t(0.975, n - 1) * std / sqrt(n); null below 2 runs",
        },
        "low": _NULLABLE_NUMBER,
        "high": _NULLABLE_NUMBER,
        "values": {
            "type": "array",
            "items": _NULLABLE_NUMBER,
            "description": "the figure of each run, in run order",
        },
    },
}

REPEAT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": REPEAT_SCHEMA_ID,
    "title": "Repeated runs of one qwen-sse bench load (--repeat N with --json)",
    "description": (
        "Every run's own summary in 'runs', unchanged; for every figure of a summary "
        "(durations, counts, throughputs, goodput, and the mean, median, std and "
        "percentiles of each latency), under the same key, its mean across the runs and "
        "the two-sided Student-t confidence interval of that mean at 'confidence'."
    ),
    "type": "object",
    "required": ["schema", "repeat", "confidence", "figures", "client_saturated_runs", "runs"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": REPEAT_SCHEMA_ID},
        "repeat": {"type": "integer", "minimum": 2},
        "confidence": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "figures": {"type": "object", "additionalProperties": _FIGURE_ACROSS_RUNS},
        "client_saturated_runs": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "description": "the runs (counted from 1) in which the client saturated",
        },
        "runs": {"type": "array", "items": SUMMARY_SCHEMA, "minItems": 2},
    },
}

_SIDE = {
    "type": "object",
    "required": ["name", "kind", "runs", "model_id", "load", "client_saturated_runs"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "description": "the file compared"},
        "kind": {
            "enum": ["run", "repeat", "sweep"],
            "description": "run: one summary (qwen-sse's or vLLM's); repeat; sweep",
        },
        "runs": {"type": "integer", "minimum": 1, "description": "runs per level"},
        "model_id": {"type": ["string", "null"]},
        "load": {"type": ["object", "null"], "description": "the first run's 'load'"},
        "client_saturated_runs": {
            **_COUNT,
            "description": "runs (of every level) in which the client saturated: their "
            "figures may describe the load generator rather than the server",
        },
    },
}
_VALUE = {
    "type": "object",
    "required": ["n", "value", "half_width"],
    "additionalProperties": False,
    "properties": {
        "n": {**_COUNT, "description": "runs (figures) or requests (distributions)"},
        "value": {
            "type": ["number", "null"],
            "description": "figures: the mean across runs (one run: its figure); "
            "distributions: the median of the requests",
        },
        "half_width": {
            "type": ["number", "null"],
            "description": "of the 95% confidence interval; null for one run",
        },
    },
}
_DIFFERENCE = {
    "type": "object",
    "required": [
        "figure",
        "a",
        "b",
        "difference_percent",
        "test",
        "statistic",
        "df",
        "p_value",
        "significant",
        "better",
    ],
    "additionalProperties": False,
    "properties": {
        "figure": {
            "type": "string",
            "description": "a summary key (figures) or ttft/tpot/itl/e2el (distributions)",
        },
        "a": _VALUE,
        "b": _VALUE,
        "difference_percent": {
            "type": ["number", "null"],
            "description": "(b - a) / |a| * 100; null when a is 0 and b is not",
        },
        "test": {
            "enum": ["welch", "mann-whitney", None],
            "description": "null: not judged (a side has fewer than 2 runs)",
        },
        "statistic": _NULLABLE_NUMBER,
        "df": _NULLABLE_NUMBER,
        "p_value": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "significant": {"type": ["boolean", "null"], "description": "p_value < alpha"},
        "better": {
            "enum": ["a", "b", None],
            "description": "the better side of a significant difference (lower latencies, "
            "higher throughputs); null when not significant or neither is better",
        },
    },
}

COMPARISON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": COMPARISON_SCHEMA_ID,
    "title": "Two qwen-sse bench results side by side (bench compare with --json)",
    "description": (
        "One entry in 'levels' for two runs or two repeats (level null), one per level "
        "found in both sweeps. 'figures' compares the summaries' figures: with at least 2 "
        "runs on each side by Welch's t-test across runs, else not judged. "
        "'distributions' (only with --jsonl records of two single runs) compares the "
        "per-request latencies by the Mann-Whitney U test."
    ),
    "type": "object",
    "required": ["schema", "alpha", "a", "b", "sweep", "levels"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": COMPARISON_SCHEMA_ID},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "a": _SIDE,
        "b": _SIDE,
        "sweep": {
            "type": ["object", "null"],
            "required": ["kind", "only_in_a", "only_in_b"],
            "additionalProperties": False,
            "properties": {
                "kind": {"enum": ["rates", "concurrency"]},
                "only_in_a": {"type": "array", "items": _NUMBER},
                "only_in_b": {"type": "array", "items": _NUMBER},
            },
        },
        "levels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["level", "figures", "distributions"],
                "additionalProperties": False,
                "properties": {
                    "level": _NULLABLE_NUMBER,
                    "figures": {"type": "array", "items": _DIFFERENCE},
                    "distributions": {"type": "array", "items": _DIFFERENCE},
                },
            },
        },
    },
}

CSV_COLUMNS: tuple[str, ...] = (
    "index",
    "worker",
    "scheduled_at_s",
    "schedule_lag_s",
    "queue_wait_s",
    "sent_at_s",
    "ttft_s",
    "itl_count",
    "itl_mean_s",
    "itl_max_s",
    "e2e_s",
    "tpot_s",
    "output_tokens",
    "output_tokens_source",
    "prompt_tokens",
    "prompt_tokens_source",
    "ok",
    "error_type",
    "error",
    "status",
    "attempts",
    "finish_reason",
    "request_id",
    "cached_tokens",
    "uncounted_parts",
    "turn",
    "turns",
    "cancelled",
)
