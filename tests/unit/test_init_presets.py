"""`thrifty init` writes models the provider serves: presets per provider (--provider, or the
preset of --upstream-url's host), several presets in one hierarchy, and the seed hierarchy
unchanged for a server no preset knows (the mock upstream). Every written model is priced by
the catalog built from the written file, and its comment shows that price."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from thrifty.catalog import SEED_MODELS, lookup_genai_price
from thrifty.cli.init_presets import RESPONSES_MODE, Preset, presets, render, usd
from thrifty.cli.main import build_app, main
from thrifty.config import load_config

runner = CliRunner()
PRESETS = ["openai", "deepseek", "openrouter", "together", "groq", "mistral"]


def init(tmp_path: Path, *args: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / "thrifty.yaml"
    result = runner.invoke(build_app(), ["init", *args, "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    return out, yaml.safe_load(out.read_text(encoding="utf-8"))


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def commented_prices(text: str) -> dict[str, tuple[str, str]]:
    """model name -> (input, output) as its line's comment shows them."""
    found = re.findall(r"^  (\S+):\s+# \$([\d.]+) in / \$([\d.]+) out per million tokens", text, re.M)
    return {name: (i, o) for name, i, o in found}


def check_priced(out: Path, data: dict[str, Any]) -> None:
    """The written file loads, its catalog prices every model, and each comment is that price."""
    cfg = load_config(out, env={})
    catalog = cfg.build_catalog()
    assert len(catalog) == len(data["models"])
    unpriced = [m.name for m in catalog if m.price is None]
    assert not unpriced, f"unpriced models: {unpriced}"
    shown = commented_prices(out.read_text(encoding="utf-8"))
    assert set(shown) == set(data["models"])
    for m in catalog:
        assert m.price is not None
        assert shown[m.name] == (usd(m.price.input), usd(m.price.output)), m.name
    # the hierarchy is written cheapest output first
    outputs = [catalog.get(name).price.output for name in data["models"]]  # type: ignore[union-attr]
    assert outputs == sorted(outputs)


