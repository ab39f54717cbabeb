"""The ``capture`` section of the config (pydantic only: thrifty.config imports it).

    capture:                       # absent: nothing is captured
      path: thrifty-capture.jsonl  # relative to the config file, like the ledger's
      rate: 0.1                    # the share of eligible requests written
      tasks: [faq, support]        # only these task labels / routes (default: all)
      max_prompts: 10000           # stop writing once the file holds this many lines
      seed: 7                      # reproducible sampling (default: a new draw each start)
      reference: true              # also write the served answer, its model and cost

Each line is a prompt of ``thrifty outcomes collect`` (docs/routing.md); prompts and answers are
stored in plain text (redacted of keys), so it is opt-in.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class CaptureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(default="thrifty-capture.jsonl", min_length=1)
    rate: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    tasks: list[str] | None = None
    # Bounded by default: a gateway left capturing must not fill its disk with prompts.
    max_prompts: int = Field(default=10_000, ge=1)
    seed: int | None = None
    reference: bool = True

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a file path (got an empty string)")
        return v

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, v: object) -> object:
        # pydantic reads true as 1: a flag written where a number belongs is refused instead.
        if isinstance(v, bool):
            raise ValueError(f"expected a whole number (got {v!r})")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("an empty list captures nothing: leave tasks out to capture every task")
        if any(not t.strip() for t in v):
            raise ValueError("each task must be a non-empty label or route name")
        return v
