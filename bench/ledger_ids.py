"""The SQLite ledger's write cost with random request ids (the baseline) vs time-ordered ones.

    .venv/bin/python bench/ledger_ids.py --write

Both schemes write the same rows (one request and one attempt each, in transactions of 64 as the
ledger writer's batches under load) through ``thrifty.ledger.store`` into a fresh WAL-mode SQLite
file, first empty and then after a preload of ``--preload`` rows, so the cost of a grown ledger
shows. The figure is CPU and wall time per request row, the median of ``--rounds`` interleaved
rounds; the rows are built before the clock starts, so only the store's work is timed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdreport import write_section  # noqa: E402
from thrifty.ledger.records import AttemptRow, RequestRow  # noqa: E402
from thrifty.ledger.store import SQLStore, open_store  # noqa: E402
from thrifty.pipeline.context import new_request_id  # noqa: E402

_rng = random.Random(7)


def random_id() -> str:
    """The id scheme before time-ordering: 96 random bits."""
    return f"req_{_rng.getrandbits(96):024x}"


SCHEMES: dict[str, Callable[[], str]] = {"random ids (before)": random_id, "time-ordered ids": new_request_id}


def rows(make_id: Callable[[], str], k: int) -> tuple[list[RequestRow], list[AttemptRow]]:
    reqs, atts = [], []
    for _ in range(k):
        rid, ts = make_id(), time.time()
        reqs.append(RequestRow(rid, ts, "key_1", "default", "faq", "auto", "auto", "cheap", "t0", "route",
                               812, 0, 64, 0, 0.00012, 0.0081, None, 0.0, 0, 0.0, 1, 0, 412.0, "ok",
                               None, None, False, False))
        atts.append(AttemptRow(rid, 0, ts, "cheap", "openai", "t0", "answer", 812, 0, 64, 0, 0.00012,
                               "catalog", 410.0, "ok", None, None, None, True, False))
    return reqs, atts


def one_round(make_id: Callable[[], str], n: int, preload: int, folder: str) -> tuple[float, float]:
    store: SQLStore = open_store(str(Path(tempfile.mkdtemp(dir=folder)) / "ledger.db"))
    for _ in range(preload // 1000):
        store.write(*rows(make_id, 1000))
    batches = [rows(make_id, 64) for _ in range(n // 64)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for reqs, atts in batches:
        store.write(reqs, atts)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    store.close()
    written = len(batches) * 64
    return cpu / written * 1e6, wall / written * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=30000, help="request rows timed per round")
    ap.add_argument("--preload", type=int, default=300000, help="rows already in the grown ledger")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = ap.parse_args()
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for preload in (0, args.preload):
                for name, make_id in SCHEMES.items():  # interleaved: noise hits both alike
                    results.setdefault((name, preload), []).append(one_round(make_id, args.rows, preload, folder))
    lines = ["| ids | rows already in the ledger | CPU us/row | wall us/row | CPU vs random ids |", "|---|---|---|---|---|"]
    for preload in (0, args.preload):
        base = statistics.median(c for c, _ in results[("random ids (before)", preload)])
        for name in SCHEMES:
            cpu = statistics.median(c for c, _ in results[(name, preload)])
            wall = statistics.median(w for _, w in results[(name, preload)])
            lines.append(f"| {name} | {preload:,} | {cpu:.1f} | {wall:.1f} | {cpu / base:.2f} |")
    body = "\n".join(lines) + (
        f"\n\nMedians of {args.rounds} interleaved rounds of {args.rows:,} rows (a request and its attempt each), "
        "written 64 per transaction through `SQLStore.write` into a WAL-mode file. The request id is both "
        "tables' primary key: random ids insert at random places of the indexes, time-ordered ones append.\n")
    print(body)
    if args.write:
        write_section("ledger_ids", "Ledger writes: time-ordered vs random request ids",
                      f".venv/bin/python bench/ledger_ids.py --rows {args.rows} --preload {args.preload} "
                      f"--rounds {args.rounds} --write", body)


if __name__ == "__main__":
    main()
