"""A tiny random-weight qwen2 GGUF model with a byte-level BPE vocabulary and ChatML, for interop.

``write_tiny_model(path)`` writes about 650 KB: 2 layers, hidden size 64, random weights (a
fixed seed, so every run writes the same bytes), 256 byte tokens in GPT-2's byte-to-unicode
form, merges learnt from a fixed English text, ``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>`` (end of generation) and a ChatML ``tokenizer.chat_template``. Nothing is
downloaded. Its answers are random text; the interop tests bound them with ``max_tokens`` or
force them with a grammar.

Tensor names and shapes follow llama.cpp's qwen2 loader (``src/models/qwen2.cpp``). llama.cpp
writes shapes innermost first, so a ggml shape ``{n_embd, n_vocab}`` is a numpy array of shape
``(n_vocab, n_embd)``; ``GGUFWriter.add_tensor`` reverses numpy shapes on write.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import gguf
import numpy as np

BLOCK_COUNT = 2
EMBEDDING_LENGTH = 64
FEED_FORWARD_LENGTH = 224
HEAD_COUNT = 4
HEAD_COUNT_KV = 2
CONTEXT_LENGTH = 4096
MERGE_COUNT = 120
SEED = 20260516
SUPPRESSED_LOGIT = -100.0

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Learning text for the merges: plain English, so prompts tokenize into a mix of merged and
# byte tokens the way a real vocabulary does.
_MERGE_TEXT = (
    "the quick brown fox jumps over the lazy dog and then the dog sleeps in the sun "
    "there is a stream of tokens that the server sends to the client one event at a time "
    "hello world this is a test of the interop suite with a real inference server "
    "answer the question in one line please and stop when you are done with the answer "
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu "
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shifted)
            shifted += 1
    return {byte: chr(code) for byte, code in zip(printable, codes, strict=True)}


def learn_merges(text: str, count: int) -> list[tuple[str, str]]:
    """``count`` BPE merges learnt greedily from ``text`` (ties broken by first appearance)."""
    to_unicode = bytes_to_unicode()
    words = Counter(
        tuple(to_unicode[byte] for byte in (" " + word).encode()) for word in text.split()
    )
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, frequency in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += frequency
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], -list(pairs).index(pair)))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, frequency in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += frequency
        words = merged
    return merges


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """Token texts, token types and merges (``"a b"``) of the tiny model's vocabulary."""
    byte_tokens = [bytes_to_unicode()[byte] for byte in range(256)]
    merges = learn_merges(_MERGE_TEXT, MERGE_COUNT)
    merged_tokens = [left + right for left, right in merges]
    specials = [END_OF_TEXT, IM_START, IM_END]
    tokens = byte_tokens + merged_tokens + specials
    assert len(set(tokens)) == len(tokens), "a merge produced a duplicate token"
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(specials)) + [
        gguf.TokenType.CONTROL
    ] * len(specials)
    return tokens, [int(kind) for kind in types], [f"{left} {right}" for left, right in merges]


def output_bias(tokens: list[str]) -> np.ndarray:
    """Logit biases that keep answers to printable ASCII and line feeds, and never end them.

    A random model otherwise samples lone bytes of multi-byte characters, which
    llama-cpp-python holds back until the answer ends (its UTF-8 repair), so nothing would
    stream; and it would end answers at random. The grammar of a forced tool call still
    ends one: once it is complete only an end-of-generation token is allowed.
    """
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}

    def printable(token: str) -> bool:
        return all(0x20 <= to_byte[char] < 0x7F or to_byte[char] == 0x0A for char in token)

    bias = np.zeros(len(tokens), dtype=np.float32)
    for index, token in enumerate(tokens):
        if token in (END_OF_TEXT, IM_START, IM_END) or not printable(token):
            bias[index] = SUPPRESSED_LOGIT
    return bias


def write_tiny_model(path: Path) -> Path:
    """Write the tiny qwen2 model to ``path`` (a ``.gguf`` file) and return the path."""
    tokens, token_types, merges = vocabulary()
    n_vocab = len(tokens)
    head_dim = EMBEDDING_LENGTH // HEAD_COUNT
    n_embd_kv = head_dim * HEAD_COUNT_KV
    rng = np.random.default_rng(SEED)

    def weight(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("qwen-sse interop tiny model")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(EMBEDDING_LENGTH)
    writer.add_block_count(BLOCK_COUNT)
    writer.add_feed_forward_length(FEED_FORWARD_LENGTH)
    writer.add_head_count(HEAD_COUNT)
    writer.add_head_count_kv(HEAD_COUNT_KV)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(END_OF_TEXT))
    writer.add_eos_token_id(tokens.index(IM_END))
    writer.add_pad_token_id(tokens.index(END_OF_TEXT))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    writer.add_tensor("token_embd.weight", weight(n_vocab, EMBEDDING_LENGTH, scale=1.0))
    for block in range(BLOCK_COUNT):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", ones(EMBEDDING_LENGTH))
        writer.add_tensor(f"{prefix}.attn_q.weight", weight(EMBEDDING_LENGTH, EMBEDDING_LENGTH))
        writer.add_tensor(f"{prefix}.attn_q.bias", weight(EMBEDDING_LENGTH))
        writer.add_tensor(f"{prefix}.attn_k.weight", weight(n_embd_kv, EMBEDDING_LENGTH))
        writer.add_tensor(f"{prefix}.attn_k.bias", weight(n_embd_kv))
        writer.add_tensor(f"{prefix}.attn_v.weight", weight(n_embd_kv, EMBEDDING_LENGTH))
        writer.add_tensor(f"{prefix}.attn_v.bias", weight(n_embd_kv))
        writer.add_tensor(
            f"{prefix}.attn_output.weight", weight(EMBEDDING_LENGTH, EMBEDDING_LENGTH)
        )
        writer.add_tensor(f"{prefix}.ffn_norm.weight", ones(EMBEDDING_LENGTH))
        writer.add_tensor(
            f"{prefix}.ffn_gate.weight", weight(FEED_FORWARD_LENGTH, EMBEDDING_LENGTH)
        )
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(FEED_FORWARD_LENGTH, EMBEDDING_LENGTH))
        writer.add_tensor(
            f"{prefix}.ffn_down.weight", weight(EMBEDDING_LENGTH, FEED_FORWARD_LENGTH)
        )
    writer.add_tensor("output_norm.weight", ones(EMBEDDING_LENGTH))
    writer.add_tensor("output.weight", weight(n_vocab, EMBEDDING_LENGTH, scale=1.0))
    writer.add_tensor("output.bias", output_bias(tokens))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
