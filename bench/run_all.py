"""Run the benchmarks, each with the command its section of docs/benchmarks.md names.

    .venv/bin/python bench/run_all.py            # the quick ones (minutes each on 2 cores)
    .venv/bin/python bench/run_all.py --all      # also the slow ones (cache calibration, soak: hours)
    .venv/bin/python bench/run_all.py --only tokenizers,overhead
    .venv/bin/python bench/run_all.py --list

Each benchmark writes its own section (bench/mdreport.py markers), so a run replaces only the
sections of the benchmarks it ran. They run one after another, never together: every figure is a
ratio against a baseline measured in the same command, and two benchmarks sharing the 2 cores
would distort each other's timings. The first failure stops the run with its exit code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, arguments after the interpreter, slow): the commands recorded in docs/benchmarks.md.
BENCHES: list[tuple[str, list[str], bool]] = [
    ("tokenizers", ["bench/token_counting.py", "--prompts", "300", "--write"], False),
    ("overhead", ["bench/overhead.py", "--requests", "3000", "--rounds", "25", "--write"], False),
    ("ledger_ids", ["bench/ledger_ids.py", "--rows", "30000", "--preload", "300000", "--rounds", "3",
                    "--write"], False),
    ("router-predict", ["bench/router_predict.py", "--write"], False),
    ("batching", ["bench/batching.py", "--items", "200", "--write"], False),
    ("routing-stream-latency", ["bench/routing_stream_latency.py", "--write"], False),
    ("eval-frontier", ["bench/eval_frontier.py"], False),
    ("routing-cv", ["bench/routing_cv.py"], False),
    ("routing-mix", ["bench/routing_mix.py", "--write"], False),
    ("trim-cache", ["bench/trim_cache.py", "--write"], False),
    ("cache-lookup", ["bench/cache_lookup.py", "--entries", "100000", "--lookups", "2000",
                      "--ann-compare", "20000", "--write"], False),
    # Minutes the first time (it fits a verifier on the QQP pairs, then kept in .thrifty-cache/bench).
    ("cache-adversarial", ["bench/cache_adversarial.py", "--write"], False),
    ("cache-lookup-minilm", ["bench/cache_lookup.py", "--embedder", "minilm", "--entries", "20000",
                             "--lookups", "1000", "--write"], True),
    ("cache-eval-lexical", ["bench/cache_eval.py", "--embedders", "lexical", "--folds", "5", "--write"], True),
    ("cache-eval-minilm", ["bench/cache_eval.py", "--embedders", "minilm", "--folds", "5", "--write"], True),
    ("soak", ["bench/soak.py", "--write"], True),
]


def selected(only: str | None, include_slow: bool) -> list[tuple[str, list[str], bool]]:
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        known = {name for name, _, _ in BENCHES}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"run_all: unknown benchmark {', '.join(unknown)} (see --list)")
        return [b for b in BENCHES if b[0] in names]
    return [b for b in BENCHES if include_slow or not b[2]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also the slow benchmarks")
    ap.add_argument("--only", help="comma-separated names (see --list)")
    ap.add_argument("--list", action="store_true", help="print the benchmarks and their commands")
    args = ap.parse_args()
    if args.list:
        for name, argv, slow in BENCHES:
            print(f"{name:24} {'slow ' if slow else '     '}python {' '.join(argv)}")
        return 0
    for name, argv, _ in selected(args.only, args.all):
        print(f"== {name}: python {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, *argv], cwd=ROOT)
        print(f"== {name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
