"""Cache lookup latency: exact (SQLite) and semantic (lexical embedder + ANN + verifier) at 100k entries.

    .venv/bin/python bench/cache_lookup.py --write                  # 100k entries, writes docs/benchmarks.md
    .venv/bin/python bench/cache_lookup.py --entries 20000 --ann-compare 20000
    .venv/bin/python bench/cache_lookup.py --embedder minilm --entries 20000 --write   # semantic only

Exact: the gateway's lookup (`CacheStage.lookup`: SQLite primary-key read + checksum + decode)
against a file holding N entries. Semantic: `SemanticCache.lookup` (query embedding, nearest
neighbours, verifier over the top 10, the default top_k; by default both the plain and the
gated neighbourhood verifier) against one namespace of N questions. Every figure is wall
time per lookup on this machine; CPU time per lookup is shown too because a loaded machine
inflates wall-clock tails. The baseline in the same run is exact numpy search at the same N.
With ``--embedder minilm`` the verifiers are calibrated with the token-alignment columns, so each
lookup also runs the query and the candidates the verifier scores through the model (on the
cache's worker thread, as in the gateway); that run writes its own section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdreport import write_section  # noqa: E402
from thrifty.cache.alignment import ALIGN_NAMES  # noqa: E402
from thrifty.cache.backends.base import EntryMeta  # noqa: E402
from thrifty.cache.backends.memory import MemoryBackend  # noqa: E402
from thrifty.cache.backends.sqlite import SQLiteBackend  # noqa: E402
from thrifty.cache.calibrate import MODELS, calibrate  # noqa: E402
from thrifty.cache.config import DEFAULT_TOP_K, CacheConfig  # noqa: E402
from thrifty.cache.entry import CacheEntry  # noqa: E402
from thrifty.cache.index import VectorIndex, make_ann  # noqa: E402
from thrifty.cache.pairs import Pair, embed_all  # noqa: E402
from thrifty.cache.semantic import SemanticCache  # noqa: E402
from thrifty.cache.stage import CacheStage  # noqa: E402
from thrifty.catalog import Catalog  # noqa: E402
from thrifty.embeddings import build_embedder  # noqa: E402


def data_dir() -> Path:
    return Path(os.environ.get("THRIFTY_DATA_DIR") or ROOT.parent / "shared" / "data")


def load_pairs() -> list[dict[str, Any]]:
    path = data_dir() / "qqp" / "pairs_dev.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def questions(n: int, rng: random.Random) -> list[str]:
    """n distinct question texts: the QQP texts, then reworded variants of them."""
    base = list(dict.fromkeys(t for p in load_pairs() for t in (p["text_a"], p["text_b"])))
    out = list(base[:n])
    seen = set(out)
    while len(out) < n:
        words = rng.choice(base).split()
        rng.shuffle(words)
        text = " ".join(words[: max(3, len(words) - 1)]) + " " + rng.choice(base).split()[0]
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


async def bench_exact(n: int, lookups: int, rng: random.Random) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        backend = SQLiteBackend(os.path.join(tmp, "cache.db"), max_entries=10 * n)
        stage = CacheStage(CacheConfig(), backend, Catalog([]))
        now = time.time()
        keys = [f"{i:064x}" for i in range(n)]
        for start in range(0, n, 5000):
            items = []
            for k in keys[start:start + 5000]:
                entry = CacheEntry(key=k, scope="s", tenant="t", model="m", served_model="m",
                                   response={"id": "x", "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                       "role": "assistant", "content": "word " * 120}}]},
                                   usage={"prompt_tokens": 100, "completion_tokens": 120}, cost_usd=1e-4,
                                   baseline_cost_usd=1e-3, created=now, expires=now + 86400)
                items.append((EntryMeta(k, "t", "m", now, now + 86400), entry.encode()))
            backend.put_many_sync(items)
        hit_ms, miss_ms = [], []
        for i in range(lookups):
            key = keys[rng.randrange(n)]
            t0 = time.perf_counter()
            entry = await stage.lookup(key, "t")
            hit_ms.append((time.perf_counter() - t0) * 1000)
            assert entry is not None
            t0 = time.perf_counter()
            await stage.lookup(f"{n + i:064x}", "t")
            miss_ms.append((time.perf_counter() - t0) * 1000)
        backend.close()
    return {"hit_p50": pct(hit_ms, 50), "hit_p99": pct(hit_ms, 99), "miss_p50": pct(miss_ms, 50),
            "miss_p99": pct(miss_ms, 99)}


async def bench_semantic(n: int, lookups: int, ann: str, rng: random.Random, models: list[str],
                         embedder_spec: str = "lexical") -> dict[str, Any]:
    embedder = build_embedder(embedder_spec)
    texts = questions(n, rng)
    t0 = time.perf_counter()
    vecs = embed_all(embedder, texts, batch=2000)
    embed_s = time.perf_counter() - t0
    pairs = load_pairs()
    cal_pairs = [Pair(p["text_a"], p["text_b"], int(p["label"])) for p in pairs[:3000]]
    verifiers = {m: calibrate(cal_pairs, embedder, folds=3, model=m).verifier for m in models}
    sem = SemanticCache(MemoryBackend(), embedder, top_k=DEFAULT_TOP_K, ann=ann, ann_min_entries=10**12)
    slot = await sem.slot("bench")
    far = time.time() + 86400
    slot.index.add([f"k{i}" for i in range(n)], texts, vecs, [far] * n)
    queries = [p["text_b"] for p in rng.sample(pairs, lookups)]

    async def run(count: int, verifier: Any, cold: bool = True) -> tuple[list[float], list[float]]:
        # A run starts with a cold token memo (MiniLM alignment path), so a later run does not
        # reuse the forward passes of an earlier one over the same queries; the warm run does.
        if cold:
            sem._tokens.clear()
        wall, cpu = [], []
        for q in queries[:count]:
            t0, c0 = time.perf_counter(), time.thread_time()
            await sem.lookup("bench", q, verifier, verifier.threshold)
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
        return wall, cpu

    exact_wall, exact_cpu = await run(min(200, lookups), verifiers[models[0]])
    t0 = time.perf_counter()
    built = slot.index.build_ann_now()
    build_s = time.perf_counter() - t0
    rows = []
    for m, verifier in verifiers.items():
        wall, cpu = await run(lookups, verifier) if built else ([], [])
        rows.append({"verifier": m, "p50": pct(wall, 50) if wall else None, "p99": pct(wall, 99) if wall else None,
                     "cpu_p50": pct(cpu, 50) if cpu else None, "cpu_p99": pct(cpu, 99) if cpu else None})
    align_cols = len(ALIGN_NAMES) if getattr(verifiers[models[0]], "align_idf", None) is not None else 0
    if align_cols and built:
        # Steady state in the gateway: candidates are recent entries whose token vectors the memo
        # kept when they were looked up; the query's own forward pass remains.
        m = models[-1]
        await run(lookups, verifiers[m])
        wall, cpu = await run(lookups, verifiers[m], cold=False)
        rows.append({"verifier": f"{m}, warm token memo", "p50": pct(wall, 50), "p99": pct(wall, 99),
                     "cpu_p50": pct(cpu, 50), "cpu_p99": pct(cpu, 99)})
    return {"n": n, "dim": embedder.dim, "embedder": embedder.name, "baseline_verifier": models[0], "embed_s": embed_s,
            "align_cols": align_cols,
            "ann_build_s": build_s, "ann": built, "exact_p50": pct(exact_wall, 50), "exact_p99": pct(exact_wall, 99),
            "exact_cpu_p50": pct(exact_cpu, 50), "rows": rows}


def ann_compare(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Build time, latency and recall@5 (vs exact search) of each installed ANN library."""
    embedder = build_embedder("lexical")
    texts = questions(n, rng)
    vecs = embed_all(embedder, texts, batch=2000)
    qs = embedder.embed([p["text_b"] for p in rng.sample(load_pairs(), 300)])
    exact = VectorIndex(embedder.dim, ann="none")
    exact.add([str(i) for i in range(n)], texts, vecs, [0.0] * n)
    truth = [set(exact.search(q, 5)[0].tolist()) for q in qs]
    rows = []
    for kind in ("faiss", "hnswlib"):
        ann = make_ann(kind, embedder.dim, n)
        if ann is None:
            continue
        t0 = time.perf_counter()
        ann.add(vecs, 0)
        build = time.perf_counter() - t0
        lat, rec = [], []
        for q, t in zip(qs, truth, strict=True):
            t0 = time.perf_counter()
            ids, _ = ann.search(q, 5)
            lat.append((time.perf_counter() - t0) * 1000)
            rec.append(len(set(ids.tolist()) & t) / max(1, len(t)))
        rows.append({"library": kind, "build_s": build, "p50": pct(lat, 50), "p99": pct(lat, 99),
                     "recall5": float(np.mean(rec))})
    return rows


