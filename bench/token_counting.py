"""Offline token counting: tiktoken's cl100k (the baseline) against quicktok's cl100k and o200k.

    .venv/bin/python bench/token_counting.py --write

Counts the same prompts with ``thrifty.tokens.count_messages`` three ways in the same run: with
tiktoken's cl100k_base (what every count used before; also thrifty's fallback), with quicktok's
cl100k_base (the same ids: counted for every model but OpenAI's newer ones) and with quicktok's
o200k_base (gpt-4o, gpt-4.1, gpt-5, o-series). Time per prompt is the best of 5 passes, as a ratio
to the tiktoken baseline; tokens show what o200k's larger vocabulary saves on the same text. The
one-time load of each encoder is timed too.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdreport import write_section  # noqa: E402
from thrifty import tokens  # noqa: E402

SENTENCE = ("the gateway routes each request to the cheapest model that can answer it well while the "
            "ledger records every attempt with its exact cost and the cache serves repeated questions")
CODE = "def price(usage, rate):\n    return sum(n * rate[k] for k, n in usage.items()) / 1_000_000\n"
OTHER = "Bonjour, pouvez-vous m'aider ? 今日はとても良い天気ですね。 नमस्ते, आप कैसे हैं? Привет, как дела?"


def prompts(n: int, seed: int = 7) -> dict[str, list[list[dict[str, str]]]]:
    rng = random.Random(seed)
    words = SENTENCE.split(" ")

    def text(kind: str) -> str:
        if kind == "english":
            return " ".join(rng.choice(words) for _ in range(rng.randint(50, 400)))
        if kind == "code":
            return CODE * rng.randint(2, 20)
        return OTHER * rng.randint(2, 12)

    return {kind: [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text(kind)}]
                   for _ in range(n)] for kind in ("english", "code", "multilingual")}


@contextlib.contextmanager
def tiktoken_only() -> Iterator[None]:
    """thrifty's fallback path: every count through tiktoken's cl100k (quicktok treated as missing)."""
    saved = tokens._quick_for
    tokens._quick_for = lambda model: None  # type: ignore[assignment]
    try:
        yield
    finally:
        tokens._quick_for = saved  # type: ignore[assignment]


def load_time(model: str | None, baseline: bool = False) -> float:
    tokens._cl100k.cache_clear()
    tokens._quick.cache_clear()
    t0 = time.perf_counter()
    if baseline:
        tokens._cl100k()
    else:
        tokens.count_text("x", model=model)  # loads the model's encoding
    return time.perf_counter() - t0


def per_prompt_us(batch: list[list[dict[str, str]]], model: str | None, passes: int = 5) -> tuple[float, int]:
    best, total = float("inf"), 0
    for _ in range(passes):
        t0 = time.perf_counter()
        total = sum(tokens.count_messages(m, model=model) for m in batch)
        best = min(best, time.perf_counter() - t0)
    return best / len(batch) * 1e6, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=300, help="prompts per kind")
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = ap.parse_args()
    load_tk, load_cl, load_o = load_time(None, baseline=True), load_time(None), load_time("gpt-4o")
    lines = [
        f"{args.prompts} prompts per kind (system + user message), `count_messages`, best of 5 passes. "
        "Baseline: tiktoken's cl100k_base (every count before; thrifty's fallback without quicktok).",
        "",
        "| text | tiktoken cl100k µs/prompt | quicktok cl100k µs/prompt | quicktok o200k µs/prompt "
        "| cl100k time / baseline | o200k time / baseline | cl100k tokens | o200k tokens | tokens o200k / cl100k |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, batch in prompts(args.prompts).items():
        with tiktoken_only():
            t_tk, n_tk = per_prompt_us(batch, None)
        t_cl, n_cl = per_prompt_us(batch, None)
        t_o, n_o = per_prompt_us(batch, "gpt-4o")
        if n_cl != n_tk:
            raise SystemExit(f"quicktok and tiktoken disagree on cl100k counts for {kind}: {n_cl} != {n_tk}")
        lines.append(f"| {kind} | {t_tk:.1f} | {t_cl:.1f} | {t_o:.1f} | {t_cl / t_tk:.2f} | {t_o / t_tk:.2f} "
                     f"| {n_cl} | {n_o} | {n_o / n_cl:.2f} |")
    lines += ["", f"One-time encoder load: tiktoken cl100k {load_tk * 1000:.0f} ms, quicktok cl100k "
                  f"{load_cl * 1000:.0f} ms, quicktok o200k {load_o * 1000:.0f} ms."]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("tokenizers", "Offline token counting: quicktok (cl100k, o200k) vs tiktoken",
                      f".venv/bin/python bench/token_counting.py --prompts {args.prompts} --write", body)


if __name__ == "__main__":
    main()
