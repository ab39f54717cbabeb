"""Commands doing what docs/cli.md says: calibrate's prices and exit code, estimate's --config
defaults, route explain's default model, eval's budget warning, refused flag combinations
(cache clear, compress purge), keys, read-only compress show, and the admin usage counters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fixtures.cli_run import assert_one_line, run_main
from fixtures.routing_data import SPEC, synthetic, write_jsonl
from thrifty.ops.keys import VirtualKey
from thrifty.ops.ratelimit import MemoryLimiter


@pytest.fixture
def outcomes(tmp_path: Path) -> Path:
    """120 synthetic multiple-choice prompts over weak, mid and big, each call with a cost."""
    return write_jsonl(synthetic(), tmp_path / "outcomes.jsonl")


# ---------------------------------------------------------------- calibrate


def test_calibrate_without_config_writes_the_fitted_prices(outcomes: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cal.yaml"
    code, _, err = run_main(capsys, "calibrate", "--data", str(outcomes), "--baseline", "big", "--out", str(out),
                            "--folds", "3", "--target", "accuracy>=0.5")
    assert code == 0, err
    models = yaml.safe_load(out.read_text())["models"]
    assert set(models) == {"weak", "mid", "big"}
    assert all(m["price"]["input"] > 0 and m["price"]["output"] > 0 for m in models.values())
    # big costs 25x weak per call in the data: its fitted prices say so.
    assert models["big"]["price"]["output"] > 10 * models["weak"]["price"]["output"]
    code, _, err = run_main(capsys, "config", "check", str(out))
    assert code == 0 and "no known price" not in err, err


def test_calibrate_missing_its_target_exits_1_and_still_writes(outcomes: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cal.yaml"
    code, stdout, err = run_main(capsys, "calibrate", "--data", str(outcomes), "--baseline", "big",
                                 "--out", str(out), "--folds", "3", "--target", "accuracy>=0.999")
    assert code == 1
    assert err.startswith("thrifty: ") and err.strip().count("\n") == 0, err
    assert "NOT met" in err and f"{out} was written anyway" in err
    assert "CV accuracy" in stdout
    assert yaml.safe_load(out.read_text())["routing"]["fitted"]["calibration"]["met"] is False


# ---------------------------------------------------------------- estimate


@pytest.fixture
def priced_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\n"
                   "models:\n  cheapo: {provider: p, price: {input: 1.0, output: 2.0}}\n"
                   "  fancy: {provider: p, price: {input: 10.0, output: 20.0}}\n"
                   "  mystery-model-x: {provider: p}\n"
                   "baseline: fancy\n")
    return cfg


def test_estimate_defaults_models_and_baseline_from_the_config(priced_config: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code, out, err = run_main(capsys, "estimate", "--config", str(priced_config), "-n", "1000000",
                              "--output-tokens", "1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["baseline"] == "fancy"
    assert [r["model"] for r in doc["rows"]] == ["cheapo", "fancy", "mystery-model-x"]
    assert doc["rows"][0]["monthly_usd"] == pytest.approx(2.0)


@pytest.mark.parametrize("with_config", [True, False])
def test_estimate_refuses_an_unpriced_baseline(with_config: bool, priced_config: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = ["--config", str(priced_config)] if with_config else []
    name = "mystery-model-x" if with_config else "nosuch-model-y"
    code, _, err = run_main(capsys, "estimate", *config, "-n", "10", "--output-tokens", "10", "--baseline", name)
    err = "\n".join(line for line in err.splitlines() if not line.startswith("warning: "))
    assert_one_line(code, err, "--baseline", name, "price")


# ---------------------------------------------------------------- route explain


def test_route_explain_on_the_init_config_explains_the_default_model(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "thrifty.yaml"
    assert run_main(capsys, "init", "--upstream-url", "http://127.0.0.1:9/v1", "--out", str(cfg))[0] == 0
    code, out, err = run_main(capsys, "route", "explain", "hi", "--config", str(cfg))
    default = yaml.safe_load(cfg.read_text())["default_model"]
    assert code == 0, err
    assert "(default model)" in out and f"plan:   {default}" in out and "default_model" in out


# ---------------------------------------------------------------- eval


def _policy(tmp_path: Path, min_family_prompts: int) -> Path:
    policy = tmp_path / "pol.yaml"
    fit = {**SPEC["fit"], "min_family_prompts": min_family_prompts}
    policy.write_text(yaml.safe_dump({"routing": {"default_route": "g", "routes": {"g": {"model": "mid"}},
                                                  "fit": fit}}))
    return policy


def test_eval_warns_when_the_budget_is_exceeded_and_says_why(outcomes: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Families under min_family_prompts go to the baseline whatever the budget: 100% > 5%.
    code, _, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big", "--policy",
                            str(_policy(tmp_path, 500)), "--max-cost-share", "0.05", "--folds", "2",
                            "--sweep", "none", "-q")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    assert "over the budget max_cost_share=0.05" in warnings[0]
    assert "routing.fit.min_family_prompts (500)" in warnings[0]


def test_eval_within_its_budget_prints_no_warning(outcomes: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big", "--policy",
                            str(_policy(tmp_path, 5)), "--max-cost-share", "0.9", "--folds", "2",
                            "--sweep", "none", "-q")
    assert code == 0 and "warning" not in err, err


# ---------------------------------------------------------------- refused combinations


def test_cache_clear_all_with_a_filter_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cache: {{path: {tmp_path / 'cache.db'}}}\n")
    code, _, err = run_main(capsys, "cache", "clear", "--config", str(cfg), "--all", "--tenant", "x")
    assert_one_line(code, err, "--all", "--tenant")


@pytest.fixture
def bare_config(tmp_path: Path) -> Path:
    """A config with models but no compression (or cache) section."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\n"
                   "models: {m: {provider: p, price: {input: 1.0, output: 1.0}, aliases: [mm]}}\n"
                   f"ledger: {{path: {tmp_path / 'ledger.db'}}}\n")
    return cfg