def render(ex: dict[str, float] | None, sem: dict[str, Any], cmp_rows: list[dict[str, Any]], n: int) -> str:
    lines: list[str] = []
    if ex is not None:
        ok_exact = ex["hit_p99"] < 1.0
        lines += [
            f"Exact cache, SQLite file with {n:,} entries (~0.9 KB each), `CacheStage.lookup` (read + checksum + "
            "decode):",
            "",
            "| lookup | p50 ms | p99 ms |", "| --- | ---: | ---: |",
            f"| hit | {ex['hit_p50']:.3f} | {ex['hit_p99']:.3f} |",
            f"| miss | {ex['miss_p50']:.3f} | {ex['miss_p99']:.3f} |",
            "",
            f"Target exact p99 < 1 ms: **{'met' if ok_exact else 'not met'}** ({ex['hit_p99']:.3f} ms).",
            "",
        ]
    lines += [
        f"Semantic cache, one namespace of {sem['n']:,} questions, embedder `{sem['embedder']}` (dim {sem['dim']}), "
        f"`SemanticCache.lookup` = embed the query + top-{DEFAULT_TOP_K} search + the calibrated verifier on the "
        f"{DEFAULT_TOP_K} candidates (for `lgbm+density`: the neighbourhood of each candidate its gate lets through)"
        + (f"; verifiers read token alignment ({sem['align_cols']} columns), so the lookup also runs the query and "
           "the candidates it scores through the model on a worker thread (memo of 4,096 texts, cold at the start "
           "of each row; the CPU columns count the calling thread only, not that forward pass)"
           if sem.get("align_cols") else "") + ":",
        "",
        "| index | verifier | p50 ms | p99 ms | CPU p50 ms | CPU p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| exact numpy (baseline, 200 lookups) | {sem['baseline_verifier']} | {sem['exact_p50']:.2f} | "
        f"{sem['exact_p99']:.2f} | {sem['exact_cpu_p50']:.2f} | - |",
    ]
    rows = [r for r in sem["rows"] if r["p50"] is not None]
    for r in rows:
        lines.append(f"| ANN (HNSW) | {r['verifier']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_p50']:.2f} | "
                     f"{r['cpu_p99']:.2f} |")
    if rows:
        ratio = sem["exact_p50"] / rows[0]["p50"] if rows[0]["p50"] else float("nan")
        lines += ["", f"ANN is {ratio:.0f}x faster than exact search at p50 ({rows[0]['verifier']}). Building the "
                  f"graph over all {sem['n']:,} vectors at once took {sem['ann_build_s']:.0f} s (in the gateway it is "
                  "built in a worker thread when a namespace passes `ann_min_entries`, then grows one insert at a "
                  f"time); embedding them took {sem['embed_s']:.0f} s."]
    for r in sem["rows"]:
        ok = r["p99"] is not None and r["p99"] < 15.0
        p99 = "n/a" if r["p99"] is None else f"{r['p99']:.2f} ms"
        lines += ["", f"Target semantic p99 < 15 ms with `{r['verifier']}`: **{'met' if ok else 'not met'}** ({p99})."]
    if cmp_rows:
        lines += ["", f"ANN libraries on {cmp_rows[0].get('n', '')}the same lexical vectors (recall@5 against exact "
                  "search, 300 QQP queries; M=16, efConstruction=100, efSearch=64):", "",
                  "| library | build s | p50 ms | p99 ms | recall@5 |", "| --- | ---: | ---: | ---: | ---: |"]
        for r in cmp_rows:
            lines.append(f"| {r['library']} | {r['build_s']:.1f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['recall5']:.3f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Machine: {os.cpu_count()} CPUs, 1-minute load average {load:.1f} at the end of the run."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--ann", default="auto", choices=["auto", "faiss", "hnswlib"])
    ap.add_argument("--ann-compare", type=int, default=0, metavar="N", help="also compare ANN libraries on N vectors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verifier-model", default="lgbm,lgbm+density",
                    help=f"comma-separated verifiers calibrated for the semantic lookups ({', '.join(MODELS[1:])})")
    ap.add_argument("--embedder", default="lexical", choices=["lexical", "minilm"],
                    help="minilm: semantic lookups only, with token-alignment verifiers (own section)")
    ap.add_argument("--write", action="store_true", help="write the results to docs/benchmarks.md")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lexical = args.embedder == "lexical"
    ex = asyncio.run(bench_exact(args.entries, args.lookups, rng)) if lexical else None
    print("exact", ex, flush=True)
    cmp_rows = ann_compare(args.ann_compare, rng) if args.ann_compare and lexical else []
    for r in cmp_rows:
        r["n"] = f"{args.ann_compare:,} of "
        print("ann", r, flush=True)
    models = args.verifier_model.split(",")
    if unknown := [m for m in models if m not in MODELS[1:]]:
        ap.error(f"unknown verifier model(s): {', '.join(unknown)}")
    sem = asyncio.run(bench_semantic(args.entries, args.lookups, args.ann, rng, models, args.embedder))
    print("semantic", sem, flush=True)
    body = render(ex, sem, cmp_rows, args.entries)
    print(body)
    if args.write:
        cmd = " ".join(["python", "bench/cache_lookup.py", *sys.argv[1:]])
        if lexical:
            write_section("cache_lookup", "Cache lookup latency (issue 5)", cmd, body)
        else:
            write_section(f"cache_lookup_{args.embedder}", f"Semantic cache lookup latency with {args.embedder} and "
                          "token alignment (issue 5)", cmd, body)


if __name__ == "__main__":
    main()
