"""The official SDKs, which nobody here wrote, stream from the emulator over loopback sockets.

The proof that each framing's bytes are what those clients read as the emulator meant
them: ``openai`` for Chat Completions and Responses, ``anthropic`` for Messages. Each test
compares what the SDK assembled with :func:`emulated_answer` for the equivalent Chat
Completions request, written out by hand (so the framing's reading of its request is
checked too). Where an SDK reads a fault more leniently than qwen-sse does, the test says
so: it pins what the emulator sends, not what the SDK should do about it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anthropic
import openai
import pytest

from qwen_sse.emulator import Emulator, EmulatorConfig, Fault, emulated_answer
from qwen_sse.tokens import count_message_tokens, count_tokens, message_token_count

KEY = "sk-test"
MODEL = "qwen-plus"
QUESTION = "Tell me about streaming."
USER: list[Any] = [{"role": "user", "content": QUESTION}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
TIME_SCHEMA = {"type": "object", "properties": {"zone": {"type": "string"}}}
# The same two functions in each API's shape.
CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_SCHEMA}},
]
RESPONSES_TOOLS: list[Any] = [{"type": "function", **tool["function"]} for tool in CHAT_TOOLS]
ANTHROPIC_TOOLS: list[Any] = [
    {"name": "get_weather", "description": "", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "description": "", "input_schema": TIME_SCHEMA},
]
BOTH = "Use get_weather and get_time."


def chat(messages: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A Chat Completions body: what every protocol's request is read as."""
    return {"model": MODEL, "messages": USER if messages is None else messages, **extra}


def only_text(content: Sequence[Any]) -> str:
    """The text of a Messages content that is one text block."""
    [block] = content
    assert block.type == "text"
    return str(block.text)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(ttft_s=0, itl_s=0)) as emulator:
        yield emulator


@pytest.fixture
async def oai(emu: Emulator) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(api_key=KEY, base_url=emu.base_url, max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def claude(emu: Emulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    base_url = emu.base_url_for("anthropic")
    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=base_url, max_retries=0)
    yield client
    await client.close()


# --- openai: Chat Completions -------------------------------------------------------------------


async def test_openai_chat_stream_text_reasoning_and_usage(oai: openai.AsyncOpenAI) -> None:
    answer = emulated_answer(chat(enable_thinking=True))
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"enable_thinking": True},
    )
    content, reasoning, finish, usage = [], [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            # DashScope's extra field, kept by the SDK as an extra attribute.
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            finish.append(choice.finish_reason)
    assert ("".join(reasoning), "".join(content)) == (answer.reasoning, answer.content)
    assert [reason for reason in finish if reason] == ["stop"]
    assert usage is not None
    assert usage.prompt_tokens == count_message_tokens(USER)
    assert usage.completion_tokens == count_tokens(answer.reasoning) + count_tokens(answer.content)
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == count_tokens(answer.reasoning)


async def test_openai_chat_stream_helper_assembles_dashscopes_tool_call_quirks(
    oai: openai.AsyncOpenAI,
) -> None:
    """The SDK's own accumulator takes the continuation deltas' empty ids and the closing
    ``"function": {}`` delta, and keeps the parallel calls apart by index."""
    messages: list[Any] = [{"role": "user", "content": BOTH}]
    answer = emulated_answer(chat(messages, tools=CHAT_TOOLS, parallel_tool_calls=True))
    async with oai.chat.completions.stream(
        model=MODEL,
        messages=messages,
        tools=CHAT_TOOLS,
        parallel_tool_calls=True,
    ) as stream:
        completion = await stream.get_final_completion()
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(call.function.name, call.function.arguments) for call in calls] == list(
        answer.tool_calls
    )
    assert [call.id for call in calls] == list(answer.tool_call_ids)


