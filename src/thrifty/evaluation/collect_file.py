"""The outcome file of ``thrifty outcomes collect`` (evaluation/collect.py): what an earlier run
left in it (``read_done``, ``pending``), its failed calls to ask again (``failed_lines``,
``Redo``), and replacing lines of it without ever leaving it half written (``rewrite``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from thrifty.errors import DataError
from thrifty.evaluation.collect import Options, Prompt, id_key, messages_digest
from thrifty.jsonl import iter_jsonl, text_lines

log = logging.getLogger("thrifty.evaluation.collect")


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
        found = _line_messages(obj)
        if found is None:
            continue  # neither messages nor prompt: no prompt of the file is this line's
        digest = messages_digest(found[0])
        if obj.get("id") is not None:
            ids[id_key(obj["id"])] = digest
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
            key = id_key(p.id)
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
class Redo:
    """A line of the output with failed calls: those models are asked again, the rest is kept."""

    lineno: int  # 1-based, in the output
    line: dict[str, Any]
    prompt: Prompt
    models: list[str]  # the models whose call failed
    how: str  # the line's grader (exact or judge)
    reference: str  # the line's reference model, or "answer"


def _line_messages(obj: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None] | None:
    """An output line's messages, and its ``prompt`` text (None when it holds ``messages``), as
    ``load_prompts`` reads a prompts line (so the digests match); None when it has neither."""
    if isinstance(obj.get("messages"), list):
        return obj["messages"], None
    text = obj.get("prompt")
    return ([{"role": "user", "content": text}], text) if isinstance(text, str) else None


def _line_prompt(obj: dict[str, Any], lineno: int) -> Prompt | None:
    """The prompt an output line was collected for (None when the line has neither
    ``messages`` nor ``prompt``: nothing to ask again)."""
    found = _line_messages(obj)
    if found is None:
        return None
    messages, text = found
    answer = obj.get("answer")
    pid = obj.get("id")
    return Prompt(lineno, messages, text, obj.get("task") if isinstance(obj.get("task"), str) else None,
                  answer if isinstance(answer, str) else None,
                  pid if isinstance(pid, str | int) and not isinstance(pid, bool) else None,
                  messages_digest(messages))


def failed_lines(out: Path, opts: Options) -> list[Redo]:
    """The lines of ``out`` (as ``read_done`` left it) holding a failed call (``error``), to ask
    those models again. Taken from the line itself, not the prompts file: the line is what is redone."""
    redos: list[Redo] = []
    if not out.exists():
        return redos
    for n, obj in iter_jsonl(out, "outcomes file"):
        outcomes = obj.get("outcomes") if isinstance(obj, dict) else None
        if not isinstance(outcomes, dict):
            continue
        models = [m for m, o in outcomes.items() if isinstance(o, dict) and "error" in o]
        p = _line_prompt(obj, n) if models else None
        if p is None:
            continue
        how = obj.get("grader") if obj.get("grader") in ("exact", "judge") else p.grader(opts.grader)
        ref = obj.get("reference")
        reference = ref if isinstance(ref, str) and (ref in outcomes or ref == "answer") else opts.reference
        redos.append(Redo(n, obj, p, models, how, reference))
    return redos


def failed_calls(out: Path) -> int:
    """How many failed calls (outcomes with an ``error``) ``out`` holds."""
    if not out.exists():
        return 0
    return sum(1 for _, obj in iter_jsonl(out, "outcomes file") if isinstance(obj, dict)
               for o in (obj.get("outcomes") or {}).values() if isinstance(o, dict) and "error" in o)


def rewrite(out: Path, lines: dict[int, dict[str, Any]]) -> None:
    """Replace lines of ``out`` (by 1-based number), the others kept byte for byte. The new text
    is written to a file beside ``out``, synced, then renamed over it: ``out`` is the old file or
    the new one, never half of either, whatever interrupts the write (Ctrl-C, SIGTERM, a kill)."""
    if not lines:
        return
    rows = out.read_bytes().decode("utf-8").split("\n")  # as read_done numbered them (text_lines)
    for n, obj in lines.items():
        rows[n - 1] = json.dumps(obj, ensure_ascii=False)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write("\n".join(rows))
            fh.flush()
            os.fsync(fh.fileno())
        shutil.copymode(out, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a second Ctrl-C mid-write: OUT is untouched, no litter
        raise
    _sync_dir(out.parent)


def _sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can: not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
