"""Route splits: a fixed share of a route's requests take another route.

    routes:
      winogrande:      {state_table: {...}, split: {share: 0.37, route: winogrande-b}}
      winogrande-b:    {state_table: {...}}

A fitted policy is a choice among discrete cascades, so its cost moves in steps: at a budget
between two steps the cheaper one leaves money unspent. Sending a share ``p`` of the requests to
the dearer cascade spends ``(1-p) x cheaper + p x dearer`` on average, so the budget buys
exactly the accuracy on the line between them (a randomised policy on the frontier's convex
hull, as RouterBench's AIQ interpolates between routers).

Which requests go is decided by a hash of the route's name and the last user message, not by a
random draw: the same request always takes the same path (cached answers stay valid, ``route
explain`` and ``thrifty eval`` agree with the gateway, replays are reproducible), and two split
routes split independently.
"""

from __future__ import annotations

import hashlib
from typing import Any


def split_point(route: str, text: str) -> float:
    """Where ``text`` falls in [0, 1) for ``route``'s split: uniform over texts, stable across
    processes and versions (a hash, not Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{route}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def resolve_split(routes: dict[str, Any], name: str, text: str) -> tuple[str, str | None]:
    """(the route that serves ``text``, why, or None when ``name`` has no split). ``routes``
    maps names to ``RouteConfig``; a split's target has no split of its own (config check)."""
    split = routes[name].split
    if split is None:
        return name, None
    point = split_point(name, text)
    if point < split.share:
        return split.route, f"split: this prompt is in the {split.share:.1%} of route {name!r} sent to {split.route!r}"
    return name, f"split: this prompt is in the {1 - split.share:.1%} of route {name!r} kept on it"