async def test_openai_chat_stream_with_n_choices(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        n=3,
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    content: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content[choice.index] = content.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    answers = [emulated_answer(chat(n=3, max_tokens=9), choice=choice) for choice in range(3)]
    assert content == {index: answer.content for index, answer in enumerate(answers)}
    assert finish == {0: "length", 1: "length", 2: "length"}
    assert usage is not None
    assert usage.completion_tokens == sum(a.completion_tokens for a in answers) <= 27


async def test_openai_models_list_and_retrieve(emu: Emulator, oai: openai.AsyncOpenAI) -> None:
    models = [model async for model in oai.models.list()]
    assert [model.id for model in models] == list(emu.config.models)
    assert {(model.object, model.owned_by) for model in models} == {("model", "system")}
    assert all(isinstance(model.created, int) for model in models)
    assert (await oai.models.retrieve("qwen-max")).id == "qwen-max"
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"
    wrong_key = openai.AsyncOpenAI(api_key="sk-wrong", base_url=emu.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong_key.models.list()
    await wrong_key.close()


async def test_openai_temperature_outside_0_to_2_is_a_bad_request(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.chat.completions.create(model=MODEL, messages=USER, temperature=5, stream=True)
    assert refused.value.code == "invalid_parameter_error"
    assert "Range of temperature should be [0.0, 2.0)" in refused.value.message


# --- openai: Responses --------------------------------------------------------------------------


async def test_openai_responses_stream_events_reasoning_and_text(oai: openai.AsyncOpenAI) -> None:
    answer = emulated_answer(chat(enable_thinking=True))
    stream = await oai.responses.create(
        model=MODEL, input=QUESTION, stream=True, extra_body={"enable_thinking": True}
    )
    events = [event async for event in stream]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas: dict[str, str] = {}
    for event in events:
        if event.type in ("response.reasoning_text.delta", "response.output_text.delta"):
            deltas[event.type] = deltas.get(event.type, "") + event.delta
    assert deltas == {
        "response.reasoning_text.delta": answer.reasoning,
        "response.output_text.delta": answer.content,
    }
    completed = events[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    assert usage is not None
    assert usage.input_tokens == count_message_tokens(USER)
    assert usage.output_tokens == count_tokens(answer.reasoning) + count_tokens(answer.content)
    assert usage.output_tokens_details.reasoning_tokens == count_tokens(answer.reasoning)
    assert completed.response.output_text == answer.content


async def test_openai_responses_stream_helper_final_response(oai: openai.AsyncOpenAI) -> None:
    """``responses.stream`` checks the order of items, parts and deltas as it assembles."""
    answer = emulated_answer(chat(enable_thinking=True))
    async with oai.responses.stream(
        model=MODEL, input=QUESTION, extra_body={"enable_thinking": True}
    ) as stream:
        texts = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        response = await stream.get_final_response()
    assert texts == [piece.text for piece in answer.pieces if piece.kind == "content"]
    assert response.status == "completed"
    assert response.output_text == answer.content
    reasoning, message = response.output
    assert reasoning.type == "reasoning"
    assert [part.text for part in reasoning.content or []] == [answer.reasoning]
    assert message.type == "message"


async def test_openai_responses_function_calls(oai: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": BOTH}]
    answer = emulated_answer(chat(messages, tools=CHAT_TOOLS, parallel_tool_calls=True))
    async with oai.responses.stream(
        model=MODEL,
        input=BOTH,
        tools=RESPONSES_TOOLS,
        parallel_tool_calls=True,
    ) as stream:
        arguments = [
            event.delta
            async for event in stream
            if event.type == "response.function_call_arguments.delta"
        ]
        response = await stream.get_final_response()
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(call.name, call.arguments) for call in calls] == list(answer.tool_calls)
    assert [call.call_id for call in calls] == list(answer.tool_call_ids)
    assert "".join(arguments) == "".join(arguments for _, arguments in answer.tool_calls)
    assert response.usage is not None
    prompt = message_token_count(messages, CHAT_TOOLS).tokens
    assert response.usage.input_tokens == prompt

    # The tool loop: the calls and their outputs go back as input items; the answer is text.
    follow_up: list[Any] = [
        {"role": "user", "content": BOTH},
        *(call.model_dump(include={"type", "call_id", "name", "arguments"}) for call in calls),
        *(
            {"type": "function_call_output", "call_id": call.call_id, "output": "42"}
            for call in calls
        ),
    ]
    final = await oai.responses.create(
        model=MODEL,
        input=follow_up,
        tools=RESPONSES_TOOLS,
    )
    assert final.output_text
    assert [item.type for item in final.output] == ["message"]


async def test_openai_responses_max_output_tokens_is_incomplete(oai: openai.AsyncOpenAI) -> None:
    answer = emulated_answer(chat(max_tokens=5))
    stream = await oai.responses.create(
        model=MODEL, input=QUESTION, stream=True, max_output_tokens=5
    )
    events = [event async for event in stream]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == answer.content
    # Not complete, so the helper has no final response to give.
    async with oai.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=5) as helper:
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            await helper.get_final_response()


async def test_openai_responses_under_faults(oai: openai.AsyncOpenAI) -> None:
    answer = emulated_answer(chat())
    error = Fault(error_after_events=6, code="InternalError", message="boom")
    stream = await oai.responses.create(
        model=MODEL, input=QUESTION, stream=True, extra_headers=error.header()
    )
    events = [event async for event in stream]
    # The SDK hands the in-band error over as an event, without raising.
    assert events[-1].type == "error"
    assert (events[-1].code, events[-1].message, events[-1].sequence_number) == (
        "InternalError",
        "boom",
        6,
    )
    # Slow, split and CR-ended streams read the same.
    odd = Fault(line_ending="\r", write_bytes=3, stall_after_events=4, stall_s=0.01)
    async with oai.responses.stream(
        model=MODEL, input=QUESTION, extra_headers=odd.header()
    ) as helper:
        assert (await helper.get_final_response()).output_text == answer.content
    with pytest.raises(openai.APIConnectionError):
        dropped = await oai.responses.create(
            model=MODEL,
            input=QUESTION,
            stream=True,
            extra_headers=Fault(drop_after_events=5).header(),
        )
        async for _ in dropped:
            pass
    with pytest.raises(openai.RateLimitError) as limited:
        await oai.responses.create(
            model=MODEL, input=QUESTION, stream=True, extra_headers=Fault(status=429).header()
        )
    assert limited.value.code == "limit_requests"


# --- anthropic: Messages ------------------------------------------------------------------------


async def test_anthropic_stream_text(claude: anthropic.AsyncAnthropic) -> None:
    answer = emulated_answer(chat(max_tokens=1024))
    async with claude.messages.stream(model=MODEL, max_tokens=1024, messages=USER) as stream:
        pieces = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert pieces == [piece.text for piece in answer.pieces]
    assert only_text(message.content) == answer.content
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == count_message_tokens(USER)
    assert message.usage.output_tokens == count_tokens(answer.content)


async def test_anthropic_stream_thinking(claude: anthropic.AsyncAnthropic) -> None:
    answer = emulated_answer(chat(max_tokens=2048, enable_thinking=True, thinking_budget=1024))
    async with claude.messages.stream(
        model=MODEL,
        max_tokens=2048,
        messages=USER,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        message = await stream.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == answer.reasoning
    assert thinking.signature
    assert text.type == "text"
    assert text.text == answer.content
    expected = count_tokens(answer.reasoning) + count_tokens(answer.content)
    assert message.usage.output_tokens == expected


async def test_anthropic_tool_use_and_the_tool_loop(claude: anthropic.AsyncAnthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": BOTH}]
    answer = emulated_answer(
        chat(messages, max_tokens=1024, tools=CHAT_TOOLS, parallel_tool_calls=True)
    )
    async with claude.messages.stream(
        model=MODEL,
        max_tokens=1024,
        messages=messages,
        tools=ANTHROPIC_TOOLS,
    ) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [(use.id, use.name) for use in uses] == [
        (call_id, name)
        for call_id, (name, _) in zip(answer.tool_call_ids, answer.tool_calls, strict=True)
    ]
    assert [use.input for use in uses] == [json.loads(args) for _, args in answer.tool_calls]

    messages += [
        {"role": "assistant", "content": [use.model_dump() for use in uses]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "42"} for use in uses
            ],
        },
    ]
    final = await claude.messages.create(
        model=MODEL,
        max_tokens=1024,
        messages=messages,
        tools=ANTHROPIC_TOOLS,
    )
    assert final.stop_reason == "end_turn"
    assert [block.type for block in final.content] == ["text"]


async def test_anthropic_max_tokens_and_a_whole_message(claude: anthropic.AsyncAnthropic) -> None:
    answer = emulated_answer(chat(max_tokens=5))
    message = await claude.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert message.stop_reason == "max_tokens"
    assert only_text(message.content) == answer.content
    assert message.usage.output_tokens == count_tokens(answer.content)


async def test_anthropic_errors_and_faults(emu: Emulator, claude: anthropic.AsyncAnthropic) -> None:
    async def final(fault: Fault) -> anthropic.types.Message:
        async with claude.messages.stream(
            model=MODEL,
            max_tokens=1024,
            messages=USER,
            extra_headers=fault.header(),
        ) as stream:
            return await stream.get_final_message()

    answer = emulated_answer(chat(max_tokens=1024))
    with pytest.raises(anthropic.APIStatusError) as in_band:
        await final(Fault(error_after_events=5))
    assert in_band.value.body == {
        "type": "error",
        "error": {
            "type": "data_inspection_failed",
            "message": "Output data may contain inappropriate content.",
        },
    }
    with pytest.raises(anthropic.RateLimitError) as limited:
        await final(Fault(status=429))
    assert isinstance(limited.value.body, dict)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.OverloadedError):
        await final(Fault(status=529, code="overloaded_error", message="Overloaded"))
    odd = await final(Fault(line_ending="\r\n", write_bytes=5, stall_after_events=3, stall_s=0.01))
    assert only_text(odd.content) == answer.content
    # Lenient where qwen-sse is not: without message_stop the SDK still gives a message.
    cut = await final(Fault(no_done=True))
    assert cut.stop_reason == "end_turn"
    assert emu.requests[-1].outcome == "no_done"

    wrong = anthropic.AsyncAnthropic(
        api_key="sk-wrong", base_url=emu.base_url_for("anthropic"), max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError):
        await wrong.messages.create(model=MODEL, max_tokens=5, messages=USER)
    await wrong.close()