def test_every_preset_model_is_priced_by_genai_prices_under_its_provider() -> None:
    assert sorted(presets()) == sorted(PRESETS)
    missing = [(p.name, m) for p in presets().values() for m, _ in p.models
               if lookup_genai_price(m, p.genai_provider) is None]
    assert not missing, f"genai-prices does not price these under their provider: {missing}"
    for p in presets().values():
        assert p.models[-1][1] == "premium" and p.hosts and p.api_key_env.endswith("_API_KEY")


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_writes_its_provider_and_models_all_priced(name: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    preset = presets()[name]
    out, data = init(tmp_path, "--provider", name)
    # A provider without a usable /responses gets it served as chat (test_responses_chat_providers.py).
    chat_only = {"compat": {"responses": "chat"}} if RESPONSES_MODE[name] == "chat" else {}
    assert data["providers"] == {name: {"base_url": preset.base_url, "api_key": f"${{{preset.api_key_env}}}",
                                        "timeout_s": 120, "max_retries": 2, **chat_only}}
    assert sorted(data["models"]) == sorted(m for m, _ in preset.models)
    assert {m["provider"] for m in data["models"].values()} == {name}
    assert {n: m["tier"] for n, m in data["models"].items()} == dict(preset.models)
    premium = next(m for m, tier in preset.models if tier == "premium")
    assert data["baseline"] == premium and data["models"][premium]["aliases"] == ["premium"]
    assert data["default_model"] in data["models"]
    check_priced(out, data)
    # the price is the provider's own, whether found by name or written as a price block
    catalog = load_config(out, env={}).build_catalog()
    for m in catalog:
        own = lookup_genai_price(m.upstream_model, preset.genai_provider)
        assert own is not None and m.price is not None
        assert (m.price.input, m.price.output) == pytest.approx((own.input, own.output)), m.name
    code, text, err = run_main(capsys, "config", "check", str(out))
    assert code == 0 and "ok" in text, err
    assert "no known price" not in err


def test_no_flag_writes_the_openai_preset(tmp_path: Path) -> None:
    out, data = init(tmp_path)
    assert list(data["providers"]) == ["openai"]
    assert data["providers"]["openai"]["api_key"] == "${OPENAI_API_KEY}"
    assert "gpt-6-astra" in data["models"] and "deepseek-v4-flash" not in data["models"]
    check_priced(out, data)


@pytest.mark.parametrize("url,name", [("https://api.deepseek.com/v1", "deepseek"),
                                      ("https://api.openai.com/v1/", "openai"),
                                      ("https://openrouter.ai/api/v1", "openrouter"),
                                      ("https://api.groq.com/openai/v1", "groq"),
                                      ("https://api.mistral.ai/v1", "mistral"),
                                      ("https://api.together.xyz/v1", "together")])
def test_the_preset_is_inferred_from_the_url_host(url: str, name: str, tmp_path: Path) -> None:
    out, data = init(tmp_path, "--upstream-url", url)
    assert data["providers"][name]["base_url"] == url.rstrip("/")
    assert data["providers"][name]["api_key"] == f"${{{presets()[name].api_key_env}}}"
    assert sorted(data["models"]) == sorted(m for m, _ in presets()[name].models)
    check_priced(out, data)


def test_one_preset_takes_the_given_url_and_key_variable(tmp_path: Path) -> None:
    out, data = init(tmp_path, "--provider", "OpenAI", "--upstream-url", "https://llm-proxy.example.com/openai/v1",
                     "--api-key-env", "PROXY_KEY")
    # A proxy's host names no provider: price_provider keeps the preset's prices.
    assert data["providers"] == {"openai": {"base_url": "https://llm-proxy.example.com/openai/v1",
                                            "api_key": "${PROXY_KEY}", "timeout_s": 120, "max_retries": 2,
                                            "price_provider": "openai"}}
    assert sorted(data["models"]) == sorted(m for m, _ in presets()["openai"].models)
    check_priced(out, data)


def test_several_presets_make_one_hierarchy_with_the_dearest_premium_as_baseline(tmp_path: Path) -> None:
    out, data = init(tmp_path, "--provider", "deepseek", "--provider", "openai", "--provider", "deepseek")
    assert list(data["providers"]) == ["deepseek", "openai"]
    assert data["providers"]["deepseek"]["api_key"] == "${DEEPSEEK_API_KEY}"
    expected = {m: p for p in ("deepseek", "openai") for m, _ in presets()[p].models}
    assert {n: m["provider"] for n, m in data["models"].items()} == expected
    check_priced(out, data)
    catalog = load_config(out, env={}).build_catalog()
    premiums = [m for m in catalog if m.tier == "premium"]
    assert len(premiums) == 2
    assert data["baseline"] == max(premiums, key=lambda m: m.output_price).name
    assert data["default_model"] == next(n for n, m in data["models"].items() if m["tier"] == "small")


def test_a_name_two_providers_serve_is_prefixed_with_its_provider(tmp_path: Path) -> None:
    groq = presets()["groq"]
    together = Preset(name="together", base_url="https://api.together.xyz/v1", api_key_env="TOGETHER_API_KEY",
                      hosts=(), genai_provider="together",
                      models=(("openai/gpt-oss-120b", "small"), ("moonshotai/Kimi-K3.1-Pro", "premium")))
    text = render([("groq", groq), ("together", together)],
                  {"groq": groq.base_url, "together": together.base_url},
                  {"groq": "GROQ_API_KEY", "together": "TOGETHER_API_KEY"})
    out = tmp_path / "t.yaml"
    out.write_text(text, encoding="utf-8")
    data = yaml.safe_load(text)
    assert "openai/gpt-oss-120b" not in data["models"]
    for provider in ("groq", "together"):
        model = data["models"][f"{provider}/openai/gpt-oss-120b"]
        assert model["provider"] == provider and model["upstream_model"] == "openai/gpt-oss-120b"
    check_priced(out, data)


def test_the_mock_upstream_url_keeps_the_seed_hierarchy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, data = init(tmp_path, "--upstream-url", "http://127.0.0.1:8001/v1")
    assert data["providers"] == {"main": {"base_url": "http://127.0.0.1:8001/v1", "api_key": "${OPENAI_API_KEY}",
                                          "timeout_s": 120, "max_retries": 2}}
    assert data["models"] == {
        "qwen3-8b": {"provider": "main", "tier": "nano"},
        "deepseek-v4-flash": {"provider": "main", "tier": "small"},
        "qwen3-32b": {"provider": "main", "tier": "medium"},
        "deepseek-reasoner": {"provider": "main", "tier": "large"},
        "gpt-4o": {"provider": "main", "tier": "premium", "aliases": ["premium"], "fallbacks": ["deepseek-reasoner"]},
    }
    assert list(data["models"]) == list(SEED_MODELS)
    assert (data["baseline"], data["default_model"]) == ("gpt-4o", "deepseek-v4-flash")
    assert data["ledger"] == {"path": "thrifty-ledger.db"} and data["server"]["port"] == 8000
    text = out.read_text(encoding="utf-8")
    assert "must serve each one under" in text and "price:" not in text.split("models:", 1)[1]
    check_priced(out, data)
    code, checked, err = run_main(capsys, "config", "check", str(out))
    assert code == 0 and "5 model(s), baseline gpt-4o" in checked, err


@pytest.mark.parametrize("args,needles", [
    (["--provider", "anthropic"], ["--provider", "'anthropic'", "deepseek, groq, mistral, openai, openrouter, together"]),
    (["--provider", "openai", "--provider", "groq", "--upstream-url", "https://api.openai.com/v1"],
     ["--upstream-url", "one provider"]),
    (["--provider", "openai", "--provider", "groq", "--api-key-env", "KEY"], ["--api-key-env", "one provider"]),
    (["--provider", "openai", "--api-key-env", "NOT-A-NAME"], ["--api-key-env", "NOT-A-NAME"]),
    (["--provider", "openai", "--upstream-url", "ftp://x/v1"], ["--upstream-url"]),
])
def test_bad_flags_are_one_line_errors_and_write_nothing(args: list[str], needles: list[str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.yaml"
    code, _, err = run_main(capsys, "init", *args, "--out", str(out))
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("thrifty: ")
    for needle in needles:
        assert needle in err
    assert not out.exists()


@pytest.mark.parametrize("args", [("--upstream-url", "http://127.0.0.1:8001/v1"), ("--provider", "groq"),
                                  ("--provider", "deepseek", "--provider", "openai")])
def test_the_commented_quality_guard_loads_once_uncommented(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The starter's commented `routing:` cascade names the written default model and baseline, so
    a user who uncomments it gets a config that loads, with `auto` going cheap first."""
    out, data = init(tmp_path, *args)
    text = out.read_text(encoding="utf-8")
    block = text[text.index("# routing:"):].split("\n\n", 1)[0]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    out.write_text(text.replace(block, uncommented), encoding="utf-8")
    cfg = load_config(out, env={})
    cfg.build_catalog()
    route = cfg.routing.routes["general"]
    assert [t.model for t in route.tiers] == [data["default_model"], data["baseline"]]
    assert route.scorer is not None and route.scorer.kind == "combined"
