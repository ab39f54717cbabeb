"""``client.responses.create`` naming a catalog model whose provider has no Responses endpoint
(DeepSeek, Mistral, llama.cpp...), through a real gateway on 127.0.0.1 in front of mock upstreams,
driven by the official openai SDK. With ``providers.NAME.compat.responses: chat`` the request is
translated to a chat completion and run by the chat pipeline (cache, ledger) and the answer comes
back as a Responses object or events; a ``native`` provider is still passed through unchanged, and
its 404 names the setting; ``thrifty init`` writes it for presets whose provider has no /responses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fixtures.served import attempt_rows, received, reset
from thrifty.cli.init_cmd import starter_config
from thrifty.config import load_config
from thrifty.errors import UpstreamStatusError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.server.responses_api import ResponsesEndpoint

ANSWERS = {"answers": [{"pattern": "capital of France", "answer": "Paris"}]}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}

Served = tuple[Gateway, RunningServer, RunningServer, RunningServer]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp: Path = tmp_path_factory.mktemp("responses_chat_providers")
    # A chat-only server (its POST /v1/responses is a 404) and one with the Responses API.
    chat_only = MockConfig.from_dict({"seed": 3, "responses_api": False, "default": ANSWERS})
    full = MockConfig.from_dict({"seed": 3, "default": ANSWERS, "allowed_models": ["gpt"]})
    with run_in_thread(create_mock(chat_only)) as cheap_api, run_in_thread(create_mock(full)) as openai_api:
        gw = Gateway.from_config({
            "providers": {
                "deep": {"base_url": cheap_api.url + "/v1", "max_retries": 0, "compat": {"responses": "chat"}},
                "plain": {"base_url": cheap_api.url + "/v1", "max_retries": 0},  # native: the default
                "oai": {"base_url": openai_api.url + "/v1", "max_retries": 0},
            },
            "models": {
                "flash": {"provider": "deep", "price": {"input": 0.2, "output": 0.4}, "aliases": ["fast"]},
                "flash-native": {"provider": "plain", "upstream_model": "flash", "price": {"input": 0.2, "output": 0.4}},
                "gpt": {"provider": "oai", "price": {"input": 1.0, "output": 4.0}},
                "ghost": {"provider": "oai", "price": {"input": 1.0, "output": 4.0}},  # the upstream refuses it
            },
            "baseline": "gpt",
            "ledger": {"path": str(tmp / "ledger.db")},
            "cache": {"path": str(tmp / "cache.db")},
        })
        with run_in_thread(gw.app()) as server:
            yield gw, server, cheap_api, openai_api
        gw.flush()


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-chat-providers-0", max_retries=0, timeout=20)


def test_a_chat_provider_s_model_answers_through_the_chat_pipeline(served: Served) -> None:
    gw, server, cheap_api, _ = served
    reset(cheap_api)
    raw = client(server).responses.with_raw_response.create(model="flash", instructions="Answer in one word.",
                                                            input="What is the capital of France?")
    response = raw.parse()
    assert response.output_text == "Paris" and response.status == "completed" and response.model == "flash"
    assert response.id == "resp_" + raw.headers["x-thrifty-request-id"]
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert raw.headers["x-thrifty-model"] == "flash" and "x-thrifty-cost-usd" in raw.headers
    # The provider was sent a chat completion, never its missing /responses.
    [call] = received(cheap_api)
    assert call["path"] == "/v1/chat/completions" and call["body"]["model"] == "flash"
    assert call["body"]["messages"] == [{"role": "system", "content": "Answer in one word."},
                                        {"role": "user", "content": "What is the capital of France?"}]
    # Its ledger row: the chat pipeline's, the model asked for, priced.
    [row] = attempt_rows(gw, "r.requested_model, r.served_model, r.status, r.cost_usd, r.stream, a.model, "
                             "a.provider, a.purpose", f"r.request_id = '{raw.headers['x-thrifty-request-id']}'")
    assert (row["requested_model"], row["served_model"], row["status"], row["stream"]) == ("flash", "flash", "ok", 0)
    assert (row["model"], row["provider"]) == ("flash", "deep") and row["purpose"] != "responses"
    assert row["cost_usd"] > 0


def test_an_alias_resolves_and_a_repeat_is_a_cache_hit(served: Served) -> None:
    _, server, cheap_api, _ = served
    ask = {"model": "fast", "input": "Name a colour of the sky at dusk.", "temperature": 0}
    first = client(server).responses.with_raw_response.create(**ask)
    second = client(server).responses.with_raw_response.create(**ask)
    assert (first.headers["x-thrifty-cache"], second.headers["x-thrifty-cache"]) == ("miss", "hit")
    assert second.parse().output_text == first.parse().output_text != ""
    assert first.parse().model == "flash"
    assert all(r["path"] != "/v1/responses" for r in received(cheap_api))


def test_a_tool_call_round_trip(served: Served) -> None:
    _, server, cheap_api, _ = served
    c = client(server)
    question = {"role": "user", "content": "Call get_weather for Paris."}
    first = c.responses.create(model="flash", input=[question], tools=[WEATHER])  # type: ignore[list-item]
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"}
    reset(cheap_api)
    history: list[Any] = [question, *[item.model_dump(exclude_none=True) for item in first.output],
                          {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}]
    final = c.responses.create(model="flash", input=history, tools=[WEATHER])  # type: ignore[list-item]
    assert final.output_text and not [i for i in final.output if i.type == "function_call"]
    [sent] = received(cheap_api)
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"][-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21 C"}


@pytest.mark.parametrize("ask", [
    {"input": "Tell me about the sea."},
    {"input": "Call get_weather for Oslo.", "tools": [WEATHER]},
], ids=["text", "tool_call"])
def test_a_stream(served: Served, ask: dict[str, Any]) -> None:
    gw, server, cheap_api, _ = served
    reset(cheap_api)
    stream = client(server).responses.create(model="flash", stream=True, **ask)
    events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    final = events[-1].response
    assert final.model == "flash" and final.usage is not None and final.usage.output_tokens > 0
    kinds = {e.type for e in events}
    if "tools" in ask:
        assert "response.function_call_arguments.done" in kinds
        assert final.output[0].type == "function_call" and final.output[0].name == "get_weather"
    else:
        assert sum(e.type == "response.output_text.delta" for e in events) > 1 and final.output_text
    assert [r["path"] for r in received(cheap_api)] == ["/v1/chat/completions"]
    rid = final.id.removeprefix("resp_")
    [row] = attempt_rows(gw, "r.served_model, r.status, r.stream", f"r.request_id = '{rid}'")
    assert (row["served_model"], row["status"], row["stream"]) == ("flash", "ok", 1)


def test_what_chat_cannot_carry_is_refused_naming_the_setting(served: Served) -> None:
    _, server, cheap_api, _ = served
    reset(cheap_api)
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).responses.create(model="flash", input="hello", previous_response_id="resp_abc")
    assert caught.value.param == "previous_response_id"
    assert "'flash'" in caught.value.message and "compat.responses: chat" in caught.value.message
    assert received(cheap_api) == []


def test_a_native_provider_is_still_passed_through_unchanged(served: Served) -> None:
    _, server, _, openai_api = served
    reset(openai_api)
    body = {"model": "gpt", "input": "What is the capital of France?", "metadata": {"app": "x"}}
    answer = httpx.post(server.url + "/v1/responses", json=body, timeout=20)
    assert answer.status_code == 200
    [call] = received(openai_api)
    assert call == {"path": "/v1/responses", "body": body}
    # The provider's own response object, as its own GET serves it.
    relayed = answer.json()
    assert relayed["output"][0]["content"][0]["text"] == "Paris"
    assert relayed == httpx.get(f"{openai_api.url}/v1/responses/{relayed['id']}").json()


def test_a_native_provider_s_404_names_the_setting(served: Served) -> None:
    server = served[1]
    with pytest.raises(openai.APIStatusError) as caught:
        client(server).responses.create(model="flash-native", input="What is the capital of France?")
    assert caught.value.status_code == 502 and "HTTP 404" in caught.value.message
    assert "providers.plain.compat.responses: chat" in caught.value.message
    with pytest.raises(openai.APIStatusError) as streamed:
        for _ in client(server).responses.create(model="flash-native", input="Hi.", stream=True):
            pass
    assert "providers.plain.compat.responses: chat" in streamed.value.message
    # A 404 that names the model says the endpoint exists: no such hint.
    with pytest.raises(openai.APIStatusError) as unknown:
        client(server).responses.create(model="ghost", input="Hi.")
    assert "HTTP 404" in unknown.value.message and "compat.responses" not in unknown.value.message


@pytest.mark.parametrize(("preset", "mode"), [("deepseek", "chat"), ("mistral", "chat"), ("together", "chat"),
                                              ("ollama", "chat"), ("vllm", "chat"), ("openai", None),
                                              ("groq", None), ("openrouter", None)])
def test_init_writes_the_setting_for_presets_without_responses(preset: str, mode: str | None) -> None:
    text = starter_config(providers=[preset], discover_models=False)  # no network: no local discovery
    written = yaml.safe_load(text)["providers"][preset]
    assert written.get("compat") == ({"responses": mode} if mode else None)
    # The written file loads, with the setting (`serve` reads the same).
    config = load_config(yaml.safe_load(text), env={})
    assert config.providers[preset].compat.responses == (mode or "native")


def test_a_404_whose_message_names_the_model_gets_no_hint(served: Served) -> None:
    """OpenRouter (which has /responses) answers an unknown model with a 404 whose code is no
    "model_not_found" but whose message names it ("No endpoints found for X."): the endpoint
    exists, so the hint to serve the provider's models as chat would mislead."""
    gw = served[0]
    info = gw.catalog.get("ghost")
    assert info is not None
    named = UpstreamStatusError("openrouter: upstream returned HTTP 404", status=404,
                                body={"error": {"message": f"No endpoints found for {info.upstream_model}.", "code": 404}})
    ResponsesEndpoint().explain(named, info)
    assert "compat.responses" not in named.message
    path = UpstreamStatusError("openrouter: upstream returned HTTP 404", status=404, body={"detail": "Not Found"})
    ResponsesEndpoint().explain(path, info)
    assert f"providers.{info.provider}.compat.responses: chat" in path.message
