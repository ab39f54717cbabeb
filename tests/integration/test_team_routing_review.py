"""A team whose traffic is not RouterBench (free-text support answers, JSON extraction from
invoices, short classification labels) collects outcomes, fits and serves its routing, and
meets: correct JSON graded wrong for its key order, a JSON cascade that never saw two cheap
models agree, a good label escalated as "very short", and ``route explain`` listing models a
fitted state table never calls. Real mock upstream and gateway on 127.0.0.1, the real openai
client, the CLI as a user runs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.cli_run import run_main
from fixtures.routed import client, routed_gateway
from fixtures.served import attempt_rows
from thrifty.errors import ConfigError
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.routing.config import parse_routing

INVOICE = "Extract vendor, total and currency as JSON from this invoice:\nINVOICE {n} from {vendor}. Total due: {total} EUR."
INVOICE_RE = "from ([\\w ]+)\\. Total due: ([\\d.]+) EUR"
TRIAGE = ("Classify this ticket as billing, outage, account or feature. Reply with the label only.\n"
          "Ticket {n}: {what} since this morning.")
MOCK = {"models": {
    # The reference, and "mid" with the same values in another key order (both right);
    # "sloppy" writes a wrong total in a long object, "pretty" the right one pretty-printed.
    "big": {"answers": [{"pattern": INVOICE_RE,
                         "answer": '{"vendor": "\\1", "invoice_date": "2026-03-01", "due_date": "2026-03-31", '
                                   '"total": \\2, "currency": "EUR"}'},
                        {"pattern": "password", "answer": "account"},
                        {"pattern": "charged", "answer": "billing"}]},
    "mid": {"answers": [{"pattern": INVOICE_RE,
                         "answer": '{"total": \\2, "currency": "EUR", "vendor": "\\1", '
                                   '"due_date": "2026-03-31", "invoice_date": "2026-03-01"}'}]},
    "sloppy": {"answers": [{"pattern": INVOICE_RE,
                            "answer": '{"vendor": "\\1", "invoice_date": "2026-03-01", "due_date": "2026-03-31", '
                                      '"total": 1.5, "currency": "EUR"}'}]},
    "pretty": {"answers": [{"pattern": INVOICE_RE,
                            "answer": '```json\n{\n  "currency": "EUR",\n  "vendor": "\\1",\n  "total": \\2,\n'
                                      '  "invoice_date": "2026-03-01",\n  "due_date": "2026-03-31"\n}\n```'}]},
    # Classification: one-word labels, right or plainly not a label.
    "small": {"answers": [{"pattern": "password", "answer": "Account."},
                          {"pattern": "charged", "answer": "I think this is probably about money."}]},
}}
PRICES = {"small": 0.1, "mid": 1.0, "pretty": 1.0, "sloppy": 0.5, "big": 10.0}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


def _config(tmp: Path, mock: RunningServer, routing: dict[str, Any] | None = None) -> Path:
    cfg: dict[str, Any] = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-1234", "max_retries": 0}},
        "models": {m: {"provider": "mock", "price": {"input": p, "output": p}} for m, p in PRICES.items()},
        "baseline": "big", "ledger": {"path": str(tmp / "ledger.db")},
    }
    if routing is not None:
        cfg["routing"] = routing
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_collect_grades_json_extractions_by_value_not_by_layout(tmp_path: Path, mock: RunningServer,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Against the prompt's ``answer`` (exact grading) and against the reference's answer with
    ``--grader exact``: the right values in another key order or pretty-printed score 1, a wrong
    total past the first 80 characters scores 0 (the first-line comparison saw neither)."""
    prompts = tmp_path / "prompts.jsonl"
    answer = {"vendor": "Hooli", "invoice_date": "2026-03-01", "due_date": "2026-03-31", "total": 41.94,
              "currency": "EUR"}
    lines = [{"id": "inv-0", "task": "invoice-json", "answer": json.dumps(answer),
              "prompt": INVOICE.format(n=1000, vendor="Hooli", total=41.94)},
             {"id": "inv-1", "task": "invoice-json", "prompt": INVOICE.format(n=1001, vendor="Initech", total=384.82)}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "outcomes.jsonl"
    code, _, err = run_main(capsys, "outcomes", "collect", "--config", str(_config(tmp_path, mock)),
                            "--prompts", str(prompts), "--models", "mid,pretty,sloppy", "--out", str(out),
                            "--grader", "exact", "--no-progress")
    assert code == 0, err
    scores = {row["id"]: {m: o["score"] for m, o in row["outcomes"].items()}
              for row in map(json.loads, out.read_text().splitlines())}
    assert scores["inv-0"] == {"mid": 1.0, "pretty": 1.0, "sloppy": 0.0, "big": 1.0}
    assert scores["inv-1"] == {"mid": 1.0, "pretty": 1.0, "sloppy": 0.0, "big": 1.0}


def test_agreement_cascade_on_json_compares_values(tmp_path: Path) -> None:
    """A fitted state table on the invoice task: two cheap models giving the same JSON in
    another key order agree, so the cheap answer is served; a wrong total disagrees and goes to
    the strong model."""
    table = {"": "next", "0": "next", "0,0": "stop:0", "0,1": "strong"}
    routing = {"default_route": "invoice", "routes": {
        "invoice": {"state_table": {"order": ["mid", "pretty"], "table": table, "strong": "big"}},
        "sloppy": {"state_table": {"order": ["mid", "sloppy"], "table": table, "strong": "big"}}}}
    with routed_gateway(tmp_path, MOCK, PRICES, "big", routing) as (gw, server):
        oa = client(server)
        prompt = INVOICE.format(n=7, vendor="Acme GmbH", total=120.5)
        agreed = oa.chat.completions.create(model="auto", messages=[{"role": "user", "content": prompt}])
        assert agreed.model == "mid"
        differ = oa.chat.completions.create(model="route:sloppy", messages=[{"role": "user", "content": prompt}])
        assert differ.model == "big"
        rows = attempt_rows(gw, "r.route, r.escalations, a.model, a.accepted")
    assert [(r["route"], r["model"], r["accepted"]) for r in rows] == [
        ("invoice", "mid", 1), ("invoice", "pretty", 0),
        ("sloppy", "mid", 0), ("sloppy", "sloppy", 0), ("sloppy", "big", 1)]


def test_heuristic_labels_accept_a_label_and_escalate_prose(tmp_path: Path) -> None:
    """``labels`` on the heuristic scorer: a one-word label (any case, a full stop) is the
    expected answer of a classification, not a "very short answer" to escalate; an answer that
    is no label escalates. Streamed and not."""
    routing = {"default_route": "triage", "routes": {"triage": {
        "tiers": [{"model": "small", "threshold": 0.6}, {"model": "big"}],
        "scorer": {"kind": "heuristic", "labels": ["billing", "outage", "account", "feature"]}}}}
    with routed_gateway(tmp_path, MOCK, PRICES, "big", routing) as (gw, server):
        oa = client(server)
        for stream in (False, True):
            for what in ("password reset fails", "charged twice"):
                msgs = [{"role": "user", "content": TRIAGE.format(n=1, what=what)}]
                if stream:
                    chunks = oa.chat.completions.create(model="auto", messages=msgs, stream=True,
                                                        extra_body={"metadata": {"task": "triage-label"}})
                    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                else:
                    oa.chat.completions.create(model="auto", messages=msgs, extra_body={"metadata": {"task": "t"}})
        rows = attempt_rows(gw, "r.escalations, a.model, a.accepted, a.score, a.score_reason")
    assert [(r["model"], r["accepted"], r["escalations"]) for r in rows] == [
        ("small", 1, 0), ("small", 0, 1), ("big", 1, 1)] * 2
    assert rows[0]["score_reason"] == "label account" and rows[0]["score"] == 0.9
    assert rows[1]["score"] == 0.05 and "not one of the labels" in rows[1]["score_reason"]


def test_heuristic_labels_are_checked_when_the_config_loads() -> None:
    def route(scorer: dict[str, Any]) -> dict[str, Any]:
        return {"default_route": "t", "routes": {"t": {"tiers": [{"model": "a", "threshold": 0.5}, {"model": "b"}],
                                                       "scorer": scorer}}}

    with pytest.raises(ConfigError, match="labels: only with expect auto or text"):
        parse_routing(route({"kind": "heuristic", "expect": "json", "labels": ["x"]}))
    with pytest.raises(ConfigError, match="labels: expected a list of non-empty labels"):
        parse_routing(route({"kind": "heuristic", "labels": []}))


def test_route_explain_lists_only_the_models_a_fitted_table_calls(tmp_path: Path, mock: RunningServer,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``calibrate`` writes tables such as ``{"": next, "0": stop:0}`` (serve the first cheap
    answer; an unusable one goes to the strong model) and ``{"": strong}``: the plan is the
    models those calls reach, not every model of ``order``."""
    order = ["mid", "small"]
    cfg = _config(tmp_path, mock, {"default_route": "open", "tasks": {"support": "support"}, "routes": {
        "open": {"state_table": {"order": order, "table": {"": "next", "0": "stop:0"}, "strong": "big"}},
        "support": {"state_table": {"order": order, "table": {"": "strong"}, "strong": "big"}},
        "both": {"state_table": {"order": order, "table": {"": "next", "0": "next", "x": "next", "0,0": "stop:1"},
                                 "strong": "big"}}}})
    plans = {}
    for args in (["--task", "triage"], ["--task", "support"], ["--model", "route:both"]):
        code, out, err = run_main(capsys, "route", "explain", "how do I reset my router?", "--config", str(cfg),
                                  "--json", *args)
        assert code == 0, err
        explained = json.loads(out)
        plans[explained["route"]] = [step["model"] for step in explained["plan"]]
    assert plans == {"open": ["mid", "big"], "support": ["big"], "both": ["mid", "small", "big"]}


def test_calibrate_takes_the_fit_options_of_its_base_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the review: `calibrate --config BASE` fitted with the default options whatever
    BASE's `routing.fit` said, so a team whose tasks have fewer than 30 prompts each could not get
    per-task routes from the CLI (`min_family_prompts: 10` was ignored)."""
    from fixtures.routing_data import COST, MODELS, synthetic, write_jsonl

    data = write_jsonl(synthetic(n=24), tmp_path / "outcomes.jsonl")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {m: {"provider": "p", "price": {"input": COST[m] * 1000, "output": COST[m] * 1000}} for m in MODELS},
        "baseline": "big",
        "routing": {"fit": {"min_family_prompts": 10}},
    }))
    out = tmp_path / "calibrated.yaml"
    code, _, err = run_main(capsys, "calibrate", "--data", str(data), "--target", "accuracy>=0.9*baseline",
                            "--config", str(base), "--out", str(out), "--folds", "3")
    assert code == 0, err
    routing = yaml.safe_load(out.read_text())["routing"]
    assert routing["fit"]["min_family_prompts"] == 10
    assert "quiz" in routing["routes"] and "mc_multi" in routing["routes"], sorted(routing["routes"])
