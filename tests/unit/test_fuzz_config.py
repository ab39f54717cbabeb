"""Property-based fuzzing of configuration loading: a config with any one value replaced by a
value of any JSON type (or removed) either builds a gateway or is refused with a ``ConfigError``
(one line naming the key, as `thrifty config check` and `thrifty serve` print it), never another
exception, which the CLI would show as a traceback.

The base config has every section on, so every section's checks are reached. Hypothesis's
database is off and generation is derandomized: a fresh checkout runs the same examples.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.cli_run import assert_one_line, run_main
from thrifty.errors import ConfigError, printable
from thrifty.gateway import Gateway

# No "/" or "\\" in strings: a mutated path stays a file name inside tmp (an absolute one would
# let a database file be created anywhere on the machine).
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                        st.floats(allow_nan=False, allow_infinity=False, width=32),
                        st.text(st.characters(exclude_characters="/\\"), max_size=10))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=5)


def base_config(tmp: Path) -> dict[str, Any]:
    price = {"input": 0.1, "output": 0.4, "cached_input": 0.05, "batch_input": 0.05, "batch_output": 0.2}
    return {
        "providers": {
            "up": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-fuzz", "timeout_s": 5, "max_retries": 1,
                   "backoff_base_s": 0.1, "headers": {"X-Org": "o"},
                   "compat": {"developer_role": "system", "max_tokens_field": "max_tokens",
                              "drop_params": ["store"]}},
        },
        "models": {
            "cheap": {"provider": "up", "price": price, "tier": "small", "aliases": ["small"]},
            "mid": {"provider": "up", "upstream_model": "mid-v2", "price": {"input": 1, "output": 4}},
            "big": {"provider": "up", "price": {"input": 5, "output": 20}, "fallbacks": ["mid"],
                    "context_window": 128000},
        },
        "baseline": "big",
        "default_model": "cheap",
        "base_dir": str(tmp),  # a path the fuzzing drops or replaces resolves in tmp, not in the repo
        "ledger": {"path": str(tmp / "ledger.db"), "write_retries": 1, "flush_interval_s": 0.05},
        "server": {"host": "127.0.0.1", "port": 8000, "max_body_bytes": 100000, "request_timeout_s": 30,
                   "cors_origins": ["http://localhost:3000"]},
        "auth": {"admin_key": "sk-admin-fuzz-0123456789"},
        "cache": {"path": str(tmp / "cache.db"), "ttl_s": 60, "max_entries": 1000,
                  "semantic": {"enabled": True, "top_k": 5, "embedder": "lexical"},
                  "routes": {"faq": {"semantic": True, "ttl_s": 600}}},
        "compression": {"model": "cheap", "store": {"path": str(tmp / "compress.db")},
                        "system_prompt": {"min_tokens": 500, "target_ratio": 0.5, "must_keep": ["Acme"]},
                        "dictionary": {"Acme Widgets Support": "AWS"},
                        "routes": {"faq": {"compaction": True, "history_max_tokens": 500}}},
        "batching": {"pack": 10},
        "routing": {
            "default_route": "faq",
            "classify": {"rules": [{"task": "code", "keywords": ["python", "function"], "where": "last_user"}],
                         "examples": {"faq": ["How do I reset my password?"]}, "min_confidence": 0.3,
                         "formats": True, "client_labels": True},
            "tasks": {"legal": "careful"},
            "routes": {
                "faq": {"model": "cheap"},
                "code": {"tiers": [{"model": "cheap", "threshold": 0.6}, {"model": "big"}],
                         "scorer": {"kind": "heuristic", "expect": "auto", "min_chars": 1}, "max_cost_usd": 0.02},
                "careful": {"agreement": {"models": ["cheap", "mid"], "fallback": "big", "min_agree": 2}},
                "mc": {"state_table": {"order": ["cheap", "mid"], "table": {"": "next", "0": "next", "0,0": "stop:0"},
                                       "strong": "big"}},
            },
            "fit": {"depth": 3, "top_k": 5},
        },
    }


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of the config (dict keys and list positions), parents before children."""
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


PATHS = _paths(base_config(Path("/x")))


def _mutated(cfg: dict[str, Any], path: tuple[Any, ...], value: Any, drop: bool) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def test_the_base_config_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzzing starts from a config that is valid: a refusal below is about the mutation."""
    monkeypatch.chdir(tmp_path)
    Gateway.from_config(base_config(tmp_path)).close()


@settings(max_examples=int(os.environ.get("THRIFTY_FUZZ_EXAMPLES", "400")), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=json_value, drop=st.booleans())
def test_any_one_bad_value_is_a_config_error_naming_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          path: tuple[Any, ...], value: Any, drop: bool) -> None:
    # Files the gateway creates (databases under a mutated or dropped path, base_dir itself
    # mutated) land in tmp: the working directory is tmp too.
    monkeypatch.chdir(tmp_path)
    cfg = _mutated(base_config(tmp_path), path, value, drop)
    try:
        gw = Gateway.from_config(cfg)
    except ConfigError as exc:
        message = str(exc).strip()
        # One line (the CLI prints it as it is), never a traceback, never the provider's key.
        assert message and len(message.splitlines()) == 1, message
        assert "Traceback" not in message and "sk-fuzz" not in message, message
        return
    except Exception as exc:  # anything else would reach the user as a traceback
        pytest.fail(f"{'.'.join(map(str, path))} = {value!r} (drop={drop}): {type(exc).__name__}: {exc}")
    gw.close()


def test_printable_escapes_control_characters_only() -> None:
    assert printable("models.é-ok: fine") == "models.é-ok: fine"
    assert printable("a\nb\x1b[2Jc\td") == "a\\nb\\x1b[2Jc\\td"


def test_a_key_with_control_characters_is_refused_on_one_escaped_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the fuzzing above: a key holding a newline or a terminal escape was echoed raw, so
    `thrifty config check` printed two lines (or cleared the screen)."""
    cfg = tmp_path / "thrifty.yaml"
    cfg.write_text('providers:\n  "up\\nx\\e[2J": {base_url: "http://127.0.0.1:9/v1"}\n'
                   'models: {m: {provider: nowhere}}\n')
    code, _, err = run_main(capsys, "config", "check", str(cfg))
    assert_one_line(code, err, "\\n", "\\x1b")
    assert "\x1b" not in err
