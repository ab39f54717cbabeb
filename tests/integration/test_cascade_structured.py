"""Cascades with structured output and custom tools, over real HTTP: the openai SDK -> thrifty ->
the cheap tier (an in-process function provider, scripted per prompt to answer a given shape) and
the strong tier (the mock upstream). A cheap answer is served only when the client can use it:
``chat.completions.parse`` with a nested Pydantic model, ``json.loads`` of a JSON-mode answer, a
custom (free-form) tool call the client declared."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.providers.function import FunctionProvider, chat_response

# prompt -> the cheap model's answer: text, or {"tool_calls": [...]}
SCRIPT: dict[str, Any] = {}


def cheap(body: dict[str, Any]) -> dict[str, Any]:
    if body["model"] == "grader":  # the judge: grades every answer 10/10, so only form can escalate
        return chat_response("grader", "10")
    answer = SCRIPT[body["messages"][-1]["content"]]
    response = chat_response(body["model"], answer if isinstance(answer, str) else "")
    if isinstance(answer, dict):
        response["choices"][0]["message"].update(content=None, tool_calls=answer["tool_calls"])
        response["choices"][0]["finish_reason"] = "tool_calls"
    return response


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("structured")
    tiers = [{"model": "cheap", "threshold": 0.8}, {"model": "strong"}]
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as upstream:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0},
                          "fn": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
            "models": {"cheap": {"provider": "fn", "price": {"input": 0.1, "output": 0.1}},
                       "cheap2": {"provider": "fn", "price": {"input": 0.1, "output": 0.1}},
                       "grader": {"provider": "fn", "price": {"input": 0.1, "output": 0.1}},
                       "strong": {"provider": "mock", "price": {"input": 1.0, "output": 1.0}}},
            "baseline": "strong",
            "ledger": {"path": str(tmp / "ledger.db")},
            "routing": {"default_route": "main", "routes": {
                "main": {"tiers": tiers, "scorer": {"kind": "heuristic"}},
                "judged": {"tiers": tiers, "scorer": {"kind": "judge", "judge_model": "grader"}},
                # two cheap models that give the same answer: agreeing on fenced JSON is no better
                "agree": {"agreement": {"models": ["cheap", "cheap2"], "fallback": "strong"}},
            }},
        }, providers={"fn": FunctionProvider(cheap)})
        with run_in_thread(gw.app()) as srv:
            yield srv
        gw.flush()


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)


def ask(server: RunningServer, prompt: str, answer: Any, route: str = "main", **params: Any) -> tuple[str, Any]:
    """(the model that served, the SDK's message) when the cheap model answers ``answer``."""
    SCRIPT[prompt] = answer
    raw = client(server).chat.completions.with_raw_response.create(
        model=f"route:{route}", messages=[{"role": "user", "content": prompt}], **params)
    return raw.headers["x-thrifty-model"], raw.parse().choices[0].message


class Address(BaseModel):
    city: str
    zip: int


class Person(BaseModel):
    name: str
    address: Address
    previous: Address | None  # Pydantic: anyOf [{$ref}, {type: null}]
    others: list[Address]


PERSON = {"name": "Ann", "address": {"city": "Paris", "zip": 75001}, "previous": None,
          "others": [{"city": "Lyon", "zip": 69001}]}


@pytest.mark.parametrize("wrong", [
    {**PERSON, "address": {"city": "Paris", "zip": "seventy-five"}},  # inside a $ref'd model
    {**PERSON, "previous": {"city": "Nice"}},  # inside an Optional (anyOf) model
    {**PERSON, "others": [{"city": 5, "zip": 1}]},  # inside a list of models
])
def test_a_cheap_answer_wrong_inside_a_nested_model_escalates_so_parse_succeeds(
        server: RunningServer, wrong: dict[str, Any]) -> None:
    prompt = f"Who is Ann? {json.dumps(wrong)}"
    SCRIPT[prompt] = json.dumps(wrong)
    raw = client(server).chat.completions.with_raw_response.parse(
        model="route:main", messages=[{"role": "user", "content": prompt}], response_format=Person)
    assert raw.headers["x-thrifty-model"] == "strong"
    assert isinstance(raw.parse().choices[0].message.parsed, Person)
    # The same shape answered right is served, the Optional model present or null.
    for previous in (None, {"city": "Nice", "zip": 6000}):
        prompt = f"Who is Ann, previously {previous}?"
        SCRIPT[prompt] = json.dumps({**PERSON, "previous": previous})
        raw = client(server).chat.completions.with_raw_response.parse(
            model="route:main", messages=[{"role": "user", "content": prompt}], response_format=Person)
        assert raw.headers["x-thrifty-model"] == "cheap"
        parsed = raw.parse().choices[0].message.parsed
        assert parsed is not None and parsed.address.zip == 75001 and parsed.others[0].city == "Lyon"


def test_a_remote_schema_reference_is_never_fetched_and_the_answer_escalates(server: RunningServer) -> None:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b'{"type": "object", "required": ["id"]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    schemas = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=schemas.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{schemas.server_address[1]}/item.json"
        fmt = {"type": "json_schema", "json_schema": {"name": "item", "schema": {"$ref": url}}}
        served, _ = ask(server, "An item, by a remote schema", '{"name": "no id"}', response_format=fmt)
    finally:
        schemas.shutdown()
        schemas.server_close()
    # The cheap answer cannot be shown to fit a schema thrifty may not fetch: escalated, not served.
    assert served == "strong" and hits == []


NOT_BARE = ['```json\n{"city": "Paris"}\n```', 'Here is the JSON: {"city": "Paris"}', '{"city": "Paris"}\nHope this helps!']


@pytest.mark.parametrize("fmt", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "place", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
])
@pytest.mark.parametrize("route", ["main", "judged", "agree"])
def test_json_in_a_fence_or_prose_escalates_under_a_response_format(
        server: RunningServer, fmt: dict[str, Any], route: str) -> None:
    for answer in NOT_BARE:
        served, message = ask(server, f"Where? {answer!r} {fmt['type']} {route}", answer, route, response_format=fmt)
        assert served == "strong", answer
        assert isinstance(json.loads(message.content), dict)  # what the client does with JSON mode
    # Bare JSON, whitespace around it aside, is the cheap answer served.
    served, message = ask(server, f"Where, bare? {fmt['type']} {route}", '\n  {"city": "Paris"}  \n',
                          route, response_format=fmt)
    assert served == "cheap" and json.loads(message.content) == {"city": "Paris"}


