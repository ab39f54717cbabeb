"""The cache over real HTTP: uvicorn on loopback, the openai SDK, the mock upstream, the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from typer.testing import CliRunner

from thrifty.cli.main import build_app
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

MSG: Any = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a prime number."}]


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as server:
        yield server


@pytest.fixture(scope="module")
def setup(mock: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("cache")
    cfg = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-up-123456"}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 1, "output": 2}},
                   "premium": {"provider": "mock", "price": {"input": 10, "output": 40}}},
        "baseline": "premium",
        "ledger": {"path": "ledger.db"},
        "cache": {"path": "cache.db"},
    }
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = Gateway.from_config(path)
    with run_in_thread(gw.app()) as server:
        yield gw, server, path
    gw.flush()


def client(server: RunningServer, key: str = "sk-client-aaaaaaaa") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=10)


def test_hit_over_http_with_header_and_identical_answer(setup: tuple[Gateway, RunningServer, Path]) -> None:
    _gw, server, _ = setup
    c = client(server)
    first = c.chat.completions.with_raw_response.create(model="cheap", messages=MSG, temperature=0)
    second = c.chat.completions.with_raw_response.create(model="cheap", messages=MSG, temperature=0)
    assert first.headers["x-thrifty-cache"] == "miss" and second.headers["x-thrifty-cache"] == "hit"
    assert float(second.headers["x-thrifty-cost-usd"]) == 0.0
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert second.parse().usage is not None and second.parse().usage.completion_tokens > 0


def test_another_bearer_token_is_another_tenant(setup: tuple[Gateway, RunningServer, Path]) -> None:
    _, server, _ = setup
    msgs = [{"role": "user", "content": "Which tenant am I?"}]
    client(server, "sk-client-aaaaaaaa").chat.completions.create(model="cheap", messages=msgs, temperature=0)
    other = client(server, "sk-client-bbbbbbbb").chat.completions.with_raw_response.create(
        model="cheap", messages=msgs, temperature=0)
    assert other.headers["x-thrifty-cache"] == "miss"


def test_stream_served_from_cache_streams_with_usage(setup: tuple[Gateway, RunningServer, Path]) -> None:
    _, server, _ = setup
    c = client(server)
    msgs = [{"role": "user", "content": "Stream me a short answer about rivers."}]
    kw: Any = {"model": "cheap", "messages": msgs, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}}
    with c.chat.completions.with_streaming_response.create(**kw) as resp:
        assert resp.headers["x-thrifty-cache"] == "miss"
        first = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    with c.chat.completions.with_streaming_response.create(**kw) as resp:
        assert resp.headers["x-thrifty-cache"] == "hit"
        second = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]

    def text(chunks: list[dict[str, Any]]) -> str:
        return "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch.get("choices"))

    assert text(first) == text(second) and len(second) > 2
    assert second[-1]["usage"]["completion_tokens"] == first[-1]["usage"]["completion_tokens"]


def test_request_controls_over_http(setup: tuple[Gateway, RunningServer, Path]) -> None:
    _, server, _ = setup
    c = client(server)
    c.chat.completions.create(model="cheap", messages=MSG, temperature=0)
    off = c.chat.completions.with_raw_response.create(model="cheap", messages=MSG, temperature=0,
                                                      extra_body={"cache": False})
    no_store = c.chat.completions.with_raw_response.create(model="cheap", messages=MSG, temperature=0,
                                                           extra_headers={"x-thrifty-cache": "no-store"})
    warm = c.chat.completions.with_raw_response.create(model="cheap", messages=MSG, temperature=0.9)
    assert [r.headers["x-thrifty-cache"] for r in (off, no_store, warm)] == ["bypass"] * 3


def test_stats_and_clear_commands(setup: tuple[Gateway, RunningServer, Path]) -> None:
    gw, server, path = setup
    c = client(server)
    msgs = [{"role": "user", "content": "Count me in the stats."}]
    for _ in range(3):
        c.chat.completions.create(model="cheap", messages=msgs, temperature=0)
    gw.flush()
    runner = CliRunner()
    out = runner.invoke(build_app(), ["cache", "stats", "--config", str(path), "--json"])
    assert out.exit_code == 0, out.output
    stats = json.loads(out.output)
    total = stats["requests"][0]
    assert total["hits"] >= 2 and total["misses"] >= 1 and total["saved_usd"] > 0
    assert total["hit_rate"] == pytest.approx(total["hits"] / (total["hits"] + total["misses"]))
    assert stats["store"]["entries"] >= 1
    by_tenant = runner.invoke(build_app(), ["cache", "stats", "--config", str(path), "--by", "tenant"])
    assert by_tenant.exit_code == 0 and "anon-" in by_tenant.output and "hit rate" in by_tenant.output
    by_day = runner.invoke(build_app(), ["cache", "stats", "--config", str(path), "--by", "day", "--since", "1d"])
    assert by_day.exit_code == 0, by_day.output
    report = runner.invoke(build_app(), ["report", "--config", str(path), "--format", "json"])
    assert report.exit_code == 0, report.output
    row = json.loads(report.output)[0]
    assert row["cache_hits"] >= 2 and row["cache_misses"] >= 1 and row["cache_saved_usd"] > 0
    assert row["cache_hit_rate"] == pytest.approx(row["cache_hits"] / (row["cache_hits"] + row["cache_misses"]))
    assert runner.invoke(build_app(), ["cache", "clear", "--config", str(path)]).exit_code != 0
    cleared = runner.invoke(build_app(), ["cache", "clear", "--config", str(path), "--model", "cheap"])
    assert cleared.exit_code == 0 and cleared.output.startswith("deleted ")
    again = c.chat.completions.with_raw_response.create(model="cheap", messages=msgs, temperature=0)
    assert again.headers["x-thrifty-cache"] == "miss"
