"""Requests marked deferrable, over real HTTP: the gateway (uvicorn) in front of the mock upstream's
files/batches endpoints, called with the official openai SDK."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.batches import BatchAPI
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

RULES = [{"pattern": "love", "answer": "positive"}, {"pattern": ".", "answer": "negative"}]
TEXTS = [("I love it" if i % 2 else "it broke") + f" #{i}" for i in range(6)]
EXPECTED = ["positive" if i % 2 else "negative" for i in range(6)]


def start_mock(batch: dict[str, Any]) -> RunningServer:
    return run_in_thread(create_mock(MockConfig.from_dict({"batch": batch, "models": {"good": {"answers": RULES}}})))


def gateway_config(mock: RunningServer, tmp: Path, enabled: bool = True) -> dict[str, Any]:
    return {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234"}},
        "models": {"good": {"provider": "mock", "price": {"input": 1.0, "output": 4.0}}},
        "ledger": {"path": str(tmp / "ledger.db")},
        "batching": {"deferred": {"enabled": enabled, "window_s": 0.5, "poll_interval_s": 0.05}},
    }


def batches(mock: RunningServer) -> BatchAPI:
    app: Any = mock.server.config.app
    return app.state.batches  # type: ignore[no-any-return]


def upstream_paths(mock: RunningServer) -> list[str]:
    app: Any = mock.server.config.app
    return [f"{r['method']} {r['path']}" for r in app.state.mock.recorder.last()]


def ledger(gw: Gateway, sql: str) -> list[tuple[Any, ...]]:
    gw.flush()
    with sqlite3.connect(gw.config.ledger.path) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Gateway, RunningServer, RunningServer]]:
    with start_mock({"completion_s": 0.3}) as mock:
        gw = Gateway.from_config(gateway_config(mock, tmp_path))
        with run_in_thread(gw.app()) as server:
            yield gw, server, mock
        gw.close()


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-000000", max_retries=0, timeout=60)


def ask(server: RunningServer, text: str, *, header: bool = False) -> tuple[str | None, dict[str, str]]:
    """One deferrable request (marked in the body, or by header); its answer and response headers."""
    kw: dict[str, Any] = ({"extra_headers": {"x-thrifty-deferrable": "1"}} if header
                          else {"extra_body": {"thrifty": {"deferrable": True}}})
    raw = client(server).chat.completions.with_raw_response.create(
        model="good", messages=[{"role": "user", "content": text}], **kw)
    return raw.parse().choices[0].message.content, dict(raw.headers)


def ask_all(server: RunningServer) -> list[tuple[str | None, dict[str, str]]]:
    with ThreadPoolExecutor(len(TEXTS)) as pool:
        return list(pool.map(lambda i: ask(server, TEXTS[i], header=i % 3 == 0), range(len(TEXTS))))


def test_concurrent_deferrable_requests_share_one_batch_at_half_price(
        served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    gw, server, mock = served
    answers = ask_all(server)
    assert [a for a, _ in answers] == EXPECTED
    assert {h["x-thrifty-batch"] for _, h in answers} == {"batch"}
    assert len({h["x-thrifty-batch-id"] for _, h in answers}) == 1
    assert batches(mock).created == 1 and batches(mock).uploads == 1
    paths = upstream_paths(mock)
    assert paths.count("POST /v1/batches") == 1 and "POST /v1/chat/completions" not in paths

    rows = ledger(gw, "SELECT batch, strategy, cost_usd, prompt_tokens, completion_tokens, request_id FROM requests")
    assert len(rows) == len(TEXTS) and all(r[0] == 1 and r[1] == "batch" for r in rows)
    for _, _, cost, pt, ct, _ in rows:
        assert pt > 0 and cost == pytest.approx((pt * 0.5 + ct * 2.0) / 1e6)  # half of input 1.0 / output 4.0
    assert {h["x-thrifty-request-id"] for _, h in answers} == {r[5] for r in rows}
    assert ledger(gw, "SELECT COUNT(*) FROM attempts WHERE batch = 1 AND status = 'ok'") == [(len(TEXTS),)]
    # The job is kept like a `thrifty batch run --deferred` job, answers included.
    jobs = ledger(gw, "SELECT status, n_items FROM batch_jobs")
    assert jobs == [("finished", len(TEXTS))]


@pytest.mark.parametrize("settings", [{"line_fail_rate": 0.5}, {"expire": True}])
def test_failed_batch_lines_fall_back_to_normal_calls(tmp_path: Path, settings: dict[str, Any]) -> None:
    with start_mock({"completion_s": 0.2, **settings}) as mock:
        gw = Gateway.from_config(gateway_config(mock, tmp_path))
        with run_in_thread(gw.app()) as server:
            answers = ask_all(server)
        gw.flush()
        assert [a for a, _ in answers] == EXPECTED  # every request answered, none dropped
        modes = [h["x-thrifty-batch"] for _, h in answers]
        fallbacks = modes.count("fallback")
        assert 0 < fallbacks < len(TEXTS) and modes.count("batch") == len(TEXTS) - fallbacks
        assert batches(mock).created == 1  # no second batch round: the fallback is a normal call
        assert upstream_paths(mock).count("POST /v1/chat/completions") == fallbacks
        rows = ledger(gw, "SELECT batch, strategy, n_attempts FROM requests")
        assert sorted(rows) == sorted([(0, "passthrough", 2)] * fallbacks + [(1, "batch", 1)] * (len(TEXTS) - fallbacks))
        failed = ledger(gw, "SELECT COUNT(*) FROM attempts WHERE batch = 1 AND status = 'error'")
        assert failed == [(fallbacks,)]
        gw.close()


def test_streaming_deferrable_request_is_refused(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    _, server, mock = served
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model="good", messages=[{"role": "user", "content": "hi"}],
                                               stream=True, extra_body={"thrifty": {"deferrable": True}})
    assert "cannot stream" in str(err.value)
    assert batches(mock).created == 0


async def test_python_api_defers_too(served: tuple[Gateway, RunningServer, RunningServer]) -> None:
    gw, _, mock = served
    reply = await gw.chat(model="good", messages=[{"role": "user", "content": "I love batches"}],
                          thrifty={"deferrable": True})
    assert reply["choices"][0]["message"]["content"] == "positive"
    assert batches(mock).created == 1
    assert ledger(gw, "SELECT batch, strategy FROM requests") == [(1, "batch")]


def test_deferral_disabled_serves_normally(tmp_path: Path) -> None:
    with start_mock({}) as mock:
        gw = Gateway.from_config(gateway_config(mock, tmp_path, enabled=False))
        assert "deferred" not in gw.describe()
        with run_in_thread(gw.app()) as server:
            answer, headers = ask(server, TEXTS[1])
        assert answer == "positive" and "x-thrifty-batch" not in headers
        assert batches(mock).created == 0 and upstream_paths(mock) == ["POST /v1/chat/completions"]
        assert ledger(gw, "SELECT batch, strategy FROM requests") == [(0, "passthrough")]
        gw.close()


@pytest.mark.parametrize(("budget", "served_by_batch"), [(0.0003, True), (0.0001, False)])
def test_a_route_budget_holds_at_the_batch_price(tmp_path: Path, budget: float, served_by_batch: bool) -> None:
    """100 completion tokens at $4/M: ~$0.0004 at the normal price, ~$0.0002 at the batch price."""
    with start_mock({"completion_s": 0.1}) as mock:
        cfg = gateway_config(mock, tmp_path)
        cfg["routing"] = {"default_route": "cheap", "routes": {"cheap": {"model": "good", "max_cost_usd": budget}}}
        gw = Gateway.from_config(cfg)
        with run_in_thread(gw.app()) as server:
            call = client(server).chat.completions.with_raw_response
            kw: dict[str, Any] = {"model": "auto", "max_tokens": 100, "extra_body": {"thrifty": {"deferrable": True}},
                                  "messages": [{"role": "user", "content": "I love it"}]}
            if served_by_batch:
                raw = call.create(**kw)
                assert raw.parse().choices[0].message.content == "positive"
                assert raw.headers["x-thrifty-batch"] == "batch" and batches(mock).created == 1
            else:
                with pytest.raises(openai.BadRequestError) as err:
                    call.create(**kw)
                assert err.value.code == "route_budget_exceeded" and "max_cost_usd" in err.value.message
                assert batches(mock).created == 0 and upstream_paths(mock) == []
        gw.close()


def test_a_batch_answer_without_usage_is_counted_not_free(tmp_path: Path) -> None:
    """A batch result with an empty usage is priced from thrifty's own token counts (estimated)."""
    with run_in_thread(create_mock(MockConfig.from_dict({"batch": {"completion_s": 0.1}, "models": {
            "good": {"answers": RULES, "usage_convention": "none"}}}))) as mock:
        gw = Gateway.from_config(gateway_config(mock, tmp_path))
        with run_in_thread(gw.app()) as server:
            answer, headers = ask(server, "I love it")
        assert answer == "positive" and headers["x-thrifty-batch"] == "batch"
        ((cost, source, prompt, completion),) = ledger(
            gw, "SELECT cost_usd, cost_source, prompt_tokens, completion_tokens FROM attempts")
        assert source == "estimated" and prompt > 0 and completion > 0
        assert cost == pytest.approx((prompt * 1.0 + completion * 4.0) / 1e6 * 0.5)
        gw.close()


def test_a_deferred_line_is_adapted_to_its_providers_compat(tmp_path: Path) -> None:
    """providers.NAME.compat applies to Batch API lines as to normal calls."""
    with start_mock({"completion_s": 0.1}) as mock:
        cfg = gateway_config(mock, tmp_path)
        cfg["providers"]["mock"]["compat"] = {"developer_role": "system", "drop_params": ["store"]}
        cfg["batching"]["deferred"]["delete_files"] = False  # the uploaded lines are read below
        gw = Gateway.from_config(cfg)
        with run_in_thread(gw.app()) as server:
            reply = client(server).chat.completions.create(
                model="good", store=True, extra_body={"thrifty": {"deferrable": True}},
                messages=[{"role": "developer", "content": "Label it."}, {"role": "user", "content": "I love it"}])
        assert reply.choices[0].message.content == "positive"
        uploaded = [json.loads(line) for f in batches(mock).files.values()
                    if f["info"].get("purpose") == "batch" for line in f["data"].decode().splitlines()]
        (line,) = uploaded
        assert [m["role"] for m in line["body"]["messages"]] == ["system", "user"] and "store" not in line["body"]
        gw.close()
