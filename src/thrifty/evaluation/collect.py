"""Outcome data from a team's own prompts (``thrifty outcomes collect``, docs/cli.md).

Per prompt, every candidate model and the reference model are called through the gateway by
name, with the cache and compression off (so each answer is the model's own), and each answer
is graded against the prompt's ``answer`` or, without one, the reference model's answer:
``exact`` compares normalised answers (``routing.formats``: option letters, code signatures,
first lines), ``judge`` asks a judge model for a 0-10 grade (``scoring.judge``). A prompt's line
is appended to the output, whole, once all its calls are done, so an interrupted run resumes
from the lines already there (by ``id``, else by a hash of the messages). A call that failed is
asked again by the next run: only that model, its line then replaced in a new copy of the output
renamed over it, so the output is never half written (the output file's side: collect_file.py).
A line captured by the gateway (``capture:``) may carry the answer it was served, ``reference``:
when its model is the run's reference or one of its candidates, that answer is that model's
outcome (no call is paid for it).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from thrifty.catalog import Catalog
from thrifty.cost import price_tokens
from thrifty.errors import DataError, InvalidRequestError, ThriftyError, printable
from thrifty.internal_calls import MAX_LESSONS, resend_after_error, resend_after_reply, shape_for
from thrifty.jsonl import iter_jsonl
from thrifty.ledger.records import ERROR_CHARS
from thrifty.pipeline.context import RequestContext, new_request_id
from thrifty.routing.formats import detect_family, extract_answer
from thrifty.scoring.judge import JudgeScorer, parse_grade
from thrifty.tokens import count_messages, count_text, last_user_text
from thrifty.types import ChatRequest, Usage, response_text

if TYPE_CHECKING:
    from thrifty.evaluation.collect_file import Redo
    from thrifty.gateway import Gateway

GRADERS = ("auto", "exact", "judge")
# Completion tokens an answer is estimated at when --max-tokens is not given (as the budget guard).
DEFAULT_OUTPUT_TOKENS = 256
# Calls made with these options see no cache, no compression and no configured fallbacks (a model
# that fails is recorded as failed, with its own error): each answer is the model's own.
RAW_OPTIONS = {"cache": False, "compress": False, "fallbacks": False}
log = logging.getLogger("thrifty.evaluation.collect")

JUDGE_TASK = "outcomes-judge"  # the ledger's task of the judge calls
JUDGE_RUBRIC = (
    "You grade answers against a reference answer. Given a user's request, the reference answer and "
    "a candidate answer, rate how well the candidate agrees with the reference (same result, nothing "
    "wrong added), from 0 (wrong or useless) to 10 (as good as the reference). Reply with the number only."
)


@dataclass(frozen=True)
class Served:
    """The answer a line captured by the gateway was served (its ``reference``)."""

    model: str
    answer: str
    cost_usd: float | None


@dataclass(frozen=True)
class Prompt:
    """One line of the prompts file."""

    line: int
    messages: list[dict[str, Any]]
    text: str | None  # the line's "prompt" string (written back as "prompt"), else None
    task: str | None
    answer: str | None
    id: str | int | None
    digest: str  # hash of the messages: the resume key of a line without id
    served: Served | None = None  # the line's ``reference`` (a captured answer), if any

    def question(self) -> str:
        return last_user_text(self.messages)

    def grader(self, choice: str) -> str:
        """``exact`` or ``judge`` for this prompt under ``--grader choice``."""
        if choice != "auto":
            return choice
        if self.answer is not None or detect_family(self.question()) != "open":
            return "exact"
        return "judge"


def messages_digest(messages: list[dict[str, Any]]) -> str:
    raw = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def id_key(value: str | int) -> str:
    return f"id:{value}"  # 7 and "7" are the same id, as in `thrifty batch run`


def load_prompts(path: Path) -> list[Prompt]:
    """The prompts of ``path``; a bad line is a ``DataError`` naming the file and the line."""
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for n, obj in iter_jsonl(path, "prompts file"):
        at = f"{path}: line {n}"
        if not isinstance(obj, dict):
            raise DataError(f"{at}: each line must be a JSON object with 'prompt' or 'messages'")
        text = obj.get("prompt")
        if isinstance(obj.get("messages"), list):
            messages, text = obj["messages"], None
        elif isinstance(text, str) and text.strip():
            messages = [{"role": "user", "content": text}]
        else:
            raise DataError(f"{at}: needs 'prompt' (a non-empty string) or 'messages' (an array)")
        try:
            ChatRequest.from_body({"model": "m", "messages": messages})
        except InvalidRequestError as exc:
            raise DataError(f"{at}: {exc.message}") from None
        task, answer, pid = obj.get("task"), obj.get("answer"), obj.get("id")
        if task is not None and not isinstance(task, str):
            raise DataError(f"{at}: 'task' must be a string")
        if isinstance(answer, int | float) and not isinstance(answer, bool):
            answer = str(answer)
        if answer is not None and not isinstance(answer, str):
            raise DataError(f"{at}: 'answer' must be a string")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, str | int)):
            raise DataError(f"{at}: 'id' must be a string or a whole number")
        if pid is not None:
            key = id_key(pid)
            if key in seen:
                raise DataError(f"{at}: id {pid!r} is also the id of line {seen[key]}")
            seen[key] = n
        # A string is an outcomes line's own ``reference`` (the name of the model graded 1.0): such
        # a file was accepted as prompts before, its extra keys unread, and still is.
        ref = obj.get("reference")
        served = None if ref is None or isinstance(ref, str) else _served(ref, at)
        prompts.append(Prompt(n, messages, text, task or None, answer, pid, messages_digest(messages), served))
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def _served(ref: Any, at: str) -> Served:
    """A line's ``reference``: ``{"model", "answer", "cost_usd"}`` as the gateway captures it."""
    if not isinstance(ref, dict):
        raise DataError(f"{at}: 'reference' must be an object with 'model', 'answer' and 'cost_usd'")
    unknown = sorted(set(ref) - {"model", "answer", "cost_usd"})
    if unknown:
        raise DataError(f"{at}: 'reference' has unknown keys {', '.join(map(repr, unknown))} "
                        "(expected 'model', 'answer', 'cost_usd')")
    model, answer, cost = ref.get("model"), ref.get("answer"), ref.get("cost_usd")
    if not isinstance(model, str) or not model.strip():
        raise DataError(f"{at}: 'reference.model' must be a model name")
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{at}: 'reference.answer' must be a non-empty string")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)
                             or not math.isfinite(cost) or cost < 0):
        raise DataError(f"{at}: 'reference.cost_usd' must be a number of dollars, 0 or more, or null")
    return Served(model, answer, float(cost) if cost is not None else None)


