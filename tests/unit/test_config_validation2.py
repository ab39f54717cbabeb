"""Config validation found by the audit: every mistake is a ConfigError naming its key path.

Empty optional secrets are unset; per-route override names must exist; routing.fit, state
tables, agreement, scorers, embedders, batching targets and judge models are checked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thrifty.cli.main import main
from thrifty.config import load_config
from thrifty.errors import ConfigError
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.ops.keys import KeyStore, hash_key
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.routing.fit import DEFAULTS, fit_options
from thrifty.routing.learned import LearnedRouter


def base(**extra: Any) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {m: {"provider": "p", "price": {"input": p, "output": p}, **({"aliases": ["fast"]} if m == "cheap" else {})}
                   for m, p in (("cheap", 0.1), ("mid", 1.0), ("big", 10.0))},
        "ledger": {"enabled": False},
        **extra,
    }


ROUTING = {"default_route": "faq", "routes": {"faq": {"model": "cheap"}, "hard": {"model": "big"}}}


def refused(cfg: dict[str, Any], *needles: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env={})
    message = err.value.message
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def built(cfg: dict[str, Any], tmp_path: Path) -> Gateway:
    return Gateway.from_config({**cfg, "base_dir": str(tmp_path)}, providers={"p": FunctionProvider(
        lambda body: chat_response(body["model"], "answer"))}, env={})


# -- 2. empty optional secrets and URLs -------------------------------------------------------
def test_unset_env_secrets_and_urls_are_none_not_empty() -> None:
    cfg = load_config(base(
        providers={"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "${OPENAI_API_KEY}"}},
        ledger={"dsn": "${THRIFTY_LEDGER_DSN}"}, redis_url="${THRIFTY_REDIS_URL}",
        cache={"redis_url": "${THRIFTY_REDIS_URL}"},
        auth={"key_salt": "${THRIFTY_KEY_SALT}", "admin_key": " ${THRIFTY_ADMIN_KEY} "}), env={})
    assert cfg.auth.key_salt is None and cfg.auth.admin_key is None
    assert cfg.ledger.dsn is None and cfg.redis_url is None
    assert cfg.cache is not None and cfg.cache.redis_url is None
    assert cfg.providers["p"].api_key is None
    # A set variable is kept as it is.
    assert load_config(base(auth={"key_salt": "${S}"}), env={"S": "pepper"}).auth.key_salt == "pepper"


def test_gateway_with_an_unset_salt_variable_hashes_with_the_stored_random_salt(tmp_path: Path) -> None:
    gw = built(base(ledger={"path": "l.db"}, auth={"enabled": True, "key_salt": "${THRIFTY_KEY_SALT}"}), tmp_path)
    try:
        keys = gw.ops.keys
        assert keys is not None
        salt = keys.salt()
        assert len(salt) == 64
        (stored,) = SQLiteStore(str(tmp_path / "l.db")).query("SELECT value FROM ops_settings WHERE name = 'key_salt'")[0]
        assert salt == stored
    finally:
        gw.close()


def test_keystore_treats_an_empty_salt_as_unset(tmp_path: Path) -> None:
    keys = KeyStore(SQLiteStore(str(tmp_path / "l.db")), salt="")
    _, secret = keys.create("a")
    assert keys.salt() != ""
    (stored,) = keys.store.query("SELECT key_hash FROM virtual_keys")[0]
    assert stored == hash_key(secret, keys.salt()) != hash_key(secret, "")


# -- 3. per-route override names ---------------------------------------------------------------
@pytest.mark.parametrize(("section", "name"), [("cache", "fqa"), ("compression", "suport"), ("cache", "*")])
def test_override_names_that_match_nothing_are_refused(section: str, name: str) -> None:
    refused(base(routing=ROUTING, **{section: {"routes": {name: {}}}}), f"{section}.routes.{name}:")


def test_override_names_the_lookups_accept_are_allowed() -> None:
    names = ["faq", "cheap", "fast", "auto", "route:hard"]
    cfg = load_config(base(routing=ROUTING, cache={"routes": {n: {} for n in names}},
                           compression={"routes": {n: {} for n in [*names, "*"]}}), env={})
    assert cfg.cache is not None and set(cfg.cache.routes) == set(names)


# -- 5. routing.fit is typed -------------------------------------------------------------------
def test_fit_typo_and_bad_values_are_refused() -> None:
    refused(base(routing={"fit": {"dept": 2}}), "routing.fit.dept: unknown key")
    refused(base(routing={"fit": {"top_k": 0}}), "routing.fit.top_k")
    with pytest.raises(ConfigError, match=r"routing\.fit\.dept"):
        fit_options({"fit": {"dept": 2}})


def test_fit_options_are_unchanged_for_valid_input() -> None:
    spec = {"fit": {"depth": 2, "shrink": 5, "raw_letters": ["mc_binary"], "max_cheap": 4, "lams": [0, 1.5],
                    "fixed": False, "max_cost_share": 0.3}}
    assert fit_options(spec) == {**DEFAULTS, **spec["fit"]}
    assert fit_options(None) == DEFAULTS == fit_options({"fit": None})


# -- 6. state tables ---------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "needle"), [
    ({"": "next", "0": "stop:x"}, "state_table.table.0: unknown action 'stop:x'"),
    ({"0": "nxt"}, "state_table.table.0: unknown action 'nxt'"),
    ({"0,0": "stop:2"}, "state_table.table.0,0: stop:2 serves answer 2"),
])
def test_state_table_actions_are_checked(table: dict[str, str], needle: str) -> None:
    route = {"state_table": {"order": ["cheap", "mid"], "table": table, "strong": "big"}}
    refused(base(routing={"default_route": "g", "routes": {"g": route}}), f"routing.routes.g.{needle}")


def test_valid_state_table_loads() -> None:
    route = {"state_table": {"order": ["cheap", "mid"], "table": {"": "next", "0": "next", "0,0": "stop:1",
                                                                  "0,1": "strong"}, "strong": "big"}}
    loaded = load_config(base(routing={"default_route": "g", "routes": {"g": route}}), env={}).routing.routes["g"]
    assert loaded.state_table is not None
    assert loaded.state_table.table == route["state_table"]["table"] and loaded.state_table.strong == "big"


# -- 7. learned.models -------------------------------------------------------------------------
def test_learned_models_must_be_known_and_in_the_router_file(tmp_path: Path) -> None:
    LearnedRouter(["cheap", "big"], np.zeros((2, 4)), np.zeros(2), {}, "lexical").save(tmp_path / "router.json")

    def route(models: list[str]) -> dict[str, Any]:
        return base(routing={"default_route": "g", "routes": {"g": {"learned": {"file": "router.json",
                                                                                  "models": models}}}})

    with pytest.raises(ConfigError, match=r"routing\.routes\.g\.learned\.models: unknown model 'nope'"):
        built(route(["cheap", "nope"]), tmp_path)
    with pytest.raises(ConfigError, match=r"routing\.routes\.g\.learned\.models: 'mid' not in router\.json"):
        built(route(["mid"]), tmp_path)
    built(route(["cheap"]), tmp_path).close()


# -- 8. batching, judges, agreement, completion window ----------------------------------------
@pytest.mark.parametrize(("extra", "needle"), [
    ({"batching": {"model": "cheap", "route": "faq"}, "routing": ROUTING}, "batching: set model or route, not both"),
    ({"batching": {"model": "nope"}}, "batching.model: unknown model 'nope'"),
    ({"batching": {"model": "route:nope"}, "routing": ROUTING}, "batching.model: unknown model 'route:nope'"),
    ({"batching": {"route": "nope"}, "routing": ROUTING}, "batching.route: unknown route 'nope'"),
    ({"batching": {"deferred": {"completion_window": "1 day"}}}, "batching.deferred.completion_window"),
    ({"compression": {"model": "cheap", "system_prompt": {"ab_check": {"questions": ["q"], "judge_model": "nope"}}}},
     "compression.system_prompt.ab_check.judge_model: unknown model 'nope'"),
    ({"routing": {"default_route": "g", "routes": {"g": {"agreement": {"models": ["cheap", "mid"], "fallback": "big",
                                                                         "min_agree": 3}}}}},
     "routing.routes.g.agreement.min_agree: 3 agreeing answers can never come from 2 models"),
])
def test_targets_and_counts_are_checked_at_load(extra: dict[str, Any], needle: str) -> None:
    refused(base(**extra), needle)


def test_batching_targets_that_exist_load() -> None:
    for batching in ({"model": "fast"}, {"model": "auto"}, {"model": "route:faq"}, {"route": "hard"}):
        loaded = load_config(base(routing=ROUTING, batching=batching), env={}).batching
        assert loaded is not None
        assert (loaded.model, loaded.route) == (batching.get("model"), batching.get("route"))


# -- 9. errors name the key --------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "needle"), [
    ({"routing": {"embedder": {"kind": "lexical", "dimm": 5}}}, "routing.embedder.dimm: unknown option"),
    ({"routing": {"embedder": {"knd": "minilm"}}}, "routing.embedder.knd: unknown option"),
    ({"routing": {"embedder": "minlm"}}, "routing.embedder: unknown kind 'minlm'"),
    ({"cache": {"semantic": {"embedder": "minlm"}}}, "cache.semantic.embedder: unknown kind 'minlm'"),
    ({"cache": {"semantic": {"enabled": True, "embedder": {"kind": "lexical", "dim": -5}}}},
     "cache.semantic.embedder.dim: expected a whole number >= 8"),
    ({"routing": {"default_route": "g", "routes": {"g": {"tiers": [{"model": "cheap", "threshold": 0.5},
                                                                   {"model": "big"}], "scorer": {"kind": "judge"}}}}},
     "routing.routes.g.scorer.judge_model: required by a judge scorer"),
    ({"routing": {"default_route": "g", "routes": {"g": {"tiers": [{"model": "cheap", "threshold": 0.5},
                                                                   {"model": "big"}], "scorer": {"kind": "learned"}}}}},
     "routing.routes.g.scorer.file: required by a learned scorer"),
    ({"routing": {"default_route": "g", "routes": {"g": {"model": "cheap", "scorer": {"kind": "heuristic"}}}}},
     "routing.routes.g.scorer: only a tiers route uses a scorer"),
])
def test_errors_name_the_key_path(extra: dict[str, Any], needle: str) -> None:
    refused(base(**extra), needle)


def test_unknown_route_models_are_named_by_key(tmp_path: Path) -> None:
    routing = {"default_route": "g", "routes": {"g": {"tiers": [{"model": "cheap", "threshold": 0.5}, {"model": "bigg"}],
                                                      "scorer": {"kind": "judge", "judge_model": "chaep"}}}}
    with pytest.raises(ConfigError) as err:
        built(base(routing=routing), tmp_path)
    assert "routing.routes.g.tiers.1.model: unknown model 'bigg'" in err.value.message
    assert "routing.routes.g.scorer.judge_model: unknown model 'chaep'" in err.value.message


def test_config_check_prints_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("providers: {p: {base_url: 'http://127.0.0.1:1/v1'}}\nmodels: {cheap: {provider: p}}\n"
                 "ledger: {enabled: false}\ncache: {routes: {fqa: {ttl_s: 5}}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "check", str(f)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("thrifty: ")
    assert "cache.routes.fqa: no routing route, model or alias" in err


# -- 10. empty sections, ann fallback ---------------------------------------------------------
def test_empty_sections_are_their_defaults() -> None:
    cfg = load_config(base(server=None, routing=None, ledger=None, compression=None, batching=None, auth=None,
                           cache=None), env={})
    assert cfg.server.port == 8000 and cfg.ledger.enabled and not cfg.routing.routes
    assert cfg.cache is not None and cfg.cache.enabled  # `cache:` like `cache: {}`: on, with defaults
    assert load_config(base(), env={}).cache is None  # no section: no cache


def test_a_named_ann_library_that_is_missing_is_warned_at_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import thrifty.cache.stage as stage

    real = stage.find_spec
    monkeypatch.setattr(stage, "find_spec", lambda name: None if name == "hnswlib" else real(name))
    with caplog.at_level(logging.WARNING, logger="thrifty.cache"):
        built(base(cache={"path": "c.db", "semantic": {"enabled": True, "ann": "hnswlib"}}), tmp_path).close()
    assert [r for r in caplog.records if "cache.semantic.ann: hnswlib is not installed" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="thrifty.cache"):
        built(base(cache={"path": "c.db", "semantic": {"enabled": True, "ann": "auto"}}), tmp_path).close()
    assert not [r for r in caplog.records if "cache.semantic.ann" in r.getMessage()]