CUSTOM_TOOLS = [
    {"type": "custom", "custom": {"name": "run_sql", "description": "Run one SQL query"}},
    {"type": "custom", "custom": {"name": "pick", "description": "yes or no",
                                  "format": {"type": "grammar", "grammar": {"syntax": "regex",
                                                                            "definition": "^(yes|no)$"}}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]


def custom_call(name: str, value: Any) -> dict[str, Any]:
    return {"tool_calls": [{"id": "call_1", "type": "custom", "custom": {"name": name, "input": value}}]}


def test_a_custom_tool_call_naming_a_declared_custom_tool_is_served(server: RunningServer) -> None:
    served, message = ask(server, "How many users?", custom_call("run_sql", "SELECT count(*) FROM users"),
                          tools=CUSTOM_TOOLS)
    assert served == "cheap"
    call = message.tool_calls[0]
    assert call.type == "custom" and call.custom.name == "run_sql" and call.custom.input.startswith("SELECT")
    # A grammar-format tool's grammar is not checked: an input outside ^(yes|no)$ is served as given.
    served, message = ask(server, "Yes or no?", custom_call("pick", "maybe"), tools=CUSTOM_TOOLS)
    assert served == "cheap" and message.tool_calls[0].custom.input == "maybe"
    # Calls the client cannot use escalate, as an unknown function does.
    for bad in (
        custom_call("drop_tables", "DROP TABLE users"),  # not declared at all
        custom_call("get_weather", "Paris"),  # a function tool called as a custom one
        custom_call("run_sql", {"query": "SELECT 1"}),  # the input is not a string
        {"tool_calls": [{"id": "c", "type": "function", "function": {"name": "run_sql", "arguments": "{}"}}]},
    ):
        served, _ = ask(server, f"Users? {json.dumps(bad)}", bad, tools=CUSTOM_TOOLS)
        assert served == "strong", bad


def test_tool_choice_naming_a_custom_tool_is_kept(server: RunningServer) -> None:
    choice = {"type": "custom", "custom": {"name": "run_sql"}}
    served, _ = ask(server, "Users, forced?", custom_call("run_sql", "SELECT 1"), tools=CUSTOM_TOOLS,
                    tool_choice=choice)
    assert served == "cheap"
    served, _ = ask(server, "Users, forced elsewhere?", custom_call("pick", "yes"), tools=CUSTOM_TOOLS,
                    tool_choice=choice)
    assert served == "strong"
