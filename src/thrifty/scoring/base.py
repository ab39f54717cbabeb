"""The scorer interface used by cascades."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from thrifty.types import ChatRequest


@dataclass(frozen=True)
class Score:
    value: float  # in [0, 1]; higher means more likely good enough
    reason: str


class Scorer(Protocol):
    async def score(self, request: ChatRequest, response: dict[str, Any]) -> Score:
        """How good ``response`` looks as an answer to ``request``."""
        ...
