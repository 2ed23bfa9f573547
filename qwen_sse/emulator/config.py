"""The emulator's server-wide settings (:class:`EmulatorConfig`).

Edge layer (part of :mod:`qwen_sse.emulator`); no I/O.
"""

from __future__ import annotations

import msgspec

from qwen_sse.emulator.faults import Fault, check_count
from qwen_sse.models import MODEL_LIMITS

__all__ = ["DEFAULT_MODELS", "EmulatorConfig"]

DEFAULT_MODELS = tuple(MODEL_LIMITS)
"""The models of protocol.md's table (:data:`qwen_sse.models.MODEL_LIMITS`); by default any
other model name is a 404 ``model_not_found``."""


class EmulatorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Server-wide settings.

    ``api_key`` is the accepted bearer key; None accepts any non-empty one. Timing:
    ``ttft_s`` passes between the request's arrival and the first token (the response
    headers go at once), ``itl_s`` between
    two tokens (a piece of two tokens comes two delays after the one before), each delay
    moved by up to ``jitter_s`` either way (deterministic from ``seed``).
    ``answer_tokens`` is the least length of an answer in tokens (it ends with its
    sentence) when the request sets no ``max_tokens``. ``models`` are the known model
    names. ``fault`` applies to every request that has no fault of its own.
    ``record_requests`` keeps every request in :attr:`Emulator.requests`; a long-running
    server turns it off to bound its memory.
    ``rpm`` and ``tpm`` limit requests and tokens per API key and model over a sliding
    window of ``limit_window_s`` (None: unlimited; see the module). ``backlog`` is the
    listening socket's queue of connections not yet accepted (the kernel caps it at
    ``net.core.somaxconn``): a burst of more new connections than that is dropped and
    retried by the clients' kernels a second or more later. ``context_cache_entries`` is
    how many leading message runs the implicit context cache remembers (0: none, so no
    usage reports cached tokens; see :mod:`~qwen_sse.emulator.context_cache`).
    """

    api_key: str | None = "sk-test"
    ttft_s: float = 0.25
    itl_s: float = 0.03
    jitter_s: float = 0.0
    seed: int = 0
    answer_tokens: int = 40
    models: tuple[str, ...] = DEFAULT_MODELS
    fault: Fault | None = None
    record_requests: bool = True
    rpm: int | None = None
    tpm: int | None = None
    limit_window_s: float = 60.0
    backlog: int = 4096
    context_cache_entries: int = 65536

    def __post_init__(self) -> None:
        for name in ("ttft_s", "itl_s", "jitter_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        check_count("answer_tokens", self.answer_tokens, 1)
        check_count("rpm", self.rpm, 1)
        check_count("tpm", self.tpm, 1)
        check_count("backlog", self.backlog, 1)
        check_count("context_cache_entries", self.context_cache_entries)
        if not self.limit_window_s > 0:
            raise ValueError(f"limit_window_s must be positive, got {self.limit_window_s}")
