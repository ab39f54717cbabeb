"""Learning a state-table cascade for one task family from outcome data.

For a call order of cheap models, every training prompt follows a path of agreement patterns
("" -> "0" -> "0,0" ...). Each pattern (node) keeps sums over the prompts that reach it: how
often each model called so far is right, how often the strong model is right, what the next
call and the strong call cost. Per-node accuracies are shrunk towards the parent's estimate
(Bayesian smoothing with ``shrink`` pseudo-prompts) so rare patterns do not overfit.

``solve(lam)`` picks, by backward induction, the action at each node that maximises
``accuracy - lam * cost`` (lam = accuracy bought per dollar): ``stop:i``, ``next`` or ``strong``.
Scores are read here only: this runs on training data inside ``fit_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from thrifty.routing.formats import agreement_pattern


@dataclass
class FamilyData:
    """One task family's training rows: answers, scores and costs per model (row-aligned)."""

    answers: dict[str, list[str | None]]
    scores: dict[str, np.ndarray]
    costs: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(next(iter(self.scores.values()))) if self.scores else 0


@dataclass
class Node:
    depth: int
    n: int
    sum_acc: list[float]  # per called model
    sum_strong: float
    cost_strong: float
    cost_next: float
    acc_next: float
    children: dict[str, int] = field(default_factory=dict)
    acc: list[float] = field(default_factory=list)  # shrunk per-row estimates
    acc_strong: float = 0.0


def _parent(state: str) -> str:
    return state.rsplit(",", 1)[0] if "," in state else ""


class OrderModel:
    """Sufficient statistics of one call order on one family's training rows."""

    def __init__(self, order: list[str], data: FamilyData, strong: str, *, raw: bool, shrink: float) -> None:
        self.order, self.raw = order, raw
        n = data.n
        S, C, A = data.scores, data.costs, data.answers
        paths: list[list[str]] = [[""] * n]
        for d in range(1, len(order) + 1):
            paths.append([agreement_pattern([A[m][k] for m in order[:d]], raw=raw) for k in range(n)])
        self.nodes: dict[str, Node] = {}
        for d, states in enumerate(paths):
            groups: dict[str, list[int]] = {}
            for k, st in enumerate(states):
                groups.setdefault(st, []).append(k)
            for st, rows in groups.items():
                idx = np.asarray(rows)
                nxt = order[d] if d < len(order) else None
                self.nodes[st] = Node(
                    depth=d, n=len(idx), sum_acc=[float(S[m][idx].sum()) for m in order[:d]],
                    sum_strong=float(S[strong][idx].sum()), cost_strong=float(C[strong][idx].sum()),
                    cost_next=float(C[nxt][idx].sum()) if nxt else 0.0,
                    acc_next=float(S[nxt][idx].sum()) if nxt else 0.0,
                )
                if d > 0:
                    self.nodes[_parent(st)].children[st] = len(idx)
        for st in sorted(self.nodes, key=lambda s: self.nodes[s].depth):
            node = self.nodes[st]
            if node.depth == 0:
                node.acc_strong = node.sum_strong / max(node.n, 1)
                continue
            par = self.nodes[_parent(st)]
            prior = [*par.acc, par.acc_next / max(par.n, 1)]
            node.acc = [(a + shrink * p) / (node.n + shrink) for a, p in zip(node.sum_acc, prior, strict=True)]
            node.acc_strong = (node.sum_strong + shrink * par.acc_strong) / (node.n + shrink)
        self._deepest_first = sorted(self.nodes, key=lambda s: -self.nodes[s].depth)

    def solve(self, lam: float) -> dict[str, str]:
        value: dict[str, float] = {}
        table: dict[str, str] = {}
        for st in self._deepest_first:
            node = self.nodes[st]
            best, action = node.acc_strong - lam * node.cost_strong / node.n, "strong"
            if node.acc:
                i = int(np.argmax(node.acc))
                if node.acc[i] >= best:
                    best, action = node.acc[i], f"stop:{i}"
            if node.children:
                total = sum(node.children.values())
                cont = sum(w * value[c] for c, w in node.children.items()) / total - lam * node.cost_next / node.n
                if cont > best:
                    best, action = cont, "next"
            value[st], table[st] = best, action
        return table

    def in_sample(self, table: dict[str, str]) -> tuple[float, float]:
        """(correct answers, dollars) of running ``table`` on the training rows."""
        return self._walk("", table)

    def _walk(self, st: str, table: dict[str, str]) -> tuple[float, float]:
        node = self.nodes[st]
        action = table[st]
        if action == "next" and node.children:
            correct, cost = 0.0, node.cost_next
            for child in node.children:
                c, k = self._walk(child, table)
                correct += c
                cost += k
            return correct, cost
        if action.startswith("stop:"):
            return node.sum_acc[int(action[5:])], 0.0
        return node.sum_strong, node.cost_strong

    def reachable(self, table: dict[str, str]) -> dict[str, str]:
        """Only the states a prompt can reach under ``table`` (the config keeps just these)."""
        out: dict[str, str] = {}
        stack = [""]
        while stack:
            st = stack.pop()
            out[st] = table[st]
            if table[st] == "next":
                stack.extend(self.nodes[st].children)
        return out
