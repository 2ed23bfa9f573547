"""A Hugging Face tokenizer directory made from the bundled Qwen vocabulary, for peers.

Peer load generators (GuideLLM, vLLM's benchmark) count tokens with a Hugging Face
tokenizer and would download one; this writes a local one instead, from
``qwen_sse/data/qwen.tiktoken.gz``, that encodes every text to the same ids as
:func:`qwen_sse.tokens.encode` (tests/test_benchmarks.py checks English, Chinese, emoji,
code and whitespace):

* the BPE model's vocabulary is the tiktoken ranks, each token's bytes spelled with GPT-2's
  byte-to-character table (the ``ByteLevel`` alphabet);
* its merges are derived from the ranks: the merge that makes the token of rank ``r`` is
  the pair of pieces that byte-pair encoding the token's own bytes with the tokens of lower
  rank ends with (every Qwen token of two or more bytes ends in exactly two pieces: 151,387
  merges, as in Qwen's own ``tokenizer.json``), in rank order, so the lowest-ranked merge
  applies first, as in tiktoken;
* ``ignore_merges``: a piece that is a whole token is that token, tiktoken's fast path;
* NFC normalization, the Qwen pre-tokenizer pattern (``Split``, isolated), the byte-level
  pre-tokenizer and decoder, and the special tokens at their ids (ids between them that
  ``qwen_sse.tokens`` does not name hold placeholders, ``<|qwen_sse_reserved_ID|>``).

Writing it takes about 3 s; :func:`ensure_tokenizer` keeps it in a directory and rewrites
it only when that holds another vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from qwen_sse.tokens import PRETOKENIZER_PATTERN, SPECIAL_TOKENS, _read_ranks

# Written into tokenizer_config.json; a directory with another stamp is rewritten.
_FORMAT = 2


def byte_alphabet() -> list[str]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[byte] for byte in range(256)]


def merges_of(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges that reproduce ``ranks`` (token bytes -> rank), in rank order.

    For each token of two or more bytes: its bytes byte-pair encoded with only the tokens
    of lower rank (tiktoken's rule: merge the adjacent pair whose union has the lowest
    rank, until none is a token). A vocabulary made by BPE training always ends in two
    pieces, the merge that created the token; ValueError names a token that does not.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_index, best_rank = -1, rank
            for index in range(len(parts) - 1):
                pair_rank = ranks.get(parts[index] + parts[index + 1])
                if pair_rank is not None and pair_rank < best_rank:
                    best_index, best_rank = index, pair_rank
            if best_index < 0:
                break
            parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {rank} ({token!r}) is not one merge of lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def added_tokens(first_id: int) -> dict[int, str]:
    """The added tokens by id: the special tokens, and a placeholder for every id between
    them that qwen_sse does not name (the ``tokenizers`` library numbers added tokens
    without gaps, so a missing id would shift every special token after it)."""
    by_id = {token_id: content for content, token_id in SPECIAL_TOKENS.items()}
    return {
        token_id: by_id.get(token_id, f"<|qwen_sse_reserved_{token_id}|>")
        for token_id in range(first_id, max(by_id) + 1)
    }


def tokenizer_json(ranks: dict[bytes, int]) -> dict[str, Any]:
    """The ``tokenizer.json`` document of the Qwen vocabulary ``ranks``."""
    alphabet = byte_alphabet()

    def spell(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": token_id,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token_id, content in sorted(added_tokens(len(ranks)).items())
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": PRETOKENIZER_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {spell(token): rank for token, rank in ranks.items()},
            "merges": [[spell(left), spell(right)] for left, right in merges_of(ranks)],
        },
    }


def tokenizer_config(stamp: str) -> dict[str, Any]:
    """The ``tokenizer_config.json`` beside it: a fast tokenizer, Qwen's special tokens."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 131072,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "qwen_sse_stamp": stamp,
    }


def _stamp(ranks: dict[bytes, int]) -> str:
    digest = hashlib.sha256()
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        digest.update(rank.to_bytes(4, "big") + token)
    return f"{_FORMAT}:{digest.hexdigest()[:16]}"


def ensure_tokenizer(directory: Path) -> Path:
    """``directory`` holding ``tokenizer.json`` and ``tokenizer_config.json`` for the
    bundled vocabulary, written now unless already there for the same vocabulary."""
    ranks = _read_ranks()
    stamp = _stamp(ranks)
    config_path = directory / "tokenizer_config.json"
    try:
        if json.loads(config_path.read_text(encoding="utf-8")).get("qwen_sse_stamp") == stamp:
            return directory
    except (OSError, ValueError):
        pass
    directory.mkdir(parents=True, exist_ok=True)
    document = json.dumps(tokenizer_json(ranks), ensure_ascii=False)
    (directory / "tokenizer.json").write_text(document, encoding="utf-8")
    # Written last: its stamp marks a complete directory.
    config_path.write_text(json.dumps(tokenizer_config(stamp), indent=2), encoding="utf-8")
    return directory
