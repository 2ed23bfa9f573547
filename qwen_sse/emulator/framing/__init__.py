"""The framings the emulator serves, one module per wire protocol, by protocol name.

Edge layer (part of :mod:`qwen_sse.emulator`). The server routes every framing of
:data:`FRAMINGS` at its protocol's ``root + path``; nothing else looks a framing up.
"""

from __future__ import annotations

from collections.abc import Mapping

from qwen_sse.emulator.framing.anthropic import ANTHROPIC_FRAMING
from qwen_sse.emulator.framing.base import Answering, Endpoint, Framing, Reply
from qwen_sse.emulator.framing.compatible import COMPATIBLE_FRAMING
from qwen_sse.emulator.framing.native import MULTIMODAL_FRAMING, NATIVE_FRAMING
from qwen_sse.emulator.framing.responses import RESPONSES_FRAMING

__all__ = ["FRAMINGS", "Answering", "Endpoint", "Framing", "Reply", "framing_for"]

FRAMINGS: Mapping[str, Framing] = {
    framing.protocol.name: framing
    for framing in (
        COMPATIBLE_FRAMING,
        NATIVE_FRAMING,
        MULTIMODAL_FRAMING,
        RESPONSES_FRAMING,
        ANTHROPIC_FRAMING,
    )
}
"""Every framing, by the name of the protocol it serves."""


def framing_for(protocol: str | Endpoint) -> Framing:
    """The framing of ``protocol`` (a name or a protocol object); ValueError for a protocol
    the emulator does not serve."""
    name = protocol if isinstance(protocol, str) else protocol.name
    try:
        return FRAMINGS[name]
    except KeyError:
        served = ", ".join(FRAMINGS)
        raise ValueError(
            f"the emulator does not serve protocol {name!r}; it serves {served}"
        ) from None
