"""Auto routing through the real pipeline with function providers: labels, rules, embedding
classifier, formats, default route, named routes, and the config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from thrifty.errors import ConfigError, NotFoundError
from thrifty.gateway import Gateway
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.routing.config import parse_routing

MC = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"


def config(routing: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {m: {"provider": "p", "price": {"input": p, "output": p}}
                   for m, p in (("cheap", 0.1), ("mid", 1.0), ("big", 10.0))},
        "baseline": "big",
        "ledger": {"enabled": False},
        "routing": routing,
        **extra,
    }


ROUTING: dict[str, Any] = {
    "default_route": "general",
    "classify": {
        "rules": [{"task": "code", "keywords": ["traceback"], "regex": [r"^\s*def "]}],
        "examples": {"faq": ["How do I reset my password?", "Where can I change my email address?",
                             "How do I cancel my subscription?"],
                     "legal": ["Draft a non-disclosure agreement between two companies",
                               "Review this contract clause for liability risks"]},
        "min_confidence": 0.3,
    },
    "tasks": {"legal": "careful", "mc_multi": "careful"},
    "routes": {"general": {"model": "mid"}, "faq": {"model": "cheap"}, "code": {"model": "mid"},
               "careful": {"model": "big"}},
}


def gateway(routing: dict[str, Any] = ROUTING) -> tuple[Gateway, list[str]]:
    seen: list[str] = []

    def fn(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body["model"])
        return chat_response(body["model"], "answer")

    return Gateway.from_config(config(routing), providers={"p": FunctionProvider(fn)}), seen


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(("kwargs", "model"), [
    ({"messages": user("How can I reset my password please?")}, "cheap"),            # embedding classifier
    ({"messages": user("I got a Traceback when running it")}, "mid"),               # keyword rule
    ({"messages": user("Please draft a non-disclosure agreement")}, "big"),           # embedding -> tasks map
    ({"messages": user(MC)}, "big"),                                                  # prompt format
    ({"messages": user("hello there"), "metadata": {"task": "faq"}}, "cheap"),       # client label
    ({"messages": user("hello there"), "metadata": {"task": "unheard-of"}}, "mid"),  # unknown label -> default
    ({"messages": user("zzz qqq")}, "mid"),                                           # nothing confident -> default
])
async def test_auto_routing(kwargs: dict[str, Any], model: str) -> None:
    gw, seen = gateway()
    reply = await gw.chat(model="auto", **kwargs)
    assert seen == [model]
    assert reply["choices"][0]["message"]["content"] == "answer"


async def test_header_label_and_named_route() -> None:
    gw, seen = gateway()
    from thrifty.types import ChatRequest

    ctx = await gw.handle(ChatRequest.from_body({"model": "auto", "messages": user("hi")}),
                          headers={"x-thrifty-task": "faq"})
    assert ctx.route == "faq" and ctx.task == "faq" and "x-thrifty-task" in ctx.plan.reason  # type: ignore[union-attr]
    await gw.chat(model="route:careful", messages=user("hi"))
    assert seen == ["cheap", "big"]
    with pytest.raises(NotFoundError, match="Unknown route 'nope'"):
        await gw.chat(model="route:nope", messages=user("hi"))
    assert gw.route_names() == ["auto", "route:general", "route:faq", "route:code", "route:careful"]


def test_explain_gives_reasons_and_guesses() -> None:
    gw, _ = gateway()
    assert gw.router is not None
    from thrifty.types import ChatRequest

    d = gw.router.decide(ChatRequest.from_body({"model": "auto", "messages": user("Where do I change my email?")}))
    assert d.route == "faq" and d.source == "embedding"
    assert {g.source for g in d.guesses} == {"embedding", "format"}
    emb = next(g for g in d.guesses if g.source == "embedding")
    assert emb.scores["faq"] > emb.scores["legal"]


def test_examples_file(tmp_path: Path) -> None:
    (tmp_path / "ex.jsonl").write_text('{"task": "faq", "prompt": "How do I reset my password?"}\n')
    routing = {**ROUTING, "classify": {"examples_file": "ex.jsonl", "min_confidence": 0.2}}
    path = tmp_path / "thrifty.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config(routing)))
    gw = Gateway.from_config(path, providers={"p": FunctionProvider(lambda b: chat_response(b["model"], "x"))})
    from thrifty.types import ChatRequest

    assert gw.router is not None
    assert gw.router.decide(ChatRequest.from_body({"model": "auto", "messages": user("reset my password")})).route == "faq"


@pytest.mark.parametrize(("routing", "message"), [
    ({"default_route": "x", "routes": {"a": {"model": "cheap"}}}, "routing.default_route: unknown route 'x'"),
    ({"default_route": "a", "routes": {"a": {"model": "cheap", "tiers": [{"model": "big"}]}}}, "exactly one of"),
    ({"default_route": "a", "routes": {"a": {"modle": "cheap"}}}, "routing.routes.a.modle: unknown key"),
    ({"default_route": "a", "tasks": {"t": "b"}, "routes": {"a": {"model": "cheap"}}}, "routing.tasks.t: unknown route 'b'"),
])
def test_config_errors_name_the_key(routing: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        Gateway.from_config(config(routing))


def test_unknown_model_in_a_route_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        Gateway.from_config(config({"default_route": "a", "routes": {"a": {"model": "gpt-9"}}})).router  # noqa: B018


def test_no_routes_means_no_router() -> None:
    assert parse_routing({}).routes == {}
    gw = Gateway.from_config(config({}, default_model="cheap"))
    assert gw.router is None and gw.route_names() == []
