from __future__ import annotations

import re
from pathlib import Path

import pytest

from thrifty.cli.init_cmd import starter_config
from thrifty.config import interpolate_env, load_config
from thrifty.errors import ConfigError

BASE = {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "${KEY}"}},
        "models": {"m": {"provider": "p", "price": {"input": 1, "output": 2}}}}


def test_env_interpolation_with_default_and_missing() -> None:
    env = {"A": "x"}
    assert interpolate_env({"k": ["${A}", "${B:-d}", "${C}"]}, env) == {"k": ["x", "d", ""]}


def test_valid_config_and_baseline_defaults_to_priciest(tmp_path: Path) -> None:
    cfg = load_config(BASE | {"models": {"a": {"provider": "p", "price": {"input": 1, "output": 2}},
                                         "b": {"provider": "p", "price": {"input": 5, "output": 20}}}},
                      env={"KEY": "sk-secret-value"})
    assert cfg.providers["p"].api_key == "sk-secret-value"
    assert cfg.build_catalog().baseline_name == "b"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"models": {"m": {"provider": "nope"}}}, "models.m.provider: unknown provider 'nope'"),
        ({"models": {"m": {"provider": "p", "price": {"input": "cheap"}}}}, "models.m.price.input"),
        ({"baseline": "ghost"}, "baseline: unknown model 'ghost'"),
        ({"servr": {}}, "servr: unknown key"),
        ({"providers": {"p": {"base_url": "ftp://x"}}}, "providers.p.base_url"),
    ],
)
def test_precise_errors(patch: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(BASE | patch, env={})
    assert expected in str(err.value)


def test_secret_values_are_not_echoed_in_errors() -> None:
    bad = BASE | {"providers": {"p": {"base_url": "http://x", "api_key": ["sk-live-supersecret123"]}}}
    with pytest.raises(ConfigError) as err:
        load_config(bad, env={})
    assert "supersecret" not in str(err.value)
    assert "providers.p.api_key" in str(err.value)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("providers:\n  p: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(f)


def test_starter_config_is_valid_and_prices_the_seed_hierarchy(tmp_path: Path) -> None:
    f = tmp_path / "thrifty.yaml"
    f.write_text(starter_config("http://127.0.0.1:9999/v1", "MY_KEY"))
    cfg = load_config(f, env={})
    cat = cfg.build_catalog()
    outputs = {m.name: m.price.output for m in cat if m.price}
    assert outputs == {"qwen3-8b": 0.01, "deepseek-v4-flash": 0.25, "qwen3-32b": 0.28,
                       "deepseek-reasoner": 2.50, "gpt-4o": 10.00}
    assert cat.baseline_name == "gpt-4o"
    # relative ledger path resolves next to the config file
    assert cfg.resolve_path(cfg.ledger.path) == str(tmp_path / "thrifty-ledger.db")


def test_config_overrides_seed_price_and_genai_prices_fills_unknowns() -> None:
    cfg = load_config({"providers": BASE["providers"],
                       "models": {"gpt-4o": {"provider": "p", "price": {"output": 12.0}},
                                  "gpt-4o-mini": {"provider": "p"},
                                  "my-local-llama": {"provider": "p"}}}, env={})
    cat = cfg.build_catalog()
    gpt4o = cat.get("gpt-4o")
    assert gpt4o and gpt4o.price and (gpt4o.price.input, gpt4o.price.output) == (2.50, 12.0)
    mini = cat.get("gpt-4o-mini")
    assert mini and mini.price and mini.price.source == "genai-prices" and mini.price.output == pytest.approx(0.60)
    local = cat.get("my-local-llama")
    assert local is not None and local.price is None


def test_env_default_also_applies_when_the_variable_is_empty() -> None:
    # Shell semantics of ":-": an exported but empty variable takes the default.
    assert interpolate_env("${EMPTY:-def}", {"EMPTY": ""}) == "def"
    assert interpolate_env("${SET:-def}", {"SET": "v"}) == "v"
    assert interpolate_env("${EMPTY}", {"EMPTY": ""}) == ""


@pytest.mark.parametrize(("value", "needle"), [
    ("${OPENAI_API_KEY", "malformed environment reference near '${OPENAI_API_KEY'"),
    ("${ A }", "malformed environment reference"),
    ("${B:-${A}}", "nested references are not supported"),
])
def test_malformed_env_references_are_refused(value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        interpolate_env({"providers": {"p": {"api_key": value}}}, {"A": "a"})


@pytest.mark.parametrize(("aliases", "needle"), [
    ({"m": ["n"]}, "models.m.aliases: 'n' is the name of another model"),
    ({"m": ["auto"]}, "'auto' is reserved for routing"),
    ({"m": ["route:x"]}, "'route:x' is reserved for routing"),
    ({"m": ["premium"], "n": ["premium"]}, "models.n.aliases: 'premium' is also an alias of 'm'"),
])
def test_colliding_aliases_are_refused(aliases: dict[str, list[str]], needle: str) -> None:
    cfg = {"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
           "models": {name: {"provider": "p", "aliases": aliases.get(name, [])} for name in ("m", "n")}}
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(cfg)


@pytest.mark.parametrize(("section", "secret"), [
    ({"ledger": "postgresql://thrifty:Pa55w0rdSECRET@db.example/thrifty"}, "Pa55w0rdSECRET"),
    ({"providers": {"main": "gsk_live_0123456789abcdef"}}, "gsk_live_0123456789abcdef"),
    ({"providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "headers": ["AIzaSyD1234567890abcdefghijk"]}}},
     "AIzaSyD1234567890abcdefghijk"),
])
def test_config_errors_never_echo_credentials(section: dict[str, object], secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(section)
    assert secret not in str(info.value) and "[REDACTED]" in str(info.value)


def test_config_errors_show_plain_numbers_even_under_secret_looking_keys() -> None:
    with pytest.raises(ConfigError, match=re.escape("(got -5)")):
        load_config({"auth": {"default_completion_tokens": -5}})


def test_a_model_is_priced_at_the_provider_serving_it() -> None:
    """genai-prices lists many open-weights models under the provider that serves them only (a
    name-only look-up found no price: cost recorded as unknown), and one name can cost different
    amounts at different providers. The provider's base_url says which price applies."""
    from thrifty.catalog import genai_provider_for_url, lookup_genai_price
    from thrifty.config import load_config

    assert genai_provider_for_url("https://api.groq.com/openai/v1") == "groq"
    assert genai_provider_for_url("http://127.0.0.1:8001/v1") is None  # a mock, vLLM, Ollama: no hint
    assert lookup_genai_price("llama-3.1-8b-instant", None) is None  # what the catalog did before
    groq = lookup_genai_price("llama-3.1-8b-instant", "groq")
    assert groq is not None
    cfg = load_config({"providers": {"g": {"base_url": "https://api.groq.com/openai/v1"},
                                     "local": {"base_url": "http://127.0.0.1:8001/v1"}},
                       "models": {"llama-3.1-8b-instant": {"provider": "g"},
                                  "local-llama": {"provider": "local", "upstream_model": "llama-3.1-8b-instant"},
                                  "gpt-4o": {"provider": "local"}}})
    catalog = cfg.build_catalog()
    served = catalog.get("llama-3.1-8b-instant")
    assert served is not None and served.price is not None
    assert (served.price.input, served.price.output) == (groq.input, groq.output)
    local = catalog.get("local-llama")
    assert local is not None and local.price is None  # an unknown host: nothing to go by
    premium = catalog.get("gpt-4o")
    assert premium is not None and premium.price is not None  # names priced without a hint still are


def test_the_provider_price_beats_the_seed_table() -> None:
    """The seed table's figures are illustrative; a seed name served by a provider genai-prices
    knows costs that provider's price (and an hourly one is asked per call)."""
    from thrifty.catalog import seed_price
    from thrifty.config import load_config

    cfg = load_config({"providers": {"ds": {"base_url": "https://api.deepseek.com/v1"},
                                     "mock": {"base_url": "http://127.0.0.1:8001/v1"}},
                       "models": {"deepseek-v4-flash": {"provider": "ds"},
                                  "local": {"provider": "mock", "upstream_model": "deepseek-v4-flash"}}})
    catalog = cfg.build_catalog()
    at_deepseek, at_mock = catalog.get("deepseek-v4-flash"), catalog.get("local")
    assert at_deepseek is not None and at_deepseek.price is not None and at_deepseek.price.source == "genai-prices"
    assert at_deepseek.price.genai_ref == ("deepseek-v4-flash", "deepseek")
    assert at_mock is not None and at_mock.price == seed_price("deepseek-v4-flash")
