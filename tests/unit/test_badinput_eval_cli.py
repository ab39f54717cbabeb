"""Bad input to the evaluation and routing commands (eval, demo, calibrate, router train, route
explain, estimate) and to outcome files: a one-line ``thrifty: ...`` naming the flag or field,
exit code 2, and (for the slow commands) no work started before the refusal."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.cli_run import assert_one_line, run_main
from fixtures.routing_data import SPEC, synthetic, write_jsonl
from thrifty.config import load_config
from thrifty.errors import DataError
from thrifty.evaluation.dataset import load_outcomes
from thrifty.routing.fit import fit_many, fit_policy


@pytest.fixture
def outcomes(tmp_path: Path) -> Path:
    """120 synthetic multiple-choice prompts over weak, mid and big (big is the baseline)."""
    return write_jsonl(synthetic(), tmp_path / "outcomes.jsonl")


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if an evaluation or calibration starts: refusals must come first."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the slow work started before the bad flag was refused")

    monkeypatch.setattr("thrifty.evaluation.session.run_eval", boom)
    monkeypatch.setattr("thrifty.routing.calibrate.calibrate", boom)


# --- thrifty eval ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1"])
def test_eval_concurrency_below_one_is_refused(value: str, outcomes: Path, no_work: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big", "--concurrency", value)
    assert_one_line(code, err, "--concurrency")


@pytest.mark.parametrize("flag", ["--decisions", "--plot"])
@pytest.mark.parametrize("where", ["missing-folder", "folder", "proc"])
def test_eval_unwritable_outputs_are_refused_upfront(flag: str, where: str, outcomes: Path, no_work: None,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "d.jsonl" if flag == "--decisions" else "p.png"
    path = {"missing-folder": tmp_path / "nodir" / name, "folder": tmp_path, "proc": Path("/proc/x") / name}[where]
    code, _, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big", flag, str(path))
    assert_one_line(code, err, flag)
    assert not (tmp_path / "nodir").exists()


@pytest.mark.parametrize("name", ["p.txt", "plot"])
def test_eval_plot_with_an_unsupported_extension_is_refused(name: str, outcomes: Path, no_work: None,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big",
                            "--plot", str(tmp_path / name))
    assert_one_line(code, err, "--plot", "unsupported image type", ".png")
    assert not (tmp_path / name).exists()  # nothing half-written


@pytest.mark.parametrize(("flag", "value"), [("--max-cost-share", "nan"), ("--sweep", "0.1,inf")])
def test_eval_non_finite_budgets_are_refused(flag: str, value: str, outcomes: Path, no_work: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big", flag, value)
    assert_one_line(code, err, flag)


def test_eval_malformed_policy_yaml_is_one_line(outcomes: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("a: [b\n")
    code, _, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big", "--policy", str(policy))
    assert_one_line(code, err, "bad.yaml", "invalid YAML at line 2, column 1")


def test_eval_policy_with_a_non_numeric_budget_is_refused(outcomes: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "pol.yaml"
    policy.write_text("routing:\n  max_cost_share: lots\n  default_route: g\n  routes:\n    g: {model: mid}\n")
    code, _, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big", "--policy", str(policy))
    assert_one_line(code, err, "routing.max_cost_share")


def test_eval_policy_without_max_cost_share_uses_the_default_budget(
        outcomes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Used to fail with "float() argument must be ... not 'NoneType'" in fit_many.
    policy = tmp_path / "pol.yaml"
    policy.write_text(yaml.safe_dump({"routing": {"default_route": "g", "routes": {"g": {"model": "mid"}}, **SPEC}}))
    decisions = tmp_path / "d.jsonl"
    code, out, err = run_main(capsys, "eval", "--data", str(outcomes), "--baseline", "big", "--policy", str(policy),
                              "--folds", "2", "--sweep", "none", "--decisions", str(decisions), "-q")
    assert code == 0, err
    assert "saved" in out and len(decisions.read_text().splitlines()) == 120


def test_fit_many_resolves_a_missing_budget_like_fit_policy() -> None:
    data = synthetic()
    default, explicit = fit_many(data, max_cost_shares=[None, 0.25], baseline="big", spec=SPEC)
    assert default == explicit == fit_policy(data, max_cost_share=None, baseline="big", spec=SPEC)


# --- thrifty demo ------------------------------------------------------------------------------


def test_demo_unwritable_plot_is_refused_before_the_replay(tmp_path: Path, no_work: None,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("thrifty.cli.demo_cmd.local_copy", lambda name: tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_main(capsys, "demo", "--plot", str(blocker / "p.png"), "-q")
    assert_one_line(code, err, "--plot")
    code, _, err = run_main(capsys, "demo", "--plot", str(tmp_path / "p.txt"), "-q")
    assert_one_line(code, err, "--plot", "unsupported image type")


# --- thrifty calibrate -------------------------------------------------------------------------


@pytest.mark.parametrize(("folds", "needle"), [("0", ">= 2"), ("1", ">= 2"), ("100000", "between 2 and 120")])
def test_calibrate_folds_out_of_range_are_refused(folds: str, needle: str, outcomes: Path, tmp_path: Path,
                                                  no_work: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "calibrate", "--data", str(outcomes), "--baseline", "big",
                            "--out", str(tmp_path / "c.yaml"), "--folds", folds)
    assert_one_line(code, err, "--folds", needle)


def test_calibrate_unwritable_out_is_refused(outcomes: Path, tmp_path: Path, no_work: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "calibrate", "--data", str(outcomes), "--baseline", "big",
                            "--out", str(tmp_path / "nodir" / "c.yaml"))
    assert_one_line(code, err, "--out")


@pytest.mark.parametrize(("text", "needle"), [(None, "cannot read config file"),
                                              ("a: [b\n", "invalid YAML at line 2"),
                                              ("models: 5\n", "models")])
def test_calibrate_bad_config_is_refused_before_cross_validation(
        text: str | None, needle: str, outcomes: Path, tmp_path: Path, no_work: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "base.yaml"
    if text is not None:
        config.write_text(text)
    code, _, err = run_main(capsys, "calibrate", "--data", str(outcomes), "--baseline", "big",
                            "--out", str(tmp_path / "c.yaml"), "--config", str(config))
    assert_one_line(code, err, needle)
    assert not (tmp_path / "c.yaml").exists()


def _base_config(path: Path, models: list[str]) -> Path:
    path.write_text(yaml.safe_dump({
        "providers": {"main": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k"}},
        "models": {m: {"provider": "main", "price": {"input": 1.0, "output": 1.0}} for m in models},
        "baseline": models[-1],
    }))
    return path


def test_calibrate_config_without_the_baseline_is_refused(outcomes: Path, tmp_path: Path, no_work: None,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = _base_config(tmp_path / "base.yaml", ["gpt-4o"])
    code, _, err = run_main(capsys, "calibrate", "--data", str(outcomes), "--baseline", "big",
                            "--out", str(tmp_path / "c.yaml"), "--config", str(config))
    assert_one_line(code, err, "--baseline", "gpt-4o")


def test_calibrate_with_config_routes_only_to_its_models(outcomes: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # The data's cheapest model ("weak") is not in the config: the written config must not route
    # to it, or `thrifty serve` rejects the file.
    config = _base_config(tmp_path / "base.yaml", ["mid", "big"])
    out = tmp_path / "c.yaml"
    code, _, err = run_main(capsys, "calibrate", "--data", str(outcomes), "--baseline", "big",
                            "--out", str(out), "--config", str(config), "--folds", "2")
    assert code == 0, err
    written = yaml.safe_load(out.read_text())
    assert set(written["models"]) == {"mid", "big"}
    routed = json.dumps(written["routing"]["routes"])
    assert '"weak"' not in routed and '"mid"' in routed
    load_config(out)  # what `serve` and `config check` run


# --- thrifty router train ----------------------------------------------------------------------


@pytest.mark.parametrize(("models", "needle"), [("nope", "not in the data: nope"), (",", "no model names"),
                                                ("weak,", None)])
def test_router_train_models_must_be_in_the_data(models: str, needle: str | None, outcomes: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code, _, err = run_main(capsys, "router", "train", "--data", str(outcomes), "--out", str(out),
                                 "--models", models)
    if needle is None:  # a trailing comma is not a model named ""
        assert code == 0 and json.loads(out.read_text())["models"] == ["weak"], err
        return
    assert_one_line(code, err, "--models", needle, "available: weak, mid, big")
    assert not out.exists()


# --- thrifty route explain ---------------------------------------------------------------------


@pytest.fixture
def routed_config(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "providers": {"main": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k"}},
        "models": {"qwen3-8b": {"provider": "main"}, "gpt-4o": {"provider": "main"}},
        "baseline": "gpt-4o",
        "routing": {"default_route": "general", "routes": {"general": {"model": "qwen3-8b"}}},
    }))
    return path


def test_route_explain_for_a_named_model_says_it_goes_straight_there(
        routed_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "route", "explain", "x", "--config", str(routed_config), "--model", "gpt-4o",
                              "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["route"] is None and data["plan"] == [{"model": "gpt-4o", "threshold": None}]
    assert "straight to gpt-4o" in data["reason"]


def test_route_explain_for_an_unknown_model_is_one_line(routed_config: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "route", "explain", "x", "--config", str(routed_config), "--model", "nope")
    assert_one_line(code, err, "'nope'", "gpt-4o, qwen3-8b")


# --- thrifty estimate --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "flag"), [
    (["-n", "nan", "--output-tokens", "100", "--json"], "--requests-per-month"),
    (["-n", "1e400", "--output-tokens", "100"], "--requests-per-month"),
    (["-n", "10", "--output-tokens", "-1"], "--output-tokens"),
    (["-n", "10", "--output-tokens", "5", "--input-tokens", "inf"], "--input-tokens"),
])
def test_estimate_non_finite_or_negative_flags_are_refused(args: list[str], flag: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "estimate", *args)
    assert_one_line(code, err, flag, "finite number >= 0")


@pytest.mark.parametrize(("text", "needle"), [
    ("a: [b\n", "invalid YAML at line 2"),
    ('[{"name": "a", "requests_per_month": .nan, "output_tokens": 5}]', "requests_per_month"),
    ('[{"name": "a", "requests_per_month": 10, "output_tokens": .inf}]', "output_tokens"),
    ('[{"name": "a", "requests_per_month": 10, "output_tokens": 5, "models": [1, 2]}]', "models"),
])
def test_estimate_bad_workloads_file_is_one_line(text: str, needle: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    code, _, err = run_main(capsys, "estimate", "--workloads", str(path))
    assert_one_line(code, err, "w.yaml", needle)


def test_estimate_workload_models_as_one_string_is_one_model(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.yaml"
    path.write_text('[{"name": "a", "requests_per_month": 10, "output_tokens": 5, "models": "gpt-4o"}]')
    code, out, err = run_main(capsys, "estimate", "--workloads", str(path), "--json")
    assert code == 0, err
    assert [r["model"] for r in json.loads(out)["rows"]] == ["gpt-4o"]


# --- outcome files -----------------------------------------------------------------------------


def _line(score: Any = 1.0, cost: Any = 0.001) -> str:
    outcome: dict[str, Any] = {"response": "A"}
    if score is not None:
        outcome["score"] = score
    if cost is not None:
        outcome["cost"] = cost
    return json.dumps({"prompt": "q", "outcomes": {"big": outcome}})


@pytest.mark.parametrize(("score", "cost", "field"), [
    ("high", 0.001, "outcomes.big.score"),
    (5, 0.001, "outcomes.big.score"),
    (-0.5, 0.001, "outcomes.big.score"),
    (math.nan, 0.001, "outcomes.big.score"),
    (True, 0.001, "outcomes.big.score"),
    (1.0, -1, "outcomes.big.cost"),
    (1.0, "free", "outcomes.big.cost"),
    (1.0, math.inf, "outcomes.big.cost"),
])
def test_outcome_jsonl_bad_score_or_cost_names_file_line_and_field(
        score: Any, cost: Any, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text(_line() + "\n" + _line(score, cost) + "\n")
    with pytest.raises(DataError, match=rf"o\.jsonl: line 2: {field} must be"):
        load_outcomes(path)
    code, _, err = run_main(capsys, "eval", "--data", str(path), "--baseline", "big")
    assert_one_line(code, err, "o.jsonl: line 2", field)


def test_outcome_jsonl_missing_score_and_cost_stay_allowed(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text(_line(None, None) + "\n" + _line(0, 0) + "\n")
    data = load_outcomes(path)
    assert [i.scores["big"] for i in data] == [0.0, 0.0]
    assert data.items[0].outcomes["big"].cost is None and data.items[1].outcomes["big"].cost == 0.0


def _csv(tmp_path: Path, score: str, cost: str) -> Path:
    path = tmp_path / "rb.csv"
    path.write_text("prompt,eval_name,big,big|model_response,big|total_cost\n"
                    f"\"['q1']\",t,1.0,\"['A']\",0.001\n"
                    f"\"['q2']\",t,{score},\"['B']\",{cost}\n")
    return path


@pytest.mark.parametrize(("score", "cost", "field"), [
    ("high", "0.001", "big must be a number in [0, 1]"),
    ("5", "0.001", "big must be a number in [0, 1]"),
    ("1.0", "-1", "big|total_cost must be a finite number >= 0"),
    ("1.0", "free", "big|total_cost must be a finite number >= 0"),
])
def test_routerbench_csv_bad_cells_are_refused(score: str, cost: str, field: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"rb\.csv: line 3: " + field.replace("|", r"\|").replace("[", r"\[")
                       .replace("]", r"\]")):
        load_outcomes(_csv(tmp_path, score, cost))


@pytest.mark.parametrize("missing", ["", "nan", "NaN"])
def test_routerbench_csv_empty_score_cell_is_still_zero(missing: str, tmp_path: Path) -> None:
    # Empty cells (pandas) and "nan" (other writers) both mean missing, not a bad value.
    data = load_outcomes(_csv(tmp_path, missing, missing))
    assert data.items[1].scores["big"] == 0.0 and data.items[1].outcomes["big"].cost is None


@pytest.mark.parametrize(("body", "needle"), [
    ("\"['q2']\",t,1.0\n", "line 3: 3 cells where the header has 5 (is the file cut short?)"),
    ("\"['q2']\",t,1.0,\"['B']\",0.001,extra\n", "line 3: 6 cells where the header has 5"),
])
def test_routerbench_csv_rows_cut_short_or_too_long_are_refused(body: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "rb.csv"
    path.write_text("prompt,eval_name,big,big|model_response,big|total_cost\n"
                    "\"['q1']\",t,1.0,\"['A']\",0.001\n" + body)
    with pytest.raises(DataError, match=re.escape(needle)):
        load_outcomes(path)


def test_routerbench_csv_with_only_a_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rb.csv"
    path.write_text("prompt,eval_name,big,big|model_response,big|total_cost\n")
    with pytest.raises(DataError, match="no prompts"):
        load_outcomes(path)
