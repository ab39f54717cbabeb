"""What cutting history on a grid (``history_trim_step_tokens``) does to the provider's prompt cache.

    .venv/bin/python bench/trim_cache.py --write     # ~1 min on 2 cores, no network

Simulated chats (a system prompt of ~500 tokens, then turns of a user message of ~20-400 tokens
and an answer of ~80-900 tokens, lognormal) grow turn by turn; every turn's request goes through
the real ``thrifty.compress.history.trim`` at N = ``--budgets`` and step B = ``--steps``, with and
without a summary of the dropped turns (a stand-in summariser: the same dropped turns give the
same summary, as the gateway's summary store does). Each request is then priced as a provider with
OpenAI's prompt cache would bill it: cached input is the longest token prefix it shares with any
earlier request of the chat, in whole 128-token blocks and only from 1,024 tokens
(https://platform.openai.com/docs/guides/prompt-caching: "Cache hits are only possible for exact
prefix matches", prompts of 1,024 tokens or more, hits "in increments of 128 tokens"), as the mock
upstream's ``prompt_cache`` answers it: one ``thrifty.mock.usage.PromptCache`` per chat, so the
bench and the mock cannot disagree on the rule. Input cost = uncached + rate x cached for cached
rates of 10% (Anthropic, DeepSeek), 25% and 50% (older OpenAI models) of the input price, summed
over every turn of every chat, as a ratio against B = 0 (today's exact cut) in the same run; the
history kept (tokens of turns between the system prompt and the current turn) likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from mdreport import write_section
from thrifty.compress import history
from thrifty.mock.usage import BLOCK, MIN_CACHED, PromptCache
from thrifty.tokens import content_text, encoding

Message = dict[str, Any]
RATES = (0.10, 0.25, 0.50)
_WORDS = ("the order was shipped to our warehouse in march and the customer asked about a refund for two "
         "damaged items because the box arrived late please check invoice number status delivery date "
         "price discount account password reset login error message server log configuration file python "
         "function returns value list dictionary test case fails when input empty string expected output "
         "should be sorted by name and grouped per region with totals for each quarter report")
VOCAB = _WORDS.split()


@dataclass
class Tally:
    prompt: int = 0
    cached: int = 0
    history: int = 0
    turns: int = 0
    moves: int = 0  # turns whose first kept message differs from the previous turn's
    cost: dict[float, float] = field(default_factory=dict)


def text(rng: random.Random, mean: float, lo: int, hi: int) -> str:
    n = int(min(hi, max(lo, rng.lognormvariate(mean, 0.6))))
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def chat(seed: int, turns: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"Q{seed}.{t}: " + text(rng, 4.3, 15, 400), text(rng, 5.6, 60, 900)) for t in range(turns)]


class Ids:
    """Token ids of a request as the provider sees it (role tag and text per message, as the
    mock's ``PromptCache`` tokenises it), memoised per message: the prompt size is their count."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str], list[int]] = {}

    def of(self, messages: list[Message]) -> list[int]:
        out: list[int] = []
        for m in messages:
            key = (str(m.get("role")), content_text(m.get("content")))
            if key not in self._memo:
                self._memo[key] = encoding().encode(f"<{key[0]}>{key[1]}\n", disallowed_special=())
            out += self._memo[key]
        return out


async def summarise(dropped: list[Message]) -> str:
    # Stands in for the cheap model behind the gateway's summary store: one summary per dropped prefix.
    rng = random.Random(history.prefix_key(dropped, "cheap", 200))
    return " ".join(rng.choice(VOCAB) for _ in range(150))


async def run_chat(turns: list[tuple[str, str]], system: str, budget: int, step: int, summary: bool,
                   ids: Ids, tally: Tally) -> None:
    msgs: list[Message] = [{"role": "system", "content": system}]
    # A provider remembers every earlier prefix of the chat, not only the previous request's: a
    # cut that comes back to an earlier kept prefix is a hit.
    cache = PromptCache()
    first: Message | None = None
    for question, answer in turns:
        msgs.append({"role": "user", "content": question})
        out = (await history.trim(msgs, budget, summarise if summary else None, 200, None, step)).messages
        request = ids.of(out)
        hit = cache.lookup_and_store("bench", out, None)
        kept = out[1:-1]  # between the system prompt and the current turn
        tally.history += sum(history.message_tokens(m) for m in kept
                             if not str(m.get("content", "")).startswith(history.SUMMARY_PREFIX))
        tally.prompt += len(request)
        tally.cached += hit
        tally.turns += 1
        tally.moves += bool(kept) and first is not None and kept[0] != first
        first = kept[0] if kept else None
        for rate in RATES:
            tally.cost[rate] = tally.cost.get(rate, 0.0) + len(request) - hit + rate * hit
        msgs.append({"role": "assistant", "content": answer})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    ap.add_argument("--chats", type=int, default=6)
    ap.add_argument("--turns", type=int, default=60)
    ap.add_argument("--budgets", default="4000,16000")
    ap.add_argument("--steps", default="0,256,512,1024,2048,4096")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    if 0 not in steps:
        raise SystemExit("trim_cache: --steps must include 0, the baseline")
    system = "You are the support assistant of a shop. " + " ".join(random.Random(7).choice(VOCAB) for _ in range(480))
    chats = [chat(seed, args.turns) for seed in range(args.chats)]
    ids = Ids()
    tallies: dict[tuple[int, bool, int], Tally] = {}
    started = time.perf_counter()
    for budget in budgets:
        for summary in (False, True):
            for step in steps:
                tally = tallies.setdefault((budget, summary, step), Tally())
                for turns in chats:
                    asyncio.run(run_chat(turns, system, budget, step, summary, ids, tally))
    took = time.perf_counter() - started
    full = sum(len(ids.of([{"role": "user", "content": q}, {"role": "assistant", "content": a}]))
               for turns in chats for q, a in turns) / len(chats)
    lines = ["| N | summary | B | input cost, cached at 10% / 25% / 50% | history kept | cached share of input"
             " | turns the kept prefix moved |", "|---:|---|---:|---|---:|---:|---:|"]
    for budget in budgets:
        for summary in (False, True):
            base = tallies[(budget, summary, 0)]
            for step in steps:
                t = tallies[(budget, summary, step)]
                cost = " / ".join(f"{t.cost[r] / base.cost[r]:.3f}" for r in RATES)
                lines.append(f"| {budget} | {'yes' if summary else 'no'} | {step} | {cost} | "
                             f"{t.history / base.history:.3f} | {t.cached / t.prompt:.1%} | {t.moves / t.turns:.1%} |")
    body = (f"{args.chats} simulated chats of {args.turns} turns (about {full:.0f} tokens of turns each, a "
            f"~500-token system prompt) through `history.trim` at each N and step B "
            f"(`history_trim_step_tokens`, capped at a quarter of what the turns may fill); OpenAI's prompt-cache "
            f"rule (longest prefix shared with any earlier request of the chat, whole {BLOCK}-token blocks, from "
            f"{MIN_CACHED:,} tokens: the mock upstream's `PromptCache`). "
            f"Input cost and history kept are ratios against B = 0 (today's exact cut) in the same run, summed over "
            f"every turn; the cached share and the turns whose first kept message changed are absolute. "
            f"{took:.0f} s.\n\n" + "\n".join(lines) + "\n")
    print(body)
    if args.write:
        write_section("trim-cache", "History trimming on a grid: prompt-cache hits against context kept",
                      "python bench/trim_cache.py --write", body)


if __name__ == "__main__":
    sys.exit(main())
