"""Tests of qwen_sse.protocols: what every registered protocol promises of its interface."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_sse import protocols
from qwen_sse.protocols import WireProtocol

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
SENTINEL = {"set": "by the caller"}
# Defaults a protocol only proposes, which a caller's params may change.
CHANGEABLE_DEFAULTS = frozenset({"max_tokens"})


def body(protocol: WireProtocol, params: dict[str, Any]) -> dict[str, Any]:
    return protocol.request_body("qwen-plus", MESSAGES, params, include_usage=True)


@pytest.mark.parametrize("protocol", protocols.PROTOCOLS.values(), ids=protocols.NAMES)
def test_built_fields_are_exactly_what_params_would_replace(protocol: WireProtocol) -> None:
    built = body(protocol, {})
    for field in protocol.built_fields:
        assert field in built, field
        assert body(protocol, {field: SENTINEL})[field] == SENTINEL, field
    for field in built:
        replaced = body(protocol, {field: SENTINEL})[field] == SENTINEL
        assert replaced == (field in protocol.built_fields or field in CHANGEABLE_DEFAULTS), field
