"""What kind of question a prompt is, read from its format alone, and the normalised answer
a response gives to it.

Used at decision time (no labels needed, so it copes with task names it has never seen):
- ``detect_family(prompt)``: ``mc_multi`` (>= 3 labelled options in the final question),
  ``mc_binary`` (exactly 2 options), ``code`` (asks for a function/program), else ``open``.
- ``extract_answer(family, text)``: the option letter, a code signature (arity of the first
  Python function), or a normalised first line; None when nothing usable is in the answer
  (which cascades treat as a failed answer).
Few-shot prompts repeat worked examples first, so only the last block is read.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

FAMILIES = ("mc_multi", "mc_binary", "code", "open")

_OPT_RE = re.compile(r"^\s*\(?([A-Ha-h1-8])[\)\.:]\s+\S", re.M)
_CODE_RE = re.compile(
    r"\b(write|implement|create|complete)\b[^.\n]{0,40}\b(python\s+)?(function|program|method|class|script|code)\b",
    re.I,
)


def last_block(prompt: str) -> str:
    """The final paragraph of a prompt (the actual question of a few-shot prompt)."""
    return re.split(r"\n\s*\n", prompt.strip())[-1]


def detect_family(prompt: str) -> str:
    last = last_block(prompt)
    labels = _OPT_RE.findall(last)
    if len(labels) >= 2:
        return "mc_binary" if len(labels) == 2 else "mc_multi"
    if _CODE_RE.search(last[:400]):
        return "code"
    return "open"


_LEAD_RE = re.compile(
    r"^\s*(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)?\s*(?:is)?\s*[:\-]?\s*[\(\[\"'*]*([A-Ha-h]|[1-8])(?![A-Za-z0-9])",
    re.I,
)
_ANYWHERE_RE = re.compile(r"(?:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*[\(\[\"'*]*([A-H]|[1-8])(?![A-Za-z0-9])", re.I)


def extract_option(text: str) -> str | None:
    """The option letter an answer picks ("B", "(b) ...", "The answer is 2" -> "B"), or None."""
    t = text.strip()
    if not t:
        return None
    m = _LEAD_RE.match(t) or _ANYWHERE_RE.search(t[:300])
    if not m:
        return None
    raw = m.group(1)
    if raw.islower():
        # A lower-case letter is an option only when marked as one ("(c)", "c)", "c." or alone),
        # not a word starting a sentence ("a whale is...").
        before = t[m.start(1) - 1 : m.start(1)]
        after = t[m.end(1) : m.end(1) + 1]
        if not (before in ("(", "[") or after in (")", "]", ".", ":", "")):
            return None
    letter = raw.upper()
    # Numbered options map to letters so that "2" and "B" agree.
    return "ABCDEFGH"[int(letter) - 1] if letter.isdigit() else letter


_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+#-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_TAG_RE = re.compile(r"\[PYTHON\](.*?)(?:\[/PYTHON\]|\Z)", re.S)
_NOT_PYTHON = {"javascript", "js", "java", "cpp", "c++", "c", "csharp", "c#", "go", "rust", "ruby", "php",
               "typescript", "ts", "kotlin", "swift", "bash", "sh", "sql", "r", "scala"}
_OTHER_LANG_RE = re.compile(r"^\s*(function |#include|public |using namespace)", re.M)


def python_blocks(text: str) -> list[str]:
    """Candidate Python sources in an answer: fenced blocks, [PYTHON] tags, else the whole text."""
    blocks = [body for lang, body in _FENCE_RE.findall(text) if lang.lower() not in _NOT_PYTHON]
    blocks += _TAG_RE.findall(text)
    return blocks or [text]


def parse_python(src: str) -> ast.Module | None:
    """Parse Python, forgiving a truncated tail (drop up to 8 trailing lines)."""
    lines = src.rstrip().split("\n")
    for cut in range(len(lines), max(len(lines) - 8, 0), -1):
        try:
            return ast.parse("\n".join(lines[:cut]))
        except SyntaxError:
            continue
        except (ValueError, RecursionError, MemoryError):
            return None
    return None


def code_signature(text: str) -> str | None:
    """``f<n>`` for the first top-level Python function (n = its arity), ``class``, or None."""
    for block in python_blocks(text):
        if _OTHER_LANG_RE.search(block):
            continue
        tree = parse_python(block)
        if tree is None:
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                return f"f{len(a.posonlyargs) + len(a.args) + (1 if a.vararg else 0)}"
            if isinstance(node, ast.ClassDef):
                return "class"
    return None


_JSON_FENCE_RE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```\s*$", re.S)
# Punctuation is dropped, except a decimal point between digits: "41.94" is not "4194".
_PUNCT_RE = re.compile(r"[^a-z0-9 .]+|(?<!\d)\.|\.(?!\d)")


def parse_json_answer(text: str, *, bare: bool = False) -> Any:
    """The JSON value in an answer (a ```json fence is allowed); raises ValueError if none.
    ``bare``: the answer must be JSON and nothing else (whitespace aside), as a client that asked
    for a ``response_format`` reads it (``json.loads(message.content)``, ``.parse``)."""
    t = text.strip()
    m = None if bare else _JSON_FENCE_RE.match(t)
    return json.loads(m.group(1) if m else t)


def canonical_json(text: str) -> str | None:
    """``json:`` and the JSON object or array an answer is (a ```json fence allowed), with keys
    sorted and spacing dropped; None when the answer is not one. Two extractions with the same
    values in another key order or layout agree; a different value anywhere does not."""
    if not text.lstrip().startswith(("{", "[", "```")):  # most answers: no parse attempted
        return None
    try:
        value = parse_json_answer(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict | list):
        return None
    return "json:" + json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def normalise_free(text: str) -> str | None:
    """An open answer's comparable form: a JSON answer whole and canonical (its first line of a
    pretty-printed object is a lone "{", and the 80-character cut of a long one hid its values),
    else the first line, lower-cased, punctuation dropped, at most 80 characters."""
    js = canonical_json(text)
    if js is not None:
        return js
    first = text.strip().split("\n")[0].lower()
    first = re.sub(r"\s+", " ", _PUNCT_RE.sub(" ", first)).strip()
    return first[:80] or None


def extract_answer(family: str, text: str | None) -> str | None:
    if not text:
        return None
    if family in ("mc_multi", "mc_binary"):
        return extract_option(text)
    if family == "code":
        return code_signature(text)
    return normalise_free(text)


def agreement_pattern(answers: list[str | None], *, raw: bool = False) -> str:
    """The state of a cascade after some answers: ``("B","B",None)`` -> ``"0,0,x"`` (canonical:
    which answers agree), or ``"B,B,x"`` when ``raw`` (keeps letters: models have strong position
    biases on two-option questions). The empty list is the start state ``""``."""
    if raw:
        return ",".join("x" if a is None else a for a in answers)
    labels: dict[str, str] = {}
    out = []
    for a in answers:
        if a is None:
            out.append("x")
        else:
            out.append(labels.setdefault(a, str(len(labels))))
    return ",".join(out)
