"""A client's parameters fit the model thrifty chose (``auto``, routes, cascade tiers, fallbacks).

Real gateway on 127.0.0.1, the real ``openai`` client, the mock upstream over HTTP. ``o5-mini``
behaves like OpenAI's reasoning models (``reasoning_model: true``: a 400 for ``max_tokens`` and a
``temperature`` other than 1) and is recognised by name (the o-series: efforts low/medium/high);
``plain-big`` is a plain model; ``house-top`` is a name no family knows whose server refuses
``top_p``. A client writes its request for the model it has in mind (gpt-4o: ``max_tokens``,
``temperature: 0.2``); before the change it went unchanged to whatever thrifty picked, and a
route to a cheap reasoning model answered every ordinary client a 400.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from fixtures.served import attempt_rows, sent, serving
from thrifty.catalog import Catalog, ModelInfo
from thrifty.errors import UpstreamError
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.pipeline.routed_params import adapted, learn_refusal
from thrifty.types import ChatRequest

ASK: Any = [{"role": "user", "content": "What is the capital of France?"}]
MOCK: dict[str, Any] = {"models": {
    "o5-mini": {"reasoning_model": True, "reasoning_tokens": [20, 20], "answer": "Paris, I don't know."},
    "plain-big": {"answer": "Paris is the capital of France."},
    "house-top": {"reject_params": ["top_p"], "answer": "Paris."},
    "flaky": {"faults": {"status": 500}},
    # Names no family knows (an Azure deployment) of OpenAI reasoning models; the second refuses
    # reasoning_effort as o1-mini does.
    "prod-reasoner": {"reasoning_model": True, "answer": "Paris."},
    "prod-o1": {"reasoning_model": True, "reject_params": ["reasoning_effort"], "answer": "Paris."},
    "gpt-5.1": {"reasoning_model": True, "reject_values": {"reasoning_effort": ["minimal"]}, "answer": "Paris."},
    "qwen3-8b": {"answer": "Paris."},
}}
ROUTES: dict[str, Any] = {
    "reason": {"model": "o5-mini"},
    "house": {"model": "house-top"},
    "azure": {"model": "prod-reasoner"},
    "azure-o1": {"model": "prod-o1"},
    "five": {"model": "gpt-5.1"},
    "qwen": {"model": "qwen3-8b"},
    # The cheap tier's answer reads as a non-answer ("I don't know"): the plain tier is asked too.
    "cascade": {"tiers": [{"model": "o5-mini", "threshold": 0.95}, {"model": "plain-big"}],
                "scorer": {"kind": "heuristic"}},
}


@pytest.fixture
def upstream() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


@pytest.fixture
def gateway(upstream: RunningServer, tmp_path: Path) -> Iterator[tuple[Gateway, openai.OpenAI]]:
    models: dict[str, Any] = {m: {"provider": "mock", "price": {"input": 1.0, "output": 2.0}}
                              for m in ("o5-mini", "plain-big", "house-top", "prod-reasoner", "prod-o1", "gpt-5.1",
                                        "qwen3-8b")}
    models["flaky"] = {"provider": "mock", "price": {"input": 1.0, "output": 2.0}, "fallbacks": ["o5-mini"]}
    cfg = {"providers": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0}},
           "models": models, "baseline": "plain-big", "ledger": {"path": str(tmp_path / "ledger.db")},
           "routing": {"default_route": "reason", "routes": ROUTES}}
    with serving(cfg) as served:
        yield served


def test_auto_to_a_reasoning_model_takes_a_gpt4o_request(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """``max_tokens`` goes as ``max_completion_tokens`` with the reasoning budget's room, the
    temperature the model refuses is left out, ``minimal`` effort becomes ``low`` (o-series):
    one call, no 400."""
    _, client = gateway
    got = client.chat.completions.create(model="auto", messages=ASK, max_tokens=100, temperature=0.2,
                                         reasoning_effort="minimal")
    assert got.choices[0].message.content
    [body] = sent(upstream, "o5-mini")
    assert "max_tokens" not in body and body["max_completion_tokens"] == 100 + 1024
    assert "temperature" not in body and body["reasoning_effort"] == "low"


def test_a_streamed_route_to_a_reasoning_model(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    _, client = gateway
    stream = client.chat.completions.create(model="route:reason", messages=ASK, max_tokens=50, temperature=0.2,
                                            stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    [body] = sent(upstream, "o5-mini")
    assert body["stream"] is True and body["max_completion_tokens"] == 50 + 1024
    assert "max_tokens" not in body and "temperature" not in body


def test_a_cascades_plain_tier_gets_no_reasoning_effort(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """gpt-4o-mini refuses ``reasoning_effort``: the plain tier is sent none (nor ``verbosity``),
    the reasoning tier its own."""
    _, client = gateway
    got = client.chat.completions.create(model="route:cascade", messages=ASK, reasoning_effort="high",
                                         max_completion_tokens=200, extra_body={"verbosity": "low"})
    assert got.model == "plain-big"
    [cheap] = sent(upstream, "o5-mini")
    [strong] = sent(upstream, "plain-big")
    assert cheap["reasoning_effort"] == "high" and "verbosity" not in cheap
    assert "reasoning_effort" not in strong and "verbosity" not in strong
    assert strong["max_completion_tokens"] == 200  # a plain model's limit as the client sent it


def test_a_fallback_thrifty_chose_is_fitted(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """The client named ``flaky``; its fallback ``o5-mini`` is thrifty's choice."""
    _, client = gateway
    got = client.chat.completions.create(model="flaky", messages=ASK, max_tokens=30, temperature=0.5)
    assert got.model == "o5-mini"
    [flaky] = sent(upstream, "flaky")
    assert flaky["max_tokens"] == 30 and flaky["temperature"] == 0.5  # the model named: as sent
    [body] = sent(upstream, "o5-mini")
    assert body["max_completion_tokens"] == 30 + 1024 and "temperature" not in body


