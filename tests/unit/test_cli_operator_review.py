"""An operator's pass over the CLI as docs/cli.md documents it: flags that were ignored or
misread without a word, Ctrl-C answered with silence, a ``--json`` whose keys changed with the
case. Each test runs ``thrifty`` as a user does (``main``, or its own process)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.fixtures.cli_run import assert_one_line, run_main
from tests.fixtures.processes import thrifty_cmd

# No call reaches it: every command below is refused, or answers, before any model is called.
UNUSED_UPSTREAM = "http://127.0.0.1:9/v1"


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The tour's starter config (`thrifty init`), its ledger in tmp_path."""
    path = tmp_path / "thrifty.yaml"
    code, _, err = run_main(capsys, "init", "--upstream-url", UNUSED_UPSTREAM, "--out", str(path))
    assert code == 0, err
    return path


# ------------------------------------------------------------------ keys create --routes


@pytest.mark.parametrize("routes", [",", "", " , "])
def test_keys_create_refuses_routes_naming_nothing(config: Path, capsys: pytest.CaptureFixture[str],
                                                    routes: str) -> None:
    # It made a key allowed on every model: the opposite of restricting it.
    code, out, err = run_main(capsys, "keys", "create", "--config", str(config), "--name", "ci", "--routes", routes)
    assert_one_line(code, err, "--routes", repr(routes))
    assert out == ""
    code, out, _ = run_main(capsys, "keys", "list", "--config", str(config), "--json")
    assert code == 0 and json.loads(out) == []


def test_keys_create_with_routes_still_restricts(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "keys", "create", "--config", str(config), "--name", "ci",
                              "--routes", "auto, premium", "--json")
    assert code == 0, err
    assert json.loads(out)["routes"] == ["auto", "premium"]


# ------------------------------------------------------------------ batch: flags of --deferred


