"""System-prompt compression: once per distinct prompt, ever, then the same bytes every time.

A prompt is keyed by the SHA-256 of its text and of the settings its versions were made and
validated under (compressor model, target, must-keep items, markers, A/B check). Each text part
of a content list is a prompt of its own (why: ``stage._texts``), so the same text gets the same
record whether it is sent as a string or as a part. The first
request that meets it (over ``min_tokens``) has the cheap model compress it; requests arriving
meanwhile wait for that one compression (single flight in this process; a store claim keeps
other instances from starting a second one; they serve the original until the record exists).
The result is validated (``validate.check``, then the optional A/B check) and stored with its
verdict: a failed compression is recorded and the original keeps being used. Later requests
read the stored record (memoised for ``memo_ttl_s`` so `thrifty compress approve/reject` apply
within seconds). The compression, A/B answer and A/B judge calls are shaped for their model by
``internal_calls`` (a reasoning model gets room to reason and no temperature).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from thrifty.compress import prompts, versions
from thrifty.compress.config import CompressionConfig
from thrifty.compress.store import DocStore
from thrifty.compress.validate import Verdict, check
from thrifty.errors import UpstreamError
from thrifty.internal_calls import complete_internal
from thrifty.pipeline.caller import ModelCaller
from thrifty.pipeline.context import RequestContext
from thrifty.tokens import count_text
from thrifty.types import cut_at_limit, response_text

log = logging.getLogger("thrifty.compress")

KIND = "prompt"


class SystemPromptCompressor:
    # Prompts remembered in memory at most (oldest forgotten first): a gateway that sees a new
    # long prompt per request (retrieved documents in the system prompt) must not grow forever.
    memo_max = 10_000

    def __init__(self, config: CompressionConfig, store: DocStore, caller: ModelCaller,
                 memo_ttl_s: float = 5.0, timeout_s: float | None = None) -> None:
        self.config = config
        self.timeout_s = config.timeout_s if timeout_s is None else timeout_s
        self.cfg = config.system_prompt
        self.store = store
        self.caller = caller
        self.memo_ttl_s = memo_ttl_s
        self._memo: dict[str, tuple[float, str | None]] = {}
        # Stored versions (prompt hash, version number) that passed today's checks in this
        # process (``_still_valid``), oldest first, bounded like the memo.
        self._checked: dict[tuple[str, Any], None] = {}
        self._inflight: dict[str, asyncio.Task[dict[str, Any] | None]] = {}
        # Everything that decides what a compressed version looks like or whether it passes
        # (not require_approval: that only decides whether a version is used).
        self.settings = {"model": config.model,
                         **self.cfg.model_dump(mode="json", exclude={"require_approval", "min_tokens"})}

    async def resolve(self, ctx: RequestContext, text: str) -> str | None:
        """The compressed text to send instead of ``text``, or None to send the original."""
        if count_text(text) < self.cfg.min_tokens:
            return None
        h = versions.prompt_hash(text, self.settings)
        memo = self._memo.get(h)
        if memo is not None and time.monotonic() - memo[0] < self.memo_ttl_s:
            return memo[1]
        doc = await asyncio.to_thread(self.store.get, KIND, h)
        if doc is None:
            task = self._inflight.get(h)
            if task is None:
                task = asyncio.ensure_future(self._compress(ctx, h, text))
                self._inflight[h] = task
                task.add_done_callback(lambda _t: self._inflight.pop(h, None))
            # shield: a client that disconnects must not cancel the compression others await.
            doc = await asyncio.shield(task)
            if doc is None:  # failed upstream, or another instance holds the claim
                return None
        version = versions.active(doc, self.cfg.require_approval)
        if version is not None and version["status"] == "validated" and not await self._still_valid(h, doc, version):
            version = None
        use = version["text"] if version else None
        self._remember(h, use)
        return use

    async def _still_valid(self, h: str, doc: dict[str, Any], version: dict[str, Any]) -> bool:
        """Whether a stored validated version passes today's checks. The record's key holds the
        settings, not the checks: a version validated by an older release that dropped
        ``{{user_name}}`` or a JSON schema (it had no such check) kept being sent after the upgrade.
        One that fails is marked failed, with the reason, for `thrifty compress show`; an approved
        version is a person's decision and is not second-guessed."""
        # Once per version and process: the memo expires every memo_ttl_s, and a full check of a
        # 25 kB prompt is ~6.5 ms of event-loop CPU each time.
        if (h, version["version"]) in self._checked:  # a stored version's text never changes
            return True
        verdict = check(doc["original"], version["text"], self.cfg.must_keep, self.cfg.instruction_markers,
                        keep_facts=self.cfg.keep_facts, min_vocabulary=self.cfg.min_vocabulary)
        if verdict.ok:
            self._passed(h, version["version"])
            return True
        log.warning("stored compression %s v%s fails the current checks: %s", h[:12], version["version"],
                    verdict.reason)
        await asyncio.to_thread(self._mark_failed, h, version["version"], f"fails the current checks: {verdict.reason}")
        return False

    def _mark_failed(self, h: str, number: Any, reason: str) -> None:
        """Mark version ``number`` failed in a fresh read of the record, only if it is still
        "validated": the record read for the request may be stale by now, and writing it back
        whole would undo a version added or approved (`thrifty compress approve`) meanwhile."""
        doc = self.store.get(KIND, h)
        found = [v for v in (doc or {}).get("versions", []) if v["version"] == number and v["status"] == "validated"]
        if doc is not None and found:
            found[0]["status"], found[0]["reason"] = "failed", reason
            self.store.put(KIND, h, doc)

    def _passed(self, h: str, number: Any) -> None:
        self._checked[(h, number)] = None
        while len(self._checked) > self.memo_max:
            self._checked.pop(next(iter(self._checked)))

    def _remember(self, h: str, use: str | None) -> None:
        self._memo.pop(h, None)
        self._memo[h] = (time.monotonic(), use)
        while len(self._memo) > self.memo_max:
            self._memo.pop(next(iter(self._memo)))

    async def _compress(self, ctx: RequestContext, h: str, text: str) -> dict[str, Any] | None:
        claimed = await asyncio.to_thread(self.store.claim, KIND, h, self.config.store.claim_ttl_s)
        if not claimed:
            return None
        try:
            doc = await asyncio.to_thread(self.store.get, KIND, h)
            if doc is not None:  # another instance finished between our read and our claim
                return doc
            original_tokens = count_text(text)
            target = self.cfg.target_tokens or max(16, int(original_tokens * self.cfg.target_ratio))
            try:
                # Bounded: this task runs shielded from the waiting requests' deadlines, so a cheap
                # model that never answers (retried up to its provider's timeout each time) held
                # every one of them until server.request_timeout_s failed it with a 504.
                async with asyncio.timeout(self.timeout_s):
                    compressed, cost, cut = await self._call_model(ctx, text, target)
                    verdict = check(text, compressed, self.cfg.must_keep, self.cfg.instruction_markers,
                                    keep_facts=self.cfg.keep_facts, min_vocabulary=self.cfg.min_vocabulary)
                    if cut and verdict.ok:
                        # The answer stopped at max_output_tokens: the prompt's tail is missing, and
                        # a tail of plain prose (no fact, no marker) passed every other check.
                        verdict = Verdict(False, [], "compression cut at system_prompt.max_output_tokens "
                                                     f"({self.cfg.max_output_tokens}): the end of the prompt is lost")
                    reason = verdict.reason
                    if verdict.ok and self.cfg.ab_check is not None:
                        ok, reason = await self._ab_check(ctx, text, compressed)
                        verdict.ok = ok
            except (UpstreamError, TimeoutError) as exc:
                # The compression or its A/B check could not be made: the request (and every one
                # waiting for this compression) is served with the original, and a later request
                # tries again. Never a failed request because an optional saving failed.
                why = exc.message if isinstance(exc, UpstreamError) else f"no answer within {self.timeout_s:g}s"
                log.warning("compression of prompt %s failed upstream: %s", h[:12], why)
                self._remember(h, None)
                return None
            doc = versions.new_record(h, text, original_tokens)
            status = "validated" if verdict.ok else "failed"
            versions.add_version(doc, compressed, count_text(compressed), status, reason,
                                 self.config.model, cost)
            if verdict.ok:
                self._passed(h, doc["versions"][-1]["version"])  # just checked: not again on first use
            else:
                log.warning("compressed prompt %s rejected by validation: %s", h[:12], reason)
            await asyncio.to_thread(self.store.put, KIND, h, doc)
            return doc
        finally:
            await asyncio.to_thread(self.store.release, KIND, h)

    async def _call_model(self, ctx: RequestContext, text: str, target: int) -> tuple[str, float | None, bool]:
        """The compressed text, the call's cost, and whether the answer was cut at the limit."""
        assert self.config.model is not None
        system = prompts.COMPRESS_SYSTEM.format(
            markers=", ".join(self.cfg.instruction_markers) or "(none)",
            must_keep="; ".join(self.cfg.must_keep) or "(none)",
            target=target,
        )
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        response, attempt = await complete_internal(self.caller, ctx, self.config.model, messages,
                                                    max_tokens=self.cfg.max_output_tokens, purpose="compress")
        return response_text(response).strip(), attempt.cost_usd, cut_at_limit(response)

    async def _ab_check(self, ctx: RequestContext, original: str, compressed: str) -> tuple[bool, str]:
        """Answer sample questions with both prompts; a cheap judge says whether they agree."""
        ab = self.cfg.ab_check
        assert ab is not None and self.config.model is not None
        judge = ab.judge_model or self.config.model
        agree = 0
        for q in ab.questions:
            answers = []
            for system in (original, compressed):
                resp, _ = await complete_internal(
                    self.caller, ctx, self.config.model,
                    [{"role": "system", "content": system}, {"role": "user", "content": q}],
                    max_tokens=None, purpose="compress")  # no limit: the answers are compared whole
                answers.append(response_text(resp))
            resp, _ = await complete_internal(self.caller, ctx, judge, [
                {"role": "system", "content": prompts.JUDGE_SYSTEM},
                {"role": "user", "content": f"Question: {q}\n\nAnswer 1: {answers[0]}\n\nAnswer 2: {answers[1]}"},
            ], max_tokens=3, purpose="judge")
            agree += response_text(resp).strip().upper().startswith("YES")
        rate = agree / len(ab.questions)
        if rate < ab.min_agreement:
            return False, f"A/B check: answers agreed on {rate:.0%} of questions (< {ab.min_agreement:.0%})"
        return True, f"A/B check: answers agreed on {rate:.0%} of questions"
