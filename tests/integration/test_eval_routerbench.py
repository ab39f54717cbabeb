"""``thrifty eval`` end to end on small copies of the RouterBench data, with a stand-in policy.

The stand-in (tests/fixtures/eval_policy.py) keeps these tests independent of thrifty.routing;
the real default policy is exercised by bench/eval_frontier.py and ``make demo``.
"""

import csv
import json
import random
import sys
from pathlib import Path

import pytest

from fixtures.eval_policy import StandInRouter, fit_per_task, standin_gateway
from thrifty.cli.main import main
from thrifty.evaluation.dataset import load_outcomes
from thrifty.evaluation.evaluate import EvalOptions
from thrifty.evaluation.report import render_text, write_decisions, write_plot
from thrifty.evaluation.session import run_eval
from thrifty.gateway import Gateway
from thrifty.pipeline.route import RouteStage

csv.field_size_limit(sys.maxsize)
FILES = ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv")
CASCADE = {"routing": {"cascade": ["mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview"]}}


def copy_rows(data_dir: Path, out: Path, start: int, stop: int, shuffle_scores: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        with (data_dir / "routerbench" / name).open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = [r for i, r in enumerate(reader) if start <= i < stop]
        if shuffle_scores:
            # Permute every model's score column across rows: scores change, nothing else does.
            models = [h.split("|")[0] for h in header if h.endswith("|total_cost")]
            rng = random.Random(7)
            for m in models:
                j = header.index(m)
                column = [r[j] for r in rows]
                rng.shuffle(column)
                for r, v in zip(rows, column, strict=True):
                    r[j] = v
        with (out / name).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    return out


def write_policy(path: Path, policy: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(policy))
    return path


def options(**kw) -> EvalOptions:
    base = {"sweep": (), "progress": False, "folds": 3}
    base.update(kw)
    return EvalOptions(**base)


@pytest.fixture(scope="module")
def small(data_dir, tmp_path_factory):
    return copy_rows(data_dir, tmp_path_factory.mktemp("rb") / "small", 0, 60)


def test_cascade_decisions_are_costed_from_the_replay(small, tmp_path):
    policy = write_policy(tmp_path / "cascade.yaml", CASCADE)
    result = run_eval(small, policy=policy, options=options(fit=False), gateway_factory=standin_gateway)
    data = load_outcomes(small)
    assert result.prompts == 180 and len(result.decisions) == 180
    by_key = {i.key: i for i in data.items}
    for d in result.decisions:
        item = by_key[(d.file, d.row)]
        assert d.error is None and d.calls and d.final == d.calls[-1]
        assert d.calls == CASCADE["routing"]["cascade"][: len(d.calls)]
        # The pipeline's accounting used the replay's usage.cost: the recorded costs of every call.
        assert d.cost == pytest.approx(sum(item.cost(m) for m in d.calls))
    row = result.policy.overall
    assert 1.0 < row.calls_per_prompt <= 3.0
    assert row.accuracy == pytest.approx(sum(by_key[(d.file, d.row)].scores[d.final] for d in result.decisions) / 180)
    assert set(result.policy.tasks) == {"arc-challenge", "mbpp", "winogrande"}
    names = [r.name for r in result.rows]
    assert names[:4] == ["thrifty", "oracle", "best per-task model", "random routing"]
    assert "always gpt-4-1106-preview" in names and len(names) == 4 + len(data.models)

    text = render_text(result)
    assert "always gpt-4-1106-preview: $" in text and "saved" in text and "AIQ" in text
    write_decisions(result.decisions, tmp_path / "d.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(lines) == 180 and set(lines[0]) == {"file", "row", "calls", "final"}
    write_plot(result, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kfold_fitting_never_sees_the_prompts_it_answers(small):
    fitted_on: list[set[str]] = []

    def spy_fit(train, *, max_cost_share, baseline, spec):
        fitted_on.append({f"{i.file}#{i.row}" for i in train.items})
        assert all(i.scores for i in train.items)  # training data has its scores
        return {**fit_per_task(train, max_cost_share=max_cost_share, baseline=baseline, spec=spec),
                "fold": len(fitted_on) - 1}

    leaks: list[str] = []

    class CheckingRouter(StandInRouter):
        def plan(self, ctx):
            if ctx.request.metadata["eval_id"] in fitted_on[self.routing["fold"]]:
                leaks.append(ctx.request.metadata["eval_id"])
            return super().plan(ctx)

    def factory(config, providers):
        gw = Gateway.from_config({k: v for k, v in config.items() if k != "routing"}, providers=providers)
        for stage in gw.stages:
            if isinstance(stage, RouteStage):
                stage.router = CheckingRouter(config["routing"])
        return gw

    result = run_eval(small, policy=write_policy(small.parent / "p.yaml", {"routing": {}}),
                      options=options(folds=3, sweep=(0.05,)), fit_fn=spy_fit, gateway_factory=factory)
    assert len(fitted_on) == 6  # 3 folds for the policy, 3 for the one sweep point
    assert leaks == []
    assert result.fitting.startswith("3-fold")
    assert [r.kind for r in result.rows[:2]] == ["policy", "sweep"]
    # A tighter budget never costs more on this data than the unconstrained fit.
    assert result.rows[1].overall.cost <= result.rows[0].overall.cost
    assert 0.0 < result.figures["aiq"] <= 1.0


@pytest.mark.parametrize("policy", ["per-task", "cascade"])
def test_decisions_do_not_depend_on_the_scores(data_dir, tmp_path, policy):
    train = copy_rows(data_dir, tmp_path / "train", 60, 120)
    test = copy_rows(data_dir, tmp_path / "test", 0, 40)
    shuffled = copy_rows(data_dir, tmp_path / "shuffled", 0, 40, shuffle_scores=True)
    assert load_outcomes(test).items[5].scores != load_outcomes(shuffled).items[5].scores or any(
        a.scores != b.scores for a, b in zip(load_outcomes(test).items, load_outcomes(shuffled).items, strict=True))
    spec = write_policy(tmp_path / "p.yaml", {"routing": {}} if policy == "per-task" else CASCADE)
    runs = []
    for data in (test, shuffled):
        result = run_eval(data, train=train, policy=spec, options=options(), fit_fn=fit_per_task,
                          gateway_factory=standin_gateway)
        write_decisions(result.decisions, tmp_path / f"{data.name}.jsonl")
        runs.append((tmp_path / f"{data.name}.jsonl").read_text())
    assert runs[0] == runs[1]
    assert runs[0].count("\n") == 120


def test_via_http_matches_in_process(data_dir, tmp_path):
    tiny = copy_rows(data_dir, tmp_path / "tiny", 0, 6)
    policy = write_policy(tmp_path / "cascade.yaml", CASCADE)
    fast = run_eval(tiny, policy=policy, options=options(fit=False), gateway_factory=standin_gateway)
    http = run_eval(tiny, policy=policy, options=options(fit=False, via_http=True), gateway_factory=standin_gateway)
    assert [d.to_json() for d in http.decisions] == [d.to_json() for d in fast.decisions]
    assert [d.cost for d in http.decisions] == pytest.approx([d.cost for d in fast.decisions])
    assert http.policy.overall.errors == 0


def test_cli_eval_writes_table_decisions_plot_and_json(small, tmp_path, capsys):
    policy = write_policy(tmp_path / "p.yaml", {"default_model": "mistralai/mixtral-8x7b-chat"})
    args = ["eval", "--data", str(small), "--policy", str(policy), "--no-fit", "-q",
            "--decisions", str(tmp_path / "d.jsonl"), "--plot", str(tmp_path / "p.png")]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "thrifty: $" in out and "plot written to" in out
    assert (tmp_path / "p.png").stat().st_size > 1000
    first = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert first == {"file": "arc_challenge_train.csv", "row": 0, "calls": ["mistralai/mixtral-8x7b-chat"],
                     "final": "mistralai/mixtral-8x7b-chat"}
    with pytest.raises(SystemExit):
        main([*args[:6], "--json"])
    doc = json.loads(capsys.readouterr().out)
    mixtral = next(r for r in doc["rows"] if r["name"] == "always mistralai/mixtral-8x7b-chat")
    assert doc["rows"][0]["accuracy"] == pytest.approx(mixtral["accuracy"])
    assert doc["rows"][0]["cost"] == pytest.approx(mixtral["cost"])


def test_cli_reports_bad_input_in_one_line(small, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--data", str(tmp_path / "nothing-here"), "--no-fit"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thrifty: ") and "\n" not in err
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--data", str(small), "--baseline", "gpt-9", "--policy",
              str(write_policy(tmp_path / "p.yaml", {"routing": {}})), "--no-fit"])
    assert exc.value.code == 2 and "baseline model 'gpt-9'" in capsys.readouterr().err


def test_a_fitter_with_fit_many_is_fitted_once_per_fold_for_all_budgets(small):
    calls: list[tuple[int, list]] = []

    class Fitter:
        def __call__(self, train, **kw):
            raise AssertionError("fit_many should be used")

        def fit_many(self, train, *, max_cost_shares, baseline, spec):
            calls.append((len(train), list(max_cost_shares)))
            return [fit_per_task(train, max_cost_share=s, baseline=baseline, spec=spec) for s in max_cost_shares]

    result = run_eval(small, policy=write_policy(small.parent / "p2.yaml", {"routing": {}}),
                      options=options(folds=3, sweep=(0.05, 0.2)), fit_fn=Fitter(), gateway_factory=standin_gateway)
    assert [c[1] for c in calls] == [[None, 0.05, 0.2]] * 3
    assert sum(c[0] for c in calls) == 2 * 180  # each prompt is in the training part of 2 of 3 folds
    assert [r.kind for r in result.rows[:3]] == ["policy", "sweep", "sweep"]
