"""Neutral items to and from the OpenAI and Anthropic wire formats, both directions."""

from __future__ import annotations

import itertools
import json
import pickle

import anthropic.types
import openai.types.chat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torpor.agent import (
    TOOL_ERROR_PREFIX,
    AssistantText,
    Item,
    ItemFormatError,
    ModelReply,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
    UserText,
    anthropic_reply,
    anthropic_request,
    anthropic_response,
    item_from_json,
    items_from_anthropic_request,
    items_from_json,
    items_from_openai_request,
    items_to_json,
    openai_reply,
    openai_request,
    openai_response,
    parse_tool_arguments,
)

WRITE = ToolSpec(
    "write_file",
    "Write a file in the workspace.",
    {
        "type": "object",
        "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["path", "content"],
    },
)
SHELL = ToolSpec("shell", "Run a shell command.", {"type": "object", "properties": {}})

# A conversation with a multi-turn history, parallel tool calls, an error result and a call
# whose arguments were not JSON: every case the formats must carry.
CONVERSATION: list[Item] = [
    UserText("write two files"),
    AssistantText("Writing both."),
    ToolCall("c1", "write_file", {"path": "a.txt", "content": "A"}),
    ToolCall("c2", "write_file", {"path": "b.txt", "content": "B"}),
    ToolResult("c1", "wrote a.txt"),
    ToolResult("c2", "disk full", is_error=True),
    ToolCall("c3", "shell", None, raw_arguments='{"cmd": "df'),
    ToolResult("c3", "arguments are not valid JSON", is_error=True),
    AssistantText("b.txt failed."),
    UserText("ok, stop"),
    AssistantText("Stopped."),
]


# --- items --------------------------------------------------------------------------------


def test_items_json_round_trip() -> None:
    data = items_to_json(CONVERSATION)
    assert data[6] == {
        "type": "tool_call",
        "id": "c3",
        "name": "shell",
        "arguments": None,
        "raw_arguments": '{"cmd": "df',
    }
    assert data[2] == {
        "type": "tool_call",
        "id": "c1",
        "name": "write_file",
        "arguments": {"path": "a.txt", "content": "A"},
    }
    assert items_from_json(json.loads(json.dumps(data))) == CONVERSATION


def test_model_reply_json_round_trip() -> None:
    reply = ModelReply(CONVERSATION[1:4], Usage(12, 34), "m", "tool_use")  # type: ignore[arg-type]
    assert ModelReply.from_json(json.loads(json.dumps(reply.to_json()))) == reply
    assert reply.text == "Writing both."
    assert [c.id for c in reply.tool_calls] == ["c1", "c2"]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"type": "robot", "text": "x"}, "item.type"),
        ({"type": "user"}, "item.text"),
        ({"type": "tool_call", "id": "c", "name": "n", "arguments": [1]}, "item.arguments"),
        ({"type": "tool_call", "id": "c", "name": "n", "arguments": None}, "item.raw_arguments"),
        ({"type": "tool_result", "id": "c", "content": "x", "is_error": "no"}, "item.is_error"),
        ("user", "item"),
    ],
)
def test_malformed_items_name_the_field(data: object, where: str) -> None:
    with pytest.raises(ItemFormatError) as info:
        item_from_json(data)
    assert info.value.where == where
    assert str(info.value).startswith(where + ": ")
    assert isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.where, again.problem) == (info.value.where, info.value.problem)


def test_reply_holds_only_assistant_items() -> None:
    with pytest.raises(ItemFormatError, match="not UserText"):
        ModelReply([UserText("hi")])  # type: ignore[list-item]
    with pytest.raises(ItemFormatError, match="exactly one of"):
        ToolCall("c", "n", {"a": 1}, raw_arguments="{}")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ('{"a": 1}', {"a": 1}),
        ("", {}),
        ("  ", {}),
        ("[1, 2]", None),
        ("42", None),
        ('{"a": NaN}', None),
        ('{"a": ', None),
    ],
)
def test_parse_tool_arguments(text: str, parsed: dict[str, object] | None) -> None:
    assert parse_tool_arguments(text) == parsed


