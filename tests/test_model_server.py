"""The scripted model server, driven over real HTTP by the official OpenAI and Anthropic SDKs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

from torpor.agent import (
    AssistantText,
    ModelReply,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
    UserText,
    anthropic_reply,
    anthropic_request,
    openai_reply,
    openai_request,
)
from torpor.testing import ScriptedModelServer, ScriptedRequest, reply_text, reply_tool_calls

WRITE = ToolSpec(
    "write_file",
    "Write a file.",
    {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}},
)


def openai_client(server: ScriptedModelServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)


def anthropic_client(server: ScriptedModelServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0)


def test_openai_sdk_gets_text_and_parallel_tool_calls() -> None:
    script = [
        reply_tool_calls(
            [("write_file", {"path": "a", "content": "1"}), ("write_file", {"path": "b"})],
            text="two files",
            ids=["call_a", "call_b"],
        ),
        "done",
    ]
    with ScriptedModelServer(script) as server:
        client = openai_client(server)
        first = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "write"}]
        )
        message = first.choices[0].message
        assert first.model == "gpt-test"  # echoed when the script names no model
        assert first.choices[0].finish_reason == "tool_calls"
        assert message.content == "two files"
        assert message.tool_calls is not None
        calls = [
            (c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls
        ]  # type: ignore[union-attr]
        assert calls == [
            ("call_a", "write_file", {"path": "a", "content": "1"}),
            ("call_b", "write_file", {"path": "b"}),
        ]
        assert first.usage is not None and first.usage.prompt_tokens > 0
        second = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "write"}]
        )
        assert second.choices[0].message.content == "done"
        assert second.choices[0].finish_reason == "stop"
        assert server.call_count == 2


def test_anthropic_sdk_gets_text_and_tool_use() -> None:
    script = [reply_tool_calls([("write_file", {"path": "a"})], text="ok", ids=["toolu_1"])]
    with ScriptedModelServer(script) as server:
        message = anthropic_client(server).messages.create(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "go"}]
        )
    assert message.model == "claude-test"
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    tool_use = message.content[1]
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == ("toolu_1", "write_file", {"path": "a"})
    assert message.usage.input_tokens > 0


def test_one_script_is_consumed_in_order_across_both_endpoints() -> None:
    replies = [reply_text("one", usage=Usage(5, 6)), "two", "three"]
    with ScriptedModelServer(replies) as server:
        a = openai_client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        b = anthropic_client(server).messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
        c = openai_client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        assert [a.choices[0].message.content, b.content[0].text, c.choices[0].message.content] == [  # type: ignore[union-attr]
            "one",
            "two",
            "three",
        ]
        assert a.usage is not None and (a.usage.prompt_tokens, a.usage.completion_tokens) == (5, 6)
        assert [call.api for call in server.calls] == ["openai", "anthropic", "openai"]


def test_exhausted_script_raises_the_sdk_error_types() -> None:
    with ScriptedModelServer(["only"]) as server:
        openai_client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        with pytest.raises(openai.InternalServerError, match="script is exhausted"):
            openai_client(server).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(anthropic.InternalServerError) as info:
            anthropic_client(server).messages.create(
                model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert "it has 1 replies and this is request 3" in info.value.message
        assert server.call_count == 3
        assert len(server.errors) == 2


def test_callable_script_sees_neutral_items_from_both_formats() -> None:
    seen: list[ScriptedRequest] = []

    def script(request: ScriptedRequest) -> ModelReply | str:
        seen.append(request)
        return f"{request.api}: {len(request.tool_results)} results"

    conversation = [
        UserText("write a"),
        AssistantText("writing"),
        ToolCall("c1", "write_file", {"path": "a"}),
        ToolResult("c1", "disk full", is_error=True),
    ]
    with ScriptedModelServer(script) as server:
        body = openai_request("gpt-test", "be brief", conversation, [WRITE])
        response = openai_client(server).chat.completions.create(**body)
        assert openai_reply(response.model_dump()).text == "openai: 1 results"
        body = anthropic_request("claude-test", "be brief", conversation, [WRITE], 50)
        message = anthropic_client(server).messages.create(**body)
        assert anthropic_reply(message.model_dump()).text == "anthropic: 1 results"
    for request in seen:
        assert (request.system, request.items, request.tools) == ("be brief", conversation, [WRITE])
    assert [r.model for r in seen] == ["gpt-test", "claude-test"]
    assert seen[0].body["messages"][0] == {"role": "system", "content": "be brief"}


def test_an_agent_turn_loop_through_the_sdks() -> None:
    """A two-turn tool loop as a provider would run it: neutral items in, ModelReply out."""

    def script(request: ScriptedRequest) -> ModelReply:
        done = len(request.tool_results)
        if done < 2:
            return reply_tool_calls([("write_file", {"path": f"f{done}"})], ids=[f"call-{done}"])
        return reply_text("wrote f0 and f1")

    for api in ("openai", "anthropic"):
        with ScriptedModelServer(script) as server:
            items: list = [UserText("write two files")]
            while True:
                if api == "openai":
                    body = openai_request("m", None, items, [WRITE], max_tokens=100)
                    raw = openai_client(server).chat.completions.create(**body).model_dump()
                    reply = openai_reply(raw)
                else:
                    body = anthropic_request("m", None, items, [WRITE], max_tokens=100)
                    reply = anthropic_reply(
                        anthropic_client(server).messages.create(**body).model_dump()
                    )
                items.extend(reply.items)
                if not reply.tool_calls:
                    break
                items.extend(ToolResult(c.id, f"wrote {c.arguments}") for c in reply.tool_calls)
            assert reply.text == "wrote f0 and f1"
            assert reply.stop_reason == "end_turn"
            assert server.call_count == 3
            assert [type(i).__name__ for i in items] == [
                "UserText",
                "ToolCall",
                "ToolResult",
                "ToolCall",
                "ToolResult",
                "AssistantText",
            ]


def test_a_pure_script_answers_a_resent_turn_the_same() -> None:
    def script(request: ScriptedRequest) -> ModelReply:
        n = len(request.tool_results)
        return reply_tool_calls([("write_file", {"path": f"p{n}"})], ids=[f"call-{n}"])

    with ScriptedModelServer(script) as server:
        client = openai_client(server)
        messages = [{"role": "user", "content": "go"}]
        first = client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        again = client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert first.choices[0].message.tool_calls == again.choices[0].message.tool_calls
        assert server.call_count == 2
        assert server.calls[0].items == server.calls[1].items


def test_state_file_carries_a_list_script_across_servers(tmp_path: Path) -> None:
    state = tmp_path / "script-state"
    messages = [{"role": "user", "content": "x"}]
    with ScriptedModelServer(["first", "second"], state_file=state) as server:
        r = openai_client(server).chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "first"
    assert state.read_text() == "1"
    with ScriptedModelServer(["first", "second"], state_file=state) as server:
        r = openai_client(server).chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "second"


def test_failing_script_function_is_a_500() -> None:
    def script(request: ScriptedRequest) -> ModelReply:
        raise KeyError("no reply for this turn")

    with (
        ScriptedModelServer(script) as server,
        pytest.raises(openai.InternalServerError, match="the script raised KeyError"),
    ):
        openai_client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )


IMAGE = {"type": "url", "url": "http://example.invalid/a.png"}


def post(url: str, body: object, headers: dict[str, str]) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_malformed_and_unauthenticated_requests_get_api_shaped_errors() -> None:
    good = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    auth = {"content-type": "application/json", "x-api-key": "k"}
    with ScriptedModelServer(["never served"]) as server:
        chat, messages = f"{server.url}/v1/chat/completions", f"{server.url}/v1/messages"
        status, body = post(messages, good, {"content-type": "application/json"})
        assert status == 401
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        status, body = post(chat, b"{not json", auth)
        assert status == 400 and "not JSON" in body["error"]["message"]
        status, body = post(chat, {"model": "m", "messages": [{"role": "robot"}]}, auth)
        assert (status, body["error"]["type"]) == (400, "invalid_request_error")
        assert "unsupported role" in body["error"]["message"]
        status, body = post(messages, {**good, "max_tokens": None}, auth)
        assert status == 400 and body["error"]["message"].endswith("max_tokens: Field required")
        status, body = post(chat, {**good, "stream": True}, auth)
        assert status == 400 and "does not stream" in body["error"]["message"]
        status, body = post(f"{server.url}/v1/embeddings", good, auth)
        assert status == 404
        assert server.call_count == 0  # none of these reached the script
        with pytest.raises(anthropic.BadRequestError, match="unsupported user content block"):
            anthropic_client(server).messages.create(
                model="m",
                max_tokens=5,
                messages=[{"role": "user", "content": [{"type": "image", "source": IMAGE}]}],
            )


def test_lifecycle() -> None:
    server = ScriptedModelServer([])
    with pytest.raises(RuntimeError, match="call start"):
        _ = server.url
    server.start()
    assert server.start() is server
    assert server.openai_base_url == server.url + "/v1"
    assert server.anthropic_base_url == server.url
    server.stop()
    server.stop()
