"""Route-named cache and compression overrides apply to ``model: auto`` requests: the router
decides an auto request's route in the normalize stage (no model call), before compression and
the cache run, and the route stage serves it on that same route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thrifty.gateway import Gateway
from thrifty.pipeline.build import compose
from thrifty.pipeline.context import RequestContext
from thrifty.pipeline.normalize import NormalizeStage
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest

SYSTEM = "You are a helpful   assistant.\n\n\n\nAnswer briefly."


def config(tmp_path: Path, routing: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {m: {"provider": "p", "price": {"input": p, "output": p}} for m, p in (("cheap", 0.1), ("big", 10.0))},
        "ledger": {"enabled": False},
        "base_dir": str(tmp_path),
        "routing": routing,
        **extra,
    }


def gateway(cfg: dict[str, Any]) -> tuple[Gateway, list[str]]:
    calls: list[str] = []

    def upstream(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body["model"])
        return chat_response(body["model"], "A", {"prompt_tokens": 5, "completion_tokens": 1})

    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(upstream)}, env={})
    # gateway.py builds `NormalizeStage()`; the router reaches it as `NormalizeStage(self.router)`
    # (a one-line change in gateway.py, whose owner applies it). Until then, wire it the same way.
    if any(isinstance(s, NormalizeStage) and s.classifier is None for s in gw.stages):
        gw.stages = [NormalizeStage(gw.router) if isinstance(s, NormalizeStage) else s for s in gw.stages]
        gw._handler = compose(gw.stages)
    return gw, calls


async def ask(gw: Gateway, model: str, text: str = "hello there", system: bool = False) -> RequestContext:
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    body = {"model": model, "temperature": 0, "messages": [*messages, {"role": "user", "content": text}]}
    return await gw.handle(ChatRequest.from_body(body))


async def test_route_cache_override_applies_to_auto_requests(tmp_path: Path) -> None:
    routing = {"default_route": "faq", "routes": {"faq": {"model": "cheap"}}}
    gw, calls = gateway(config(tmp_path, routing, cache={"path": "c.db", "routes": {"faq": {"enabled": False}}}))
    try:
        first, second = await ask(gw, "auto"), await ask(gw, "auto")
        assert first.route == second.route == "faq"
        assert first.cache_status == second.cache_status == "bypass"  # neither is a hit
        assert calls == ["cheap", "cheap"]
    finally:
        await gw.aclose()


async def test_auto_requests_use_the_override_of_the_route_they_are_classified_into(tmp_path: Path) -> None:
    routing = {"default_route": "general",
               "classify": {"rules": [{"task": "faq", "keywords": ["password"]}]},
               "routes": {"faq": {"model": "cheap"}, "general": {"model": "big"}}}
    cache = {"path": "c.db", "routes": {"general": {"enabled": False}}}
    compression = {"routes": {"faq": {"compaction": True}}}
    gw, calls = gateway(config(tmp_path, routing, cache=cache, compression=compression))
    try:
        faq = [await ask(gw, "auto", "reset my password", system=True) for _ in range(2)]
        general = [await ask(gw, "auto", "write a poem", system=True) for _ in range(2)]
        assert [c.route for c in faq] == ["faq", "faq"] and [c.cache_status for c in faq] == ["miss", "hit"]
        assert faq[0].compression_saved_tokens > 0  # compaction is on for faq only
        assert [c.route for c in general] == ["general", "general"]
        assert [c.cache_status for c in general] == ["bypass", "bypass"]
        assert general[0].compression_saved_tokens == 0
        assert calls == ["cheap", "big", "big"]  # the route the cache saw is the route served
    finally:
        await gw.aclose()


async def test_without_an_early_route_the_auto_entry_applies(tmp_path: Path) -> None:
    # Only the LLM classifier could route this request: it calls a model, so it runs in the
    # cascade stage; the cache sees no route and uses its `auto` entry.
    routing = {"default_route": "faq", "classify": {"llm": {"model": "cheap", "tasks": ["faq"]}},
               "routes": {"faq": {"model": "cheap"}}}
    cache = {"path": "c.db", "routes": {"faq": {"enabled": False}}}
    gw, calls = gateway(config(tmp_path, routing, cache=cache))
    try:
        first, second = await ask(gw, "auto"), await ask(gw, "auto")
        assert [first.cache_status, second.cache_status] == ["miss", "hit"]
        assert first.route == "faq" and len(calls) == 2  # the classifier's call, then the answer
    finally:
        await gw.aclose()
