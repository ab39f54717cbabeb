"""bench/cache_adversarial.py: WinoGrande twins and ARC duplicates derived from the RouterBench
CSVs, and evaluated as `thrifty cache eval` does; and the twin it found served.

The pair derivation and the evaluation run on tiny CSVs written here (the real data is not read).
The defect: "...either the plain bathroom or the colorful bedroom, but the _ was already plain." and
"...already colorful." have the same words, so no hard veto told them apart and a calibrated
verifier (the QQP-calibrated lexical one) served one's answer for the other. Reproduced over real
HTTP (the gateway on loopback, the openai client, the mock upstream) with a learned verifier at
threshold 0, which serves every candidate the vetoes let through.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml

from fixtures.bench_module import load_bench
from fixtures.cache_verifiers import random_verifier
from thrifty.cache.vetoes import vetoes
from thrifty.embeddings import build_embedder
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

PLAIN = "Matt wanted to change either the plain bathroom or the colorful bedroom, but the _ was already plain."
COLORFUL = PLAIN.replace("already plain.", "already colorful.")
LITTLE = "They had to eat a lot to gain the strength they had lost and be able to work, the _ was too little."
POSTERS = "The stores used posters instead of flyers, but the overall cost of distribution for the _ was cheaper."
CROOK = ("Adam was a crook and not a law-abiding citizen like Joseph, so it was surprising that _ was the one "
         "with a restraining order against him.")
# The WinoGrande twins (question sentences alone) the bench found served, and the veto each now meets:
# the QQP-calibrated lexical verifier served the first, the rule verifier with MiniLM the other three.
SERVED_TWINS = [
    (PLAIN, COLORFUL, "referent"),
    (LITTLE, LITTLE.replace("too little.", "too much."), "opposite"),
    (POSTERS, POSTERS.replace(", but the", ", because the"), "opposite"),
    (CROOK, CROOK.replace("a crook and not a law-abiding citizen", "law-abiding and not a crook"), "order"),
]
WINO_INSTRUCTION = 'Print only a single choice  from "A" or "B" without explanation. Answer:'
SHOT = ("Please answer with the letter of the correct answer.\n\nThe trophy didn't fit in the suitcase because "
        "the _ was too big.\nA) trophy\nB) suitcase\n" + WINO_INSTRUCTION + "\nA\n\n")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("cache_adversarial")


def wino(question: str, a: str, b: str) -> str:
    """A few-shot WinoGrande prompt as RouterBench stores it: a worked example, then the question."""
    return SHOT + f"Please answer with the letter of the correct answer.\n\n{question}\nA) {a}\nB) {b}\n{WINO_INSTRUCTION}"


def arc(question: str, options: list[str]) -> str:
    shot = ("Which is a gas?\nA) ice\nB) steam\nC) rock\nD) wood\nPrint only a single choice  from \"A\" or \"B\" or "
            "\"C\" or \"D\" without explanation.\nAnswer:\nB\n\n")
    lines = [f"{'ABCD'[i]}) {o}" for i, o in enumerate(options)]
    return shot + "\n".join([question, *lines]) + ('\nPrint only a single choice  from "A" or "B" or "C" or "D" '
                                                    "without explanation.\nAnswer:")


def write_csv(path: Path, prompts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "prompt", "eval_name"])
        for i, p in enumerate(prompts):
            w.writerow([f"s{i}", repr([p]), "x"])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    write_csv(folder / "routerbench" / "winograde_train.csv", [
        wino("The teenager chose a jeweled pin for her belly piercing, but the _ was too huge.", "pin", "piercing"),
        wino("The teenager chose a jeweled pin for her belly piercing, but the _ was too tiny.", "pin", "piercing"),
        wino(PLAIN, "bathroom", "bedroom"),
        wino(COLORFUL, "bedroom", "bathroom"),  # options in the other order: kept as the prompt gives them
        # The same question twice (another row of the file): not a twin of itself.
        wino("Sarah lent her umbrella to Jessica because _ was going out in the rain.", "Sarah", "Jessica"),
        wino("Sarah lent her umbrella to Jessica because _ was going out in the rain.", "Sarah", "Jessica"),
        wino("The chef sharpened the knife before dinner since _ blade was dull.", "chef", "knife"),
    ])
    write_csv(folder / "routerbench" / "arc_challenge_train.csv", [
        arc("Which planet is closest to the Sun?", ["Venus", "Mercury", "Mars", "Earth"]),
        arc("What do plants need to make food?", ["sunlight", "sand", "salt", "smoke"]),
        arc("Which planet is closest to the Sun?", ["Venus", "Mercury", "Mars", "Earth"]),
        arc("Which planet is closest to the Sun?", ["Mercury", "Venus", "Mars", "Earth"]),  # other options
    ])
    return folder


def test_final_question_drops_the_examples_and_the_instruction_and_keeps_the_options(bench: ModuleType) -> None:
    stem, options = bench.final_question(wino("The _ was too huge.", "pin", "piercing"))
    assert (stem, options) == ("The _ was too huge.", ("A) pin", "B) piercing"))


def test_twins_found_identical_questions_not_taken_options_kept(bench: ModuleType, data: Path) -> None:
    twins, dups = bench.derive(data)
    assert [p.label for p in twins] == [0, 0]
    assert (twins[0].text_a.splitlines(), twins[0].text_b.splitlines()) == (
        ["The teenager chose a jeweled pin for her belly piercing, but the _ was too huge.", "A) pin", "B) piercing"],
        ["The teenager chose a jeweled pin for her belly piercing, but the _ was too tiny.", "A) pin", "B) piercing"])
    assert twins[1].text_a == PLAIN + "\nA) bathroom\nB) bedroom"
    assert twins[1].text_b == COLORFUL + "\nA) bedroom\nB) bathroom"
    assert not any("umbrella" in p.text_a or "umbrella" in p.text_b for p in twins)  # identical: no twin
    assert len(dups) == 1 and dups[0].label == 1 and dups[0].text_a == dups[0].text_b
    assert dups[0].text_a.splitlines()[1:] == ["A) Venus", "B) Mercury", "C) Mars", "D) Earth"]


def test_label_check_counts_twins_by_their_right_answers(bench: ModuleType) -> None:
    pairs = [bench.Pair("a", "b", 0), bench.Pair("c", "d", 0), bench.Pair("e", "f", 0)]
    answers = {"a": {"pin"}, "b": {"piercing"}, "c": {"pin"}, "d": {"pin"}, "e": {"x"}}
    assert bench.label_check(pairs, answers) == (1, 1, 1)


def test_wilson_upper_bound(bench: ModuleType) -> None:
    assert bench.wilson_upper(0, 125) == pytest.approx(0.0298, abs=1e-4)
    assert bench.wilson_upper(1, 125) == pytest.approx(0.0440, abs=1e-4)


def test_the_evaluation_runs_end_to_end_with_the_lexical_embedder(bench: ModuleType, data: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    twins, dups = bench.derive(data)
    emb = build_embedder("lexical")
    res = bench.evaluate("rules, lexical", twins + dups, emb, bench.RuleVerifier.for_embedder(emb.name))
    assert (res["twins"], res["false_hits"], res["duplicates"], res["duplicates_served"]) == (2, 0, 1, 1)
    monkeypatch.setenv("THRIFTY_DATA_DIR", str(data))
    monkeypatch.setattr(sys, "argv", ["cache_adversarial.py", "--embedders", "lexical", "--no-calibrated"])
    bench.main()
    out = capsys.readouterr().out
    assert "| rules, lexical | with options | rules | 0.9500 | 2 | 0 | 0.0% (" in out
    assert "| rules, lexical | question only | rules |" in out


@pytest.mark.parametrize(("a", "b", "reason"), SERVED_TWINS, ids=["referent", "little-much", "but-because", "not"])
def test_each_served_twin_is_vetoed(a: str, b: str, reason: str) -> None:
    assert vetoes(a, b) == [reason]


def test_a_sentence_pointing_at_the_other_thing_it_names_is_vetoed() -> None:
    # A reordering of the same words is not (order decides it around a relation word), nor a rewording.
    assert vetoes("difference between python and java", "difference between java and python") == []
    assert vetoes(PLAIN, PLAIN.replace("Matt", "matt")) == []


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict({}))) as server:
        yield server


def ask(c: openai.OpenAI, text: str) -> Any:
    raw = c.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": text}], temperature=0)
    return raw.headers["x-thrifty-cache"]


def test_the_twin_is_not_served_over_http(mock: RunningServer, tmp_path: Path) -> None:
    verifier = random_verifier(tmp_path, 0, build_embedder("lexical").name, "logreg")
    assert verifier.score(COLORFUL, [PLAIN], np.array([0.96]))[0] > 0  # it would serve it
    cfg = {
        "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-up-123456"}},
        "models": {"cheap": {"provider": "mock", "price": {"input": 1, "output": 2}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
        "cache": {"path": str(tmp_path / "cache.db"),
                  "semantic": {"enabled": True, "verifier": str(tmp_path / "v.json"), "threshold": 0.0}},
    }
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = Gateway.from_config(path)
    try:
        with run_in_thread(gw.app()) as server:
            before = httpx.get(mock.url + "/mock/requests?limit=500").json()["data"]
            for i, (a, b, _) in enumerate(SERVED_TWINS):
                # A client key (scope) per twin: at threshold 0 any cached question would do otherwise.
                c = openai.OpenAI(base_url=server.url + "/v1", api_key=f"sk-client-twin-{i}", max_retries=0,
                                  timeout=10)
                assert ask(c, a) == "miss"
                assert ask(c, b) == "miss"  # served a's answer before the veto
            assert ask(c, SERVED_TWINS[-1][0].lower()) == "hit"  # a rewording is still served
            after = httpx.get(mock.url + "/mock/requests?limit=500").json()["data"]
            assert len(after) - len(before) == 2 * len(SERVED_TWINS)
    finally:
        gw.close()


def test_a_contrast_and_a_cause_are_opposite_only_in_the_same_sentence() -> None:
    """"but" / "because" veto a twin (the same sentence but for that word), never a paraphrase that
    says the same with the clauses turned around."""
    from thrifty.cache.vetoes import vetoes

    assert "opposite" in vetoes(POSTERS, POSTERS.replace(", but the", ", because the"))
    assert vetoes("I have a job interview tomorrow but I'm nervous. What should I do?",
                  "I'm nervous because I have a job interview tomorrow. What should I do?") == []
