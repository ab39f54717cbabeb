"""Learning a state-table cascade for one task family from outcome data (vectorised).

For a call order of cheap models, every training prompt follows a path of agreement patterns
("" -> "0" -> "0,0" ...). Each pattern is a node; per node we sum, over the prompts that reach
it (weighted, so inner cross-validation folds are just weight vectors): how often each model
called so far is right, how often the strong model is right, what the next call and the strong
call cost. Per-node accuracies are shrunk towards the parent's estimate (Bayesian smoothing
with ``shrink`` pseudo-prompts) so rare patterns do not overfit.

``solve(lams)`` picks, by backward induction and for every price of accuracy ``lam`` at once,
the action at each node that maximises ``accuracy - lam * cost``: ``stop:i``, ``next`` or
``strong``. Actions are coded as integers: ``i >= 0`` serve answer i, ``NEXT``, ``STRONG``.
``run(actions, rows)`` replays them on rows (answers are read first, scores only after the
action is fixed). Scores are read here only: this runs on training data inside ``fit_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thrifty.routing.formats import agreement_pattern

NEXT, STRONG = -2, -1


@dataclass
class FamilyData:
    """One task family's training rows: answers, scores and costs per model (row-aligned)."""

    answers: dict[str, list[str | None]]
    scores: dict[str, np.ndarray]
    costs: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(next(iter(self.scores.values()))) if self.scores else 0


def action_name(code: int) -> str:
    return "next" if code == NEXT else "strong" if code == STRONG else f"stop:{code}"


def action_code(name: str) -> int:
    return NEXT if name == "next" else int(name[5:]) if name.startswith("stop:") else STRONG


class OrderModel:
    """The agreement-pattern tree of one call order on one family's rows."""

    def __init__(self, order: list[str], data: FamilyData, strong: str, *, raw: bool = False,
                 shrink: float = 5.0) -> None:
        self.order, self.raw, self.shrink = order, raw, shrink
        n, d = data.n, len(order)
        index: dict[str, int] = {"": 0}
        parent, depth = [-1], [0]
        ids = np.zeros((n, d + 1), dtype=np.int64)
        for k in range(n):
            answers: list[str | None] = []
            for j, m in enumerate(order):
                answers.append(data.answers[m][k])
                st = agreement_pattern(answers, raw=raw)
                if st not in index:
                    index[st] = len(index)
                    parent.append(int(ids[k, j]))
                    depth.append(j + 1)
                ids[k, j + 1] = index[st]
        self.names = list(index)
        self.parent, self.depth, self.ids = np.array(parent), np.array(depth), ids
        self.children: list[list[int]] = [[] for _ in self.names]
        for i in range(1, len(self.names)):
            self.children[parent[i]].append(i)
        self.score = np.stack([data.scores[m] for m in order]) if order else np.zeros((0, n))
        self.cost = np.stack([data.costs[m] for m in order]) if order else np.zeros((0, n))
        self.s_strong, self.c_strong = data.scores[strong], data.costs[strong]
        self.by_depth = sorted(range(len(self.names)), key=lambda i: int(depth[i]))

    def _stats(self, w: np.ndarray) -> tuple[np.ndarray, ...]:
        nn, d = len(self.names), len(self.order)
        n, s_str, c_str = np.zeros(nn), np.zeros(nn), np.zeros(nn)
        c_next, a_next, s_acc = np.zeros(nn), np.zeros(nn), np.zeros((d, nn))
        for dep in range(d + 1):
            ids = self.ids[:, dep]
            n += np.bincount(ids, w, nn)
            s_str += np.bincount(ids, w * self.s_strong, nn)
            c_str += np.bincount(ids, w * self.c_strong, nn)
            for j in range(dep):
                s_acc[j] += np.bincount(ids, w * self.score[j], nn)
            if dep < d:
                c_next += np.bincount(ids, w * self.cost[dep], nn)
                a_next += np.bincount(ids, w * self.score[dep], nn)
        return n, s_acc, s_str, c_str, c_next, a_next

    def solve(self, lams: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Actions (nodes x len(lams)); a node no weighted row reaches gets STRONG."""
        w = np.ones(self.ids.shape[0]) if weights is None else weights
        n, s_acc, s_str, c_str, c_next, a_next = self._stats(w)
        nn, k = len(self.names), self.shrink
        acc, acc_strong = np.zeros_like(s_acc), np.zeros(nn)
        for i in self.by_depth:
            if i == 0:
                acc_strong[0] = s_str[0] / max(n[0], 1e-12)
                continue
            p, dep = self.parent[i], self.depth[i]
            prior = [*acc[: dep - 1, p], a_next[p] / max(n[p], 1e-12)]
            acc[:dep, i] = (s_acc[:dep, i] + k * np.asarray(prior)) / (n[i] + k)
            acc_strong[i] = (s_str[i] + k * acc_strong[p]) / (n[i] + k)
        value = np.zeros((nn, len(lams)))
        act = np.full((nn, len(lams)), STRONG)
        for i in reversed(self.by_depth):
            if n[i] <= 0:
                continue
            best = acc_strong[i] - lams * c_str[i] / n[i]
            a = np.full(len(lams), STRONG)
            dep = int(self.depth[i])
            if dep > 0:
                j = int(np.argmax(acc[:dep, i]))
                better = acc[j, i] >= best
                best, a = np.where(better, acc[j, i], best), np.where(better, j, a)
            seen = [c for c in self.children[i] if n[c] > 0]
            if seen:
                cont = sum(n[c] * value[c] for c in seen) / sum(n[c] for c in seen) - lams * c_next[i] / n[i]
                better = cont > best
                best, a = np.where(better, cont, best), np.where(better, NEXT, a)
            value[i], act[i] = best, a
        return act

    def codes(self, table: dict[str, str]) -> np.ndarray:
        """A hand-written table as an action column (states not in it: STRONG)."""
        return np.array([[action_code(table.get(name, "strong"))] for name in self.names])

    def run(self, act: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(correct answers, dollars) per action column, summed over ``rows`` (a bool mask)."""
        sel = np.arange(self.ids.shape[0]) if rows is None else np.nonzero(rows)[0]
        ids, d = self.ids[sel], len(self.order)
        shape = (len(sel), act.shape[1])
        correct, cost, active = np.zeros(shape), np.zeros(shape), np.ones(shape, bool)
        for dep in range(d + 1):
            a = act[ids[:, dep]]
            go_on = active & (a == NEXT) & (dep < d)
            strong = active & ((a == STRONG) | ((a == NEXT) & (dep == d)))
            correct += strong * self.s_strong[sel, None]
            cost += strong * self.c_strong[sel, None]
            for j in range(dep):
                correct += (active & (a == j)) * self.score[j, sel, None]
            if dep < d:
                cost += go_on * self.cost[dep, sel, None]
            active = go_on
        return correct.sum(0), cost.sum(0)

    def table(self, column: np.ndarray) -> dict[str, str]:
        """Only the states a prompt can reach under one action column (the config keeps these)."""
        out: dict[str, str] = {}
        stack = [0]
        while stack:
            i = stack.pop()
            out[self.names[i]] = action_name(int(column[i]))
            if column[i] == NEXT:
                stack.extend(self.children[i])
        return out
