"""Security audit, over real HTTP (uvicorn on loopback, the mock upstream): a virtual key's
``routes`` cannot be bypassed by naming a route through a client task label on an ``auto``
request (``x-thrifty-task``, body ``thrifty.task``, ``metadata.task``), which the router trusts
like ``model: "route:NAME"``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread


class Served:
    def __init__(self, server: RunningServer, limited: str, open_key: str) -> None:
        self.server, self.limited, self.open_key = server, limited, open_key

    def chat(self, key: str, model: str, headers: list[tuple[str, str]] | None = None,
             **body: Any) -> tuple[int, str | None, str]:
        payload = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **body}
        r = httpx.post(self.server.url + "/v1/chat/completions", json=payload, timeout=30,
                       headers=[("authorization", f"Bearer {key}"), *(headers or [])])
        return r.status_code, r.headers.get("x-thrifty-model"), r.text


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp: Path = tmp_path_factory.mktemp("security")
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as mock:
        cfg: dict[str, Any] = {
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-sec-0000", "max_retries": 0}},
            "models": {m: {"provider": "mock", "price": {"input": p, "output": p}}
                       for m, p in (("good", 0.2), ("strong", 10.0))},
            "baseline": "strong",
            "ledger": {"path": str(tmp / "ledger.db")},
            "auth": {"enabled": True},
            "routing": {"default_route": "chat", "tasks": {"vip": "premium"},
                        "routes": {"chat": {"model": "good"}, "premium": {"model": "strong"}}},
        }
        gw = Gateway.from_config(cfg)
        assert gw.ops.keys is not None
        limited = gw.ops.keys.create("limited", routes=["auto", "route:chat"])[1]
        open_key = gw.ops.keys.create("open")[1]
        with run_in_thread(gw.app()) as server:
            yield Served(server, limited, open_key)
        gw.close()


LABELS: list[tuple[str, list[tuple[str, str]], dict[str, Any]]] = [
    ("header", [("x-thrifty-task", "premium")], {}),
    ("header naming a task mapped to the route", [("x-thrifty-task", "vip")], {}),
    ("repeated header, the router reads the last", [("x-thrifty-task", "chat"), ("x-thrifty-task", "premium")], {}),
    ("body thrifty.task", [], {"thrifty": {"task": "premium"}}),
    ("metadata.task", [], {"metadata": {"task": "premium"}}),
]


@pytest.mark.parametrize(("how", "headers", "body"), LABELS, ids=[x[0] for x in LABELS])
def test_a_label_cannot_route_auto_to_a_route_the_key_does_not_allow(
        served: Served, how: str, headers: list[tuple[str, str]], body: dict[str, Any]) -> None:
    # The same route by name is refused...
    assert served.chat(served.limited, "route:premium")[0] == 403
    # ...and so is the same route named by a label: before the fix this was a 200 from "strong".
    status, model, text = served.chat(served.limited, "auto", headers, **body)
    assert (status, model) == (403, None), how
    assert "model_not_allowed" in text and "route:premium" in text
    # A key without restrictions is served by the labelled route (the label still works).
    assert served.chat(served.open_key, "auto", headers, **body)[:2] == (200, "strong")


def test_labels_naming_an_allowed_route_and_unlabelled_auto_are_served(served: Served) -> None:
    assert served.chat(served.limited, "auto")[:2] == (200, "good")
    assert served.chat(served.limited, "auto", [("x-thrifty-task", "chat")])[:2] == (200, "good")
    # A label that names no route is no route choice: the router decides as without it.
    assert served.chat(served.limited, "auto", metadata={"task": "something-else"})[:2] == (200, "good")



def test_compaction_of_a_hostile_system_prompt_does_not_stall_the_gateway(tmp_path: Path) -> None:
    """A client's system prompt is compacted on the event loop: a pattern quadratic in its length
    (unclosed ``**`` / ``<!--`` openers, long runs of newlines) froze every request for minutes
    with 120 kB of text (the body limit allows 4 MB). Each hostile part now takes milliseconds."""
    hostile = "**a " * 30_000 + "<!--" * 30_000 + "\n" * 30_000 + "end"
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as mock:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-sec-0000", "max_retries": 0}},
            "models": {"m": {"provider": "mock", "price": {"input": 1, "output": 1}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "compression": {"store": {"path": str(tmp_path / "compress.db")}, "routes": {"m": {"compaction": True}}},
        })
        try:
            with run_in_thread(gw.app()) as server:
                body = {"model": "m", "messages": [{"role": "system", "content": hostile},
                                                   {"role": "user", "content": "hi"}]}
                # Before the fix this took minutes (the client's 60 s timeout fired).
                r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
                assert r.status_code == 200 and r.headers["x-thrifty-model"] == "m"
                assert int(r.headers["x-thrifty-compressed-tokens"]) > 0  # it was compacted, not skipped
        finally:
            gw.close()


def test_model_names_a_client_makes_up_do_not_become_metric_series(tmp_path: Path) -> None:
    """A failed request's ``model`` (and ``route:X``) label was the client's own text: one new
    Prometheus series per made-up name, kept forever, with no key needed when auth is off."""
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as mock:
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-sec-0000", "max_retries": 0}},
            "models": {"good": {"provider": "mock", "price": {"input": 1, "output": 1}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "routing": {"default_route": "chat", "routes": {"chat": {"model": "good"}}},
        })
        try:
            with run_in_thread(gw.app()) as server:
                names = [f"made-up-model-{i}-" + "x" * 2000 for i in range(20)] + [f"route:made-up-{i}" for i in range(20)]
                for name in names:
                    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                                   json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
                    assert r.status_code == 404
                assert httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
                    "model": "route:chat", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
                text = httpx.get(server.url + "/metrics", timeout=30).text
        finally:
            gw.close()
    assert "made-up" not in text, [line for line in text.splitlines() if "requests_total{" in line]
    assert 'thrifty_requests_total{model="(unknown)",route="-",status="error",strategy="passthrough"} 20.0' in text
    assert 'thrifty_requests_total{model="(unknown)",route="(unknown)"' in text
    # Known names keep their labels.
    assert 'thrifty_requests_total{model="good",route="chat"' in text
