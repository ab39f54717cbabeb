"""Packed batch runs resume: an interrupted run (cancelled, Ctrl-C, a provider outage) keeps what
finished, and running it again calls the mock upstream only for the rest, with the output
complete, in input order, and each finished item paid (in the ledger) once."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fixtures.cli_run import assert_one_line, interrupted_run, run_main
from thrifty.batching.checkpoint import Checkpoint, run_id_for
from thrifty.batching.items import coerce_items
from thrifty.batching.runner import run_batch
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread

RULES = [{"pattern": "love", "answer": "positive"}, {"pattern": ".", "answer": "negative"}]
LABELS = ["positive", "negative"]
TASK = "Classify the sentiment."
ITEMS = [{"id": i if i % 2 else f"r{i}", "input": ("I love it" if i % 3 else "it broke") + f" #{i}"}
         for i in range(40)]
EXPECTED = {str(it["id"]): "positive" if int(str(it["id"]).lstrip("r")) % 3 else "negative" for it in ITEMS}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    cfg = {"models": {"good": {"answers": RULES}, "slow": {"answers": RULES, "faults": {"latency_ms": 60}}}}
    with run_in_thread(create_mock(MockConfig.from_dict(cfg))) as server:
        yield server


def config(mock: RunningServer, tmp: Path, outage: bool = False) -> dict[str, Any]:
    provider: dict[str, Any] = {"base_url": mock.url + "/v1", "api_key": "sk-test-upstream-1234", "max_retries": 0}
    if outage:  # the provider fails a third of the calls (chosen by call number), 503s not retried
        provider["headers"] = {"x-mock-behaviour": "error_rate=0.35; fail_status=503"}
    return {
        "providers": {"mock": provider},
        "models": {name: {"provider": "mock", "price": {"input": 1.0, "output": 4.0}} for name in ("good", "slow")},
        "ledger": {"path": str(tmp / "ledger.db")},
    }


def write(tmp: Path, cfg: dict[str, Any]) -> Path:
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def reset(mock: RunningServer) -> None:
    httpx.post(mock.url + "/mock/reset").raise_for_status()


def sent_inputs(mock: RunningServer) -> list[str]:
    """The item inputs of every request the mock received since the last reset."""
    rows = httpx.get(mock.url + "/mock/requests").json()["data"]
    inputs: list[str] = []
    for row in rows:
        user = row["body"]["messages"][-1]["content"]
        try:
            inputs += [x["input"] for x in json.loads(user)["items"]]  # a packed call
        except ValueError:
            inputs.append(user)  # a single call
    return inputs


def ledger_rows(tmp: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp / "ledger.db") as db:
        return [(str(s), int(n)) for s, n in db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status")]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_a_cancelled_run_resumes_with_only_the_missing_items(mock: RunningServer, tmp_path: Path) -> None:
    reset(mock)
    items = coerce_items(ITEMS)
    run_id = run_id_for("slow", TASK, LABELS, items)
    gw = Gateway.from_config(config(mock, tmp_path))
    cp = Checkpoint.open(tmp_path / "progress.partial", run_id, interval_s=0)
    task = asyncio.create_task(run_batch(gw, ITEMS, task=TASK, model="slow", pack=4, labels=LABELS,
                                         concurrency=1, checkpoint=cp))
    while cp.kept < 12:  # three packs of four are done and on disk
        assert not task.done()
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cp.close()
    await gw.aclose()

    reset(mock)
    gw = Gateway.from_config(config(mock, tmp_path))
    cp = Checkpoint.open(tmp_path / "progress.partial", run_id)
    kept = set(cp.finished)
    assert len(kept) % 4 == 0 and 12 <= len(kept) < len(ITEMS)
    results = await run_batch(gw, ITEMS, task=TASK, model="slow", pack=4, labels=LABELS, checkpoint=cp)
    cp.close()
    await gw.aclose()

    # Only the unfinished items were sent again, each once, in packs of four.
    missing = [it["input"] for it in ITEMS if str(it["id"]) not in kept]
    assert sorted(sent_inputs(mock)) == sorted(missing)
    assert [r.id for r in results] == [str(it["id"]) for it in ITEMS]
    assert {r.id: r.output for r in results} == EXPECTED and all(r.status == "ok" for r in results)
    # Each pack was paid once: ten ok requests over both runs (the pack in flight at the cancel
    # is recorded as an error row, its items ran again).
    assert dict(ledger_rows(tmp_path)).get("ok") == len(ITEMS) / 4


@pytest.mark.parametrize("to_file", [True, False])
def test_an_outage_mid_run_is_retried_for_the_failed_items_only(
        to_file: bool, mock: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(it) + "\n" for it in ITEMS[:20]))
    out = tmp_path / "out.jsonl"
    args = ["batch", "run", str(items_file), "--task", TASK, "--model", "good", "--pack", "1",
            "--labels", "positive,negative", "--no-progress", *(["--out", str(out)] if to_file else [])]

    def run(*extra: str) -> tuple[int, list[dict[str, Any]], str]:
        code, stdout, err = run_main(capsys, *args, *extra)
        return code, lines(out) if to_file else [json.loads(x) for x in stdout.splitlines()], err

    reset(mock)
    cfg = write(tmp_path, config(mock, tmp_path, outage=True))
    code, first, err = run("--config", str(cfg))
    failed = [x["id"] for x in first if x["status"] == "failed"]
    assert code == 0, err
    assert 0 < len(failed) < 20 and "run the same command again to retry only them" in err
    assert [x["id"] for x in first] == [it["id"] for it in ITEMS[:20]]  # complete, in order
    partial = [p.name for p in tmp_path.glob("*.partial")]
    assert partial == ["out.jsonl.partial"] if to_file else (
        len(partial) == 1 and partial[0].startswith("items.jsonl.") and partial[0] != "items.jsonl.partial")

    reset(mock)
    cfg = write(tmp_path, config(mock, tmp_path))  # the provider is back
    code, second, err = run("--config", str(cfg))
    assert code == 0, err
    assert "resuming: " in err
    by_id = {str(it["id"]): it["input"] for it in ITEMS}
    assert sorted(sent_inputs(mock)) == sorted(by_id[str(i)] for i in failed)
    assert [x["id"] for x in second] == [it["id"] for it in ITEMS[:20]]
    assert all(x["status"] == "ok" and x["output"] == EXPECTED[str(x["id"])] for x in second)
    ok_first = {str(x["id"]): x for x in first if x["status"] == "ok"}
    assert all(x == ok_first[str(x["id"])] for x in second if str(x["id"]) in ok_first)  # kept as they were
    assert not list(tmp_path.glob("*.partial"))  # complete: the progress file is gone
    assert not list(tmp_path.glob(".*.tmp"))  # OUT was written through a renamed temporary file
    assert dict(ledger_rows(tmp_path)).get("ok") == 20  # one paid answer per item over both runs

    # A complete run leaves nothing to resume: the same command runs everything again.
    reset(mock)
    code, _, _ = run("--config", str(cfg))
    assert code == 0 and len(sent_inputs(mock)) == 20


def test_restart_drops_the_kept_progress(mock: RunningServer, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(it) + "\n" for it in ITEMS[:10]))
    out = tmp_path / "out.jsonl"
    args = ["batch", "run", str(items_file), "--task", TASK, "--model", "good", "--pack", "1",
            "--out", str(out), "--no-progress"]
    reset(mock)
    code, _, err = run_main(capsys, *args, "--config", str(write(tmp_path, config(mock, tmp_path, outage=True))))
    assert code == 0 and (tmp_path / "out.jsonl.partial").exists(), err

    reset(mock)
    code, _, err = run_main(capsys, *args, "--restart", "--config", str(write(tmp_path, config(mock, tmp_path))))
    assert code == 0, err
    assert "progress dropped (--restart)" in err and len(sent_inputs(mock)) == 10
    assert [x["status"] for x in lines(out)] == ["ok"] * 10


def test_another_runs_progress_is_not_used(mock: RunningServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(it) + "\n" for it in ITEMS[:20]))
    out = tmp_path / "out.jsonl"
    cfg = write(tmp_path, config(mock, tmp_path, outage=True))
    base = ["batch", "run", str(items_file), "--model", "good", "--pack", "1", "--out", str(out), "--no-progress",
            "--config", str(cfg)]
    reset(mock)
    code, _, _ = run_main(capsys, *base, "--task", TASK)
    kept = (tmp_path / "out.jsonl.partial").read_text().count("\n") - 1
    assert code == 0 and kept > 0

    write(tmp_path, config(mock, tmp_path))
    reset(mock)
    code, _, err = run_main(capsys, *base, "--task", "Another task.")  # other work, same --out
    assert code == 0, err
    assert "held another run's progress" in err and len(sent_inputs(mock)) == 20


def test_restart_is_refused_with_deferred(mock: RunningServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    items_file = tmp_path / "items.jsonl"
    items_file.write_text(json.dumps(ITEMS[0]) + "\n")
    code, _, err = run_main(capsys, "batch", "run", str(items_file), "--task", TASK, "--model", "good",
                            "--deferred", "--restart", "--config", str(write(tmp_path, config(mock, tmp_path))))
    assert_one_line(code, err, "--restart", "--deferred")


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_leaves_a_resumable_run_and_one_line(mock: RunningServer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], signum: int,
                                                           exit_code: int) -> None:
    """A real SIGINT (Ctrl-C) or SIGTERM (`kill`) to a real `thrifty batch run` process; the second
    run is in-process."""
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(it) + "\n" for it in ITEMS[:24]))
    out = tmp_path / "out.jsonl"
    cfg = write(tmp_path, config(mock, tmp_path))
    args = ["batch", "run", str(items_file), "--task", TASK, "--model", "slow", "--pack", "2", "--concurrency", "1",
            "--labels", "positive,negative", "--out", str(out), "--no-progress", "--config", str(cfg)]
    reset(mock)
    code, err = interrupted_run(args, signum, lambda: len(sent_inputs(mock)) >= 10)
    assert code == exit_code, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert err.startswith("thrifty: interrupted; ") and "run the same command again to resume" in err
    assert not out.exists()  # no half output: OUT appears only complete
    partial = tmp_path / "out.jsonl.partial"
    done = partial.read_text().count("\n") - 1
    assert f"{done} of 24 items done" in err and 8 <= done < 24

    reset(mock)
    code, _, err = run_main(capsys, *args)
    assert code == 0, err
    assert len(sent_inputs(mock)) == 24 - done
    result = lines(out)
    assert [x["id"] for x in result] == [it["id"] for it in ITEMS[:24]]
    assert all(x["status"] == "ok" and x["output"] == EXPECTED[str(x["id"])] for x in result)
    assert not partial.exists()
    assert dict(ledger_rows(tmp_path)).get("ok") == 12  # twelve packs, each paid once