# --- OpenAI -------------------------------------------------------------------------------


def test_openai_request_shape() -> None:
    body = openai_request("gpt-x", "be brief", CONVERSATION, [WRITE], max_tokens=100)
    assert body["model"] == "gpt-x"
    assert body["max_completion_tokens"] == 100
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "write_file",
                "description": WRITE.description,
                "parameters": WRITE.parameters,
            },
        }
    ]
    assert body["messages"][:6] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "write two files"},
        {
            # Text and parallel calls of one turn travel as one assistant message.
            "role": "assistant",
            "content": "Writing both.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "write_file",
                        "arguments": '{"path": "a.txt", "content": "A"}',
                    },
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {
                        "name": "write_file",
                        "arguments": '{"path": "b.txt", "content": "B"}',
                    },
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "wrote a.txt"},
        {"role": "tool", "tool_call_id": "c2", "content": "Error: disk full"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c3",
                    "type": "function",
                    "function": {"name": "shell", "arguments": '{"cmd": "df'},
                }
            ],
        },
    ]
    assert len(body["messages"]) == 10
    assert "tools" not in openai_request("m", None, [], [])
    assert openai_request("m", None, [], [], 5, max_tokens_field="max_tokens")["max_tokens"] == 5


def test_openai_request_round_trip() -> None:
    body = json.loads(json.dumps(openai_request("gpt-x", "sys", CONVERSATION, [WRITE, SHELL])))
    assert items_from_openai_request(body) == ("gpt-x", "sys", CONVERSATION, [WRITE, SHELL])


def test_openai_reply_parses_a_real_shaped_response() -> None:
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x-2025",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "",  # servers send "" next to tool calls
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "write_file", "arguments": '{"path": "x"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "write_file", "arguments": "{'path': 'y'}"},
                        },
                    ],
                },
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57},
    }
    assert openai_reply(response) == ModelReply(
        [
            ToolCall("call_1", "write_file", {"path": "x"}),
            ToolCall("call_2", "write_file", None, raw_arguments="{'path': 'y'}"),
        ],
        Usage(50, 7),
        "gpt-x-2025",
        "tool_use",
    )


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("tool_calls", "tool_use"), ("length", "max_tokens")],
)
def test_openai_finish_reasons(finish: str, stop: str) -> None:
    reply = ModelReply([AssistantText("x")], Usage(1, 2), "m", stop)
    response = openai_response(reply, id="chatcmpl-1")
    assert response["choices"][0]["finish_reason"] == finish
    assert openai_reply(response) == reply


def test_openai_response_is_a_valid_chat_completion() -> None:
    reply = ModelReply(CONVERSATION[1:4], Usage(3, 4), "gpt-x", "tool_use")  # type: ignore[arg-type]
    response = openai_response(reply, id="chatcmpl-abc", created=123)
    completion = openai.types.chat.ChatCompletion.model_validate(response)
    assert completion.id == "chatcmpl-abc"
    assert completion.usage is not None and completion.usage.total_tokens == 7
    assert completion.choices[0].message.tool_calls is not None
    assert openai_reply(response) == reply


def test_openai_malformed_bodies_raise_item_format_error() -> None:
    with pytest.raises(ItemFormatError, match=r"request\.messages: expected a list"):
        items_from_openai_request({"model": "m"})
    with pytest.raises(ItemFormatError, match=r"messages\[0\]\.role: unsupported role"):
        items_from_openai_request({"model": "m", "messages": [{"role": "robot"}]})
    with pytest.raises(ItemFormatError, match="only text parts"):
        items_from_openai_request(
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
        )
    with pytest.raises(ItemFormatError, match="no choices"):
        openai_reply({"choices": []})


# --- Anthropic ------------------------------------------------------------------------------


