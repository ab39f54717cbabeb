"""``thrifty outcomes collect``: a model's answer is its own (its configured ``fallbacks`` never
answer for it) and a failed call is asked again by the next run, only that call, the line then
replaced in OUT atomically (never a half-written OUT, also under Ctrl-C and SIGTERM).

Each test has its own mock upstream: ``fail_first`` counts calls per model for the mock's life,
which is how a transient failure (a bad minute of a provider) is played."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fixtures.cli_run import interrupted_run, run_main
from thrifty.evaluation.dataset import load_outcomes
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

ANIMALS = ["whale", "bat", "dolphin", "horse", "mole", "otter", "seal", "lynx"]
STRONG = {"answers": [{"pattern": "which option", "answer": "The answer is (B)."},
                      {"pattern": "Explain", "answer": "Full explanation: it depends on the load."}]}
RIGHT = {"answers": [{"pattern": "which option", "answer": "B"},
                     {"pattern": "Explain", "answer": "Short summary: load matters."}]}


def mc(i: int) -> str:
    return f"Question {i}: which option is a mammal?\nA) shark\nB) {ANIMALS[i % len(ANIMALS)]}\nC) trout\nD) eel"


@pytest.fixture
def upstream(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """A mock upstream of the models the test's parameter describes (its own fault counters)."""
    with run_in_thread(create_mock(MockConfig.from_dict({"models": request.param}))) as server:
        yield server


