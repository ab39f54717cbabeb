"""Outcome data from a team's own prompts (``thrifty outcomes collect``, docs/cli.md).

Per prompt, every candidate model and the reference model are called through the gateway by
name, with the cache and compression off (so each answer is the model's own), and each answer
is graded against the prompt's ``answer`` or, without one, the reference model's answer:
``exact`` compares normalised answers (``routing.formats``: option letters, code signatures,
first lines), ``judge`` asks a judge model for a 0-10 grade (``scoring.judge``). A prompt's line
is appended to the output, whole, once all its calls are done, so an interrupted run resumes
from the lines already there (by ``id``, else by a hash of the messages).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from thrifty.catalog import Catalog
from thrifty.cost import price_tokens
from thrifty.errors import DataError, InvalidRequestError, ThriftyError, printable
from thrifty.jsonl import iter_jsonl, text_lines
from thrifty.ledger.records import ERROR_CHARS
from thrifty.pipeline.context import RequestContext, new_request_id
from thrifty.routing.formats import detect_family, extract_answer
from thrifty.scoring.judge import JudgeScorer, parse_grade
from thrifty.tokens import content_text, count_messages, count_text
from thrifty.types import ChatRequest, Usage, response_text

if TYPE_CHECKING:
    from thrifty.gateway import Gateway

GRADERS = ("auto", "exact", "judge")
# Completion tokens an answer is estimated at when --max-tokens is not given (as the budget guard).
DEFAULT_OUTPUT_TOKENS = 256
# Calls made with these options see no cache and no compression: each answer is the model's own.
RAW_OPTIONS = {"cache": False, "compress": False}
log = logging.getLogger("thrifty.evaluation.collect")

JUDGE_TASK = "outcomes-judge"  # the ledger's task of the judge calls
JUDGE_RUBRIC = (
    "You grade answers against a reference answer. Given a user's request, the reference answer and "
    "a candidate answer, rate how well the candidate agrees with the reference (same result, nothing "
    "wrong added), from 0 (wrong or useless) to 10 (as good as the reference). Reply with the number only."
)


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

    def question(self) -> str:
        return next((content_text(m.get("content")) for m in reversed(self.messages) if m.get("role") == "user"), "")

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


def _id_key(value: str | int) -> str:
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
            key = _id_key(pid)
            if key in seen:
                raise DataError(f"{at}: id {pid!r} is also the id of line {seen[key]}")
            seen[key] = n
        prompts.append(Prompt(n, messages, text, task or None, answer, pid, messages_digest(messages)))
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def read_done(out: Path, models: list[str]) -> tuple[dict[str, str], Counter[str], int]:
    """What an earlier run left in ``out``: ids done (id key -> digest), digests of lines done
    without an id, and the number of lines. A last line cut short (a killed process) is removed;
    a line of other models is refused (the file would mix two sets of outcomes)."""
    ids: dict[str, str] = {}
    digests: Counter[str] = Counter()
    if not out.exists() or out.stat().st_size == 0:
        return ids, digests, 0
    # Bytes decoded as they are, not read_text: its newline translation drops the \r of CRLF
    # lines (a file written on Windows or edited there), and the cut below, counted in the
    # translated text, then fell short and left half a line, which the next run took a whole one for.
    raw = out.read_bytes().decode("utf-8")
    lines = text_lines(raw)
    if lines and not raw.endswith("\n"):
        if _whole(lines[-1]):
            with open(out, "a", encoding="utf-8") as fh:  # a complete line without its newline (edited by hand)
                fh.write("\n")
        else:
            # Cut short by a killed process: dropped, its prompt runs again.
            log.warning("%s: its last line was cut short (an interrupted write): removed, its prompt runs again", out)
            with open(out, "r+b") as fh:
                fh.truncate(len(raw[: raw.rfind("\n") + 1].encode("utf-8")))
            lines.pop()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise DataError(f"{out}: line {n}: not a JSON line; is it an outcomes file of `thrifty outcomes "
                            f"collect`? (use another --out)") from None
        outcomes = obj.get("outcomes") if isinstance(obj, dict) else None
        if not isinstance(outcomes, dict):
            raise DataError(f"{out}: line {n}: no 'outcomes'; use another --out")
        if sorted(outcomes) != sorted(models):
            raise DataError(f"{out}: line {n} holds outcomes of {', '.join(sorted(outcomes))}, this run collects "
                            f"{', '.join(sorted(models))}: use another --out (or the same --models and --reference)")
        messages = obj["messages"] if isinstance(obj.get("messages"), list) else \
            [{"role": "user", "content": obj.get("prompt")}]
        digest = messages_digest(messages)
        if obj.get("id") is not None:
            ids[_id_key(obj["id"])] = digest
        else:
            digests[digest] += 1
    return ids, digests, sum(1 for x in lines if x.strip())


def _whole(line: str) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("outcomes"), dict)


def pending(prompts: list[Prompt], out: Path, ids: dict[str, str], digests: Counter[str]) -> list[Prompt]:
    """The prompts not yet in the output. An id in the output that holds another prompt is refused."""
    left = Counter(digests)
    todo = []
    for p in prompts:
        if p.id is not None:
            key = _id_key(p.id)
            if key not in ids:
                todo.append(p)
            elif ids[key] != p.digest:
                raise DataError(f"{out}: id {p.id!r} holds another prompt than line {p.line} of the prompts file: "
                                "use another --out")
        elif left[p.digest] > 0:
            left[p.digest] -= 1  # the same prompt twice without ids: each occurrence is one line
        else:
            todo.append(p)
    return todo


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


def estimate(prompts: list[Prompt], opts: Options, catalog: Catalog) -> Estimate:
    """The spend of collecting ``prompts``: prompts counted offline, answers of ``max_tokens``
    (else ``DEFAULT_OUTPUT_TOKENS``), at the catalog's prices; judge calls at the judge's."""
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
    judge_calls = 0
    for p in prompts:
        tokens = count_messages(p.messages)
        usd += sum(price(m, Usage(prompt_tokens=tokens, completion_tokens=out_tokens)) for m in opts.models)
        if p.grader(opts.grader) == "judge" and opts.judge_model:
            graded = len(opts.models) - (0 if p.answer is not None else 1)
            judge_calls += graded
            judged = Usage(prompt_tokens=rubric + count_text(p.question()) + 2 * out_tokens + 30, completion_tokens=4)
            judge_usd += graded * price(opts.judge_model, judged)
    return Estimate(len(prompts) * len(opts.models), judge_calls, usd, judge_usd, unpriced)


@dataclass
class Summary:
    written: int = 0
    failed: list[str] = field(default_factory=list)  # why each unwritten prompt was not written
    calls: int = 0
    spent: float = 0.0
    judge_spent: float = 0.0


class Collector:
    """Runs the prompts through ``gateway`` and appends one outcome line per prompt to ``sink``."""

    def __init__(self, gateway: Gateway, opts: Options, sink: IO[str],
                 on_done: Callable[[float], None] | None = None) -> None:
        self.gw = gateway
        self.opts = opts
        self.sink = sink
        self.on_done = on_done
        self.summary = Summary()
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
        params = {"max_tokens": self.opts.max_tokens} if self.opts.max_tokens else {}
        req = ChatRequest(model=model, messages=p.messages, params=params,
                          options={**RAW_OPTIONS, **({"task": p.task} if p.task else {})})
        ctx, error = await self._call(req)
        cost = ctx.cost_usd if ctx.cost_usd is not None else (None if error is None else ctx.spent_usd() or 0.0)
        self.summary.spent += cost or 0.0
        info = self.gw.catalog.get(model)
        own = info.name if info is not None else model
        if error is None and ctx.served_model not in (None, own):
            error = (f"answered by {ctx.served_model} (a fallback of {model} in the config), not by {model}: "
                     "recorded as failed")
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

    async def judge(self, p: Prompt, reference: str, candidate: str) -> tuple[float, float, str | None]:
        """(grade, judge cost, note); a judge that fails raises (the prompt is not written)."""
        assert self.opts.judge_model is not None
        scorer = JudgeScorer(self.opts.judge_model, JUDGE_RUBRIC)
        head = f"{p.question()}\n\nReference answer:\n"
        # The judge keeps the last max_chars of this text: a long reference pushed the question,
        # then the reference's start, out of what it was shown. The reference's end is cut instead.
        room = max(scorer.max_chars // 2, scorer.max_chars - len(head))
        shown = ChatRequest(model=scorer.model, messages=[{"role": "user", "content": head + reference[:room]}])
        req = scorer.judge_request(shown, candidate)
        req = req.copy_with(options={**RAW_OPTIONS, "task": JUDGE_TASK})
        ctx, error = await self._call(req)
        cost = ctx.cost_usd or ctx.spent_usd() or 0.0
        self.summary.judge_spent += cost
        if error is not None:
            raise _NotGraded(f"judge {scorer.model} failed: {error[:200]}")
        reply = response_text(ctx.response or {})
        grade = parse_grade(reply)
        if grade is None:
            return 0.0, cost, f"judge gave no grade: {reply[:80]!r}"
        return grade, cost, None

    async def grade(self, p: Prompt, outcomes: dict[str, dict[str, Any]]) -> str:
        """Set every outcome's score; returns the grader used."""
        how = p.grader(self.opts.grader)
        ref_model = self.opts.reference
        if p.answer is not None:
            reference = p.answer
        else:
            ref = outcomes[ref_model]
            if "error" in ref:
                raise _NotGraded(f"the reference model {ref_model} failed: {ref['error'][:200]}")
            reference = ref["response"]
            ref["score"] = 1.0
        family = detect_family(p.question())
        want = extract_answer(family, reference)
        jobs = []
        for model, o in outcomes.items():
            if "error" in o or (model == ref_model and p.answer is None):
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
        return how

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
        try:
            how = await self.grade(p, outcomes)
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
        self.sink.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.sink.flush()
        self.summary.written += 1
        if self.on_done:
            self.on_done(sum(o.get("cost") or 0.0 for o in outcomes.values()))

    def _not_written(self, p: Prompt, why: str) -> None:
        self.summary.failed.append(f"line {p.line}: {why}")
        if self.on_done:
            self.on_done(0.0)

    async def run(self, prompts: list[Prompt]) -> Summary:
        queue: asyncio.Queue[Prompt] = asyncio.Queue()
        for p in prompts:
            queue.put_nowait(p)

        async def worker() -> None:
            while not queue.empty():
                await self.one(queue.get_nowait())

        # Prompts in flight: as many as calls may be (each prompt's calls share the call limit).
        await asyncio.gather(*(worker() for _ in range(min(self.opts.concurrency, len(prompts)))))
        return self.summary


class _NotGraded(Exception):
    """A prompt whose answers cannot be graded this time (its reference or judge failed)."""


def per_model(out: Path) -> dict[str, dict[str, float]]:
    """Per model over every line of ``out``: prompts, mean score, mean cost, errors."""
    sums: dict[str, dict[str, float]] = {}
    for _, obj in iter_jsonl(out, "outcomes file"):
        for model, o in obj.get("outcomes", {}).items():
            s = sums.setdefault(model, {"prompts": 0, "score": 0.0, "cost": 0.0, "errors": 0})
            s["prompts"] += 1
            s["score"] += float(o.get("score") or 0.0)
            s["cost"] += float(o.get("cost") or 0.0)
            s["errors"] += 1 if o.get("error") else 0
    return {m: {"prompts": s["prompts"], "mean_score": s["score"] / s["prompts"],
                "mean_cost": s["cost"] / s["prompts"], "errors": s["errors"]} for m, s in sums.items()}


def open_sink(out: Path) -> IO[str]:
    """``out`` opened for appending lines (created when missing)."""
    return open(out, "a", encoding="utf-8")