def test_a_reasoning_model_named_by_the_client_gets_the_request_as_sent(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """The client's contract with the model it named: its max_tokens and the provider's 400,
    although the same request through a route is fitted."""
    _, client = gateway
    client.chat.completions.create(model="route:reason", messages=ASK, max_tokens=100)
    for _ in range(2):  # nothing learned from it either
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="o5-mini", messages=ASK, max_tokens=100)
        assert "max_tokens" in str(refused.value) and "max_completion_tokens" in str(refused.value)
    assert [b.get("max_tokens") for b in sent(upstream, "o5-mini")] == [None, 100, 100]


@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_parameter_is_learned_and_left_out(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI], stream: bool) -> None:
    """A name no family knows refuses ``top_p`` (400 "Unrecognized request argument"): the call is
    sent again without it, and later calls to that model skip it."""
    gw, client = gateway

    def ask() -> str:
        if stream:
            chunks = client.chat.completions.create(model="route:house", messages=ASK, top_p=0.5, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return client.chat.completions.create(model="route:house", messages=ASK, top_p=0.5).choices[0].message.content \
            or ""

    assert ask() == "Paris."
    assert [b.get("top_p") for b in sent(upstream, "house-top")] == [0.5, None]
    assert ask() == "Paris."
    assert [b.get("top_p") for b in sent(upstream, "house-top")] == [0.5, None, None]
    assert [r["status"] for r in attempt_rows(gw, "a.status")] == ["error", "ok", "ok"]  # the refusal too


def test_a_named_model_refusing_a_parameter_is_the_clients_answer(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """The client named the model that refuses ``top_p``: its 400 is passed on, sent once, even
    after a routed request taught the gateway the refusal."""
    _, client = gateway
    client.chat.completions.create(model="route:house", messages=ASK, top_p=0.5)  # learned
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="house-top", messages=ASK, top_p=0.5)
    assert [b.get("top_p") for b in sent(upstream, "house-top")] == [0.5, None, 0.5]


def test_an_unknown_reasoning_model_learns_its_shape_from_one_refusal(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """``prod-reasoner`` refuses ``max_tokens``: the model is learned as a reasoning one (limit
    field, room to reason, no temperature), not merely as refusing that one name, so the retry is
    answered (before: a second 400 on temperature reached the client) and later calls get the room
    and their effort."""
    _, client = gateway
    got = client.chat.completions.create(model="route:azure", messages=ASK, max_tokens=100, temperature=0.2)
    assert got.choices[0].message.content == "Paris."
    client.chat.completions.create(model="route:azure", messages=ASK, max_tokens=100, temperature=0.2,
                                   reasoning_effort="high")
    first, retry, later = sent(upstream, "prod-reasoner")
    assert first["max_tokens"] == 100 and first["temperature"] == 0.2
    for body in (retry, later):
        assert body["max_completion_tokens"] == 100 + 1024 and "max_tokens" not in body and "temperature" not in body
    assert later["reasoning_effort"] == "high"


def test_a_call_learns_as_many_lessons_as_it_needs(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """o1-mini by an unknown name: ``max_tokens`` refused (the reasoning shape), then the
    ``reasoning_effort`` that shape sends: two lessons, each retried at the model that refused."""
    _, client = gateway
    got = client.chat.completions.create(model="route:azure-o1", messages=ASK, max_tokens=100, temperature=0.2,
                                         reasoning_effort="high")
    assert got.choices[0].message.content == "Paris."
    bodies = sent(upstream, "prod-o1")
    assert [("max_tokens" in b, b.get("reasoning_effort")) for b in bodies] == [(True, None), (False, "high"),
                                                                                 (False, None)]


def test_a_refused_value_is_learned_for_that_value_only(
        upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """gpt-5.1 refuses ``reasoning_effort: minimal`` (a value, not the parameter): one client's
    ``minimal`` must not drop every later client's ``high``."""
    _, client = gateway
    for effort in ("minimal", "high", "minimal"):
        got = client.chat.completions.create(model="route:five", messages=ASK, reasoning_effort=effort)
        assert got.choices[0].message.content == "Paris."
    assert [b.get("reasoning_effort") for b in sent(upstream, "gpt-5.1")] == ["minimal", None, "high", None]


@pytest.mark.parametrize("message", [
    "Unsupported value: 'reasoning_effort' does not support 'minimal' with this model.",
    "Invalid value for 'reasoning_effort': 'minimal' is not supported with this model.",
])
def test_a_value_refusal_is_keyed_by_the_value(message: str) -> None:
    """Both of OpenAI's wordings for a value refused: learned as ``refuses:reasoning_effort=minimal``."""
    catalog = Catalog([ModelInfo("five", "p", "gpt-5.1", None)])
    sent_ = ChatRequest(model="auto", messages=ASK, params={"reasoning_effort": "minimal"})
    exc = UpstreamError(message, status=400)
    exc.param = "reasoning_effort"
    assert learn_refusal(catalog, "five", sent_, exc) == "reasoning_effort"
    info = catalog.get("five")
    assert info is not None
    for effort, kept in (("minimal", False), ("high", True)):
        asked = ChatRequest(model="auto", messages=ASK, params={"reasoning_effort": effort})
        assert ("reasoning_effort" in adapted(catalog, asked, info).params) is kept


def test_a_hybrid_gets_room_to_reason(upstream: RunningServer, gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """Qwen3 thinks by default: the client's 50 tokens would all go on thinking."""
    _, client = gateway
    client.chat.completions.create(model="route:qwen", messages=ASK, max_tokens=50)
    [body] = sent(upstream, "qwen3-8b")
    assert body["max_tokens"] == 50 + 1024


def test_a_deferred_request_is_fitted_too(tmp_path: Path) -> None:
    """A deferrable ``auto`` request routed to a reasoning model: its batch line is fitted as a
    direct call would be (before: ``max_tokens`` as sent, refused line by line)."""
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as mock:
        cfg = {"providers": {"mock": {"base_url": mock.url + "/v1", "max_retries": 0}},
               "models": {m: {"provider": "mock", "price": {"input": 1.0, "output": 2.0}}
                          for m in ("o5-mini", "plain-big")},
               "baseline": "plain-big", "ledger": {"path": str(tmp_path / "ledger.db")},
               "routing": {"default_route": "reason", "routes": {"reason": {"model": "o5-mini"}}},
               "batching": {"deferred": {"enabled": True, "window_s": 0.2, "poll_interval_s": 0.05}}}
        with serving(cfg) as (_, client):
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=ASK, max_tokens=100, temperature=0.2,
                extra_body={"thrifty": {"deferrable": True}})
        app: Any = mock.server.config.app
        api = app.state.batches
        [line] = [line for b in api.batches.values() for line in api._lines(b)]
    assert raw.headers["x-thrifty-batch"] == "batch"
    assert line["body"]["max_completion_tokens"] == 100 + 1024
    assert "max_tokens" not in line["body"] and "temperature" not in line["body"]
