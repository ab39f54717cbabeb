"""Bad input to `batch`, `cache`, `init`, `config check`, `report` and `compress`: a one-line
error naming the flag (or config key), exit 2, checked before any work (or paid call) starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.cli_run import assert_one_line, run_main

# Nothing listens on port 9: a call fails at once (connection refused), and no retries are made.
DEAD_UPSTREAM = ("providers: {p: {base_url: 'http://127.0.0.1:9/v1', max_retries: 0}}\n"
                 "models: {m: {provider: p, price: {input: 1.0, output: 1.0}}}\n"
                 "routing: {default_route: general, routes: {general: {model: m}}}\n")




@pytest.fixture
def batch_setup(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(DEAD_UPSTREAM + f"ledger: {{path: {tmp_path / 'ledger.db'}}}\n")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"i{n}", "input": f"text {n}"}) + "\n" for n in range(3)))
    return cfg, items


# ---------------------------------------------------------------- batch


@pytest.mark.parametrize("where", ["nodir/o.jsonl", "/proc/thrifty-nowhere/o.jsonl", "DIR"])
def test_batch_run_refuses_an_unwritable_out_before_any_call(
        where: str, batch_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, items = batch_setup
    out = str(tmp_path) if where == "DIR" else str(tmp_path / where) if not where.startswith("/") else where
    code, _, err = run_main(capsys, "batch", "run", str(items), "--task", "t", "--model", "m", "--out", out,
                            "--config", str(cfg), "--no-progress")
    assert_one_line(code, err, "--out")
    # Refused before the gateway was built: no ledger was even opened.
    assert not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize("flag,value", [("--concurrency", "-2"), ("--concurrency", "0"), ("--pack", "0"),
                                        ("--pack", "-1"), ("--poll-interval", "nan"), ("--poll-interval", "-1")])
def test_batch_run_refuses_out_of_range_flags(flag: str, value: str, batch_setup: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg, items = batch_setup
    code, _, err = run_main(capsys, "batch", "run", str(items), "--task", "t", "--model", "m", flag, value,
                            "--config", str(cfg), "--no-progress")
    assert_one_line(code, err, flag, value)


@pytest.mark.parametrize("flag,value,listed", [("--model", "nope", "unknown model 'nope' (this config has: m)"),
                                               ("--route", "nope", "unknown route 'nope' (this config has: general)"),
                                               ("--model", "route:nope", "unknown route 'nope'")])
def test_batch_run_refuses_an_unknown_model_or_route(flag: str, value: str, listed: str,
                                                     batch_setup: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg, items = batch_setup
    code, out, err = run_main(capsys, "batch", "run", str(items), "--task", "t", flag, value,
                              "--config", str(cfg), "--no-progress")
    assert_one_line(code, err, flag, listed)
    assert out == ""  # no item lines: nothing was run


def test_run_batch_refuses_concurrency_below_one(batch_setup: tuple[Path, Path]) -> None:
    import asyncio

    from thrifty.batching import run_batch
    from thrifty.errors import UsageError
    from thrifty.gateway import Gateway

    gw = Gateway.from_config(batch_setup[0])
    try:
        for bad in (0, -2):
            with pytest.raises(UsageError, match="--concurrency"):
                asyncio.run(run_batch(gw, ["a"], task="t", model="m", concurrency=bad))
    finally:
        gw.close()


def test_batch_run_exits_non_zero_when_every_item_failed(batch_setup: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg, items = batch_setup
    out = tmp_path / "out.jsonl"
    code, _, err = run_main(capsys, "batch", "run", str(items), "--task", "t", "--model", "m", "--out", str(out),
                            "--config", str(cfg), "--no-progress")
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("thrifty: all 3 items failed; first error:"), err
    # The lines are still written: every item's error can be read there.
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["status"] for x in lines] == ["failed"] * 3 and all(x["error"] for x in lines)


def test_batch_results_refuses_an_unwritable_out(batch_setup: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = batch_setup
    code, _, err = run_main(capsys, "batch", "results", "bj_x", "--out", str(tmp_path / "nodir" / "o.jsonl"),
                            "--config", str(cfg))
    assert_one_line(code, err, "--out", "does not exist")


# ---------------------------------------------------------------- cache


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    p = tmp_path / "pairs.jsonl"
    rows = [{"text_a": f"how do I reset password {i}", "text_b": f"reset my password {i}", "label": i % 2}
            for i in range(12)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("flag,value", [("--folds", "0"), ("--folds", "1"), ("--margin", "nan"),
                                        ("--margin", "0"), ("--margin", "500"), ("--top-k", "0"),
                                        ("--max-false-hit-rate", "nan"), ("--max-false-hit-rate", "1"),
                                        ("--model", "bogus"), ("--out", "nodir/v.json")])
def test_cache_calibrate_refuses_bad_flags(flag: str, value: str, pairs: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    if flag == "--out":
        value = str(tmp_path / value)
    code, _, err = run_main(capsys, "cache", "calibrate", "--pairs", str(pairs), "--embedder", "lexical",
                            "--out", str(tmp_path / "v.json"), flag, value)
    assert_one_line(code, err, flag)
    assert "calibrate: caching" not in err  # refused before any work started


@pytest.mark.parametrize("flag,value", [("--max-false-hit-rate", "nan"), ("--max-false-hit-rate", "0"),
                                        ("--top-k", "0"), ("--model", "bogus"), ("--decisions", "nodir/d.jsonl"),
                                        ("--decisions", "DIR")])
def test_cache_eval_refuses_bad_flags(flag: str, value: str, pairs: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    if flag == "--decisions":
        value = str(tmp_path) if value == "DIR" else str(tmp_path / value)
    code, _, err = run_main(capsys, "cache", "eval", "--pairs", str(pairs), "--calibrate-on", str(pairs),
                            "--embedder", "lexical", flag, value)
    assert_one_line(code, err, flag)


def test_cache_eval_of_one_pair_prints_strict_json_and_na(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text('{"text_a": "x", "text_b": "y", "label": 1}\n')
    code, out, _ = run_main(capsys, "cache", "eval", "--pairs", str(one), "--embedder", "lexical", "--json")
    assert code == 0
    assert "NaN" not in out
    rep = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert rep["operating_point"]["false_hit_rate"] is None
    code, out, _ = run_main(capsys, "cache", "eval", "--pairs", str(one), "--embedder", "lexical")
    assert code == 0 and "false-hit rate n/a" in out and "nan" not in out


def test_cache_clear_older_than_names_its_own_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(DEAD_UPSTREAM + "cache: {path: cache.db}\n")
    code, _, err = run_main(capsys, "cache", "clear", "--older-than", "bogus", "--config", str(cfg))
    assert_one_line(code, err, "--older-than", "'bogus'")
    assert "--since" not in err


# ---------------------------------------------------------------- report


def test_report_until_names_its_own_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(DEAD_UPSTREAM)
    code, _, err = run_main(capsys, "report", "--config", str(cfg), "--until", "2020-13-45")
    assert_one_line(code, err, "--until", "2020-13-45")
    assert "--since" not in err
    code, _, err = run_main(capsys, "report", "--config", str(cfg), "--since", "bogus")
    assert_one_line(code, err, "--since", "bogus")


# ---------------------------------------------------------------- init


def test_init_refuses_an_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "init", "--out", str(tmp_path / "nodir" / "t.yaml"))
    assert_one_line(code, err, "--out", "does not exist")
    code, _, err = run_main(capsys, "init", "--out", str(tmp_path), "--force")
    assert_one_line(code, err, "--out", "folder")


@pytest.mark.parametrize("url", ['http://x/v1"\nevil: 1', "http://x/v1 evil", "http:///v1", "http://h:99999/v1",
                                 "ftp://x/v1", "http://x/v1'"])
def test_init_refuses_an_upstream_url_that_would_break_the_yaml(url: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.yaml"
    code, _, err = run_main(capsys, "init", "--upstream-url", url, "--out", str(out))
    assert_one_line(code, err, "--upstream-url")
    assert not out.exists()


def test_init_url_is_written_as_given_and_checks_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.yaml"
    code, _, _ = run_main(capsys, "init", "--upstream-url", "https://u:p@api.example.com:8443/v1/?a=1&b=%20",
                          "--out", str(out))
    assert code == 0
    code, out_text, err = run_main(capsys, "config", "check", str(out))
    assert code == 0 and "ok" in out_text, err


# ---------------------------------------------------------------- config check


@pytest.mark.parametrize("extra,needle", [
    ("routing: {default_route: general, routes: {general: {model: nope}}}\n", "nope"),
    ("compression: {enabled: true, model: nope, routes: {'*': {compaction: true}}}\n", "compression.model"),
    ("routing: {default_route: general, classify: {rules: [{regex: ['(['], task: general}]}, "
     "routes: {general: {model: m}}}\n", "routing.classify.rules.0.regex"),
    ("cache: {path: cache.db, semantic: {enabled: true, verifier: missing.json}}\n", "missing.json"),
])
def test_config_check_refuses_what_serve_refuses(extra: str, needle: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\n"
                   "models: {m: {provider: p, price: {input: 1.0, output: 1.0}}}\nledger: {path: ledger.db}\n" + extra)
    code, _, err = run_main(capsys, "config", "check", str(cfg))
    assert_one_line(code, err, needle)


@pytest.mark.parametrize(("extra", "needle"), [
    ("ledger: {dsn: 'postgresql://u:Pa55SECRET@127.0.0.1:1/x'}\n", "ledger.dsn: cannot connect"),
    ("redis_url: 'redis://:Pa55SECRET@127.0.0.1:1/0'\n", "redis_url: cannot reach Redis at redis://:[REDACTED]@"),
])
def test_config_check_refuses_an_unreachable_database(extra: str, needle: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # PostgreSQL and Redis are connected lazily by the gateway; the check connects once.
    pytest.importorskip("psycopg")
    pytest.importorskip("redis")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\n"
                   "models: {m: {provider: p, price: {input: 1.0, output: 1.0}}}\n" + extra)
    code, _, err = run_main(capsys, "config", "check", str(cfg))
    assert_one_line(code, err, needle)
    assert "Pa55SECRET" not in err


def test_config_check_leaves_no_databases_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {base_url: 'http://127.0.0.1:9/v1'}}\n"
                   "models: {m: {provider: p, price: {input: 1.0, output: 1.0}}}\nledger: {path: ledger.db}\n"
                   "cache: {path: cache.db}\ncompression: {routes: {'*': {compaction: true}}, store: {path: comp.db}}\n")
    code, out, err = run_main(capsys, "config", "check", str(cfg))
    assert code == 0 and "ok" in out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


# ---------------------------------------------------------------- compress


@pytest.fixture
def compress_store(tmp_path: Path) -> Path:
    from thrifty.compress.store import SQLiteDocStore

    cfg = tmp_path / "c.yaml"
    cfg.write_text(DEAD_UPSTREAM + "compression: {store: {path: comp.db}}\n")
    store = SQLiteDocStore(str(tmp_path / "comp.db"))
    store.put("prompt", "abcdef0123456789", {
        "hash": "abcdef0123456789", "original": "You are a helpful assistant.", "original_tokens": 6,
        "versions": [{"version": 1, "text": "Be helpful.", "tokens": 3, "status": "validated", "reason": "",
                      "model": None, "cost_usd": None, "created": 0.0}]})
    store.close()
    return cfg


@pytest.mark.parametrize("args,needles", [
    (["approve", "abc", "--version", "0"], ["--version", "0"]),
    (["approve", "abc", "--version", "1", "--text-file", "T"], ["--version", "--text-file"]),
    (["approve", "abc", "--text-file", "BIN"], ["--text-file", "UTF-8"]),
    (["approve", "abc", "--text-file", "EMPTY"], ["--text-file", "empty"]),
    (["approve", "abc", "--text-file", "DIR"], ["--text-file", "cannot read"]),
    (["purge", ""], ["HASH", "empty"]),
])
def test_compress_refuses_bad_input(args: list[str], needles: list[str], compress_store: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "t.txt").write_text("Be kind.")
    files = {"BIN": str(tmp_path / "bin.txt"), "EMPTY": str(tmp_path / "empty.txt"), "T": str(tmp_path / "t.txt"),
             "DIR": str(tmp_path)}
    code, _, err = run_main(capsys, "compress", *[files.get(a, a) for a in args], "--config", str(compress_store))
    assert_one_line(code, err, *needles)
    # Nothing was changed or forgotten.
    code, out, _ = run_main(capsys, "compress", "show", "--config", str(compress_store))
    assert code == 0 and "abcdef012345" in out and "1 version(s), latest validated" in out
