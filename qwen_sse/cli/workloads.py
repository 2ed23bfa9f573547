"""The workload options of ``qwen-sse bench`` (``--dataset``, ``--prompts``, sizes,
``--tokenizer``...) and the workload they describe; the Locust user has the same options
with ``qwen-`` before each name (``--qwen-dataset``...).

Edge layer (cli). It owns the options' spelling and which ones go together; what they mean
is :mod:`qwen_sse.bench.workload`'s and :mod:`qwen_sse.bench.sharegpt`'s. A bad
combination is one ConfigurationError naming the options.
"""

from __future__ import annotations

import argparse
import re
from typing import Any, TypeVar

from qwen_sse.bench.benchmark import BenchConfig
from qwen_sse.bench.sharegpt import read_sharegpt
from qwen_sse.bench.workload import FileWorkload, Sizes, SyntheticWorkload, Workload, read_prompts
from qwen_sse.errors import ConfigurationError

__all__ = [
    "add_workload_options",
    "mock_answer_tokens",
    "planned_requests",
    "workload_from",
    "workload_notes",
]

_T = TypeVar("_T")

_INPUT_TOKENS = 256
_OUTPUT_TOKENS = 128
_TURNS = 3
_DATASETS = "random, shared-prefix, sharegpt:FILE.json, multiturn or multiturn:FILE.json"
_OPTIONS = (
    "dataset",
    "prompts",
    "input-tokens",
    "output-tokens",
    "random-range-ratio",
    "prefix-tokens",
    "prefix-groups",
    "turns",
    "sample",
    "tokenizer",
)
_OPTION = re.compile(rf"--({'|'.join(_OPTIONS)}|seed)\b")


def add_workload_options(group: Any, *, prefix: str = "") -> None:
    """Add the workload options to ``group`` (an argument group of ``qwen-sse bench``; with
    ``prefix`` ``"qwen-"``, Locust's: ``--qwen-dataset``...)."""
    group.add_argument(
        f"--{prefix}dataset",
        metavar="NAME[:FILE]",
        help="random (default): synthetic prompts of exact billed sizes; shared-prefix: "
        f"the same with a shared system prompt of --{prefix}prefix-tokens; sharegpt:FILE.json: "
        "ShareGPT first turns as vLLM reads them; multiturn[:FILE.json]: conversations, "
        "each turn sent with the server's earlier answers (synthetic, or a ShareGPT file)",
    )
    group.add_argument(
        f"--{prefix}prompts",
        metavar="FILE.jsonl",
        help='prompts file: a JSON object a line, {"prompt": ...} or {"messages": [...]} '
        "(image_url parts for qwen-vl models allowed)",
    )
    group.add_argument(
        f"--{prefix}input-tokens",
        metavar="N|N,N,...",
        help=f"synthetic prompt size as billed (default {_INPUT_TOKENS}); a list is drawn from",
    )
    group.add_argument(
        f"--{prefix}output-tokens",
        metavar="N|N,N,...",
        help=f"max_tokens to ask for (default {_OUTPUT_TOKENS}; a ShareGPT file: each recorded "
        "answer's length); a list is drawn from",
    )
    group.add_argument(
        f"--{prefix}random-range-ratio",
        type=float,
        default=0.0,
        metavar="R",
        help="draw each size uniformly from [N*(1-R), N*(1+R)], as vLLM (default 0)",
    )
    group.add_argument(
        f"--{prefix}prefix-tokens",
        type=int,
        metavar="K",
        help="shared-prefix (or synthetic multiturn): system prompt of K tokens, shared",
    )
    group.add_argument(
        f"--{prefix}prefix-groups",
        type=int,
        metavar="G",
        help="G different shared prefixes; request i has prefix i mod G (default 1)",
    )
    group.add_argument(
        f"--{prefix}turns",
        type=int,
        metavar="T",
        help=f"multiturn: turns per conversation (default {_TURNS}; a file: at most T)",
    )
    group.add_argument(
        f"--{prefix}sample",
        type=int,
        metavar="N",
        help=f"a ShareGPT file: N entries drawn with --{prefix}seed (default: as many as the "
        "run sends if known, else all)",
    )
    group.add_argument(
        f"--{prefix}tokenizer",
        metavar="PATH",
        help="count and size prompts with this local Hugging Face tokenizer.json "
        "(needs qwen-sse[hf]; default: the bundled Qwen tokenizer)",
    )


def workload_from(args: argparse.Namespace, *, units: int | None, prefix: str = "") -> Workload:
    """The workload ``args`` describe. ``units``: the conversations or requests the run
    sends, warm-up included (None: as many as a duration allows), the default sample of a
    ShareGPT file. ``prefix``: the one :func:`add_workload_options` was given, which the
    seed's option has too (``"qwen-"``: ``args.qwen_dataset``... ``args.qwen_seed``); error
    messages spell the options with it."""
    if not prefix:
        return _workload_from(args, units=units)
    dest = prefix.replace("-", "_")
    names = [option.replace("-", "_") for option in (*_OPTIONS, "seed")]
    plain = argparse.Namespace(**{name: getattr(args, dest + name) for name in names})
    try:
        return _workload_from(plain, units=units)
    except ConfigurationError as error:
        # The messages name the options unprefixed, as bench spells them.
        raise ConfigurationError(_OPTION.sub(rf"--{prefix}\1", str(error))) from None


