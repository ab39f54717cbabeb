"""One day of mixed traffic through a real gateway, then every surface that reports on it must
agree with the ledger's rows and with each other: ``thrifty report`` (every ``--by``, every
format), ``/dashboard/data``, ``/metrics``, the ``thrifty.request`` log lines, ``thrifty
cache stats``, the response headers and the admin API's key usage.

Real HTTP (uvicorn on loopback), the official openai SDK, the mock upstream as the only fake.
The day: routed requests, exact and semantic cache hits (streamed too), a cascade that escalates
(streamed too) and one that does not, compressed system prompts (one for a model that then
fails), provider prompt caching, a retried call, streams (one the client abandons midway),
upstream errors, a budget refusal, an unpriced self-hosted model, embeddings, the Responses
API (a background response reconciled on retrieve), two tenants (virtual keys).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from fixtures.shopbot import FILLER, HEAD, RULE
from thrifty.cli.main import build_app
from thrifty.gateway import Gateway
from thrifty.logs import JsonFormatter
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

ADMIN = "operator-day-admin-key-0001"
MAMMAL = "Which option is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
FISH = "Which option is a fish?\nA) cat\nB) dog\nC) trout\nD) cow"
SHOPBOT = f"{HEAD}\n\n{FILLER}\n\n{FILLER}\n\n{RULE}"
QUESTION = "How do I enable two factor authentication?"
REWORDED = "how do I enable two-factor authentication"

MOCK: dict[str, Any] = {
    "seed": 5,
    "models": {
        # The cheap tier of the quiz cascade: prose for the mammal question (the heuristic scorer
        # wants an option letter: escalate), a letter for the fish one (accepted).
        "weak": {"answers": [{"pattern": "mammal", "answer": "Mammals are warm-blooded animals."},
                             {"pattern": "Which option", "answer": "C"}]},
        "strong": {"answers": [{"pattern": "Which option", "answer": "B"}]},
        # The compressing model of the ShopBot scenario (tests/fixtures/shopbot.py).
        "cheap": {"answers": [
            {"pattern": r"(?s)(You are ShopBot for Acme Widgets\.).*(IMPORTANT: never reveal the discount code 4471\.)",
             "answer": r"\1 We sell products 0-99 in many colours, sizes and finishes. \2"}]},
        "slow": {"output_tokens": [120, 120], "faults": {"chunk_delay_ms": 40}},
        "fragile": {"faults": {"status": 503}},
        "flaky": {"faults": {"fail_first": 1, "fail_status": 503}},
        # OpenAI's prompt caching: a long prompt sent twice reports its prefix as cached input.
        "mid": {"prompt_cache": True},
    },
}

PRICES = {"weak": (0.1, 0.2), "cheap": (0.1, 0.2), "mid": (0.5, 1.5), "strong": (2.5, 10.0),
          "slow": (0.5, 1.5), "fragile": (0.5, 1.5), "flaky": (0.5, 1.5)}
TIERS = {"weak": "nano", "cheap": "nano", "mid": "small", "strong": "premium"}
LONG = " ".join(f"Clause {i}: the customer may return item {i} within {i % 30 + 1} days." for i in range(150))


def write_config(tmp: Path, mock: RunningServer) -> Path:
    models: dict[str, Any] = {m: {"provider": "mock", "price": {"input": i, "output": o}} for m, (i, o) in PRICES.items()}
    for m, tier in TIERS.items():
        models[m]["tier"] = tier
    models["mid"]["price"]["cached_input"] = 0.25
    models["strong"]["price"]["cached_input"] = 1.25
    # A self-hosted model nobody priced: its requests cost an unknown amount.
    models["house"] = {"provider": "mock"}
    models["embed"] = {"provider": "mock", "upstream_model": "text-embedding-3-small",
                       "price": {"input": 0.02, "output": 0}}
    cfg: dict[str, Any] = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-upstream-day-0000", "max_retries": 1,
                               "backoff_base_s": 0.01}},
        "models": models,
        "baseline": "strong",
        "ledger": {"path": str(tmp / "ledger.db")},
        "cache": {"path": str(tmp / "cache.db"), "semantic": {"enabled": True}},
        "routing": {
            "default_route": "chat",
            "classify": {"rules": [{"task": "quiz", "keywords": ["which option"]}]},
            "routes": {"chat": {"model": "mid"},
                       "support": {"model": "mid"},
                       "quiz": {"tiers": [{"model": "weak", "threshold": 0.8}, {"model": "strong"}]}},
        },
        "compression": {
            "model": "cheap",
            "store": {"path": str(tmp / "compress.db"), "memo_ttl_s": 0},
            "system_prompt": {"min_tokens": 300, "must_keep": ["Acme Widgets", "4471"]},
            "routes": {"support": {"system_prompt": True}, "fragile": {"system_prompt": True}},
        },
        "auth": {"enabled": True, "admin_key": ADMIN},
    }
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class Day:
    gw: Gateway
    server: RunningServer
    config: Path
    keys: dict[str, str]  # name -> key id
    logs: list[dict[str, Any]]
    ids: dict[str, str] = field(default_factory=dict)  # what each request was -> its request id
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # request id -> response headers

    def db(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        self.gw.flush()
        with sqlite3.connect(self.gw.config.ledger.path) as conn:
            return conn.execute(sql, args).fetchall()


class _Lines(logging.Handler):
    """Keeps every formatted line, as `thrifty serve` would write it to stderr."""

    def __init__(self, out: list[dict[str, Any]]) -> None:
        super().__init__()
        self.out = out
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(json.loads(self.format(record)))


def _chat(c: openai.OpenAI, model: str, text: str, **kw: Any) -> Any:
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kw)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    tmp = tmp_path_factory.mktemp("operator-day")
    logs: list[dict[str, Any]] = []
    handler = _Lines(logs)
    # As `thrifty serve` sets them up (logs.setup_logging): JSON lines, info and up.
    loggers = [logging.getLogger(name) for name in ("thrifty.request", "thrifty.server")]
    saved_state = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as mock:
            config = write_config(tmp, mock)
            gw = Gateway.from_config(config)
            assert gw.ops.keys is not None
            alice_rec, alice = gw.ops.keys.create("alice")
            bob_rec, bob = gw.ops.keys.create("bob", budget_usd=1.0, period="day")
            with run_in_thread(gw.app()) as server:
                d = Day(gw, server, config, {"alice": alice_rec.key_id, "bob": bob_rec.key_id}, logs)
                _run_day(d, mock, alice, bob)
                d.gw.flush()
                yield d
            gw.close()
    finally:
        for lg, (level, propagate) in zip(loggers, saved_state, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def _run_day(d: Day, mock: RunningServer, alice: str, bob: str) -> None:
    a = openai.OpenAI(base_url=d.server.url + "/v1", api_key=alice, max_retries=0, timeout=30)
    b = openai.OpenAI(base_url=d.server.url + "/v1", api_key=bob, max_retries=0, timeout=30)

    def rid(name: str, raw: Any) -> Any:
        d.ids[name] = raw.headers["x-thrifty-request-id"]
        d.headers[d.ids[name]] = dict(raw.headers)
        return raw

    # Routed chat (auto -> chat route), then the same request again: an exact hit.
    assert rid("routed", _chat(a, "auto", "Tell me about the weather in Paris", temperature=0)).headers[
        "x-thrifty-cache"] == "miss"
    assert rid("routed-again", _chat(a, "auto", "Tell me about the weather in Paris", temperature=0)).headers[
        "x-thrifty-cache"] == "hit"
    # A model named by the client, then a paraphrase: a semantic hit.
    assert rid("named", _chat(a, "mid", QUESTION, temperature=0)).headers["x-thrifty-cache"] == "miss"
    raw = rid("paraphrase", _chat(a, "mid", REWORDED, temperature=0))
    assert (raw.headers["x-thrifty-cache"], raw.headers.get("x-thrifty-cache-match")) == ("hit", "semantic")
    # The other tenant asks the same: never alice's answer.
    assert rid("bob-named", _chat(b, "mid", QUESTION, temperature=0)).headers["x-thrifty-cache"] == "miss"
    # A cascade that escalates (weak answers prose) and one that does not (weak answers a letter).
    raw = rid("escalated", _chat(a, "auto", MAMMAL, temperature=0))
    assert raw.headers["x-thrifty-model"] == "strong"
    raw = rid("accepted", _chat(a, "auto", FISH, temperature=0))
    assert raw.headers["x-thrifty-model"] == "weak"
    # The escalated cascade again: an exact hit of an answer that cost two calls.
    assert rid("escalated-again", _chat(a, "auto", MAMMAL, temperature=0)).headers["x-thrifty-cache"] == "hit"
    # A long system prompt on the support route: compressed (not deterministic: cache bypassed).
    msgs: Any = [{"role": "system", "content": SHOPBOT}, {"role": "user", "content": "Any discount?"}]
    for name in ("compressed", "compressed-again"):
        raw = rid(name, a.chat.completions.with_raw_response.create(model="route:support", messages=msgs))
        assert int(raw.headers["x-thrifty-compressed-tokens"]) > 1000
    # The compressed request again, deterministic this time: a miss, then an exact hit.
    for name in ("compressed-det", "compressed-hit"):
        rid(name, a.chat.completions.with_raw_response.create(model="route:support", messages=msgs, temperature=0))
    assert d.ids["compressed-hit"]
    # A long prompt sent twice (not deterministic: upstream both times): the second is prompt-cached.
    for name in ("long", "long-again"):
        rid(name, _chat(a, "mid", LONG + " Summarise."))
    # A retried call (the first upstream call fails with a 503).
    rid("retried", _chat(a, "flaky", "hello there", temperature=0))
    # Streams of a cached answer and of a cascade that escalates.
    with a.chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": "Tell me about the weather in Paris"}],
            stream=True, temperature=0) as resp:
        d.ids["stream-hit"] = resp.headers["x-thrifty-request-id"]
        assert resp.headers["x-thrifty-cache"] == "hit"
        assert "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    with a.chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": MAMMAL + "\nAnswer with care."}], stream=True) as resp:
        d.ids["stream-escalated"] = resp.headers["x-thrifty-request-id"]
        assert "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices) == "B"
    # A stream read to its end.
    with a.chat.completions.with_streaming_response.create(
            model="mid", messages=[{"role": "user", "content": "Write a haiku about autumn"}], stream=True,
            temperature=0) as resp:
        d.ids["stream"] = resp.headers["x-thrifty-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text
    # A stream the client leaves after two chunks.
    with a.chat.completions.with_streaming_response.create(
            model="slow", messages=[{"role": "user", "content": "Tell me a very long story"}], stream=True) as resp:
        d.ids["abandoned"] = resp.headers["x-thrifty-request-id"]
        it = iter(resp.parse())
        next(it), next(it)
    # Upstream errors: one non-streamed, one streamed (the error comes before the first byte).
    for name, stream in (("upstream-error", False), ("upstream-error-stream", True)):
        with pytest.raises(openai.APIStatusError) as err:
            if stream:
                list(a.chat.completions.create(model="fragile", messages=[{"role": "user", "content": "hi"}],
                                               stream=True))
            else:
                _chat(a, "fragile", "hi")
        d.ids[name] = err.value.response.headers["x-thrifty-request-id"]
    # A long system prompt compressed for a model that then fails: nothing was answered.
    with pytest.raises(openai.APIStatusError) as err:
        a.chat.completions.create(model="fragile", messages=msgs)
    d.ids["compressed-failed"] = err.value.response.headers["x-thrifty-request-id"]
    # The unpriced self-hosted model.
    rid("unpriced", _chat(a, "house", "What is on the menu today?"))
    # Bob's budget ($1 a day) cannot hold a request that may write 200k tokens of strong ($2).
    with pytest.raises(openai.RateLimitError) as refused:
        _chat(b, "strong", "Write a novel", max_tokens=200_000)
    assert refused.value.code == "budget_exceeded"
    d.ids["refused"] = refused.value.response.headers["x-thrifty-request-id"]
    # A passthrough endpoint.
    rid("embeddings", a.embeddings.with_raw_response.create(model="embed", input=["the quick brown fox", "jumps"]))
    rid("responses", a.responses.with_raw_response.create(model="mid", input="Say hello to the operator", store=False))
    # A background response: recorded at an estimate when queued, at its real usage once retrieved.
    raw = a.responses.with_raw_response.create(model="mid", input="Write a long report on the day", background=True)
    d.ids["background"] = raw.headers["x-thrifty-request-id"]
    assert a.responses.retrieve(raw.parse().id).status == "completed"
    # The abandoned stream's row is written once the gateway notices the client left.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not d.db("SELECT 1 FROM requests WHERE request_id = ?", d.ids["abandoned"]):
        time.sleep(0.05)


# --- the ledger: what every surface must agree with ---------------------------------------------

ROW_COLS = ("request_id", "key_id", "tenant", "task", "route", "requested_model", "served_model", "tier", "strategy",
            "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd", "baseline_cost_usd", "cache_status",
            "cache_saved_usd", "compression_saved_tokens", "compression_saved_usd", "escalations", "status",
            "error_type", "batch", "ts")


def rows(d: Day) -> list[dict[str, Any]]:
    estimated = {i for (i,) in d.db("SELECT DISTINCT request_id FROM attempts WHERE cost_source = 'estimated'")}
    out = [dict(zip(ROW_COLS, r, strict=True)) for r in d.db(f"SELECT {', '.join(ROW_COLS)} FROM requests")]
    for r in out:
        r["estimated"] = r["request_id"] in estimated
    return out


def saved(r: dict[str, Any]) -> float:
    """docs/operations.md, "Accounting": baseline - cost (the baseline prices the prompt before
    compression, so compression's saving is inside it); a failure's spend is a loss; unknown cost
    claims nothing; a hit without a baseline counts cache_saved_usd."""
    if r["status"] != "ok":
        return -(r["cost_usd"] or 0.0)
    if r["cost_usd"] is None:
        return 0.0
    if r["baseline_cost_usd"] is not None:
        return float(r["baseline_cost_usd"] - r["cost_usd"])
    return float(r["cache_saved_usd"]) if r["cache_status"] == "hit" else 0.0


def compression_share(r: dict[str, Any]) -> float:
    """What the dashboard's strategy chart moves from a request's strategy to compression."""
    counted = r["status"] == "ok" and r["cost_usd"] is not None and r["baseline_cost_usd"] is not None
    return float(r["compression_saved_usd"]) if counted else 0.0


def expected(rs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rs if r["status"] == "ok"]
    hits = sum(r["cache_status"] == "hit" for r in rs)
    misses = sum(r["cache_status"] == "miss" for r in rs)
    return {
        "requests": len(rs), "errors": len(rs) - len(ok),
        "spend_usd": sum(r["cost_usd"] or 0.0 for r in rs),
        # An unpriced request is out of spend, so its baseline is out too (else its gap reads as saved).
        "baseline_usd": sum(r["baseline_cost_usd"] or 0.0 for r in ok if r["cost_usd"] is not None),
        "saved_usd": sum(saved(r) for r in rs),
        "cache_hits": hits, "cache_misses": misses,
        "cache_saved_usd": sum(r["cache_saved_usd"] for r in rs),
        "escalations": sum(r["escalations"] for r in rs),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rs),
        "completion_tokens": sum(r["completion_tokens"] for r in rs),
        "compression_saved_tokens": sum(r["compression_saved_tokens"] for r in rs),
        "compression_saved_usd": sum(r["compression_saved_usd"] for r in rs),
        "unpriced_requests": sum(r["cost_usd"] is None or (r["status"] == "ok" and r["baseline_cost_usd"] is None)
                                 for r in rs),
        "estimated_requests": sum(r["estimated"] for r in rs),
        "batch_requests": sum(bool(r["batch"]) for r in rs),
    }


GROUP_OF = {
    "model": lambda r: r["served_model"] or r["requested_model"],
    "task": lambda r: r["task"] or "(none)",
    "tier": lambda r: r["tier"] or "(none)",
    "key": lambda r: r["key_id"] or "(none)",
    "strategy": lambda r: r["strategy"],
    "route": lambda r: r["route"] or "(none)",
    "day": lambda r: time.strftime("%Y-%m-%d", time.gmtime(r["ts"])),
}


def cli(*args: str) -> str:
    result = CliRunner().invoke(build_app(), list(args))
    assert result.exit_code == 0, result.output
    return result.output


def close(a: dict[str, Any], b: dict[str, Any], keys: Any = None) -> None:
    for k in keys or b:
        if isinstance(b[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
        else:
            assert a[k] == b[k], k


# --- the walk-through ---------------------------------------------------------------------------


def test_the_day_is_in_the_ledger_as_sent(day: Day) -> None:
    rs = {r["request_id"]: r for r in rows(day)}
    assert set(day.ids.values()) <= set(rs), "a request the client saw is missing from the ledger"
    assert len(rs) == len(day.ids), "the ledger holds requests nobody sent"
    by = {name: rs[i] for name, i in day.ids.items()}
    assert (by["routed"]["strategy"], by["routed"]["cache_status"]) == ("routing", "miss")
    assert (by["routed-again"]["strategy"], by["routed-again"]["cache_status"]) == ("cache", "hit")
    assert by["paraphrase"]["cache_status"] == "hit"
    assert by["bob-named"]["tenant"] != by["named"]["tenant"]
    assert (by["escalated"]["strategy"], by["escalated"]["escalations"]) == ("cascade", 1)
    assert (by["accepted"]["strategy"], by["accepted"]["escalations"]) == ("cascade", 0)
    assert by["compressed"]["compression_saved_tokens"] > 1000
    assert by["compressed"]["cache_status"] == "bypass"
    assert (by["abandoned"]["status"], by["abandoned"]["error_type"]) == ("error", "ClientDisconnected")
    assert by["abandoned"]["cost_usd"] > 0
    assert by["upstream-error"]["status"] == "error" and by["upstream-error-stream"]["status"] == "error"
    assert by["refused"]["status"] == "error" and by["refused"]["cost_usd"] in (0, None)
    assert by["embeddings"]["strategy"] == "embeddings" and by["responses"]["strategy"] == "responses"
    assert by["unpriced"]["cost_usd"] is None and by["unpriced"]["baseline_cost_usd"] > 0
    assert by["long-again"]["cached_tokens"] > 1000
    assert by["abandoned"]["estimated"] and not by["background"]["estimated"]  # amended on retrieve
    assert by["background"]["completion_tokens"] > 0
    for hit in ("routed-again", "paraphrase", "escalated-again"):
        assert by[hit]["cost_usd"] == 0 and by[hit]["cache_saved_usd"] > 0


@pytest.mark.parametrize("by", [None, *GROUP_OF])
def test_report_every_grouping_and_format_agrees_with_the_ledger(day: Day, by: str | None) -> None:
    rs = rows(day)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        groups[GROUP_OF[by](r) if by else "total"].append(r)
    extra = ["--by", by] if by else []
    js = json.loads(cli("report", "--config", str(day.config), "--format", "json", *extra))
    assert sorted(g["group"] for g in js) == sorted(groups)
    for g in js:
        want = expected(groups[g["group"]])
        close(g, want)
        base = want["baseline_usd"]
        assert g["saved_pct"] == pytest.approx(100 * want["saved_usd"] / base if base else 0.0)
        # A saving is part of a baseline: compression's used to be added on top of a baseline that
        # priced the compressed prompt, and the total here read 103.5%, the routing group 231%.
        assert g["saved_pct"] <= 100.0
        lookups = want["cache_hits"] + want["cache_misses"]
        assert g["cache_hit_rate"] == pytest.approx(want["cache_hits"] / lookups if lookups else 0.0)
    # Grouped rows add up to the total.
    total = expected(rs)
    for k in ("requests", "errors", "spend_usd", "baseline_usd", "saved_usd", "cache_hits", "cache_saved_usd"):
        assert sum(g[k] for g in js) == pytest.approx(total[k])
    # CSV: the same figures under the same names.
    out = cli("report", "--config", str(day.config), "--format", "csv", *extra)
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [r["group"] for r in parsed] == [g["group"] for g in js]
    for c, j in zip(parsed, js, strict=True):
        assert set(c) == set(j)
        for k, v in j.items():
            if isinstance(v, float):
                assert float(c[k]) == pytest.approx(v), k
            else:
                assert c[k] == str(v), k
    # The table: one line per group with the same counts and dollars (to the table's 6 decimals).
    table = cli("report", "--config", str(day.config), *extra)
    lines = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]]
             for ln in table.splitlines() if ln.count("│") > 3}
    for j in js:
        cells = lines[j["group"]]
        assert int(cells[0]) == j["requests"] and int(cells[1]) == j["errors"]
        for i, k in ((2, "spend_usd"), (3, "baseline_usd"), (4, "saved_usd")):
            assert float(cells[i]) == pytest.approx(j[k], abs=1e-6), k
        assert int(cells[6]) == j["cache_hits"] and int(cells[7]) == j["cache_misses"]


def dashboard(day: Day, period: str) -> dict[str, Any]:
    r = httpx.get(day.server.url + f"/dashboard/data?period={period}",
                  headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.parametrize("period", ["24h", "all"])
def test_dashboard_agrees_with_the_ledger_and_the_report(day: Day, period: str) -> None:
    rs = rows(day)
    want = expected(rs)
    data = dashboard(day, period)
    t = data["totals"]
    close(t, want, ["requests", "errors", "spend_usd", "baseline_usd", "saved_usd", "cache_hits", "prompt_tokens",
                    "completion_tokens", "compression_saved_usd", "escalations"])
    assert t["cache_lookups"] == want["cache_hits"] + want["cache_misses"]
    cascades = [r for r in rs if r["strategy"] == "cascade"]
    assert t["cascades"] == len(cascades)
    assert t["escalation_rate"] == pytest.approx(sum(r["escalations"] > 0 for r in cascades) / len(cascades))
    (report,) = json.loads(cli("report", "--config", str(day.config), "--format", "json"))
    for k in ("requests", "errors", "spend_usd", "baseline_usd", "saved_usd", "cache_hits", "cache_hit_rate",
              "escalations", "compression_saved_usd"):
        assert t[k] == pytest.approx(report[k]), k
    # Series, strategies, keys, tasks, tiers each add up to the totals.
    assert sum(p["requests"] for p in data["series"]) == want["requests"]
    assert sum(p["spend_usd"] for p in data["series"]) == pytest.approx(want["spend_usd"])
    assert sum(p["baseline_usd"] for p in data["series"]) == pytest.approx(want["baseline_usd"])
    strategies = {s["strategy"]: s for s in data["strategies"]}
    assert sum(s["requests"] for s in strategies.values()) == want["requests"]
    assert sum(s["spend_usd"] for s in strategies.values()) == pytest.approx(want["spend_usd"])
    assert sum(s["saved_usd"] for s in strategies.values()) == pytest.approx(want["saved_usd"])
    by_strategy = {g["group"]: g for g in json.loads(
        cli("report", "--config", str(day.config), "--format", "json", "--by", "strategy"))}
    for name, g in by_strategy.items():
        s = strategies["batching" if name == "batch" else name]
        assert (s["requests"], s["spend_usd"]) == (g["requests"], pytest.approx(g["spend_usd"])), name
        own = [r for r in rs if r["strategy"] == name]
        assert s["saved_usd"] == pytest.approx(sum(saved(r) - compression_share(r) for r in own)
                                               + (sum(compression_share(r) for r in rs) if name == "compression"
                                                  else 0.0)), name
    assert strategies["compression"]["saved_usd"] > 0  # the compressed requests' share, moved here
    keys = {k["key_id"]: k for k in data["keys"]}
    by_key = {g["group"]: g for g in json.loads(
        cli("report", "--config", str(day.config), "--format", "json", "--by", "key"))}
    assert set(keys) == set(by_key)
    for kid, g in by_key.items():
        assert keys[kid]["requests"] == g["requests"]
        assert keys[kid]["spend_usd"] == pytest.approx(g["spend_usd"])
        assert keys[kid]["saved_usd"] == pytest.approx(g["saved_usd"])  # compression's share included
    assert {keys[day.keys["alice"]]["name"], keys[day.keys["bob"]]["name"]} == {"alice", "bob"}
    assert keys[day.keys["bob"]]["budget_usd"] == 1.0
    assert sum(k["requests"] for k in data["tasks"]) == want["requests"]
    assert sum(x["requests"] for x in data["tiers"]) == want["requests"] - want["errors"]


def metrics(day: Day) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(day.server.url + "/metrics", timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in m.items()
               if n == name and all(dict(labels).get(k) == val for k, val in match.items()))


def test_metrics_agree_with_the_ledger(day: Day) -> None:
    rs = rows(day)
    want = expected(rs)
    m = metrics(day)
    assert total(m, "thrifty_requests_total") == want["requests"]
    assert total(m, "thrifty_requests_total", status="ok") == want["requests"] - want["errors"]
    assert total(m, "thrifty_errors_total") == want["errors"]
    assert total(m, "thrifty_cost_usd_total") == pytest.approx(want["spend_usd"])
    assert total(m, "thrifty_baseline_cost_usd_total") == pytest.approx(want["baseline_usd"])
    assert total(m, "thrifty_cache_hits_total") == want["cache_hits"]
    assert total(m, "thrifty_cache_requests_total", cache_status="miss") == want["cache_misses"]
    assert total(m, "thrifty_escalations_total") == want["escalations"]
    assert total(m, "thrifty_tokens_total", kind="prompt") == want["prompt_tokens"]
    assert total(m, "thrifty_tokens_total", kind="completion") == want["completion_tokens"]
    assert total(m, "thrifty_tokens_total", kind="cached") == sum(r["cached_tokens"] for r in rs) > 0
    # Every upstream call, once: the attempts table.
    for model, purpose, status, n in day.db("SELECT model, purpose, status, COUNT(*) FROM attempts "
                                            "GROUP BY model, purpose, status"):
        assert total(m, "thrifty_upstream_latency_seconds_count", model=model, purpose=purpose, status=status) == n
    assert total(m, "thrifty_upstream_latency_seconds_count") == day.db("SELECT COUNT(*) FROM attempts")[0][0]
    # Savings: the report's rule with failed requests at 0 and negative savings skipped.
    metric_saved = sum(max(saved(r), 0.0) for r in rs if r["status"] == "ok")
    assert total(m, "thrifty_savings_usd_total") == pytest.approx(metric_saved)
    # Per model, strategy, status: the ledger's counts.
    for r_model in {GROUP_OF["model"](r) for r in rs}:
        n = sum(GROUP_OF["model"](r) == r_model for r in rs)
        assert total(m, "thrifty_requests_total", model=r_model) == n, r_model
        spend = sum(r["cost_usd"] or 0.0 for r in rs if GROUP_OF["model"](r) == r_model)
        assert total(m, "thrifty_cost_usd_total", model=r_model) == pytest.approx(spend), r_model
    for strategy in {r["strategy"] for r in rs}:
        assert total(m, "thrifty_requests_total", strategy=strategy) == sum(r["strategy"] == strategy for r in rs)
    for r_route in {r["route"] or "-" for r in rs}:
        n = sum((r["route"] or "-") == r_route for r in rs)
        assert total(m, "thrifty_requests_total", route=r_route) == n, r_route
    errors: dict[str, int] = defaultdict(int)
    for r in rs:
        if r["status"] != "ok":
            errors[r["error_type"]] += 1
    for etype, n in errors.items():
        assert total(m, "thrifty_errors_total", error_type=etype) == n, etype


def test_request_logs_agree_with_the_ledger(day: Day) -> None:
    rs = {r["request_id"]: r for r in rows(day)}
    lines = [ln for ln in day.logs if ln["logger"] == "thrifty.request"]
    assert sorted(ln["request_id"] for ln in lines) == sorted(rs), "one log line per ledger row, no more"
    # A background response is logged when queued, at an estimate; the retrieve that reconciles
    # it logs the real figures under the create's request id (docs/operations.md, "Logs").
    amended = {ln.get("request_id"): ln for ln in day.logs if ln["logger"] == "thrifty.server" and "amended" in ln["msg"]}
    assert set(amended) == {day.ids["background"]}
    for ln in lines:
        if ln["request_id"] in amended:
            ln = {**ln, **{k: amended[ln["request_id"]][k] for k in ("cost_usd", "prompt_tokens", "completion_tokens")}}
        r = rs[ln["request_id"]]
        assert ln["model"] == (r["served_model"] or r["requested_model"])
        assert (ln["status"], ln["error_type"], ln["key_id"], ln["route"], ln["strategy"], ln["tier"], ln["cache"]) == (
            r["status"], r["error_type"], r["key_id"], r["route"], r["strategy"], r["tier"], r["cache_status"])
        assert (ln["prompt_tokens"], ln["completion_tokens"]) == (r["prompt_tokens"], r["completion_tokens"])
        assert ln["cost_usd"] == pytest.approx(r["cost_usd"]) if r["cost_usd"] is not None else ln["cost_usd"] is None
        assert "sk-upstream" not in json.dumps(ln)


@pytest.mark.parametrize("by", [None, "tenant", "model", "route", "day"])
def test_cache_stats_agree_with_the_ledger_and_the_report(day: Day, by: str | None) -> None:
    rs = [r for r in rows(day) if r["cache_status"] is not None]
    key = {None: lambda r: "total", "tenant": lambda r: r["tenant"], "model": lambda r: r["requested_model"],
           "route": GROUP_OF["route"], "day": GROUP_OF["day"]}[by]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        groups[key(r)].append(r)
    out = json.loads(cli("cache", "stats", "--config", str(day.config), "--json", *(["--by", by] if by else [])))
    got = {g["group"]: g for g in out["requests"]}
    assert set(got) == set(groups)
    for name, g in got.items():
        members = groups[name]
        hits = sum(r["cache_status"] == "hit" for r in members)
        misses = sum(r["cache_status"] == "miss" for r in members)
        assert (g["hits"], g["misses"], g["bypasses"]) == (hits, misses,
                                                           sum(r["cache_status"] == "bypass" for r in members))
        assert g["hit_rate"] == pytest.approx(hits / (hits + misses) if hits + misses else 0.0)
        assert g["saved_usd"] == pytest.approx(sum(r["cache_saved_usd"] for r in members))
    if by is None:
        (report,) = json.loads(cli("report", "--config", str(day.config), "--format", "json"))
        assert (got["total"]["hits"], got["total"]["misses"]) == (report["cache_hits"], report["cache_misses"])
        assert got["total"]["hit_rate"] == pytest.approx(report["cache_hit_rate"])
        assert got["total"]["saved_usd"] == pytest.approx(report["cache_saved_usd"])
        assert out["store"]["entries"] >= 1



def test_response_headers_agree_with_the_ledger(day: Day) -> None:
    rs = {r["request_id"]: r for r in rows(day)}
    assert len(day.headers) >= 15
    for request_id, h in day.headers.items():
        r = rs[request_id]
        # README: x-thrifty-cost-usd is everything the request spent; x-thrifty-model served it.
        if r["cost_usd"] is None:
            assert "x-thrifty-cost-usd" not in h or h["x-thrifty-cost-usd"] in ("", "unknown"), h
        else:
            assert float(h["x-thrifty-cost-usd"]) == pytest.approx(r["cost_usd"], abs=1e-9), request_id
        assert h["x-thrifty-model"] == r["served_model"], request_id


def test_key_usage_agrees_with_the_ledger(day: Day) -> None:
    rs = rows(day)
    for name, key_id in day.keys.items():
        r = httpx.get(day.server.url + f"/admin/keys/{key_id}", headers={"authorization": f"Bearer {ADMIN}"},
                      timeout=10)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["spent_usd"] == pytest.approx(sum(x["cost_usd"] or 0.0 for x in rs if x["key_id"] == key_id)), name
        assert usage["reserved_usd"] == pytest.approx(0.0), name

