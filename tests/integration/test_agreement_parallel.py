"""Agreement cascades ask the cheap models every answer pattern calls at once, not in turn.

The bundled policy asks Yi-34B, then Mixtral, then maybe GPT-4: both cheap calls are made
whatever Yi answers, so waiting for Yi before asking Mixtral only added a cheap latency. The
upstream here is in-process (served by a real gateway on 127.0.0.1, asked by the real `openai`
client) and records when each call started and ended: concurrency is asserted from that order,
never from timings. Every case runs on a parallel route and on the same route with
``parallel: false`` (the old path): served answer, escalations and ledger attempts must match.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.fixtures.served import attempt_rows

from thrifty.errors import UpstreamStatusError
from thrifty.gateway import Gateway
from thrifty.mock.server import run_in_thread
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.routing.formats import agreement_pattern
from thrifty.routing.policies import called_at_once, vote_table

MC = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
CHEAP_S = 0.3  # how long a cheap call takes: long enough for the other call to start meanwhile


class Recorder:
    """Answers per model, after a pause; logs ("start"/"end"/"cancelled", model) in order."""

    def __init__(self) -> None:
        self.answers: dict[str, str | None] = {}  # None: the call fails (a 500)
        self.lengths: dict[str, int] = {}  # completion tokens reported, per model
        self.events: list[tuple[str, str]] = []

    async def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body["model"]
        self.events.append(("start", model))
        try:
            await asyncio.sleep(CHEAP_S if model != "strong" else 0.01)
        except asyncio.CancelledError:
            self.events.append(("cancelled", model))
            raise
        self.events.append(("end", model))
        answer = self.answers.get(model, "B")
        if answer is None:
            raise UpstreamStatusError(f"{model} is down", status=500)
        out = self.lengths.get(model, 5)
        return chat_response(model, answer, {"prompt_tokens": 20, "completion_tokens": out,
                                             "total_tokens": 20 + out})

    def started(self) -> list[str]:
        return [m for e, m in self.events if e == "start"]


def config(tmp: Path, max_cost_usd: float | None = None) -> dict[str, Any]:
    route = {"agreement": {"models": ["yi", "mixtral"], "fallback": "strong"}}
    if max_cost_usd is not None:
        route["max_cost_usd"] = max_cost_usd  # type: ignore[assignment]
    sequential = {**route, "agreement": {**route["agreement"], "parallel": False}}  # type: ignore[dict-item]
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {"yi": {"provider": "p", "price": {"input": 1.0, "output": 1.0}},
                   "mixtral": {"provider": "p", "price": {"input": 1.0, "output": 1.0}},
                   "strong": {"provider": "p", "price": {"input": 30.0, "output": 60.0}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "routing": {"default_route": "agree", "routes": {"agree": route, "agree_seq": sequential}},
    }


@contextlib.contextmanager
def gateway(tmp: Path, max_cost_usd: float | None = None) -> Iterator[tuple[Gateway, Recorder, str]]:
    rec = Recorder()
    gw = Gateway.from_config(config(tmp, max_cost_usd), providers={"p": FunctionProvider(rec)})
    with run_in_thread(gw.app()) as server:
        yield gw, rec, server.url
    gw.flush()


def ask(url: str, route: str) -> tuple[str | None, str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-client-0000", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=f"route:{route}", messages=[{"role": "user", "content": MC}])
    return raw.parse().choices[0].message.content, raw.headers["x-thrifty-model"]


def ledger(gw: Gateway, route: str) -> list[tuple[Any, ...]]:
    rows = attempt_rows(gw, "a.model, a.status, a.accepted, a.score, a.score_reason, r.escalations, r.served_model",
                        f"r.route = '{route}'")
    # Reasons may name the route (a budget guard's): the two routes differ only by their name.
    return [tuple(str(v).replace(f"route {route!r}", "route R") for v in r.values()) for r in rows]


def concurrent(rec: Recorder, first: str, second: str) -> bool:
    """Whether ``second`` started before ``first`` ended (asserted on order, not on time)."""
    ev = rec.events
    return ("start", second) in ev and ev.index(("start", second)) < ev.index(("end", first))


@pytest.mark.parametrize(("answers", "served"), [
    ({"yi": "B", "mixtral": "B) whale"}, "yi"),  # they agree: Yi's answer, no GPT-4
    ({"yi": "B", "mixtral": "A"}, "strong"),  # they differ: GPT-4
    ({"yi": None, "mixtral": "B"}, "strong"),  # one failed call: no agreement, GPT-4
])
def test_cheap_calls_at_once_same_decisions_as_in_turn(tmp_path: Path, answers: dict[str, str | None],
                                                       served: str) -> None:
    with gateway(tmp_path) as (gw, rec, url):
        rec.answers = {**answers, "strong": "B"}
        parallel = ask(url, "agree")
        assert rec.started()[:2] == ["yi", "mixtral"]
        assert concurrent(rec, "yi", "mixtral"), rec.events
        rec.events.clear()
        sequential = ask(url, "agree_seq")
        assert not concurrent(rec, "yi", "mixtral"), rec.events
        assert parallel == sequential
        assert parallel[1] == served
        par, seq = ledger(gw, "agree"), ledger(gw, "agree_seq")
    # One attempt per call, in model order, with the same scores, reasons and escalations.
    assert [r[0] for r in par] == ["yi", "mixtral", *(["strong"] if served == "strong" else [])]
    if answers["yi"] is not None:
        assert par == seq
    else:
        # In turn, Yi's failure ("x") sent the request to GPT-4 without asking Mixtral; asked at
        # once, Mixtral's answer was paid for, kept out of the decision, and says so.
        assert [r[0] for r in seq] == ["yi", "strong"]
        assert [par[0], par[2]] == seq
        assert par[1][2] == "0" and "not used" in par[1][4]


def test_budget_for_one_cheap_call_falls_back_to_in_turn(tmp_path: Path) -> None:
    """A guard that fits one cheap call (estimated at about 20 + 256 tokens at $1/M) but not two:
    the calls are not asked at once; Yi's answer is served as before, Mixtral never asked."""
    one_call = (20 + 256) / 1e6
    with gateway(tmp_path, max_cost_usd=one_call * 1.5) as (gw, rec, url):
        rec.lengths = {"yi": 256, "mixtral": 256}  # as estimated: in turn, Mixtral no longer fits
        parallel = ask(url, "agree")
        assert rec.started() == ["yi"]
        sequential = ask(url, "agree_seq")
        assert parallel == sequential == ("B", "yi")
        par, seq = ledger(gw, "agree"), ledger(gw, "agree_seq")
    assert par == seq and [r[0] for r in par] == ["yi"]
    assert "budget guard" in par[0][4]


