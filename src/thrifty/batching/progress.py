"""A progress bar for long runs (batch items, collected prompts): done, dollars spent, estimated total (tqdm, on stderr)."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, total: int, enabled: bool = True, desc: str = "batch", unit: str = "item") -> None:
        self.total = total
        self.done = 0
        self.spent = 0.0
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (CI logs, pipes).
            self._bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=None, leave=True)

    def estimate(self) -> float | None:
        return self.spent / self.done * self.total if self.done else None

    def update(self, items: int, cost: float | None) -> None:
        self.done += items
        self.spent += cost or 0.0
        if self._bar is not None:
            est = self.estimate()
            self._bar.set_postfix_str(f"${self.spent:.4f} spent, est. ${est:.4f} total" if est is not None else "")
            self._bar.update(items)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
