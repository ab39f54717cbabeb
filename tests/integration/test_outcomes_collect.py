"""``thrifty outcomes collect`` against a real mock upstream: a team's prompts become outcome data
(answers, costs, scores per model) that ``thrifty eval`` and ``thrifty calibrate`` load.

The mock's "weak" model gets some option letters wrong (``wrong_rate``), the "judge" model's answer
rules give grades, "broken" always fails with a key-shaped message; a slow model lets a real
process be interrupted mid-run and resumed."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fixtures.cli_run import assert_one_line, interrupted_run, run_main
from thrifty.evaluation.dataset import load_outcomes
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread
from thrifty.routing.formats import extract_option

ANIMALS = ["whale", "bat", "dolphin", "horse", "mole", "otter", "seal", "lynx", "hare", "wolf"]


def mc(i: int) -> str:
    return f"Question {i}: which option is a mammal?\nA) shark\nB) {ANIMALS[i % len(ANIMALS)]}\nC) trout\nD) eel"


MOCK = {"models": {
    # The reference: right on every multiple-choice prompt, in its own words.
    "strong": {"answers": [{"pattern": "which option", "answer": "The answer is (B)."},
                           {"pattern": "Explain", "answer": "Full explanation: it depends on the load."}],
               "faults": {}},
    # Answers "B" in a word, but a third of the letters are swapped for another (chosen by hash).
    "weak": {"wrong_rate": 0.35,
             "answers": [{"pattern": "which option", "answer": "B"},
                         {"pattern": "Explain", "answer": "Short summary: load matters."}]},
    # The judge's grade is read off what it is shown: the weak answer gets 8/10, anything else 3.
    "judge": {"answers": [{"pattern": "Answer:\\nShort summary", "answer": "8", "ignore_case": False},
                          {"pattern": "Grade", "answer": "3"}]},
    "broken": {"faults": {"status": 500, "error_message": "upstream down for key sk-live-abcdef0123456789"}},
    "slow": {"answers": [{"pattern": "which option", "answer": "B"}], "faults": {"latency_ms": 150}},
}}
PRICES = {"judge": 0.01, "weak": 0.2, "broken": 0.5, "slow": 0.3, "strong": 10.0}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(MOCK))) as server:
        yield server


@pytest.fixture
def cfg(mock: RunningServer, tmp_path: Path) -> Path:
    """The team's config: every model on the mock, strong the baseline, a cache and compression
    configured (collect must not use them)."""
    doc = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234", "max_retries": 0}},
        "models": {m: {"provider": "mock", "price": {"input": p, "output": p}} for m, p in PRICES.items()},
        "baseline": "strong",
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "cache": {"path": str(tmp_path / "cache.db"), "require_deterministic": False},
    }
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def reset(mock: RunningServer) -> None:
    httpx.post(mock.url + "/mock/reset").raise_for_status()


def calls(mock: RunningServer) -> list[dict[str, Any]]:
    """The chat bodies the mock received since the last reset."""
    return [r["body"] for r in httpx.get(mock.url + "/mock/requests").json()["data"]
            if r["path"].endswith("/chat/completions")]


def write_prompts(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().split("\n") if x]


def collect(capsys: pytest.CaptureFixture[str], cfg: Path, prompts: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_main(capsys, "outcomes", "collect", "--config", str(cfg), "--prompts", str(prompts),
                    "--out", str(out), "--no-progress", *extra)


def test_exact_judge_answer_and_failures_then_eval_and_calibrate(
        mock: RunningServer, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows: list[dict[str, Any]] = [{"id": f"q{i}", "prompt": mc(i), "task": "quiz"} for i in range(36)]
    rows += [{"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": f"Explain caching, case {i}."}], "task": "explain"}
             for i in range(4)]
    rows.append({"id": 99, "prompt": mc(99), "answer": "C", "task": "quiz"})  # the reference is wrong here
    prompts = write_prompts(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "out.jsonl"
    reset(mock)
    code, stdout, err = collect(capsys, cfg, prompts, out, "--models", "weak,broken")
    assert code == 0, err
    assert stdout.startswith("estimate: 41 prompts, 123 calls ")
    assert "8 judge calls" in stdout.splitlines()[0]  # estimated: both candidates on the 4 open prompts
    got = lines(out)
    assert len(got) == 41
    assert all(set(x["outcomes"]) == {"weak", "broken", "strong"} for x in got)

    # Each model was asked its own answer, unrouted, uncompressed, uncached; the judge once per open prompt.
    sent = calls(mock)
    assert sorted(b["model"] for b in sent if b["model"] != "judge") == sorted(["weak", "broken", "strong"] * 41)
    assert sum(b["model"] == "judge" for b in sent) == 4

    quiz = {x["id"]: x for x in got if x.get("id") is not None}
    wrong = 0
    for i in range(36):
        o = quiz[f"q{i}"]["outcomes"]
        assert quiz[f"q{i}"]["grader"] == "exact" and quiz[f"q{i}"]["task"] == "quiz"
        assert o["strong"]["score"] == 1.0  # the reference, graded against itself
        # "B" and "The answer is (B)." agree; a swapped letter does not.
        assert o["weak"]["score"] == (1.0 if extract_option(o["weak"]["response"]) == "B" else 0.0)
        wrong += o["weak"]["score"] == 0.0
        assert o["weak"]["cost"] > 0 and o["weak"]["usage"]["completion_tokens"] >= 1
    assert 3 <= wrong <= 25  # wrong_rate 0.35 of 36

    # A prompt with an answer: every model, the reference too, is graded against it.
    with_answer = quiz[99]
    assert with_answer["reference"] == "answer" and with_answer["outcomes"]["strong"]["score"] == 0.0

    # Open prompts: the judge grades the weak answer against the reference's (8/10), at its own cost.
    open_lines = [x for x in got if x.get("task") == "explain"]
    assert len(open_lines) == 4 and all("messages" in x for x in open_lines)
    for x in open_lines:
        assert x["grader"] == "judge" and x["reference"] == "strong"
        assert x["outcomes"]["weak"]["score"] == pytest.approx(0.8)
        assert x["outcomes"]["weak"]["judge_cost"] > 0
        assert x["outcomes"]["strong"]["score"] == 1.0

    # The failing model: score 0, its error (key redacted), billed nothing.
    for x in got:
        b = x["outcomes"]["broken"]
        assert b["score"] == 0.0 and b["response"] == "" and b["cost"] == 0.0
        assert "upstream down" in b["error"] and "sk-live" not in b["error"] and "[REDACTED]" in b["error"]

    # The summary: prompts, calls, spend, per-model means.
    assert "41 prompts written" in stdout and "127 calls" in stdout
    assert "  weak: mean score " in stdout and "broken: mean score 0.000" in stdout and "41 failed" in stdout

    # The calls are in the ledger like any request (by name: passthrough; the cache bypassed).
    import sqlite3
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows_db = list(db.execute("SELECT strategy, cache_status, COUNT(*) FROM requests GROUP BY 1, 2"))
    assert rows_db == [("passthrough", "bypass", 127)]

    # The output loads as outcome data...
    data = load_outcomes(out)
    assert len(data) == 41 and set(data.models) == {"weak", "broken", "strong"}
    # ...and `thrifty eval` and `thrifty calibrate` accept it.
    code, stdout, err = run_main(capsys, "eval", "--data", str(out), "--baseline", "strong", "--json", "--sweep",
                                 "none", "--quiet", "--folds", "3")
    assert code == 0, err
    result = json.loads(stdout)
    rows_eval = {r["name"]: r for r in result["rows"]}
    assert result["prompts"] == 41 and result["baseline"] == "strong"
    assert rows_eval["always strong"]["accuracy"] == pytest.approx(40 / 41)  # wrong only where the answer said C
    weak_mean = sum(x["outcomes"]["weak"]["score"] for x in got) / 41
    assert rows_eval["always weak"]["accuracy"] == pytest.approx(weak_mean)
    assert rows_eval["always weak"]["cost"] == pytest.approx(sum(x["outcomes"]["weak"]["cost"] for x in got))
    written = tmp_path / "calibrated.yaml"
    code, stdout, err = run_main(capsys, "calibrate", "--data", str(out), "--target", "accuracy>=0.9*baseline",
                                 "--config", str(cfg), "--out", str(written), "--folds", "3")
    assert code in (0, 1), err
    assert written.exists() and "CV accuracy" in stdout


def test_grader_flags_and_judge_model(mock: RunningServer, cfg: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "Explain sharding."}, {"prompt": mc(1)}])
    # --grader exact on an open prompt: first lines compared, so another wording is wrong.
    code, _, err = collect(capsys, cfg, prompts, tmp_path / "exact.jsonl", "--models", "slow", "--grader", "exact")
    assert code == 0, err
    scores = {x["prompt"]: x["outcomes"]["slow"]["score"] for x in lines(tmp_path / "exact.jsonl")}
    assert scores == {"Explain sharding.": 0.0, mc(1): 1.0}
    # --grader judge on a multiple-choice prompt too, with another judge: the judge asked is that one.
    reset(mock)
    code, _, err = collect(capsys, cfg, prompts, tmp_path / "judge.jsonl", "--models", "weak", "--grader", "judge",
                           "--judge-model", "slow")
    assert code == 0, err
    judged = [b for b in calls(mock) if b["messages"][-1]["content"].endswith("Grade (0-10):")]
    assert {b["model"] for b in judged} == {"slow"}
    # --reference: the others are graded against that model's answers.
    code, _, err = collect(capsys, cfg, prompts, tmp_path / "ref.jsonl", "--models", "strong", "--reference", "weak",
                           "--grader", "exact")
    assert code == 0, err
    assert all(x["reference"] == "weak" and x["outcomes"]["weak"]["score"] == 1.0 for x in lines(tmp_path / "ref.jsonl"))


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_resumes_without_duplicates(mock: RunningServer, cfg: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], signum: int,
                                                       exit_code: int) -> None:
    rows: list[dict[str, Any]] = [{"id": i, "prompt": mc(i)} for i in range(12)]
    rows += [{"prompt": mc(100)}, {"prompt": mc(100)}, {"prompt": mc(101)}]  # no ids: resumed by hash, twice the same
    prompts = write_prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["outcomes", "collect", "--config", str(cfg), "--prompts", str(prompts), "--out", str(out),
            "--models", "slow", "--reference", "slow", "--concurrency", "1", "--no-progress"]
    reset(mock)
    code, err = interrupted_run(args, signum, lambda: out.exists() and out.read_text().count("\n") >= 3, 30.0)
    assert code == exit_code, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert err.startswith("thrifty: interrupted; ") and "run the same command again to resume" in err
    text = out.read_text()
    assert text.endswith("\n")  # never a half line
    done = len(lines(out))
    assert f"{done} of 15 prompts done" in err and 3 <= done < 15

    # A process killed mid-write leaves a line cut short: the next run drops it and redoes that prompt.
    with out.open("a") as fh:
        fh.write('{"id": 11, "prompt": "Question 11')
    reset(mock)
    code, _, err = run_main(capsys, *args)
    assert code == 0, err
    assert f"resuming: {done} of 15 prompts already in" in err and "last line was cut short" in err
    assert len(calls(mock)) == 15 - done  # only the missing prompts were asked
    got = lines(out)
    assert len(got) == 15
    assert sorted(x["id"] for x in got if "id" in x) == list(range(12))
    assert sorted(x["prompt"] for x in got if "id" not in x) == sorted([mc(100), mc(100), mc(101)])

    # Complete: running again calls nothing.
    reset(mock)
    code, stdout, _ = run_main(capsys, *args)
    assert code == 0 and "nothing to do" in stdout and not calls(mock)
    # Another set of models into the same file is refused, not mixed in.
    code, _, err = run_main(capsys, *[("weak" if a == "slow" and args[i - 1] == "--models" else a)
                                      for i, a in enumerate(args)])
    assert_one_line(code, err, "out.jsonl", "use another --out")


def test_a_cut_line_of_a_crlf_file_is_removed_and_nothing_else(tmp_path: Path) -> None:
    # An OUT written on Windows (or edited there) has CRLF lines. The cut used to be counted in
    # text read with newline translation (no \r), so it fell short by one byte per line: half of
    # the cut line stayed, and the next run then took a complete line for a cut one and removed it.
    from thrifty.evaluation.collect_file import read_done

    out = tmp_path / "out.jsonl"
    whole = [json.dumps({"id": i, "prompt": mc(i), "outcomes": {"strong": {"score": 1.0}}}) for i in range(3)]
    out.write_bytes(("\r\n".join(whole) + "\r\n" + '{"id": 3, "prompt": "Quest').encode())
    for _ in range(2):  # the second run finds the file as the first left it
        ids, _, n = read_done(out, ["strong"])
        assert n == 3 and sorted(ids) == ["id:0", "id:1", "id:2"]
        assert out.read_bytes() == ("\r\n".join(whole) + "\r\n").encode()


def test_a_failing_reference_or_a_fallback_answer_is_not_taken_for_the_models_own(
        mock: RunningServer, cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": mc(1), "answer": "B"}, {"id": "n", "prompt": mc(2)}])
    out = tmp_path / "out.jsonl"
    # The reference fails: the prompt without an answer cannot be graded, so its line is not
    # written (the next run retries it) and nothing else was paid for it; the one with an answer is.
    reset(mock)
    code, _, err = collect(capsys, cfg, prompts, out, "--models", "slow", "--reference", "broken")
    assert code == 1, err
    assert [x["id"] for x in lines(out)] == ["a"]
    assert "line 2: the reference model broken failed" in err and "1 prompts not written" in err
    assert sorted(b["model"] for b in calls(mock)) == ["broken", "broken", "slow"]
    # Nothing at all could be graded: an error.
    only = write_prompts(tmp_path / "only.jsonl", [{"prompt": mc(3)}])
    code, _, err = collect(capsys, cfg, only, tmp_path / "only_out.jsonl", "--models", "slow", "--reference", "broken")
    assert code == 2 and "no prompt could be graded" in err

    # A model with a configured fallback: never answered for by it, recorded as failed with its
    # own error (test_outcomes_collect_retry.py has the fallback's calls).
    doc = yaml.safe_load(cfg.read_text())
    doc["models"]["broken"]["fallbacks"] = ["slow"]
    cfg.write_text(yaml.safe_dump(doc))
    code, _, err = collect(capsys, cfg, prompts, tmp_path / "fb.jsonl", "--models", "broken")
    assert code == 0, err
    for x in lines(tmp_path / "fb.jsonl"):
        b = x["outcomes"]["broken"]
        assert b["score"] == 0.0 and b["response"] == "" and "upstream down" in b["error"] and b["cost"] == 0.0

    # The reference named by an alias in --models is called once, under that name.
    doc["models"]["strong"]["aliases"] = ["big"]
    cfg.write_text(yaml.safe_dump(doc))
    reset(mock)
    code, _, err = collect(capsys, cfg, prompts, tmp_path / "alias.jsonl", "--models", "big,slow")
    assert code == 0, err
    got = lines(tmp_path / "alias.jsonl")
    assert all(list(x["outcomes"]) == ["big", "slow"] for x in got)
    assert {x["reference"] for x in got} == {"answer", "big"} and len(calls(mock)) == 4


def test_an_empty_reference_answer_is_no_reference(cfg: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # A reference that answers nothing (a content filter, a reasoning model out of --max-tokens)
    # was written as right (1.0) with every other model graded against "" (0.0).
    mute = {"models": {"mute": {"answer": ""}, "slow": {"answers": [{"pattern": "which option", "answer": "B"}]}}}
    with run_in_thread(create_mock(MockConfig.from_dict(mute))) as server:
        doc = yaml.safe_load(cfg.read_text())
        doc["providers"]["mock"]["base_url"] = server.url + "/v1"
        doc["models"]["mute"] = {"provider": "mock", "price": {"input": 1.0, "output": 1.0}}
        cfg.write_text(yaml.safe_dump(doc))
        prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": mc(1), "answer": "B"}, {"id": "n", "prompt": mc(2)}])
        out = tmp_path / "out.jsonl"
        code, _, err = collect(capsys, cfg, prompts, out, "--models", "slow", "--reference", "mute")
        models = [r["body"]["model"] for r in httpx.get(server.url + "/mock/requests").json()["data"]]
    assert code == 1, err
    assert [x["id"] for x in lines(out)] == ["a"]  # graded against its answer: mute scores 0 there
    assert "line 2: the reference model mute gave an empty answer" in err
    assert sorted(models) == ["mute", "mute", "slow"]  # nothing else paid for the prompt that cannot be graded


def test_the_judge_sees_the_question_beside_a_long_reference(cfg: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # The judge request keeps the last 6,000 characters of question + reference: a reference of
    # that length used to push the question, and the reference's start, out of it.
    long = "Start of the reference. " + "More detail on the load. " * 300
    verbose = {"models": {"verbose": {"answer": long}, "weak": {"answer": "Short summary: load matters."},
                          "judge": {"answer": "7"}}}
    with run_in_thread(create_mock(MockConfig.from_dict(verbose))) as server:
        doc = yaml.safe_load(cfg.read_text())
        doc["providers"]["mock"]["base_url"] = server.url + "/v1"
        doc["models"]["verbose"] = {"provider": "mock", "price": {"input": 1.0, "output": 1.0}}
        cfg.write_text(yaml.safe_dump(doc))
        prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "Explain how sharding spreads the load."}])
        code, _, err = collect(capsys, cfg, prompts, tmp_path / "out.jsonl", "--models", "weak",
                               "--reference", "verbose", "--judge-model", "judge")
        bodies = [r["body"] for r in httpx.get(server.url + "/mock/requests").json()["data"]]
    assert code == 0, err
    shown = next(b for b in bodies if b["model"] == "judge")["messages"][-1]["content"]
    assert "Explain how sharding spreads the load." in shown and "Start of the reference." in shown
    assert lines(tmp_path / "out.jsonl")[0]["outcomes"]["weak"]["score"] == pytest.approx(0.7)


@pytest.mark.parametrize(("bad", "needle"), [
    ("{not json", "not valid JSON"),
    ('{"task": "faq"}', "needs 'prompt'"),
    ('{"prompt": "hi", "answer": ["B"]}', "'answer' must be a string"),
    ('{"messages": [{"role": "wizard", "content": "hi"}]}', "role"),
    ('{"id": 1, "prompt": "again"}', "id 1 is also the id of line 1"),
])
def test_bad_input_lines_are_refused_before_any_call(mock: RunningServer, cfg: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], bad: str,
                                                     needle: str) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": 1, "prompt": mc(1)}, bad])
    out = tmp_path / "out.jsonl"
    reset(mock)
    code, _, err = collect(capsys, cfg, prompts, out, "--models", "weak")
    assert_one_line(code, err, "p.jsonl: line 2", needle)
    assert not calls(mock) and not out.exists()


def test_max_usd_refuses_to_start(mock: RunningServer, cfg: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": mc(i)} for i in range(20)])
    out = tmp_path / "out.jsonl"
    reset(mock)
    code, stdout, err = collect(capsys, cfg, prompts, out, "--models", "weak", "--max-usd", "0.01",
                                "--max-tokens", "100")
    assert stdout.startswith("estimate: 20 prompts, 40 calls ") and "at most 100 tokens" in stdout
    assert_one_line(code, err, "--max-usd", "estimated spend", "nothing was called")
    assert not calls(mock) and not out.exists()
    # Within the budget it runs, with max_tokens sent.
    code, _, err = collect(capsys, cfg, prompts, out, "--models", "weak", "--max-usd", "1", "--max-tokens", "100")
    assert code == 0, err
    assert {b.get("max_tokens") for b in calls(mock)} == {100}


@pytest.mark.parametrize(("flags", "needles"), [
    (["--models", "weak,nope"], ["--models", "nope"]),
    (["--models", "weak", "--judge-model", "nope"], ["--judge-model", "nope"]),
    (["--models", "weak", "--grader", "vibes"], ["--grader", "vibes"]),
    (["--models", " , "], ["--models"]),
])
def test_bad_flags_are_one_line(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                needles: list[str]) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    code, _, err = collect(capsys, cfg, prompts, tmp_path / "out.jsonl", *flags)
    assert_one_line(code, err, *needles)