@dataclass(frozen=True)
class Options:
    models: list[str]  # the candidates, then the reference when it is not one of them
    reference: str
    grader: str = "auto"
    judge_model: str | None = None
    max_tokens: int | None = None
    concurrency: int = 4


@dataclass
class Estimate:
    calls: int
    judge_calls: int
    usd: float
    judge_usd: float
    unpriced: list[str]

    @property
    def total(self) -> float:
        return self.usd + self.judge_usd


def estimate(prompts: list[Prompt], opts: Options, catalog: Catalog, redos: Sequence[Redo] = ()) -> Estimate:
    """The spend of collecting ``prompts`` and of asking ``redos``' failed calls again: prompts
    counted offline, answers of ``max_tokens`` (else ``DEFAULT_OUTPUT_TOKENS``), at the catalog's
    prices; judge calls at the judge's."""
    out_tokens = opts.max_tokens or DEFAULT_OUTPUT_TOKENS
    unpriced: list[str] = []

    def price(model: str, usage: Usage) -> float:
        info = catalog.get(model)
        usd = price_tokens(usage, info.price) if info is not None else None
        if usd is None:
            if model not in unpriced:
                unpriced.append(model)
            return 0.0
        return usd

    rubric = count_text(JUDGE_RUBRIC)
    usd = judge_usd = 0.0
    calls = judge_calls = 0
    # (prompt, models asked, how many of them a judge grades, grader)
    jobs = [(p, [m for m in opts.models if not served_as(p, m, catalog)],
             len(opts.models) - (0 if p.answer is not None else 1), p.grader(opts.grader)) for p in prompts]
    jobs += [(r.prompt, r.models, len(r.models), r.how) for r in redos]
    for p, models, graded, how in jobs:
        tokens = count_messages(p.messages)
        calls += len(models)
        usd += sum(price(m, Usage(prompt_tokens=tokens, completion_tokens=out_tokens)) for m in models)
        if how == "judge" and opts.judge_model:
            judge_calls += graded
            judged = Usage(prompt_tokens=rubric + count_text(p.question()) + 2 * out_tokens + 30, completion_tokens=4)
            judge_usd += graded * price(opts.judge_model, judged)
    return Estimate(calls, judge_calls, usd, judge_usd, unpriced)


