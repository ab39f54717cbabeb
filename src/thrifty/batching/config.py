"""The ``batching`` section of the config (pydantic only: thrifty.config imports it).

    batching:
      model: deepseek-v4-flash     # default for `thrifty batch run` without --model/--route
      # route: NAME                # ...or a routing route instead (not both); both checked at load
      pack: 10                     # items per packed call
      concurrency: 4               # packed calls in flight
      deferred:
        completion_window: 24h     # the only window OpenAI's Batch API accepts
        poll_interval_s: 30
        max_resubmits: 2           # failed/expired items go into a new batch this many times
        enabled: false             # gateway requests marked deferrable go to the Batch API
        window_s: 2                # ...gathered per (provider, model) for this long
        max_items: 1000            # ...or until this many are waiting
        delete_files: true         # a round's input/output/error files deleted at the provider once recorded
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeferredConfig(_Strict):
    # Sent as the batch's ``completion_window``: OpenAI's Batch API accepts only "24h" (and
    # rejects the batch otherwise, after the input file was uploaded), so nothing else is allowed.
    completion_window: Literal["24h"] = "24h"
    poll_interval_s: float = Field(default=30.0, gt=0)
    max_resubmits: int = Field(default=2, ge=0)
    # The endpoint each batch line targets (OpenAI's Batch API field ``url``).
    endpoint: str = "/v1/chat/completions"
    # Gateway requests marked deferrable (``"thrifty": {"deferrable": true}`` or the header
    # ``x-thrifty-deferrable: 1``) are collected into provider batches only when enabled: a
    # deferrable request's client waits until the batch ends, which can take up to a day.
    # ``thrifty batch run --deferred`` works either way.
    enabled: bool = False
    window_s: float = Field(default=2.0, gt=0)
    # OpenAI accepts at most 50,000 requests in one batch.
    max_items: int = Field(default=1000, ge=1, le=50_000)
    # Once a round's answers are recorded, its input file and the batch's output and error files
    # are deleted at the provider: OpenAI keeps files (the prompts and answers) until deleted,
    # against the account's storage limits. Off: they are left there, for the provider's console.
    delete_files: bool = True


class BatchingConfig(_Strict):
    model: str | None = None
    route: str | None = None
    pack: int = Field(default=10, ge=1, le=200)
    concurrency: int = Field(default=4, ge=1, le=256)
    max_output_tokens_per_item: int = Field(default=256, ge=1)
    deferred: DeferredConfig = Field(default_factory=DeferredConfig)

    @model_validator(mode="after")
    def _one_target(self) -> BatchingConfig:
        # Which one `thrifty batch run` used was an undocumented precedence (model won).
        if self.model is not None and self.route is not None:
            raise ValueError(f"set model or route, not both (model: {self.model!r}, route: {self.route!r})")
        return self
