"""qwen-sse: an async, SDK-free streaming client for Qwen (DashScope) and OpenAI-compatible APIs.

The public names are re-exported here; see the README for the tour. The client names are
loaded on first use, so that the sans-I/O core (``SSEDecoder``, ``count_tokens``, ...) can
be imported without paying for aiohttp.

Logging: the package logger ``qwen_sse`` gets a ``NullHandler`` and nothing else (no level,
no output); the application decides what shows, or ``QWEN_SSE_LOG`` does
(:mod:`qwen_sse.wirelog`).
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

from qwen_sse.chat import (
    ChatAccumulator,
    ChatResult,
    ChatStreamDecoder,
    ChoiceResult,
    StreamTiming,
    ToolCall,
    ToolCallFunction,
    decode,
)
from qwen_sse.chunks import (
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    DeltaChoice,
    Usage,
)
from qwen_sse.config import Timeouts
from qwen_sse.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConnectTimeoutError,
    ContentFilterError,
    ContextLengthError,
    EventTooLargeError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    InBandError,
    IncompleteStreamError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ProxyError,
    QueueTimeoutError,
    QwenSSEError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    StreamError,
    StreamInterruptedError,
    StreamLimitError,
    TokenLimitError,
    TotalTimeoutError,
    TransportError,
)
from qwen_sse.models import ModelLimits, check_prompt_fits, model_limits
from qwen_sse.sse import ServerSentEvent, SSEComment, SSEDecoder, SSEEncoder
from qwen_sse.tokens import count_message_tokens, count_tokens, message_token_count

if TYPE_CHECKING:
    from qwen_sse.client import ChatStream, QwenClient

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {"ChatStream": "qwen_sse.client", "QwenClient": "qwen_sse.client"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qwen_sse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ChatAccumulator",
    "ChatCompletionChunk",
    "ChatResult",
    "ChatStream",
    "ChatStreamDecoder",
    "ChoiceDelta",
    "ChoiceDeltaToolCall",
    "ChoiceDeltaToolCallFunction",
    "ChoiceResult",
    "ConfigurationError",
    "ConnectTimeoutError",
    "ContentFilterError",
    "ContextLengthError",
    "DeltaChoice",
    "EventTooLargeError",
    "FirstTokenTimeoutError",
    "IdleTimeoutError",
    "InBandError",
    "IncompleteStreamError",
    "ModelLimits",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "ProxyError",
    "QueueTimeoutError",
    "QwenClient",
    "QwenSSEError",
    "RateLimitError",
    "RequestTimeoutError",
    "SSEComment",
    "SSEDecoder",
    "SSEEncoder",
    "ServerError",
    "ServerSentEvent",
    "StreamError",
    "StreamInterruptedError",
    "StreamLimitError",
    "StreamTiming",
    "Timeouts",
    "TokenLimitError",
    "ToolCall",
    "ToolCallFunction",
    "TotalTimeoutError",
    "TransportError",
    "Usage",
    "__version__",
    "check_prompt_fits",
    "count_message_tokens",
    "count_tokens",
    "decode",
    "message_token_count",
    "model_limits",
]