def test_guard_replayed_when_first_answer_costs_more_than_estimated(tmp_path: Path) -> None:
    """Both calls fit together on their estimates, but Yi's answer is long: in turn, the guard
    would then have stopped Mixtral. Asked at once, the decision is the same (Yi's answer
    served, no GPT-4); Mixtral's call was already made and stays in the ledger."""
    one_call = (20 + 256) / 1e6
    with gateway(tmp_path, max_cost_usd=one_call * 2.5) as (gw, rec, url):
        rec.lengths = {"yi": 2000}
        parallel = ask(url, "agree")
        assert concurrent(rec, "yi", "mixtral")
        sequential = ask(url, "agree_seq")
        assert parallel == sequential == ("B", "yi")
        par, seq = ledger(gw, "agree"), ledger(gw, "agree_seq")
    assert [r[0] for r in par] == ["yi", "mixtral"] and [r[0] for r in seq] == ["yi"]
    assert par[0][1:] == seq[0][1:]  # Yi's attempt: served, with the same reason
    assert par[1][2] == "0"  # Mixtral's speculative answer: made, not served


def test_departed_client_cancels_both_cheap_calls(tmp_path: Path) -> None:
    with gateway(tmp_path) as (gw, rec, url):
        body = json.dumps({"model": "route:agree", "stream": True,
                           "messages": [{"role": "user", "content": MC}]}).encode()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            deadline = time.monotonic() + 10
            while len(rec.started()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        # The client left while both cheap calls were in flight.
        deadline = time.monotonic() + 10
        while sum(e == "cancelled" for e, _ in rec.events) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(m for e, m in rec.events if e == "cancelled") == ["mixtral", "yi"], rec.events
        assert ("end", "yi") not in rec.events and ("start", "strong") not in rec.events
        deadline = time.monotonic() + 10
        rows: list[tuple[Any, ...]] = []
        while len(rows) < 2 and time.monotonic() < deadline:
            rows = ledger(gw, "agree")
            time.sleep(0.05)
    # Both in-flight calls are in the ledger, in model order, as cancelled.
    assert [(r[0], r[1]) for r in rows] == [("yi", "error"), ("mixtral", "error")]


def test_route_explain_names_the_models_asked_at_once(tmp_path: Path) -> None:
    gw = Gateway.from_config(config(tmp_path), providers={"p": FunctionProvider(Recorder())})
    router = gw.router
    assert router is not None
    assert "yi, mixtral are asked at once" in router.describe("agree")["how"]
    assert "at once" not in router.describe("agree_seq")["how"]


def test_a_provider_bug_fails_the_request_as_in_turn(tmp_path: Path) -> None:
    """An exception a provider did not translate (a bug) is the request's error, as in turn (not
    an exception group), and the other call asked at once is cancelled, both in the ledger."""
    with gateway(tmp_path) as (gw, rec, url):
        plain = rec.__call__

        async def buggy(body: dict[str, Any]) -> dict[str, Any]:
            if body["model"] == "yi":
                rec.events.append(("start", "yi"))
                await asyncio.sleep(CHEAP_S / 3)
                raise RuntimeError("provider bug")
            return await plain(body)

        gw.caller.providers["p"] = FunctionProvider(buggy)
        errors = []
        for route in ("agree", "agree_seq"):
            with pytest.raises(openai.APIStatusError) as err:
                ask(url, route)
            errors.append((err.value.status_code, type(err.value.body).__name__))
        assert errors[0] == errors[1]
        assert ("cancelled", "mixtral") in rec.events
        rows = ledger(gw, "agree")
        kinds = {r["route"]: r["error_type"] for r in attempt_rows(gw, "r.route, r.error_type", "a.seq = 0")}
    assert kinds == {"agree": "RuntimeError", "agree_seq": "RuntimeError"}
    assert [(r[0], r[1]) for r in rows] == [("yi", "error"), ("mixtral", "error")]


def test_unused_cheap_call_does_not_count_against_the_strong_model(tmp_path: Path) -> None:
    """Yi fails, so in turn the table goes to GPT-4 without asking Mixtral. Asked at once,
    Mixtral's long answer was made (paid, in the ledger) but left out of the decision: the guard
    must price GPT-4 as in turn, not on Mixtral's cost and length, and serve it too."""
    with gateway(tmp_path, max_cost_usd=0.03) as (gw, rec, url):
        rec.answers = {"yi": None, "mixtral": "B", "strong": "B"}
        rec.lengths = {"mixtral": 2000}
        sequential = ask(url, "agree_seq")
        parallel = ask(url, "agree")
        assert parallel == sequential == ("B", "strong")
        par, seq = ledger(gw, "agree"), ledger(gw, "agree_seq")
    assert [r[0] for r in par] == ["yi", "mixtral", "strong"] and [r[0] for r in seq] == ["yi", "strong"]
    assert [par[0], par[2]] == seq
    assert par[1][2] == "0" and "not used" in par[1][4]


def _brute_force_at_once(n: int, table: dict[str, str]) -> int:
    """The prefix by the old definition: every pattern of every m**m answer combination."""
    m = 0
    while m < n and all(table.get(agreement_pattern([str(c) for c in combo]), "strong") == "next"
                        for combo in itertools.product(range(m), repeat=m)):
        m += 1
    return m


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_at_once_prefix_walks_the_patterns_as_brute_force(n: int) -> None:
    """The frontier walk over canonical patterns (Bell(m) of them, not m**m) gives the same prefix."""
    for k in range(2, n + 1):
        table = vote_table(n, k)
        assert called_at_once(n, table, False) == _brute_force_at_once(n, table), (n, k)
    assert called_at_once(4, vote_table(4, 4), False) == 2  # not min_agree: "0,1" already fails 4 of 4
    assert called_at_once(3, {"": "next", "A": "next", "A,A": "stop:0"}, True) == 1  # raw letters: the first only


def test_tables_and_at_once_prefix_built_once_per_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vote_table takes up to 180 ms (6 models) and the prefix walk more: both are worked out when
    the router is built, never per request."""
    import thrifty.routing.router as router_module

    def per_request(*_: Any) -> Any:
        raise AssertionError("rebuilt per request")

    with gateway(tmp_path) as (gw, rec, url):
        monkeypatch.setattr(router_module, "vote_table", per_request)
        monkeypatch.setattr(router_module, "called_at_once", per_request)
        assert ask(url, "agree") == ("B", "yi")
        assert concurrent(rec, "yi", "mixtral")
        assert gw.router is not None
        assert "unless a cheap answer fails or is unusable" in gw.router.describe("agree")["how"]