def test_anthropic_request_shape() -> None:
    body = anthropic_request("claude-x", "be brief", CONVERSATION, [WRITE], max_tokens=100)
    assert body["system"] == "be brief"
    assert body["max_tokens"] == 100
    assert body["tools"] == [
        {"name": "write_file", "description": WRITE.description, "input_schema": WRITE.parameters}
    ]
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4
    assert messages[1]["content"] == [
        {"type": "text", "text": "Writing both."},
        {"type": "tool_use", "id": "c1", "name": "write_file", "input": CONVERSATION[2].arguments},
        {"type": "tool_use", "id": "c2", "name": "write_file", "input": CONVERSATION[3].arguments},
    ]  # fmt: skip
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "wrote a.txt", "is_error": False},
        {"type": "tool_result", "tool_use_id": "c2", "content": "disk full", "is_error": True},
    ]
    # Malformed arguments cannot be an `input`; they travel as an empty object.
    assert messages[3]["content"] == [
        {"type": "tool_use", "id": "c3", "name": "shell", "input": {}}
    ]
    assert messages[4]["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "c3",
            "content": "arguments are not valid JSON",
            "is_error": True,
        }
    ]


def test_anthropic_request_round_trip() -> None:
    body = json.loads(json.dumps(anthropic_request("claude-x", "sys", CONVERSATION, [WRITE], 9)))
    expected = [
        ToolCall("c3", "shell", {}) if isinstance(i, ToolCall) and i.arguments is None else i
        for i in CONVERSATION
    ]
    assert items_from_anthropic_request(body) == ("claude-x", "sys", expected, [WRITE])


def test_anthropic_request_accepts_string_content_and_system_blocks() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "r"}],
                    }
                ],
            },
        ],
    }
    assert items_from_anthropic_request(body) == (
        "m",
        "a\nb",
        [UserText("hi"), AssistantText("hello"), ToolResult("t", "r", False)],
        [],
    )


def test_anthropic_response_is_a_valid_message() -> None:
    reply = ModelReply(
        [AssistantText("a"), ToolCall("t1", "shell", {"cmd": "ls"}), AssistantText("b")],
        Usage(10, 20),
        "claude-x",
        "tool_use",
    )
    response = anthropic_response(reply, id="msg_1")
    message = anthropic.types.Message.model_validate(response)
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 20
    assert anthropic_reply(response) == reply


def test_anthropic_reply_skips_blocks_it_cannot_hold() -> None:
    response = {
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "hi"},
        ],
        "model": "m",
        "stop_reason": None,
    }
    assert anthropic_reply(response) == ModelReply([AssistantText("hi")], Usage(0, 0), "m")


def test_anthropic_malformed_bodies_raise_item_format_error() -> None:
    with pytest.raises(ItemFormatError, match="unsupported user content block 'tool_use'"):
        items_from_anthropic_request(
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_use"}]}]}
        )
    with pytest.raises(ItemFormatError, match=r"request\.model: expected a string"):
        items_from_anthropic_request({"messages": []})


# --- properties over generated conversations ------------------------------------------------

_ids = st.text("abcdefghij0123456789_-", min_size=1, max_size=8)
_names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
_text = st.text(max_size=30)
_json_leaf = st.none() | st.booleans() | st.integers() | _text
_json_leaf |= st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_arguments = st.dictionaries(_text, _json, max_size=4)
_raw = _text.filter(lambda s: parse_tool_arguments(s) is None)

_tool_call = st.builds(ToolCall, _ids, _names, _arguments) | st.builds(
    lambda i, n, raw: ToolCall(i, n, None, raw), _ids, _names, _raw
)
_item = st.one_of(
    st.builds(UserText, _text),
    st.builds(AssistantText, _text),
    _tool_call,
    st.builds(ToolResult, _ids, _text, st.booleans()),
)
_conversation = st.lists(_item, max_size=12)
_tools = st.lists(st.builds(ToolSpec, _names, _text, st.just(SHELL.parameters)), max_size=3)
_system = st.none() | _text


