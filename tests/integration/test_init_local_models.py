"""`thrifty init` for a model server on the team's own hardware (Ollama, vLLM, any OpenAI-compatible
server) as the free cheap tier. The mock upstream stands in for the server: its `allowed_models`
is what its `GET /v1/models` lists (docs/mock-upstream.md), so it serves Ollama-style names.

- `init --provider ollama` asks the server for its models and writes each one at price 0, tiered
  by the size its name gives; mixed with a cloud preset they are the cheap end of one hierarchy
  and the cloud premium model is the baseline;
- the written config loads, and a gateway built from it serves `model: auto` from a local model
  through the real `openai` client: the ledger records cost 0.0 (not unknown) and the report
  counts the baseline's cost as saved, `estimate --config` prices it at $0, a route's budget
  guard never refuses it and the catalog sorts it first, not as "unknown price last";
- a name a price table also lists (`deepseek-r1:7b`, priced by genai-prices) costs 0.0 for its
  cached tokens too;
- a server that cannot be reached gives a placeholder model and a one-line warning, and
  `--no-discover` does not ask at all.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from fixtures.cli_run import assert_one_line, run_main
from thrifty.catalog import resolve_price
from thrifty.cli.init_local import PLACEHOLDER, size_of, tier_of
from thrifty.config import load_config
from thrifty.cost import call_cost
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.types import Usage

# What the stand-in server lists, as `ollama list` would; the embedding model cannot chat.
SERVED = ["llama3.2:3b", "qwen2.5:7b", "llama3.3:70b", "deepseek-r1:7b", "nomic-embed-text:latest"]
CHAT = {"llama3.2:3b": "nano", "qwen2.5:7b": "small", "deepseek-r1:7b": "small", "llama3.3:70b": "medium"}
FREE = {"input": 0, "output": 0}


@pytest.fixture(scope="module")
def ollama() -> Iterator[RunningServer]:
    config = MockConfig.from_dict({"allowed_models": SERVED,
                                   "models": {name: {"prompt_cache": True} for name in SERVED}})
    with run_in_thread(create_mock(config)) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THRIFTY_CONFIG", raising=False)


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> tuple[dict[str, Any], str]:
    code, _, err = run_main(capsys, "init", *args, "--out", str(out), "--force")
    assert code == 0, err
    return yaml.safe_load(out.read_text(encoding="utf-8")), err


def check(capsys: pytest.CaptureFixture[str], out: Path) -> str:
    code, text, err = run_main(capsys, "config", "check", str(out))
    assert code == 0 and "ok" in text, err
    assert "no known price" not in err, err
    return err


def test_ollama_writes_the_models_its_server_lists_free(ollama: RunningServer, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "thrifty.yaml"
    data, err = init(capsys, out, "--provider", "ollama", "--upstream-url", ollama.url + "/v1")
    assert "warning" not in err
    # Ollama takes no key: no api_key line (a commented one says how to add one).
    # compat: Ollama builds before v0.13.3 have no /v1/responses (test_responses_chat_providers.py).
    assert data["providers"] == {"ollama": {"base_url": ollama.url + "/v1", "timeout_s": 120, "max_retries": 2,
                                            "compat": {"responses": "chat"}}}
    assert {n: m["tier"] for n, m in data["models"].items()} == CHAT
    assert all(m["price"] == FREE and m["provider"] == "ollama" for m in data["models"].values())
    assert "reasoning" not in out.read_text()  # internal_calls' auto detection knows deepseek-r1
    # Smallest first; the largest is the baseline (nothing dearer to save against); a small one serves auto.
    assert list(data["models"]) == ["llama3.2:3b", "qwen2.5:7b", "deepseek-r1:7b", "llama3.3:70b"]
    assert (data["baseline"], data["default_model"]) == ("llama3.3:70b", "qwen2.5:7b")
    assert "counts no\n# hardware or power cost" in out.read_text()
    assert check(capsys, out) == ""  # no key variable to warn about
    catalog = load_config(out, env={}).build_catalog()
    assert all(m.price is not None and (m.price.input, m.price.output) == (0, 0) for m in catalog)


@pytest.mark.parametrize("flags", [
    ("--provider", "ollama", "--provider", "openai", "--upstream-url", "{url}"),
    ("--provider", "ollama={url}", "--provider", "openai"),
])
def test_mixed_with_openai_the_local_models_are_the_cheap_end_and_openai_the_baseline(
        flags: tuple[str, ...], ollama: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "thrifty.yaml"
    data, _ = init(capsys, out, *(f.format(url=ollama.url + "/v1") for f in flags))
    assert data["providers"]["ollama"]["base_url"] == ollama.url + "/v1"
    assert data["providers"]["openai"]["base_url"] == "https://api.openai.com/v1"
    names = list(data["models"])
    assert names[:4] == ["llama3.2:3b", "qwen2.5:7b", "deepseek-r1:7b", "llama3.3:70b"]
    assert {data["models"][n]["provider"] for n in names[4:]} == {"openai"}
    assert data["baseline"] == "gpt-6-astra" and data["models"]["gpt-6-astra"]["aliases"] == ["premium"]
    assert data["default_model"] == "qwen2.5:7b"
    check(capsys, out)
    catalog = load_config(out, env={}).build_catalog()
    # $0 sorts first (the cascade order), never last as an unknown price would.
    assert [m.name for m in catalog.by_price()][:4] == names[:4]


def test_a_gateway_from_the_written_config_records_0_and_reports_the_saving(
        ollama: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "thrifty.yaml"
    init(capsys, cfg, "--provider", "ollama", "--provider", "openai", "--upstream-url", ollama.url + "/v1")
    text = cfg.read_text(encoding="utf-8").replace("path: thrifty-ledger.db", f"path: {tmp_path / 'ledger.db'}")
    # The starter's commented quality guard, uncommented, with a route budget far below one
    # gpt-6-astra call: the free first tier must still be called.
    block = text[text.index("# routing:"):].split("\n\n", 1)[0]
    routing = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    routing = routing.replace("      scorer:", "      max_cost_usd: 0.000001\n      scorer:")
    routing = routing.replace("kind: combined", "kind: heuristic").replace(
        "\n        parts: [{kind: heuristic}, {kind: judge, judge_model: qwen2.5:7b}]", "")
    cfg.write_text(text.replace(block, routing), encoding="utf-8")
    check(capsys, cfg)
    written: dict[str, Any] = yaml.safe_load(cfg.read_text(encoding="utf-8"))

    gw = Gateway.from_config(written)
    with run_in_thread(gw.app()) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="anything")
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Explain what a reverse proxy is in two lines."}])
        assert raw.headers["x-thrifty-model"] == "qwen2.5:7b"
        assert float(raw.headers["x-thrifty-cost-usd"]) == 0.0
        assert raw.parse().choices[0].message.content
        # The same long prompt twice to a name genai-prices also prices: the second is partly cached.
        long = "Summarise this log line by line. " + "GET /health 200 1ms ok; " * 400
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(
                model="deepseek-r1:7b", messages=[{"role": "user", "content": long}])
        usage = raw.parse().usage
        assert usage is not None and usage.prompt_tokens_details is not None
        assert (usage.prompt_tokens_details.cached_tokens or 0) > 0
        assert float(raw.headers["x-thrifty-cost-usd"]) == 0.0
        # /metrics has the free model's cost series, at 0 (a $0 request was left out of it).
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert re.search(r'^thrifty_cost_usd_total\{model="deepseek-r1:7b",route="-"\} 0\.0$', metrics, re.M), metrics
    gw.close()

    code, out, err = run_main(capsys, "report", "--config", str(cfg), "--by", "model", "--format", "json")
    assert code == 0, err
    rows = {r["group"]: r for r in json.loads(out)}
    for name, requests in (("qwen2.5:7b", 1), ("deepseek-r1:7b", 2)):
        row = rows[name]
        assert row["requests"] == requests and row["unpriced_requests"] == 0, row
        assert row["spend_usd"] == 0.0 and row["baseline_usd"] > 0
        assert row["saved_usd"] == pytest.approx(row["baseline_usd"]) and row["saved_pct"] == pytest.approx(100.0)


def test_estimate_prices_a_local_model_at_0(ollama: RunningServer, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "thrifty.yaml"
    init(capsys, cfg, "--provider", "ollama=" + ollama.url + "/v1", "--provider", "openai")
    code, out, err = run_main(capsys, "estimate", "--config", str(cfg), "-n", "100000", "--input-tokens", "500",
                              "--output-tokens", "200", "--models", "qwen2.5:7b,gpt-6-astra", "--json")
    assert code == 0, err
    rows = {r["model"]: r for r in json.loads(out)["rows"]}
    assert rows["qwen2.5:7b"]["monthly_usd"] == 0.0
    assert rows["gpt-6-astra"]["monthly_usd"] > 0
    assert rows["qwen2.5:7b"]["saved_usd"] == pytest.approx(rows["gpt-6-astra"]["monthly_usd"])
    assert rows["qwen2.5:7b"]["saved_pct"] == pytest.approx(100.0)


def test_a_free_price_is_free_for_cached_tokens_too() -> None:
    """genai-prices prices `deepseek-r1:7b` (as DeepSeek's R1): `price: {input: 0, output: 0}`
    overrode its input and output rates but kept its cached and cache-write ones, so a local
    model's cached prompt cost money."""
    price = resolve_price("deepseek-r1:7b", "deepseek-r1:7b", {"input": 0.0, "output": 0.0})
    assert price is not None
    usage = Usage(prompt_tokens=5000, completion_tokens=100, cached_tokens=4096, cache_write_tokens=500)
    assert call_cost(usage, price).usd == 0.0
    assert call_cost(usage, price, batch=True).usd == 0.0
    # A price block that is not free keeps the base's other rates, as documented.
    paid = resolve_price("deepseek-r1:7b", "deepseek-r1:7b", {"input": 1.0, "output": 2.0})
    assert paid is not None and paid.cached_input is not None and paid.cached_input < 1.0


def test_an_unreachable_server_gives_a_placeholder_and_a_warning(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "thrifty.yaml"
    url = f"http://127.0.0.1:{closed_port()}/v1"
    data, err = init(capsys, out, "--provider", "vllm", "--upstream-url", url)
    assert err.count("\n") == 1 and err.startswith("warning: ") and url in err and PLACEHOLDER in err, err
    assert data["models"] == {PLACEHOLDER: {"provider": "vllm", "tier": "small", "price": FREE,
                                            "aliases": ["premium"]}}
    assert data["providers"]["vllm"]["api_key"] == "${VLLM_API_KEY:-}"
    assert "placeholder: replace with a model the server serves" in out.read_text()
    assert check(capsys, out) == ""  # VLLM_API_KEY unset is no warning: most servers take no key


def test_no_discover_does_not_ask_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as listener:  # a server that would see the connection
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        data, err = init(capsys, tmp_path / "t.yaml", "--provider", "local=" + url, "--no-discover")
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert err == ""
    assert list(data["models"]) == [PLACEHOLDER] and data["providers"]["local"]["base_url"] == url


@pytest.mark.parametrize("args,needles", [
    (["--provider", "local"], ["--provider local", "--upstream-url", "local=URL"]),
    (["--provider", "ollama", "--provider", "vllm", "--upstream-url", "http://127.0.0.1:9/v1"],
     ["--upstream-url", "one provider", "NAME=URL"]),
    (["--provider", "openai", "--provider", "groq", "--upstream-url", "http://127.0.0.1:9/v1"],
     ["--upstream-url", "one provider"]),
    (["--provider", "ollama=ftp://box/v1"], ["--provider ollama", "http://"]),
    (["--provider", "ollama="], ["--provider ollama=", "NAME=URL"]),
    (["--provider", "lmstudio"], ["'lmstudio'", "local servers: local, ollama, vllm"]),
])
def test_bad_local_flags_are_one_line_errors(args: list[str], needles: list[str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.yaml"
    code, _, err = run_main(capsys, "init", *args, "--no-discover", "--out", str(out))
    assert_one_line(code, err, *needles)
    assert not out.exists()


@pytest.mark.parametrize("name,tier", [("llama3.2:1b", "nano"), ("qwen2.5:0.5b", "nano"), ("phi3:3.8b", "nano"),
                                       ("llama3.1:8b", "small"), ("Meta-Llama-3.1-8B-Instruct", "small"),
                                       ("mistral:7b-instruct-q4_K_M", "small"), ("qwen3:30b-a3b", "medium"),
                                       ("mixtral:8x7b", "medium"), ("llama3.3:70b", "medium"),
                                       ("llama3.2", "small"), ("gemma3n:e2b", "nano")])
def test_the_tier_comes_from_the_size_the_name_gives(name: str, tier: str) -> None:
    assert tier_of(size_of(name)) == tier


def test_odd_names_a_server_lists_are_written_as_themselves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = ["yes", "1.5", "a, b", "model #2", "auto"]
    config = MockConfig.from_dict({"allowed_models": served, "models": {}})
    with run_in_thread(create_mock(config)) as server:
        data, _ = init(capsys, tmp_path / "t.yaml", "--provider", "local", "--upstream-url", server.url + "/v1")
    assert sorted(data["models"]) == sorted(served[:-1])  # "auto" is thrifty's own name
    assert data["default_model"] in served and data["baseline"] in served
    check(capsys, tmp_path / "t.yaml")