def _workload_from(args: argparse.Namespace, *, units: int | None) -> Workload:
    name, path = _dataset(args)
    if args.prompts is not None:
        if args.dataset is not None:
            raise ConfigurationError("--prompts and --dataset are alternatives: give one")
        _refuse(args, "a prompts file", "input_tokens", "random_range_ratio", "prefix_tokens")
        _refuse(args, "a prompts file", "prefix_groups", "turns", "sample")
        return read_prompts(
            args.prompts,
            output_tokens=_or(_one_size(args.output_tokens, "--output-tokens"), _OUTPUT_TOKENS),
            tokenizer=args.tokenizer,
        )
    if path is not None:
        _refuse(args, "a ShareGPT file", "input_tokens", "random_range_ratio", "prefix_tokens")
        _refuse(args, "a ShareGPT file", "prefix_groups")
        if name == "sharegpt":
            _refuse(args, "--dataset sharegpt", "turns")
        return read_sharegpt(
            path,
            seed=args.seed,
            sample=args.sample if args.sample is not None else units,
            output_tokens=_one_size(args.output_tokens, "--output-tokens"),
            conversations=name == "multiturn",
            max_turns=args.turns,
            tokenizer=args.tokenizer,
        )
    _refuse(args, "synthetic prompts", "sample")
    if name == "random":
        _refuse(args, "--dataset random", "turns")
        if args.prefix_tokens is not None:
            raise ConfigurationError("a shared prefix is --dataset shared-prefix --prefix-tokens K")
    if name == "shared-prefix":
        _refuse(args, "--dataset shared-prefix", "turns")
        if args.prefix_tokens is None:
            raise ConfigurationError("--dataset shared-prefix needs --prefix-tokens K")
    if args.prefix_groups is not None and args.prefix_tokens is None:
        raise ConfigurationError("--prefix-groups divides a shared prefix: give --prefix-tokens")
    input_tokens = _sizes(args.input_tokens, "--input-tokens")
    output_tokens = _sizes(args.output_tokens, "--output-tokens")
    return SyntheticWorkload(
        input_tokens=_INPUT_TOKENS if input_tokens is None else input_tokens,
        output_tokens=_OUTPUT_TOKENS if output_tokens is None else output_tokens,
        seed=args.seed,
        range_ratio=args.random_range_ratio,
        prefix_tokens=_or(args.prefix_tokens, 0),
        prefix_groups=_or(args.prefix_groups, 1),
        turns=_or(args.turns, _TURNS) if name == "multiturn" else 1,
        tokenizer=args.tokenizer,
    )


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _dataset(args: argparse.Namespace) -> tuple[str, str | None]:
    """The dataset's name and file (None: synthetic)."""
    value = args.dataset if args.dataset is not None else "random"
    name, colon, path = value.partition(":")
    if name in ("sharegpt", "multiturn") and path:
        return name, path
    if name in ("random", "shared-prefix", "multiturn") and not colon:
        return name, None
    raise ConfigurationError(f"--dataset wants {_DATASETS}, got {value!r}")


def _refuse(args: argparse.Namespace, what: str, *names: str) -> None:
    defaults = {"random_range_ratio": 0.0}
    for name in names:
        if getattr(args, name) != defaults.get(name):
            option = "--" + name.replace("_", "-")
            raise ConfigurationError(f"{option} does not apply to {what}")


def _sizes(text: str | None, option: str) -> Sizes | None:
    """A number, or numbers separated by commas (a list to draw from)."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigurationError(
            f"{option} wants a whole number, or numbers separated by commas, got {text!r}"
        ) from None
    # The input minimum depends on the chat template: the workload names it.
    if option.endswith("--output-tokens") and min(values) < 1:
        raise ConfigurationError(f"{option} must be at least 1, got {min(values)}")
    return values[0] if len(values) == 1 else values


def _one_size(text: str | None, option: str) -> int | None:
    sizes = _sizes(text, option)
    if isinstance(sizes, list):
        raise ConfigurationError(f"{option} is one number with a file of prompts, got {text!r}")
    return sizes


def mock_answer_tokens(workload: Workload) -> int:
    """The emulator's answer length for ``--mock``: one piece longer than any request asks,
    so that ``max_tokens`` ends every answer, as it does on a model that has more to say
    (``"length"``)."""
    return (workload.max_output_tokens() or _OUTPUT_TOKENS) + 1


def planned_requests(config: BenchConfig) -> int | None:
    """The requests a run will send and measure (None: unknown in advance): a conversation
    sends one per turn."""
    units = config.planned_requests()
    per_unit = config.workload.requests_per_unit()
    return None if units is None or per_unit is None else units * per_unit


def workload_notes(workload: Workload) -> list[str]:
    """What a person should know before the run starts: entries of a dataset left out."""
    if not isinstance(workload, FileWorkload) or not workload.skipped:
        return []
    left_out = sum(workload.skipped.values())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in workload.skipped.items())
    entries = "entry" if left_out == 1 else "entries"
    return [f"{workload.path}: {left_out} {entries} left out ({reasons})"]
