"""Checks that keep an evaluation honest on data the maintainers never saw (held-out files).

- ``drop_train_overlap``: with ``--train``, a ``--data`` prompt that is also a training prompt
  would be judged in-sample (a fitted policy can memorise it); such prompts are left out of the
  judged set, with a warning, and a ``DataError`` when nothing is left (the rule of overlap.py,
  shared with ``cache eval --calibrate-on``).
- ``fill_missing_costs``: an outcome without a recorded cost (an empty or ``nan`` cost cell, or a
  JSONL outcome giving ``usage`` only) gets the cost the replayed call is billed: its tokens at
  the model's price. Left at None it read as $0 in the reference rows and in fitting, so a
  model with gaps in its cost column looked cheaper than it is (and the oracle cheaper still).
- ``check_baseline``: savings are measured against the baseline on every prompt; a prompt
  without the baseline's outcome has no baseline cost (it read as $0) and no answer to serve.
"""

from __future__ import annotations

from dataclasses import replace

from thrifty.catalog import ModelPrice, lookup_genai_price, seed_price
from thrifty.cost import estimate_cost
from thrifty.errors import DataError
from thrifty.evaluation.dataset import Item, OutcomeSet
from thrifty.evaluation.overlap import drop_overlap
from thrifty.providers.replay import normalise
from thrifty.tokens import count_messages, count_text


def drop_train_overlap(data: OutcomeSet, train: OutcomeSet) -> tuple[OutcomeSet, str | None]:
    """``data`` without the prompts (whitespace-normalised user text) that ``train`` also holds,
    and a warning saying how many were left out (None when none were)."""
    keep, warning = drop_overlap(
        data.items, train, judged_keys=_prompt_key, fitted_keys=_prompt_key,
        warning="{dropped} of the {total} --data prompts are also --train prompts and were left out: "
                "judged on the other {kept}",
        refusal="every one of the {total} --data prompts is also a --train prompt: the policy would be judged on "
                "the prompts it was fitted on; judge on other prompts, or leave out --train (cross-validation on "
                "--data)")
    return (data, None) if warning is None else (OutcomeSet(keep, data.models), warning)


def _prompt_key(item: Item) -> tuple[str]:
    return (normalise(item.prompt),)


def _price(model: str, prices: dict[str, dict[str, float]]) -> ModelPrice | None:
    if model in prices:
        return ModelPrice(input=prices[model]["input"], output=prices[model]["output"], source="derived")
    return seed_price(model) or lookup_genai_price(model, None)


def fill_missing_costs(data: OutcomeSet, prices: dict[str, dict[str, float]]) -> int:
    """Give every outcome of ``data`` without a cost its estimated cost (in place); how many.

    Tokens are counted as the replay counts them (recorded usage, else the offline tokenizer),
    and priced as the replay catalog prices them (``prices``, fitted on the recorded costs; else
    the model's known list price), so the reference rows and the fit see what the pipeline bills.
    ``DataError`` for a model with a missing cost and no price to estimate it from."""
    filled = 0
    unpriced: dict[str, int] = {}
    for item in data.items:
        prompt_tokens: int | None = None
        for model, out in list(item.outcomes.items()):
            if out.cost is not None:
                continue
            price = _price(model, prices)
            if price is None:
                unpriced[model] = unpriced.get(model, 0) + 1
                continue
            usage = out.usage or {}
            if usage.get("prompt_tokens") is not None:
                pt = int(usage.get("prompt_tokens") or 0)
                ct = int(usage.get("completion_tokens") or 0)
            else:
                if prompt_tokens is None:
                    prompt_tokens = count_messages(item.messages)
                pt, ct = prompt_tokens, count_text(out.response)
            item.outcomes[model] = replace(out, cost=estimate_cost(pt, ct, price) or 0.0)
            filled += 1
    if unpriced:
        shown = ", ".join(f"{m} ({n} prompts)" for m, n in sorted(unpriced.items()))
        raise DataError(f"no recorded cost and no known price for {shown}: give their costs, or the calls "
                        "would be counted as free")
    return filled


def check_baseline(data: OutcomeSet, baseline: str) -> None:
    """``DataError`` naming the first prompt that has no outcome of ``baseline``."""
    missing = [i for i in data.items if baseline not in i.outcomes]
    if missing:
        first = missing[0]
        raise DataError(f"baseline model {baseline!r} has no outcome on {len(missing)} of the {len(data)} prompts "
                        f"(first: {first.file} row {first.row}); savings need its cost on every prompt: pass "
                        "--baseline, or leave those files out")


def missing_models_note(data: OutcomeSet, train: OutcomeSet) -> str | None:
    """A warning naming the ``train`` models that ``data`` lacks on some prompts (None if none):
    a policy fitted to call them gets a failed call there and falls back, which is not what the
    budget warning would otherwise blame."""
    gaps = {m: n for m in train.models if (n := sum(1 for i in data.items if m not in i.outcomes))}
    if not gaps:
        return None
    shown = ", ".join(f"{m} ({n})" for m, n in sorted(gaps.items()))
    return (f"models of --train have no outcome on some --data prompts: {shown}; where the fitted policy calls "
            "one, the call fails and the policy falls back (the cost of its other calls is still counted)")


def unseen_tasks_note(data: OutcomeSet, train: OutcomeSet) -> str | None:
    """A warning naming the task labels of ``data`` that no ``train`` prompt has (None if none):
    held-out data may bring task families the fit never saw, and what the policy does with them
    (often the baseline) is why a held-out cost share can exceed the budget; without this line
    the budget warning would blame the cost estimates instead."""
    known = set(train.tasks())
    counts: dict[str, int] = {}
    for item in data.items:
        task = item.task or "(none)"
        if task not in known:
            counts[task] = counts.get(task, 0) + 1
    if not counts:
        return None
    shown = ", ".join(f"{t} ({n} prompts)" for t, n in sorted(counts.items()))
    return (f"tasks of --data with no --train prompt: {shown}; the policy was fitted without them, so its "
            "budget and training figures say nothing about them")
