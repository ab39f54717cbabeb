"""Packing: tokens and dollars per item at K=10 against one call per item, in one run.

    .venv/bin/python bench/batching.py [--items 200] [--write]

Short classification items (product reviews -> positive / negative / neutral) go through the
real gateway to the mock upstream over HTTP, once per item (the baseline, same task prompt)
and packed K=10 per call; also K=10 against a model that drops an item from every pack (so
the fallback cost shows), and the one-per-item work sent through the provider Batch API.
Target (issue 6): at K=10, at least 60% fewer tokens per item and zero lost items.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from mdreport import write_section  # noqa: E402
from thrifty.batching.deferred import run_deferred  # noqa: E402
from thrifty.batching.runner import ItemResult, run_batch  # noqa: E402
from thrifty.gateway import Gateway  # noqa: E402
from thrifty.mock import MockConfig, create_app, run_in_thread  # noqa: E402
from thrifty.tokens import count_text  # noqa: E402

LABELS = ["positive", "negative", "neutral"]
TASK = """You label customer reviews of an online electronics shop for the product team.

Labels:
- positive: the customer is satisfied overall (praise, recommends it, would buy again), even if a
  small complaint is mentioned.
- negative: the customer is dissatisfied overall (broken, returned, refund asked, misleading
  description, poor support), even if something is praised.
- neutral: no clear overall opinion (questions, shipping notes, mixed feelings balanced evenly,
  facts without judgement).

Rules: judge the overall opinion, not single words; sarcasm counts as negative; a review about
delivery only is neutral unless it expresses clear (dis)satisfaction with the purchase.

Examples:
"Works great, battery lasts two days." -> positive
"Stopped charging after a week, sent it back." -> negative
"Arrived on Tuesday in a brown box." -> neutral
"""
POS = ["Love this {p}, works perfectly", "Great {p}, would buy again", "Excellent {p}, highly recommend it"]
NEG = ["The {p} broke after two days, refund please", "Terrible {p}, returned it", "Awful {p}, stopped working"]
NEU = ["The {p} arrived on Monday", "Does the {p} come with a cable?", "Ordered the {p} for my brother"]
PRODUCTS = ["headphones", "charger", "keyboard", "mouse", "speaker", "webcam", "monitor", "router"]
RULES = [{"pattern": "love|great|excellent", "answer": "positive"},
         {"pattern": "broke|terrible|awful", "answer": "negative"}, {"pattern": ".", "answer": "neutral"}]


def make_items(n: int) -> tuple[list[dict[str, str]], dict[str, str]]:
    items, truth = [], {}
    for i in range(n):
        kind = i % 3
        template = (POS, NEG, NEU)[kind][(i // 3) % 3]
        text = template.format(p=PRODUCTS[i % len(PRODUCTS)]) + f" (order {1000 + i})."
        items.append({"id": f"rev-{i}", "input": text})
        truth[f"rev-{i}"] = LABELS[kind]
    return items, truth


def summary(results: list[ItemResult], truth: dict[str, str], seconds: float) -> dict[str, Any]:
    n = len(results)
    return {
        "tokens": sum(r.prompt_tokens + r.completion_tokens for r in results) / n,
        "usd": sum(r.cost_usd or 0.0 for r in results) / n,
        "lost": sum(1 for r in results if r.status != "ok"),
        "wrong": sum(1 for r in results if r.status == "ok" and r.output != truth[r.id]),
        "seconds": seconds,
    }


async def measure(n: int) -> dict[str, dict[str, Any]]:
    items, truth = make_items(n)
    mock_cfg = MockConfig.from_dict({"models": {"flash": {"answers": RULES},
                                                "flash-dropper": {"answers": RULES, "faults": {"pack_drop": 1}}}})
    out: dict[str, dict[str, Any]] = {}
    with run_in_thread(create_app(mock_cfg)) as mock, tempfile.TemporaryDirectory() as tmp:
        price = {"input": 0.07, "output": 0.25}  # deepseek-v4-flash list price, USD per million tokens
        gw = Gateway.from_config({
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-bench-0000"}},
            "models": {"flash": {"provider": "mock", "price": price},
                       "flash-dropper": {"provider": "mock", "price": price}},
            "ledger": {"path": str(Path(tmp) / "ledger.db")},
            "batching": {"deferred": {"poll_interval_s": 0.05}},
        })
        runs: list[tuple[str, str, int]] = [("one call per item", "flash", 1), ("packed K=10", "flash", 10),
                                             ("packed K=10, model drops 1 item per pack", "flash-dropper", 10)]
        for name, model, k in runs:
            t0 = time.perf_counter()
            res = await run_batch(gw, items, task=TASK, model=model, pack=k, labels=LABELS, concurrency=8)
            out[name] = summary(res, truth, time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, res = await run_deferred(gw, items, task=TASK, model="flash", labels=LABELS, interval=0.05)
        out["one per item, provider Batch API"] = summary(res, truth, time.perf_counter() - t0)
        await gw.aclose()
    return out


def render(rows: dict[str, dict[str, Any]], n: int) -> str:
    base = rows["one call per item"]
    lines = [f"{n} short classification items (3 labels, a {count_text(TASK)}-token task prompt), mock upstream over HTTP, "
             "priced at $0.07 / $0.25 per million input / output tokens.", "",
             "| run | tokens / item | vs one per item | $ / item | vs one per item | lost items | wrong labels |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['tokens']:.1f} | {100 * (1 - r['tokens'] / base['tokens']):.0f}% fewer | "
            f"${r['usd'] * 1e6:.2f}e-6 | {100 * (1 - r['usd'] / base['usd']):.0f}% cheaper | {r['lost']} | {r['wrong']} |"
        )
    k10 = rows["packed K=10"]
    cut = 100 * (1 - k10["tokens"] / base["tokens"])
    verdict = "met" if cut >= 60 and k10["lost"] == 0 else "NOT met"
    lines += ["", f"Target (>= 60% fewer tokens per item at K=10, zero lost items): **{verdict}** "
              f"({cut:.0f}% fewer, {k10['lost']} lost). The Batch API row counts the same tokens as one call per "
              "item and costs half (batch price)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="write the docs/benchmarks.md section")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.items))
    body = render(rows, args.items)
    print(body)
    if args.write:
        cmd = f".venv/bin/python bench/batching.py --items {args.items} --write"
        write_section("batching", "Packing items into one call (issue 6)", cmd, body)


if __name__ == "__main__":
    main()