def openai_normal_form(items: list[Item]) -> list[Item]:
    """The conversation as OpenAI's format can say it (the losses ``_wire`` documents)."""
    out: list[Item] = []
    turn: list[Item] = []

    def flush() -> None:
        out.extend(i for i in turn if isinstance(i, AssistantText) and i.text)
        out.extend(i for i in turn if isinstance(i, ToolCall))
        turn.clear()

    for item in items:
        if isinstance(item, AssistantText | ToolCall):
            turn.append(item)
            continue
        flush()
        if isinstance(item, ToolResult) and item.content.startswith(TOOL_ERROR_PREFIX):
            item = ToolResult(item.id, item.content.removeprefix(TOOL_ERROR_PREFIX), True)
        out.append(item)
    flush()
    return out


def anthropic_normal_form(items: list[Item]) -> list[Item]:
    """The conversation as Anthropic's format can say it."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, AssistantText) and not item.text:
            continue
        if isinstance(item, ToolCall) and item.arguments is None:
            item = ToolCall(item.id, item.name, {})
        out.append(item)
    return out


@settings(max_examples=150, deadline=None)
@given(_conversation, _tools, _system)
def test_openai_request_round_trip_property(
    items: list[Item], tools: list[ToolSpec], system: str | None
) -> None:
    body = json.loads(json.dumps(openai_request("m", system, items, tools)))
    assert items_from_openai_request(body) == ("m", system, openai_normal_form(items), tools)
    # Losses are only ever the documented ones: a normal-form conversation is a fixed point.
    normal = openai_normal_form(items)
    assert items_from_openai_request(openai_request("m", system, normal, tools))[2] == normal


@settings(max_examples=150, deadline=None)
@given(_conversation, _tools, _system)
def test_anthropic_request_round_trip_property(
    items: list[Item], tools: list[ToolSpec], system: str | None
) -> None:
    body = json.loads(json.dumps(anthropic_request("m", system, items, tools, 64)))
    assert items_from_anthropic_request(body) == (
        "m",
        system,
        anthropic_normal_form(items),
        tools,
    )
    roles = [m["role"] for m in body["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "roles must alternate"


_reply_items = st.lists(st.builds(AssistantText, _text.filter(bool)) | _tool_call, max_size=5)
_usage = st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**6))
_stop = st.sampled_from(["end_turn", "tool_use", "max_tokens", "content_filter"])


@settings(max_examples=150, deadline=None)
@given(_reply_items, _usage, _stop)
def test_openai_reply_round_trip_property(items: list, usage: Usage, stop: str) -> None:
    texts = "".join(i.text for i in items if isinstance(i, AssistantText))
    calls = [i for i in items if isinstance(i, ToolCall)]
    reply = ModelReply(items, usage, "m", stop)
    response = json.loads(json.dumps(openai_response(reply, id="chatcmpl-1")))
    # One choice message holds one content string, so several texts come back as one.
    expected = ModelReply(([AssistantText(texts)] if texts else []) + calls, usage, "m", stop)
    assert openai_reply(response) == expected
    openai.types.chat.ChatCompletion.model_validate(response)


@settings(max_examples=150, deadline=None)
@given(_reply_items, _usage, _stop)
def test_anthropic_reply_round_trip_property(items: list, usage: Usage, stop: str) -> None:
    reply = ModelReply(items, usage, "m", stop)
    response = json.loads(json.dumps(anthropic_response(reply, id="msg_1")))
    expected_stop = "refusal" if stop == "content_filter" else stop
    assert anthropic_reply(response) == ModelReply(
        anthropic_normal_form(items),  # type: ignore[arg-type]
        usage,
        "m",
        expected_stop,
    )
    anthropic.types.Message.model_validate(response)


@settings(max_examples=100, deadline=None)
@given(_conversation)
def test_items_json_round_trip_property(items: list[Item]) -> None:
    assert items_from_json(json.loads(json.dumps(items_to_json(items)))) == items