def served_as(p: Prompt, model: str, catalog: Catalog) -> bool:
    """Whether ``p`` carries the answer ``model`` (the reference or a candidate) was served,
    captured by the gateway: the same name, or a name of the same catalog model. That answer is
    the model's outcome: asking again would pay for an answer the traffic already paid for."""
    if p.served is None:
        return False
    if p.served.model == model:
        return True
    mine = catalog.get(model)
    return mine is not None and catalog.get(p.served.model) == mine


@dataclass
class Summary:
    written: int = 0
    failed: list[str] = field(default_factory=list)  # why each unwritten prompt was not written
    calls: int = 0
    spent: float = 0.0
    judge_spent: float = 0.0
    retried: int = 0  # failed calls asked again (of lines whose new answers were kept)
    recovered: int = 0  # of those, the ones answered this time
    not_retried: list[str] = field(default_factory=list)  # why a line's retried answers were not kept


class Collector:
    """Runs the prompts through ``gateway`` and appends one outcome line per prompt to ``sink``;
    asks the failed calls of earlier lines again into ``redone`` (``retry``)."""

    def __init__(self, gateway: Gateway, opts: Options, sink: IO[str] | None,
                 on_done: Callable[[float], None] | None = None) -> None:
        self.gw = gateway
        self.opts = opts
        self.sink = sink  # may be set after ``retry``: the output is rewritten before it is appended to
        self.on_done = on_done
        self.summary = Summary()
        self.redone: dict[int, dict[str, Any]] = {}  # output line number -> the line with its retried calls
        self._calls = asyncio.Semaphore(opts.concurrency)

    async def _call(self, request: ChatRequest) -> tuple[RequestContext, str | None]:
        """The finished request (its cost, usage, answer) and its error, redacted, when it failed."""
        ctx = RequestContext(request=request, request_id=new_request_id())
        ctx.tenant = "default"
        error: str | None = None
        async with self._calls:
            try:
                await self.gw.run(ctx)  # not handle: a failed call's context (its cost) is kept
            except ThriftyError as exc:
                error = printable(self.gw.redactor(exc.message or type(exc).__name__))
        self.summary.calls += 1
        return ctx, error

    async def answer(self, p: Prompt, model: str) -> dict[str, Any]:
        if p.served is not None and served_as(p, model, self.gw.catalog):
            return self._served(p, p.served)
        params = {"max_tokens": self.opts.max_tokens} if self.opts.max_tokens else {}
        req = ChatRequest(model=model, messages=p.messages, params=params,
                          options={**RAW_OPTIONS, **({"task": p.task} if p.task else {})})
        ctx, error = await self._call(req)
        cost = ctx.cost_usd if ctx.cost_usd is not None else (None if error is None else ctx.spent_usd() or 0.0)
        self.summary.spent += cost or 0.0
        found: dict[str, Any] = {"score": 0.0, "response": "", "cost": cost,
                                 "usage": {"prompt_tokens": ctx.usage.prompt_tokens,
                                           "completion_tokens": ctx.usage.completion_tokens}}
        if error is not None:
            found["error"] = error[:ERROR_CHARS]
        elif ctx.response is not None:
            found["response"] = response_text(ctx.response)
        if found["cost"] is None:
            del found["cost"]  # unknown price: `thrifty eval` estimates it from the usage
        return found

    def _served(self, p: Prompt, served: Served) -> dict[str, Any]:
        """The outcome of the model ``served`` names on ``p`` from the answer the gateway served it
        (captured): no call, its cost as captured, else (a Batch API or flex answer, captured
        without its discounted cost) its usage counted offline at the catalog's list price, as
        the candidates are priced; no cost when that price is unknown too."""
        usage = Usage(prompt_tokens=count_messages(p.messages), completion_tokens=count_text(served.answer))
        cost = served.cost_usd
        if cost is None:
            info = self.gw.catalog.get(served.model)
            cost = price_tokens(usage, info.price) if info is not None else None
        found: dict[str, Any] = {"score": 0.0, "response": served.answer, "cost": cost,
                                 "usage": {"prompt_tokens": usage.prompt_tokens,
                                           "completion_tokens": usage.completion_tokens},
                                 "captured": True}
        if cost is None:
            del found["cost"]  # unknown price: `thrifty eval` estimates it from the usage
        return found

    async def judge(self, p: Prompt, reference: str, candidate: str) -> tuple[float, float, str | None]:
        """(grade, judge cost, note); a judge that fails raises (the prompt is not written)."""
        assert self.opts.judge_model is not None
        scorer = JudgeScorer(self.opts.judge_model, JUDGE_RUBRIC)
        head = f"{p.question()}\n\nReference answer:\n"
        # The judge keeps the last max_chars of this text: a long reference pushed the question,
        # then the reference's start, out of what it was shown. The reference's end is cut instead.
        room = max(scorer.max_chars // 2, scorer.max_chars - len(head))
        shown = ChatRequest(model=scorer.model, messages=[{"role": "user", "content": head + reference[:room]}])
        catalog = self.gw.catalog
        cost = 0.0
        # Shaped for the judge model (internal_calls); sent again, like the gateway's own judge,
        # when its provider refuses a parameter or it reasoned its whole budget away, or when a
        # concurrent prompt's judge call learned that meanwhile (this one then has nothing to learn).
        for lesson in range(MAX_LESSONS + 1):
            shape = shape_for(catalog, scorer.model)
            req = scorer.judge_request(shown, candidate, catalog)
            req = req.copy_with(options={**RAW_OPTIONS, "task": JUDGE_TASK})
            ctx, error = await self._call(req)
            spent = ctx.cost_usd or ctx.spent_usd() or 0.0
            cost += spent
            self.summary.judge_spent += spent
            if lesson == MAX_LESSONS:
                break
            if error is not None and resend_after_error(catalog, scorer.model, shape, error, None, req.params):
                continue
            if error is None and ctx.response is not None and resend_after_reply(catalog, scorer.model, shape,
                                                                                ctx.response):
                continue
            break
        if error is not None:
            raise _NotGraded(f"judge {scorer.model} failed: {error[:200]}")
        reply = response_text(ctx.response or {})
        grade = parse_grade(reply)
        if grade is None:
            return 0.0, cost, f"judge gave no grade: {reply[:80]!r}"
        return grade, cost, None

    async def grade(self, p: Prompt, outcomes: dict[str, dict[str, Any]], how: str, ref_model: str,
                    only: Collection[str]) -> None:
        """Set the scores of the outcomes of ``only`` (the others are kept: graded, maybe judged
        and paid for, by an earlier run) against the prompt's answer, else ``ref_model``'s."""
        if p.answer is not None:
            reference = p.answer
        else:
            ref = outcomes.get(ref_model)
            if isinstance(ref, dict) and "error" in ref:
                raise _NotGraded(f"the reference model {ref_model} failed: {str(ref['error'])[:200]}")
            if not isinstance(ref, dict) or not isinstance(ref.get("response"), str):
                # Only a line edited by hand (collect writes every reference's answer): it cannot
                # be graded, and says so instead of a traceback.
                raise _NotGraded(f"the line holds no answer of the reference model {ref_model}")
            reference = ref["response"]
            ref["score"] = 1.0
        family = detect_family(p.question())
        want = extract_answer(family, reference)
        jobs = []
        for model, o in outcomes.items():
            if model not in only or "error" in o or (model == ref_model and p.answer is None):
                continue
            if how == "exact":
                o["score"] = 1.0 if want is not None and extract_answer(family, o["response"]) == want else 0.0
            elif o["response"].strip() == reference.strip():
                o["score"] = 1.0  # the same text: no judge needed
            else:
                jobs.append((o, self.judge(p, reference, o["response"])))
        for o, (score, cost, note) in zip([j[0] for j in jobs], await asyncio.gather(*(j[1] for j in jobs)),
                                          strict=True):
            o["score"], o["judge_cost"] = score, cost
            if note:
                o["judge_note"] = note

    async def one(self, p: Prompt) -> None:
        models = self.opts.models
        if p.answer is None and self.opts.reference in models:
            # Without an answer the others are graded against the reference: ask it first, so a
            # failing reference does not pay for answers nobody can grade.
            first = {self.opts.reference: await self.answer(p, self.opts.reference)}
            ref = first[self.opts.reference]
            # An empty answer (a content filter; a reasoning model that spent --max-tokens
            # thinking) is no reference either: it was written as right (1.0) and every other
            # answer graded against nothing.
            if "error" in ref or not ref["response"].strip():
                why = f"failed: {ref['error'][:200]}" if "error" in ref else "gave an empty answer"
                self._not_written(p, f"the reference model {self.opts.reference} {why}")
                return
            rest = [m for m in models if m != self.opts.reference]
        else:
            first, rest = {}, models
        answers = dict(zip(rest, await asyncio.gather(*(self.answer(p, m) for m in rest)), strict=True))
        both = {**first, **answers}
        outcomes = {m: both[m] for m in models}
        how = p.grader(self.opts.grader)
        try:
            await self.grade(p, outcomes, how, self.opts.reference, models)
        except _NotGraded as exc:
            self._not_written(p, str(exc))
            return
        line: dict[str, Any] = {}
        if p.id is not None:
            line["id"] = p.id
        line["prompt" if p.text is not None else "messages"] = p.text if p.text is not None else p.messages
        if p.task:
            line["task"] = p.task
        if p.answer is not None:
            line["answer"] = p.answer
        line["grader"] = how
        line["reference"] = "answer" if p.answer is not None else self.opts.reference
        line["outcomes"] = outcomes
        # One write of the whole line, flushed: a line is in the file whole or not at all
        # (a line cut short by a killed process is removed by the next run, read_done).
        assert self.sink is not None
        self.sink.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.sink.flush()
        self.summary.written += 1
        if self.on_done:  # what this run paid: a captured answer was paid by the gateway's traffic
            self.on_done(sum(o.get("cost") or 0.0 for o in outcomes.values() if not o.get("captured")))

    def _not_written(self, p: Prompt, why: str) -> None:
        self.summary.failed.append(f"line {p.line}: {why}")
        if self.on_done:
            self.on_done(0.0)

    async def redo(self, r: Redo) -> None:
        """Ask the failed calls of ``r`` again, grade the new answers, keep the line in ``redone``.
        The line's other answers, its reference and their grades are kept (not paid for again)."""
        answers = await asyncio.gather(*(self.answer(r.prompt, m) for m in r.models))
        outcomes = {m: dict(o) for m, o in r.line["outcomes"].items()}
        outcomes.update(zip(r.models, answers, strict=True))
        ref_model = self.opts.reference if r.reference == "answer" else r.reference
        # A reference asked again (a hand-made line: collect writes none whose reference failed)
        # changes what every other answer is graded against.
        regrade = set(outcomes) if ref_model in r.models and r.prompt.answer is None else set(r.models)
        try:
            await self.grade(r.prompt, outcomes, r.how, ref_model, regrade)
        except _NotGraded as exc:
            self.summary.not_retried.append(f"line {r.lineno}: {exc}")
        else:
            self.redone[r.lineno] = {**r.line, "outcomes": outcomes}
            self.summary.retried += len(r.models)
            self.summary.recovered += sum("error" not in outcomes[m] for m in r.models)
        if self.on_done:
            self.on_done(sum(a.get("cost") or 0.0 for a in answers))

    async def retry(self, redos: list[Redo]) -> Summary:
        """Ask the failed calls of ``redos`` again; the caller writes ``redone`` (``rewrite``)."""
        await self._workers([functools.partial(self.redo, r) for r in redos])
        return self.summary

    async def run(self, prompts: list[Prompt]) -> Summary:
        await self._workers([functools.partial(self.one, p) for p in prompts])
        return self.summary

    async def _workers(self, jobs: list[Callable[[], Awaitable[None]]]) -> None:
        queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)

        async def worker() -> None:
            while not queue.empty():
                await queue.get_nowait()()

        # Prompts in flight: as many as calls may be (each prompt's calls share the call limit).
        await asyncio.gather(*(worker() for _ in range(min(self.opts.concurrency, len(jobs)))))


class _NotGraded(Exception):
    """A prompt whose answers cannot be graded this time (its reference or judge failed)."""