def test_batch_run_refuses_deferred_flags_without_deferred(config: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # A packed run ignored them: `--no-wait` blocked until every item was answered and paid for.
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": 1, "input": "a"}\n', encoding="utf-8")
    base = ["batch", "run", str(items), "--task", "t", "--config", str(config)]
    code, out, err = run_main(capsys, *base, "--no-wait")
    assert_one_line(code, err, "--no-wait", "--deferred")
    code, out, err = run_main(capsys, *base, "--poll-interval", "2")
    assert_one_line(code, err, "--poll-interval", "--deferred")
    code, out, err = run_main(capsys, *base, "--no-wait", "--poll-interval", "2")
    assert_one_line(code, err, "--no-wait and --poll-interval")
    assert out == "" and not list(tmp_path.glob("*.partial"))


def test_batch_results_refuses_poll_interval_without_wait(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "batch", "results", "bj_x", "--poll-interval", "2", "--config", str(config))
    assert_one_line(code, err, "--poll-interval", "--wait")


# ------------------------------------------------------------------ estimate


def test_estimate_refuses_volume_flags_beside_a_workloads_file(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # The file's volumes were used and the flags dropped without a word.
    wl = tmp_path / "w.yaml"
    wl.write_text("- {name: chat, requests_per_month: 1000, output_tokens: 200}\n", encoding="utf-8")
    code, out, err = run_main(capsys, "estimate", "--workloads", str(wl), "-n", "5", "--output-tokens", "3")
    assert_one_line(code, err, "--workloads", "--requests-per-month", "--output-tokens")
    assert out == ""
    code, _, err = run_main(capsys, "estimate", "--workloads", str(wl), "--input-tokens", "50")
    assert_one_line(code, err, "--input-tokens")
    code, out, err = run_main(capsys, "estimate", "--workloads", str(wl), "-m", "gpt-4o", "--json")
    assert code == 0, err
    assert [r["workload"] for r in json.loads(out)["rows"]] == ["chat"]


def test_estimate_refuses_models_naming_nothing(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Without a config it said "none of the models has a known price"; with one, an empty table.
    code, _, err = run_main(capsys, "estimate", "-n", "5", "--output-tokens", "3", "-m", ",")
    assert_one_line(code, err, "--models", "no model")
    code, out, err = run_main(capsys, "estimate", "-n", "5", "--output-tokens", "3", "-m", " , ",
                              "--config", str(config), "--json")
    assert_one_line(code, err, "--models", "no model")
    assert out == ""


# ------------------------------------------------------------------ eval --no-fit --train


def test_eval_refuses_train_with_no_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --train was ignored: --data judged as if the policy had been fitted on --train.
    code, _, err = run_main(capsys, "eval", "--data", str(tmp_path / "d.jsonl"), "--train",
                            str(tmp_path / "t.jsonl"), "--no-fit")
    assert_one_line(code, err, "--train", "--no-fit")


# ------------------------------------------------------------------ calibrate: whose baseline


def _outcomes(path: Path) -> Path:
    lines = [{"prompt": f"q{i}", "outcomes": {m: {"score": 1.0, "response": "a", "cost": c}
                                               for m, c in (("small", 0.001), ("big", 0.01))}}
             for i in range(6)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def test_calibrate_names_where_a_missing_baseline_came_from(config: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # It said "--baseline 'gpt-4o'" to a user who never passed --baseline.
    data, out = _outcomes(tmp_path / "o.jsonl"), tmp_path / "cal.yaml"
    code, _, err = run_main(capsys, "calibrate", "--data", str(data), "--out", str(out), "--config", str(config))
    assert_one_line(code, err, f"the baseline of {config} 'gpt-4o' is not in the data", "pass --baseline")
    assert "--baseline 'gpt-4o'" not in err
    code, _, err = run_main(capsys, "calibrate", "--data", str(data), "--out", str(out))
    assert_one_line(code, err, "the default baseline 'gpt-4-1106-preview'", "pass --baseline")
    code, _, err = run_main(capsys, "calibrate", "--data", str(data), "--out", str(out), "--baseline", "nope")
    assert_one_line(code, err, "--baseline 'nope' is not in the data")
    # A --baseline the user typed is still named as the flag.
    code, _, err = run_main(capsys, "calibrate", "--data", str(data), "--out", str(out), "--config", str(config),
                            "--baseline", "big")
    assert_one_line(code, err, "--baseline 'big' is not one of the models of")
    assert not out.exists()


# ------------------------------------------------------------------ route explain --json


def test_route_explain_json_has_the_same_keys_in_every_case(tmp_path: Path, config: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # The default-model and named-model answers lacked max_cost_usd, models, how, description
    # and classifier: a script reading them failed on exactly the configs without routes.
    routed = tmp_path / "routed.yaml"
    routed.write_text(config.read_text(encoding="utf-8") + "\nrouting:\n  default_route: general\n  routes:\n"
                      "    general:\n      tiers: [{model: deepseek-v4-flash, threshold: 0.7}, {model: gpt-4o}]\n"
                      "      max_cost_usd: 0.5\n", encoding="utf-8")
    answers = []
    for cfg, model in ((config, "auto"), (config, "gpt-4o"), (routed, "auto")):
        code, out, err = run_main(capsys, "route", "explain", "Hi", "--config", str(cfg), "--model", model, "--json")
        assert code == 0, err
        answers.append(json.loads(out))
    keys = [list(a) for a in answers]
    assert keys[0] == keys[1] == keys[2], keys
    default, named, via_route = answers
    assert default["models"] == ["deepseek-v4-flash"] and default["max_cost_usd"] is None
    assert named["models"] == ["gpt-4o"] and named["classifier"] is None
    assert via_route["route"] == "general" and via_route["max_cost_usd"] == 0.5 and via_route["classifier"] is None
    # The text rendering is unchanged by the null fields.
    code, out, _ = run_main(capsys, "route", "explain", "Hi", "--config", str(config))
    assert code == 0 and out.splitlines()[0] == "route:  -  (default model)" and "budget:" not in out


# ------------------------------------------------------------------ Ctrl-C


@pytest.mark.parametrize("args", [["config", "check", "{fifo}"], ["estimate", "--workloads", "{fifo}"],
                                  ["report", "--config", "{fifo}"]])
def test_ctrl_c_says_interrupted_in_one_line(tmp_path: Path, args: list[str]) -> None:
    # typer turned Ctrl-C into exit 130 with nothing said. The command is held reading a FIFO
    # (a file that never ends) until the Ctrl-C, so the signal meets it mid-run, every time.
    fifo = tmp_path / "held.yaml"
    os.mkfifo(fifo)
    argv = [a.format(fifo=fifo) for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "thrifty.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    writer = -1
    try:
        writer = os.open(fifo, os.O_WRONLY)  # returns once the command has opened it for reading
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if writer >= 0:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err == "thrifty: interrupted\n" and out == ""


def test_mock_upstream_stops_on_ctrl_c_with_exit_0() -> None:
    # Ctrl-C is how it is stopped ("Ctrl-C to stop"), as serve and replay-upstream are: exit 0,
    # where it exited 130 (and, with the line above, would have said "interrupted").
    proc = subprocess.Popen(thrifty_cmd("mock-upstream", "--port", "0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/v1", first)
        assert match, first
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{match.group(1)}/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "interrupted" not in rest and "Traceback" not in rest


# ------------------------------------------------------------------ files that are not UTF-8 text


def test_a_file_that_is_not_utf8_is_one_line_naming_it(config: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # A config saved as UTF-16 (or any binary file) gave a UnicodeDecodeError traceback.
    odd = tmp_path / "utf16.yaml"
    odd.write_text("models: {}\n", encoding="utf-16")
    for args in (["config", "check", str(odd)], ["report", "--config", str(odd)],
                 ["estimate", "--workloads", str(odd)],
                 ["ledger", "import-spill", "--config", str(config), "--file", str(odd)]):
        code, _, err = run_main(capsys, *args)
        err = "\n".join(line for line in err.splitlines() if not line.startswith("warning: "))
        assert_one_line(code, err, f"{odd} is not UTF-8 text")


# ------------------------------------------------------------------ eval --json keeps its progress bar


def test_eval_json_keeps_the_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # `eval --json > result.json` ran for minutes without a sign of life: --json turned the
    # progress bar (stderr, terminals only) off as --quiet does. The replay itself is not the
    # point here, so it stops at the options the command built.
    from thrifty.errors import ThriftyError
    from thrifty.evaluation import session

    seen: list[bool] = []

    def options_only(data: str, **kwargs: object) -> None:
        seen.append(kwargs["options"].progress)  # type: ignore[attr-defined]
        raise ThriftyError("stop")

    monkeypatch.setattr(session, "run_eval", options_only)
    for extra in (["--json"], [], ["--json", "-q"]):
        code, _, _ = run_main(capsys, "eval", "--data", str(tmp_path / "d.jsonl"), *extra)
        assert code == 2
    assert seen == [True, True, False]


# ------------------------------------------------------------------ cache eval: calibration flags


@pytest.mark.parametrize(("flag", "value"), [("--max-false-hit-rate", "0.01"), ("--model", "logreg"),
                                             ("--confidence", "0.5")])
def test_cache_eval_refuses_calibration_flags_without_calibrate_on(flag: str, value: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # They were ignored: the report, at the verifier's own threshold, read as meeting the target.
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"text_a": "How old is Rome?", "text_b": "What is the age of Rome?", "label": 1}\n',
                     encoding="utf-8")
    code, out, err = run_main(capsys, "cache", "eval", "--pairs", str(pairs), "--embedder", "lexical", flag, value)
    assert_one_line(code, err, flag, "--calibrate-on")
    assert out == ""
    code, out, err = run_main(capsys, "cache", "eval", "--pairs", str(pairs), "--embedder", "lexical", "--json")
    assert code == 0, err
    assert json.loads(out)["pairs"] == 1


# ------------------------------------------------------------------ replay-upstream --port 0


def test_replay_upstream_port_0_names_the_port_it_listens_on(tmp_path: Path) -> None:
    # Its start-up line said http://127.0.0.1:0/v1: nobody could tell where it listened.
    from openai import OpenAI

    data = _outcomes(tmp_path / "o.jsonl")
    proc = subprocess.Popen(thrifty_cmd("replay-upstream", "--data", str(data), "--port", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/v1", first)
        assert match and match.group(1) != "0", first
        url = f"http://127.0.0.1:{match.group(1)}/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url.removesuffix("/v1") + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, first
                time.sleep(0.1)
        client = OpenAI(base_url=url, api_key="unused")
        reply = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "q1"}])
        assert reply.choices[0].message.content == "a"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


@pytest.mark.parametrize("flags", [["--no-fit", "--folds", "3"], ["--no-fit", "--seed", "4"],
                                   ["--train", "TRAIN", "--folds", "3"], ["--train", "TRAIN", "--seed", "1"]])
def test_eval_refuses_cross_validation_flags_where_there_is_none(
        flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --folds / --seed shape the cross-validation on --data; with --train or --no-fit there is
    # none, and they were ignored without a word.
    from fixtures.routing_data import synthetic, write_jsonl

    data = write_jsonl(synthetic(n=20), tmp_path / "d.jsonl")
    args = [str(data) if f == "TRAIN" else f for f in flags]
    code, _, err = run_main(capsys, "eval", "--data", str(data), "--baseline", "big", *args)
    assert_one_line(code, err, "there is no cross-validation with")
