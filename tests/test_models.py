"""Tests of qwen_sse.models: the documented limits and the pre-flight prompt check."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from qwen_sse.errors import TokenLimitError
from qwen_sse.models import MODEL_LIMITS, ModelLimits, PromptFit, check_prompt_fits, model_limits
from qwen_sse.tokens import message_token_count

HELPFUL = {"role": "system", "content": "You are a helpful assistant."}
WHO = {"role": "user", "content": "你是谁？"}


def digits_prompt(prompt_tokens: int) -> list[dict[str, Any]]:
    """One user message of exactly prompt_tokens billed tokens.

    Digits are one token each; the ChatML frame around a user message adds 8:
    <|im_start|> "user" "\\n" ... <|im_end|> "\\n" <|im_start|> "assistant" "\\n".
    """
    return [{"role": "user", "content": "7" * (prompt_tokens - 8)}]


@pytest.mark.parametrize(
    ("model", "context", "max_input", "max_output"),
    [
        ("qwen-max", 32_768, 30_720, 8_192),
        ("qwen-max-latest", 131_072, 129_024, 8_192),
        ("qwen-plus", 1_000_000, 997_952, 32_768),
        ("qwen-flash", 1_000_000, 997_952, 32_768),
        ("qwen-turbo", 1_000_000, 1_000_000, 16_384),
        ("qwen3-max", 262_144, 258_048, 65_536),
        ("qwq-plus", 131_072, 98_304, 8_192),
        ("qwen-long", 10_000_000, 10_000_000, 32_768),
        ("qwen3.5-plus", 1_000_000, 991_808, 65_536),
        ("qwen3.5-flash", 1_000_000, 991_808, 65_536),
        ("qwen3.6-plus", 1_000_000, 934_464, 65_536),
        ("qwen3-coder-plus", 1_000_000, 997_952, 65_536),
        ("qwen3-coder-flash", 1_000_000, 997_952, 65_536),
        ("qwen-coder-turbo", 131_072, 129_024, 8_192),
        ("qwen-vl-max", 131_072, 129_024, 8_192),
        ("qwen-vl-plus", 131_072, 129_024, 8_192),
        ("qwen3-vl-plus", 262_144, 260_096, 32_768),
        ("qwen-omni-turbo", 32_768, 30_720, 2_048),
        ("qwen3-omni-flash", 65_536, 49_152, 16_384),
        ("qwen-mt-plus", 16_384, 8_192, 8_192),
        ("qwen-mt-turbo", 16_384, 8_192, 8_192),
        ("qwen3-235b-a22b", 131_072, 114_688, 16_384),
        ("qwen3-32b", 131_072, 114_688, 16_384),
    ],
)
def test_documented_limits(model: str, context: int, max_input: int, max_output: int) -> None:
    limits = model_limits(model)
    assert limits is not None
    assert (limits.model, limits.context_tokens) == (model, context)
    assert (limits.max_input_tokens, limits.max_output_tokens) == (max_input, max_output)
    assert limits.max_input_tokens <= limits.context_tokens


def test_table_holds_exactly_the_sourced_models() -> None:
    assert len(MODEL_LIMITS) == 23
    assert all(name == limits.model for name, limits in MODEL_LIMITS.items())
    for limits in MODEL_LIMITS.values():
        assert 0 < limits.max_output_tokens < limits.context_tokens, limits.model
        assert 0 < limits.max_input_tokens <= limits.context_tokens, limits.model


@pytest.mark.parametrize("model", ["qwen-plus", "qwen-flash", "qwen3.5-plus", "qwen3-vl-plus"])
def test_thinking_mode_figures_are_in_the_note(model: str) -> None:
    assert "thinking mode" in MODEL_LIMITS[model].note


def test_qwen3_max_thinking_budget_is_in_the_note() -> None:
    note = MODEL_LIMITS["qwen3-max"].note
    assert "32,768" in note
    assert "81,920" in note


def test_a_derived_max_input_is_context_minus_max_output_and_says_so() -> None:
    derived = [limits for limits in MODEL_LIMITS.values() if "derived" in limits.note]
    assert {limits.model for limits in derived} == {
        "qwen3.6-plus",
        "qwen3-omni-flash",
        "qwen-mt-plus",
        "qwen3-235b-a22b",
        "qwen3-32b",
    }
    for limits in derived:
        assert limits.max_input_tokens == limits.context_tokens - limits.max_output_tokens


@pytest.mark.parametrize(
    "model",
    [
        "qwen-max-2025-01-25",
        "qwen-plus-latest",
        "QWEN-MAX",
        "gpt-4o",
        "",
        "qwen",
        "qwen3-coder-plus-2025-07-22",
        "Qwen/Qwen3-32B",
    ],
)
def test_other_names_are_unknown(model: str) -> None:
    # Snapshots and aliases need not share limits (qwen-max and qwen-max-latest do not).
    assert model_limits(model) is None


def test_room_left() -> None:
    limits = ModelLimits(
        "m", context_tokens=32_768, max_input_tokens=30_720, max_output_tokens=8_192
    )
    assert limits.input_room_tokens(720) == 30_000
    assert limits.input_room_tokens(40_000) == 0
    assert limits.output_room_tokens(100) == 8_192
    assert limits.output_room_tokens(30_000) == 2_768
    assert limits.output_room_tokens(32_768) == 0
    assert limits.output_room_tokens(50_000) == 0


def test_a_fitting_prompt_reports_its_size_and_room() -> None:
    fit = check_prompt_fits([HELPFUL, WHO], "qwen-max")
    assert isinstance(fit, PromptFit)
    assert fit.prompt_tokens == 22
    assert fit.prompt.exact
    assert fit.limits is MODEL_LIMITS["qwen-max"]
    assert fit.input_room_tokens == 30_720 - 22
    assert fit.output_room_tokens == 8_192


def test_the_limit_itself_fits_and_one_more_token_does_not() -> None:
    assert message_token_count(digits_prompt(30_720)).tokens == 30_720
    fit = check_prompt_fits(digits_prompt(30_720), "qwen-max")
    assert fit is not None
    assert (fit.input_room_tokens, fit.output_room_tokens) == (0, 2_048)
    with pytest.raises(TokenLimitError) as raised:
        check_prompt_fits(digits_prompt(30_721), "qwen-max")
    error = raised.value
    assert (error.model, error.prompt_tokens, error.limit) == ("qwen-max", 30_721, 30_720)
    assert str(error) == "prompt is 30721 tokens, over qwen-max's input limit of 30720 tokens"
    assert pickle.loads(pickle.dumps(error)).prompt_tokens == 30_721


def test_the_same_prompt_fits_a_larger_model() -> None:
    fit = check_prompt_fits(digits_prompt(30_721), "qwen-max-latest")
    assert fit is not None
    assert fit.input_room_tokens == 129_024 - 30_721


def test_tool_schemas_count_toward_the_limit() -> None:
    tool = {"type": "function", "function": {"name": "f", "description": "8" * 100}}
    prompt = digits_prompt(30_700)
    assert check_prompt_fits(prompt, "qwen-max") is not None
    with pytest.raises(TokenLimitError):
        check_prompt_fits(prompt, "qwen-max", tools=[tool])


def test_unknown_models_pass_unchecked_and_uncounted() -> None:
    # Not even counted: a prompt that could not be counted passes for an unknown model.
    not_messages: Any = "not a list of messages"
    assert check_prompt_fits(not_messages, "my-local-model") is None
    assert check_prompt_fits(digits_prompt(2_000_000), "qwen-max-2025-01-25") is None
