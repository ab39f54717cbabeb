"""Which models a state-table cascade can call at all, for ``route explain``.

A fitted table often stops early (``{"": next, "0": stop:0}`` never calls the second cheap model)
or goes straight to the strong model (``{"": strong}``); listing every model of ``order`` as the
plan told a team its requests call models they never do. The walk follows the table from the
start state over every agreement pattern an answer can lead to (an unusable answer, ``x``,
included), as ``StateTableCascade.run`` does: an unseen pattern goes to the strong model.
"""

from __future__ import annotations

from thrifty.routing.config import StateTableConfig


def _children(state: str, table: dict[str, str], raw: bool) -> tuple[list[str], bool]:
    """The patterns one more answer can lead to from ``state``, and whether one of them may be
    missing from the table (raw letters: any letter the table has not seen)."""
    prefix = f"{state}," if state else ""
    if raw:
        depth = prefix.count(",") + 1
        seen = [k for k in table if k.startswith(prefix) and k.count(",") + 1 == depth and k]
        return [*seen, prefix + "x"], True
    distinct = len({t for t in state.split(",") if t and t != "x"})
    return [prefix + tok for tok in [*map(str, range(distinct + 1)), "x"]], False


def _unusable(state: str, action: str) -> bool:
    """``stop:i`` where answer i is unusable (or missing): the cascade asks the strong model."""
    parts = state.split(",") if state else []
    i = int(action[5:])
    return i >= len(parts) or parts[i] == "x"


def reachable_models(st: StateTableConfig) -> list[str]:
    """The models of ``st`` in calling order that some answer pattern makes it call."""
    called: list[str] = []
    strong = False
    frontier = [""]
    for model in [*st.order, None]:
        going_on: list[str] = []
        for state in frontier:
            action = st.table.get(state, "strong")
            if action == "next" and model is not None:
                going_on.append(state)
            elif not action.startswith("stop:") or _unusable(state, action):
                strong = True  # "strong", unseen, "next" with no cheap model left, or nothing to serve
        if not going_on or model is None:
            break
        called.append(model)
        frontier = []
        for state in going_on:
            kids, unseen = _children(state, st.table, st.raw_letters)
            frontier += kids
            strong = strong or unseen
    return [*called, st.strong] if strong else called
