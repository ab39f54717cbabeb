"""The cost-quality frontier and its summary figures.

Points are (cost, accuracy) with cost as a share of the always-baseline cost. The frontier is
the non-decreasing upper convex hull of the points: any point on a segment between two measured
policies is reachable by sending each prompt to one or the other at random.

AIQ ("average improvement in quality", RouterBench, Hu et al. 2024 §3) is the area under that
hull over the cost range [c_min, c_max] spanned by the single models, divided by the range's
width, so it reads as an accuracy: the mean accuracy the frontier offers over all budgets from
the cheapest to the most expensive model. Left of a curve's cheapest point the curve offers
nothing (0); right of its last point it stays flat. Curves are anchored with the cheapest model
(any router can degenerate to "always the cheapest"), as RouterBench's zero router is.
"""

from __future__ import annotations

import itertools

Point = tuple[float, float]


def pareto(points: list[Point]) -> list[Point]:
    """Points no other point beats (cheaper or equal and more accurate), cheapest first."""
    out: list[Point] = []
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or a > out[-1][1]:
            out.append((c, a))
    return out


def upper_hull(points: list[Point]) -> list[Point]:
    """The non-decreasing upper convex hull of ``points``, cheapest first."""
    hull: list[Point] = []
    for p in pareto(points):
        while len(hull) >= 2:
            (c1, a1), (c2, a2) = hull[-2], hull[-1]
            # Drop the middle point when it lies on or below the chord from hull[-2] to p.
            if (a2 - a1) * (p[0] - c1) <= (p[1] - a1) * (c2 - c1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def hull_value(hull: list[Point], cost: float) -> float:
    """Accuracy the hull offers at ``cost`` (0 before its first point, flat after its last)."""
    if not hull or cost < hull[0][0]:
        return 0.0
    for (c1, a1), (c2, a2) in itertools.pairwise(hull):
        if c1 <= cost <= c2:
            return a1 if c2 == c1 else a1 + (a2 - a1) * (cost - c1) / (c2 - c1)
    return hull[-1][1]


def aiq(points: list[Point], c_min: float, c_max: float) -> float:
    """Area under the hull of ``points`` over [c_min, c_max], divided by the width."""
    if c_max <= c_min:
        return hull_value(upper_hull(points), c_max)
    hull = upper_hull(points)
    if not hull:
        return 0.0
    # The hull is piecewise linear and 0 left of its first point: integrate exactly between
    # its breakpoints, starting where it starts.
    start = max(c_min, hull[0][0])
    if start >= c_max:
        return 0.0
    xs = sorted({start, c_max, *(c for c, _ in hull if start < c < c_max)})
    area = sum((hull_value(hull, x1) + hull_value(hull, x2)) / 2 * (x2 - x1)
               for x1, x2 in itertools.pairwise(xs) if x2 > x1)
    return area / (c_max - c_min)


def cost_to_reach(points: list[Point], target: float) -> float | None:
    """The lowest measured cost whose accuracy is at least ``target`` (None: never reached)."""
    costs = [c for c, a in points if a >= target - 1e-12]
    return min(costs) if costs else None
