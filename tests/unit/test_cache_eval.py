"""`thrifty cache eval` and `thrifty cache calibrate` on a slice of the QQP dev pairs.

The label-shuffle test is the proof that lookups never read labels: the same pairs with their
labels permuted must give exactly the same decisions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures.cache_verifiers import gateway_repeat
from thrifty.cli.main import build_app


def slice_pairs(data_dir: Path, start: int, n: int) -> list[dict[str, object]]:
    lines = (data_dir / "qqp" / "pairs_dev.jsonl").read_text(encoding="utf-8").splitlines()[start:start + n]
    return [json.loads(line) for line in lines]


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(*args: str) -> str:
    """The command's stdout (progress goes to stderr, so --json stays parseable)."""
    result = CliRunner().invoke(build_app(), ["cache", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def decisions(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def pairs(data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    rows = slice_pairs(data_dir, 0, 300)
    shuffled_labels = [r["label"] for r in rows]
    random.Random(1).shuffle(shuffled_labels)
    assert shuffled_labels != [r["label"] for r in rows]
    shuffled = [{**r, "label": lab} for r, lab in zip(rows, shuffled_labels, strict=True)]
    return write(tmp_path / "pairs.jsonl", rows), write(tmp_path / "shuffled.jsonl", shuffled)


def test_decisions_do_not_depend_on_labels(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    real, shuffled = pairs
    run("eval", "--pairs", str(real), "--embedder", "lexical", "--decisions", str(tmp_path / "a.jsonl"))
    run("eval", "--pairs", str(shuffled), "--embedder", "lexical", "--decisions", str(tmp_path / "b.jsonl"))
    a, b = decisions(tmp_path / "a.jsonl"), decisions(tmp_path / "b.jsonl")
    assert a == b
    assert [d["index"] for d in a] == list(range(300))
    assert {type(d["hit"]) for d in a} == {bool}


def test_calibrated_eval_decisions_do_not_depend_on_judged_labels(
        pairs: tuple[Path, Path], data_dir: Path, tmp_path: Path) -> None:
    real, shuffled = pairs
    train = write(tmp_path / "train.jsonl", slice_pairs(data_dir, 1000, 600))
    out_a = run("eval", "--pairs", str(real), "--calibrate-on", str(train), "--model", "logreg",
                "--embedder", "lexical", "--decisions", str(tmp_path / "a.jsonl"), "--json")
    run("eval", "--pairs", str(shuffled), "--calibrate-on", str(train), "--model", "logreg",
        "--embedder", "lexical", "--decisions", str(tmp_path / "b.jsonl"))
    assert decisions(tmp_path / "a.jsonl") == decisions(tmp_path / "b.jsonl")
    rep = json.loads(out_a)  # parses: the progress lines went to stderr
    op = rep["operating_point"]
    assert 0 <= op["false_hit_rate"] <= 1 and 0 <= op["duplicate_hit_rate"] <= 1
    assert rep["calibration"]["threshold"] == op["threshold"]
    assert rep["latency"]["lookup_p99_ms"] >= rep["latency"]["lookup_p50_ms"] > 0
    hits = sum(d["hit"] for d in decisions(tmp_path / "a.jsonl"))
    assert hits == round(op["hit_rate"] * 300)


def test_calibrate_writes_a_verifier_that_eval_and_the_gateway_load(data_dir: Path, tmp_path: Path) -> None:
    """With no embedder named anywhere: calibrate uses "auto" (MiniLM when the embeddings extra is
    installed) and eval and the gateway embed with the one the verifier file records."""
    from thrifty.embeddings.base import sentence_extra_installed

    train = write(tmp_path / "train.jsonl", slice_pairs(data_dir, 2000, 600))
    out = tmp_path / "verifier.json"
    summary = json.loads(run("calibrate", "--pairs", str(train), "--max-false-hit-rate", "0.05", "--out", str(out),
                             "--model", "auto", "--folds", "3", "--json"))
    assert out.exists() and len(summary["cv_folds"]) == 3
    # auto cross-validated the scorers and kept the one serving the most duplicates at the target.
    assert summary["cv_folds"][0]["model"] in ("lgbm+density", "lgbm", "cosine")
    saved = json.loads(out.read_text())
    # A learned verifier carries its difference-word model; the similarity alone needs none.
    assert ("words" in saved) == (saved["model"]["kind"] == "lgbm")
    assert saved["features"][-1] == "cosine"
    judged = write(tmp_path / "judged.jsonl", slice_pairs(data_dir, 4000, 100))
    text = run("eval", "--pairs", str(judged), "--verifier", str(out))
    assert f"threshold {summary['threshold']:.4f}" in text
    from thrifty.gateway import Gateway

    gw = Gateway.from_config({
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}}, "models": {"m": {"provider": "p"}},
        "ledger": {"enabled": False},
        "cache": {"path": str(tmp_path / "c.db"), "semantic": {"enabled": True, "verifier": str(out)}},
    })
    assert gw.cache_stage is not None and gw.cache_stage.verifier(str(out)).threshold == summary["threshold"]
    assert summary["embedder"] == saved["embedder"] == ("sentence:all-MiniLM-L6-v2" if sentence_extra_installed()
                                                        else "lexical-v1-d1024-w2-c3-5x0.5")
    assert gw.cache_stage.semantic is not None and gw.cache_stage.semantic.embedder.name == saved["embedder"]
    gw.close()


def test_bad_pairs_file_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_a": "x"}\n')
    result = CliRunner().invoke(build_app(), ["cache", "eval", "--pairs", str(bad)])
    assert result.exit_code != 0
    assert "bad.jsonl:1" in str(result.exception) or "bad.jsonl:1" in result.output


def test_a_hit_is_text_a_verified_for_text_b() -> None:
    from thrifty.cache.evaluation import decide_all, decision_rows, rates
    from thrifty.cache.pairs import Pair
    from thrifty.cache.verifier import RuleVerifier
    from thrifty.embeddings import build_embedder

    pairs = [Pair("How do I learn Python quickly?", "How can I learn Python quickly?", 1),
             Pair("What is the capital of France?", "How do I learn Python quickly?", 0),
             Pair("Why is the sky blue?", "Why is the ocean salty?", 0)]
    verifier = RuleVerifier(threshold=0.5)
    lookups, _ = decide_all(pairs, build_embedder("lexical"), verifier)
    rows = decision_rows(pairs, lookups, verifier.threshold)
    # Pair 1: its own text_a is the nearest cached question and clears the threshold.
    assert rows[0] == {"index": 0, "hit": True, "served": True}
    # Pair 2: text_b is identical to pair 1's cached text_a, so that entry is served (a right answer),
    # but its own text_a is not verified: the label of this pair does not judge that answer: no hit.
    assert rows[1] == {"index": 1, "hit": False, "served": True}
    assert lookups[1].served_text == pairs[0].text_a
    r = rates(pairs, lookups, verifier.threshold)
    assert (r["duplicate_hit_rate"], r["served_other_entry"], r["served_other_entry_identical_text"]) == (1.0, 1, 1)
    assert r["false_hit_rate"] == (0.5 if rows[2]["hit"] else 0.0)


def test_calibrate_reports_progress_on_stderr_and_json_on_stdout(data_dir: Path, tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", slice_pairs(data_dir, 6000, 200))
    result = CliRunner().invoke(build_app(), ["cache", "calibrate", "--pairs", str(train), "--model", "logreg",
                                              "--folds", "2", "--out", str(tmp_path / "v.json"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["threshold"] is not None
    lines = [line for line in result.stderr.splitlines() if line.startswith("calibrate: ")]
    stages = [line for line in lines if not line.startswith("calibrate: note: ")]
    assert len(stages) == 3 and "2-fold cross-validation of the logreg verifier" in stages[1]
    # 200 pairs hold too few non-duplicates to show 0.5% with 90% confidence: said once.
    notes = [line for line in lines if line.startswith("calibrate: note: ")]
    assert len(notes) == 1 and "cannot show a false-hit rate of 0.500%" in notes[0], result.stderr


async def test_density_verifier_from_calibrate_runs_in_eval_and_in_the_gateway(
        pairs: tuple[Path, Path], data_dir: Path, tmp_path: Path) -> None:
    from thrifty.cache.density import DENSITY_NAMES

    train = write(tmp_path / "train.jsonl", slice_pairs(data_dir, 3000, 600))
    out = tmp_path / "dense.json"
    summary = json.loads(run("calibrate", "--pairs", str(train), "--max-false-hit-rate", "0.05", "--out", str(out),
                             "--model", "lgbm+density", "--folds", "3", "--embedder", "lexical", "--json"))
    saved = json.loads(out.read_text())
    assert saved["density"] is True and saved["features"][-len(DENSITY_NAMES) - 2:-2] == DENSITY_NAMES
    assert {f["model"] for f in summary["cv_folds"]} == {"lgbm+density"}
    real, shuffled = pairs
    # No --embedder: eval embeds with the one the verifier file names (lexical here).
    run("eval", "--pairs", str(real), "--verifier", str(out), "--decisions", str(tmp_path / "a.jsonl"))
    run("eval", "--pairs", str(shuffled), "--verifier", str(out), "--decisions", str(tmp_path / "b.jsonl"))
    assert decisions(tmp_path / "a.jsonl") == decisions(tmp_path / "b.jsonl")

    # Threshold 0 serves any scored candidate: the density verifier scored the neighbour in the gateway.
    assert await gateway_repeat(out, tmp_path) == (("miss", "hit"), 1)


def test_calibration_is_the_same_in_every_process(data_dir: Path, tmp_path: Path) -> None:
    """Python salts string hashes per process, so anything summed in set order could move a tree
    split; two processes with different hash seeds must write the same verifier."""
    import os
    import subprocess
    import sys

    train = write(tmp_path / "train.jsonl", slice_pairs(data_dir, 8000, 500))
    docs = []
    for seed in ("1", "2"):
        out = tmp_path / f"v{seed}.json"
        subprocess.run([sys.executable, "-m", "thrifty.cli.main", "cache", "calibrate", "--pairs", str(train),
                        "--embedder", "lexical", "--model", "lgbm", "--folds", "3", "--max-false-hit-rate", "0.05",
                        "--out", str(out)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        doc = json.loads(out.read_text())
        doc["info"].pop("created")
        docs.append(doc)
    assert docs[0] == docs[1]