def test_compress_show_creates_no_store(bare_config: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "compress", "show", "--config", str(bare_config))
    assert code == 0 and "no compressed prompts stored yet" in out, err
    code, _, err = run_main(capsys, "compress", "approve", "abc", "--config", str(bare_config))
    assert_one_line(code, err, "no stored prompt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_compress_purge_hash_and_all_is_refused(bare_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "compress", "purge", "abc", "--all", "--config", str(bare_config))
    assert_one_line(code, err, "not both", "'abc'", "--all")


# ---------------------------------------------------------------- keys


def test_keys_routes_must_name_something_the_config_serves(bare_config: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "keys", "create", "--config", str(bare_config), "--name", "x",
                            "--routes", "m,nosuchmodel")
    assert_one_line(code, err, "--routes", "'nosuchmodel'", "known: m, mm")
    assert not (tmp_path / "ledger.db").exists()  # refused before the database was created
    code, _, err = run_main(capsys, "keys", "create", "--config", str(bare_config), "--name", "x",
                            "--routes", "mm,m*")
    assert code == 0, err


def test_keys_revoke_twice_and_the_empty_list_hint(bare_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "keys", "list", "--config", str(bare_config))
    assert code == 0 and f"thrifty keys create --config {bare_config} --name NAME" in out
    code, out, err = run_main(capsys, "keys", "create", "--config", str(bare_config), "--name", "x", "--json")
    assert code == 0, err
    import json

    key_id = json.loads(out)["key_id"]
    code, out, _ = run_main(capsys, "keys", "revoke", key_id, "--config", str(bare_config))
    assert code == 0 and out.startswith(f"revoked {key_id}")
    code, out, _ = run_main(capsys, "keys", "revoke", key_id, "--config", str(bare_config))
    assert code == 0 and "already revoked" in out
    code, out, _ = run_main(capsys, "keys", "list", "--config", str(bare_config))
    assert "other than revoked ones" in out and "--config" in out


# ---------------------------------------------------------------- admin usage counters


@pytest.mark.parametrize(("rpm", "tpm", "expected"), [(5, None, (1, None)), (None, 1000, (None, 30)),
                                                      (5, 1000, (1, 30)), (None, None, (None, None))])
async def test_minute_counters_are_null_for_limits_not_set(rpm: int | None, tpm: int | None,
                                                           expected: tuple[int | None, int | None]) -> None:
    async def seed(key_id: str, since: float) -> float:
        return 0.0

    limiter = MemoryLimiter(seed)
    key = VirtualKey("key_x", "x", "thr-abcd", None, "day", rpm, tpm, (), 0.0)
    ticket = await limiter.admit(key, 0.0, 50, 1000.0)
    await limiter.settle(ticket, 0.0, 30)
    usage = await limiter.usage(key, 1000.0)
    assert (usage.requests_this_minute, usage.tokens_this_minute) == expected


# ---------------------------------------------------------------- item numbering


def test_csv_errors_name_the_file_line_and_decisions_keep_the_data_row(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from thrifty.errors import DataError
    from thrifty.evaluation.dataset import load_outcomes

    header = "prompt,eval_name,big,big|model_response,big|total_cost\n"
    first = "\"['q1\nits second line']\",t,1.0,\"['A']\",0.001\n"  # lines 2-3: a cell spans two lines
    path = tmp_path / "rb.csv"
    path.write_text(header + first + "\"['q2']\",t,high,\"['B']\",0.002\n")
    with pytest.raises(DataError, match=r"rb\.csv: line 4: big must be"):
        load_outcomes(path)
    path.write_text(header + first + "\"['q2']\",t,1.0,\"['B']\",0.002\n")
    assert [i.row for i in load_outcomes(path)] == [0, 1]  # issue 3: "row" is the 0-based data row
    policy, decisions = tmp_path / "p.yaml", tmp_path / "d.jsonl"
    policy.write_text("default_model: big\n")
    code, _, err = run_main(capsys, "eval", "--data", str(path), "--baseline", "big", "--policy", str(policy),
                            "--no-fit", "--sweep", "none", "-q", "--decisions", str(decisions))
    assert code == 0, err
    assert [json.loads(x)["row"] for x in decisions.read_text().splitlines()] == [0, 1]