def config(tmp_path: Path, server: RunningServer, models: dict[str, dict[str, Any]]) -> Path:
    doc = {
        "providers": {"mock": {"base_url": server.url + "/v1", "api_key": "sk-test-upstream-1234",
                               "max_retries": 1, "backoff_base_s": 0.01}},
        "models": {m: {"provider": "mock", "price": {"input": 1.0, "output": 2.0}, **extra}
                   for m, extra in models.items()},
        "baseline": "strong",
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def asked(server: RunningServer) -> list[str]:
    """The models of the chat calls the mock received, oldest first."""
    data = httpx.get(server.url + "/mock/requests").json()["data"]
    return [r["body"]["model"] for r in data if r["path"].endswith("/chat/completions")]


def write_prompts(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().split("\n") if x]


def ledger(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        return list(db.execute(sql))


def collect(capsys: pytest.CaptureFixture[str], cfg: Path, prompts: Path, out: Path,
            *extra: str) -> tuple[int, str, str]:
    return run_main(capsys, "outcomes", "collect", "--config", str(cfg), "--prompts", str(prompts),
                    "--out", str(out), "--no-progress", *extra)


DOWN = {"down": {"faults": {"status": 500, "error_message": "down for maintenance"}}, "weak": RIGHT,
        "strong": STRONG}


@pytest.mark.parametrize("upstream", [DOWN], indirect=True)
def test_a_failing_model_with_fallbacks_is_recorded_failed_and_its_fallback_never_called(
        upstream: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `down` falls back to `weak` in the config: served to a client, weak answers for it. collect
    # wants down's own answer, so down's own error is recorded and weak is never asked (it was,
    # and its answer was paid for, then recorded as down's failure).
    cfg = config(tmp_path, upstream, {"down": {"fallbacks": ["weak"]}, "weak": {}, "strong": {}})
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": i, "prompt": mc(i), "answer": "B"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    code, _, err = collect(capsys, cfg, prompts, out, "--models", "down", "--reference", "strong")
    assert code == 0, err
    assert "weak" not in asked(upstream)
    assert sorted(asked(upstream)) == sorted(["down", "down", "strong"] * 3)  # down's own retry, no fallback
    for x in lines(out):
        d = x["outcomes"]["down"]
        assert d["score"] == 0.0 and d["response"] == "" and d["cost"] == 0.0
        assert "down for maintenance" in d["error"] and "answered by" not in d["error"]
    assert ledger(tmp_path, "SELECT COUNT(*) FROM attempts WHERE model = 'weak'") == [(0,)]
    assert "warning: 3 failed calls remain in" in err


@pytest.mark.parametrize("upstream", [DOWN], indirect=True)
def test_the_fallbacks_switch_over_http(upstream: RunningServer, tmp_path: Path) -> None:
    # The switch collect uses is a request option any client may send: "thrifty": {"fallbacks": false}.
    cfg = config(tmp_path, upstream, {"down": {"fallbacks": ["weak"]}, "weak": {}, "strong": {}})
    gw = Gateway.from_config(yaml.safe_load(cfg.read_text()))
    body: dict[str, Any] = {"model": "down", "messages": [{"role": "user", "content": mc(1)}]}
    with run_in_thread(gw.app()) as server:
        url = server.url + "/v1/chat/completions"
        served = httpx.post(url, json=body, timeout=30)
        assert served.status_code == 200 and served.headers["x-thrifty-model"] == "weak"
        before = len(asked(upstream))
        own = httpx.post(url, json={**body, "thrifty": {"fallbacks": False}}, timeout=30)
        assert own.status_code == 502 and "down for maintenance" in own.json()["error"]["message"]
        assert asked(upstream)[before:] == ["down", "down"]  # its retries, then no fallback
        bad = httpx.post(url, json={**body, "thrifty": {"fallbacks": "no"}}, timeout=30)
        assert bad.status_code == 400 and "fallbacks" in bad.json()["error"]["message"]
    gw.flush()


# `flaky` fails its first 4 calls (a bad minute), then answers; `judge` grades open prompts 8/10.
FLAKY = {"flaky": {**RIGHT, "faults": {"fail_first": 4, "fail_status": 503}}, "weak": RIGHT,
         "judge": {"answer": "8"}, "strong": STRONG}


@pytest.mark.parametrize("upstream", [FLAKY], indirect=True)
def test_a_transient_failure_is_asked_again_by_the_next_run_and_nothing_else(
        upstream: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, upstream, {"flaky": {}, "weak": {}, "judge": {}, "strong": {}})
    # One at a time, so flaky's 4 failures (a call and its retry, twice) hit the first two prompts:
    # an open one (judged against the reference) and one with an answer (exact).
    rows: list[dict[str, Any]] = [{"prompt": "Explain caching."}, {"id": 9, "prompt": mc(9), "answer": "B"}]
    rows += [{"id": f"q{i}", "prompt": mc(i)} for i in range(4)]
    prompts = write_prompts(tmp_path / "p.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ("--models", "flaky,weak", "--reference", "strong", "--judge-model", "judge", "--concurrency", "1")
    code, stdout, err = collect(capsys, cfg, prompts, out, *args)
    assert code == 0, err
    first = lines(out)
    failed = [x for x in first if "error" in x["outcomes"]["flaky"]]
    assert [x.get("id") for x in failed] == [None, 9]
    assert all(x["outcomes"]["flaky"]["score"] == 0.0 for x in failed)
    assert "flaky: mean score" in stdout and "2 failed" in stdout
    assert "warning: 2 failed calls remain in" in err and "run the same command again to retry them" in err
    calls_before = len(asked(upstream))
    requests_before = ledger(tmp_path, "SELECT COUNT(*) FROM requests")[0][0]

    # --no-retry-failed keeps them: nothing called, the count said.
    code, stdout, err = collect(capsys, cfg, prompts, out, *args, "--no-retry-failed")
    assert code == 0 and "nothing to do" in stdout and len(asked(upstream)) == calls_before
    assert "2 failed calls remain" in err and "--no-retry-failed" in err

    # A plain re-run asks only the failed calls again; the other answers, the reference and
    # their grades are kept, not paid for again.
    code, stdout, err = collect(capsys, cfg, prompts, out, *args)
    assert code == 0, err
    assert "resuming: 6 of 6 prompts already in" in err and "2 failed calls of 2 lines asked again" in err
    assert stdout.startswith("estimate: 0 prompts and 2 failed calls to retry, 2 calls ")
    assert "+ 1 judge calls" in stdout.splitlines()[0]  # only flaky's new answer to the open prompt
    assert "retried 2 failed calls: 2 answered, 0 failed again" in stdout
    assert "failed calls remain" not in err
    assert asked(upstream)[calls_before:] == ["flaky", "judge", "flaky"]  # weak is not judged again
    second = lines(out)
    assert len(second) == len(first)
    for old, new in zip(first, second, strict=True):
        if old not in failed:
            assert new == old  # untouched
            continue
        assert {k: v for k, v in new.items() if k != "outcomes"} == {k: v for k, v in old.items() if k != "outcomes"}
        assert new["outcomes"]["weak"] == old["outcomes"]["weak"]
        assert new["outcomes"]["strong"] == old["outcomes"]["strong"]
        got = new["outcomes"]["flaky"]
        assert "error" not in got and got["response"] and got["cost"] > 0
        assert got["score"] == (0.8 if new["grader"] == "judge" else 1.0)  # graded as the line says
    # Spend counted once: the ledger holds each call once, and OUT's costs are the billed ones.
    assert ledger(tmp_path, "SELECT COUNT(*) FROM requests")[0][0] == requests_before + 3
    (billed,), = ledger(tmp_path, "SELECT SUM(cost_usd) FROM requests WHERE requested_model = 'flaky'")
    assert billed == pytest.approx(sum(x["outcomes"]["flaky"]["cost"] for x in second))

    # Complete now: nothing to do, nothing called; the data loads.
    code, stdout, err = collect(capsys, cfg, prompts, out, *args)
    assert code == 0 and "nothing to do" in stdout and "failed calls remain" not in err
    assert len(asked(upstream)) == calls_before + 3
    assert len(load_outcomes(out)) == 6


SLOW = {"slowfix": {**RIGHT, "faults": {"fail_first": 8, "fail_status": 503, "latency_ms": 150}},
        "strong": STRONG}


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("upstream", [SLOW], indirect=True)
def test_an_interrupted_retry_leaves_out_whole(upstream: RunningServer, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], signum: int,
                                               exit_code: int) -> None:
    cfg = yaml.safe_load(config(tmp_path, upstream, {"slowfix": {}, "strong": {}}).read_text())
    cfg["providers"]["mock"]["max_retries"] = 0
    (tmp_path / "thrifty.yaml").write_text(yaml.safe_dump(cfg))
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": i, "prompt": mc(i), "answer": "B"} for i in range(8)])
    out = tmp_path / "out.jsonl"
    args = ["outcomes", "collect", "--config", str(tmp_path / "thrifty.yaml"), "--prompts", str(prompts),
            "--out", str(out), "--models", "slowfix", "--reference", "strong", "--concurrency", "1",
            "--no-progress"]
    code, _, err = run_main(capsys, *args)
    assert code == 0, err
    before = lines(out)
    assert all("error" in x["outcomes"]["slowfix"] for x in before)
    seen = len(asked(upstream))

    # Interrupted once a few retries are done (each takes 150 ms, one at a time).
    code, err = interrupted_run(args, signum, lambda: len(asked(upstream)) >= seen + 3, 30.0)
    assert code == exit_code, err
    assert "Traceback" not in err and err.startswith("resuming: 8 of 8 prompts already in "), err
    last = err.strip().split("\n")[-1]
    assert last.startswith("thrifty: interrupted; 8 of 8 prompts done, ") and err.strip().count("\n") == 1, err
    assert "of 8 failed calls asked again, kept in" in last and "run the same command again" in last
    after = lines(out)  # every line whole and JSON: never a half-written OUT
    assert out.read_text().endswith("\n")
    assert [x["id"] for x in after] == [x["id"] for x in before]
    redone = [x for x in after if "error" not in x["outcomes"]["slowfix"]]
    assert 2 <= len(redone) < 8  # the retries done before the signal were kept...
    was = {x["id"]: x for x in before}
    for x in after:
        assert x["outcomes"]["strong"] == was[x["id"]]["outcomes"]["strong"]
        assert (x in redone and x["outcomes"]["slowfix"]["score"] == 1.0) or x == was[x["id"]]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl")) == []  # no temporary left

    # ...and the next run asks only the ones still failed.
    seen = len(asked(upstream))
    code, _, err = run_main(capsys, *args)
    assert code == 0, err
    assert asked(upstream)[seen:] == ["slowfix"] * (8 - len(redone))
    assert all(x["outcomes"]["slowfix"]["score"] == 1.0 for x in lines(out))


def test_a_rewrite_cut_short_leaves_out_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A second Ctrl-C lands while the new OUT is written: the old OUT stays, byte for byte, and
    # the half-written copy is removed.
    from thrifty.evaluation import collect_file as collect_mod

    out = tmp_path / "out.jsonl"
    text = "".join(json.dumps({"id": i, "prompt": "p", "outcomes": {"m": {"score": 0.0, "error": "x"}}}) + "\r\n"
                   for i in range(3))
    out.write_bytes(text.encode())

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_mod.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect_mod.rewrite(out, {2: {"id": 1, "prompt": "p", "outcomes": {"m": {"score": 1.0}}}})
    assert out.read_bytes() == text.encode()
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    monkeypatch.undo()
    # Done: only that line changes; the others keep their bytes (CRLF included).
    collect_mod.rewrite(out, {2: {"id": 1, "prompt": "p", "outcomes": {"m": {"score": 1.0}}}})
    rows = out.read_bytes().decode().split("\n")
    assert rows[0] + "\n" == text.split("\n")[0] + "\n" and rows[2] + "\n" == text.split("\n")[2] + "\n"
    assert json.loads(rows[1])["outcomes"]["m"] == {"score": 1.0}
