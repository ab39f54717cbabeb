"""Semantic cache on adversarial near-duplicates: WinoGrande twins (must never be served) and ARC duplicates.

    .venv/bin/python bench/cache_adversarial.py --write
    .venv/bin/python bench/cache_adversarial.py --embedders lexical --verifier FILE   # a quick check

The pairs are derived at run time from the RouterBench CSVs of the data folder
($THRIFTY_DATA_DIR, else ../shared/data; nothing is copied into the repository):

- hard negatives (label 0): WinoGrande "twins". Each prompt is few-shot; its final question (the
  last blank-line-separated block, without the answer instruction) is kept with its options. A
  twin is the most similar *other* final question (TF-IDF cosine over the question sentences,
  identical questions left out) when that cosine is at least 0.8: the two differ by a word or two
  ("... the _ was too huge." / "... the _ was too tiny.") and have opposite answers, so serving one's
  cached answer for the other is always wrong. Each unordered pair is taken once.
- true positives (label 1): ARC-Challenge final questions that occur word for word, with the same
  options, in two rows (RouterBench repeats some), one pair per repeat.

Each setting is evaluated as `thrifty cache eval --pairs PAIRS.jsonl` does (every text_a cached, every
text_b looked up; the hard vetoes of thrifty/cache/vetoes.py apply): the shipped rule verifier with the
lexical embedder and with MiniLM (when the embeddings extra is installed), and a lexical verifier fitted
by `thrifty cache calibrate --pairs qqp/pairs_dev.jsonl --embedder lexical` (its defaults). That
calibration takes minutes, so the fitted verifier is kept in .thrifty-cache/bench/ (removed by
`make clean`) under a key of the pairs file, the calibration settings and the source of thrifty's
cache and embeddings packages: any change to them fits it again.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
# bench/ last (as in cache_eval.py): a bench script must not shadow a package of the same name.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"] + [str(ROOT / "bench")]

from mdreport import write_section  # noqa: E402
from thrifty.cache.config import DEFAULT_CONFIDENCE, DEFAULT_MAX_FALSE_HIT_RATE, DEFAULT_TOP_K  # noqa: E402
from thrifty.cache.evaluation import decide_all, decisions  # noqa: E402
from thrifty.cache.pairs import Pair  # noqa: E402
from thrifty.cache.verifier import HitVerifier, LearnedVerifier, RuleVerifier  # noqa: E402
from thrifty.cache.vetoes import vetoes  # noqa: E402
from thrifty.embeddings import build_embedder  # noqa: E402
from thrifty.embeddings.base import Embedder, sentence_extra_installed  # noqa: E402

CACHE_DIR = ROOT / ".thrifty-cache" / "bench"
TWIN_MIN_COSINE = 0.8
# The answer instruction closing every RouterBench multiple-choice prompt ("Print only a single
# choice from "A" or "B" without explanation. Answer:"): the same in every prompt, not the question.
_INSTRUCTION = re.compile(r"\n?Print only a single choice.*$", re.S)
_OPTION = re.compile(r"^[A-E]\) ")


class Question(NamedTuple):
    """A prompt's final question: its sentence(s) and its option lines. (A NamedTuple, not a
    dataclass: the tests load this script by path, without a sys.modules entry for dataclasses.)"""

    row: int
    stem: str
    options: tuple[str, ...]

    @property
    def text(self) -> str:
        """What the cache sees: the question with its options, one a line."""
        return "\n".join([self.stem, *self.options])


def final_question(prompt: str) -> tuple[str, tuple[str, ...]]:
    """The last blank-line-separated block of a few-shot prompt (the worked examples come first,
    each ending in its answer letter), without the answer instruction: its question and options."""
    block = _INSTRUCTION.sub("", prompt.strip().split("\n\n")[-1]).strip()
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    options = tuple(line for line in lines if _OPTION.match(line))
    stem = " ".join(line for line in lines if not _OPTION.match(line))
    return stem, options


def read_questions(path: Path) -> list[Question]:
    """One final question per CSV row (``prompt`` is a list-literal string of one prompt text)."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for i, row in enumerate(rows):
        parts = ast.literal_eval(row["prompt"])
        stem, options = final_question(parts[-1] if isinstance(parts, list) else str(parts))
        if stem:
            out.append(Question(i, stem, options))
    return out


def twins(questions: list[Question], min_cosine: float = TWIN_MIN_COSINE) -> list[Pair]:
    """Hard negatives: each question with its most similar non-identical other question, when their
    TF-IDF cosine (over the question sentences: the options name the same two candidates) reaches
    ``min_cosine``; each unordered pair once, label 0."""
    if len(questions) < 2:
        return []
    stems = [q.stem for q in questions]
    x = TfidfVectorizer().fit_transform(stems)
    sims = (x @ x.T).toarray()
    key = np.array([" ".join(s.lower().split()) for s in stems])
    sims[key[:, None] == key[None, :]] = -1.0  # itself and its word-for-word repeats are not twins
    out, seen = [], set()
    for i in range(len(questions)):
        j = int(np.argmax(sims[i]))
        pair = (min(i, j), max(i, j))
        if sims[i, j] >= min_cosine and pair not in seen:
            seen.add(pair)
            out.append(Pair(questions[pair[0]].text, questions[pair[1]].text, 0))
    return out


def duplicates(questions: list[Question]) -> list[Pair]:
    """True positives: a question repeated word for word with the same options, label 1 (the first
    occurrence paired with each later one)."""
    first: dict[str, Question] = {}
    out = []
    for q in questions:
        if q.text in first:
            out.append(Pair(first[q.text].text, q.text, 1))
        else:
            first[q.text] = q
    return out


_LETTER = re.compile(r"^\W*([A-E])(?![A-Za-z])")


def correct_options(path: Path) -> dict[str, set[str]]:
    """Per final question text, the option texts that some model scored correct answered (its
    response opens with the letter). Only to check the twins' labels after the fact: no decision
    of the cache reads it."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    models = [c[: -len("|model_response")] for c in (rows[0] if rows else {}) if c.endswith("|model_response")]
    out: dict[str, set[str]] = {}
    for q in read_questions(path):
        row = rows[q.row]
        options = {o[0]: o[3:] for o in q.options}
        for m in models:
            if row.get(m) not in ("1", "1.0"):
                continue
            parts = ast.literal_eval(row[f"{m}|model_response"] or "['']")
            found = _LETTER.match(str(parts[0] if isinstance(parts, list) and parts else parts))
            if found and found.group(1) in options:
                out.setdefault(q.text, set()).add(options[found.group(1)])
    return out


def label_check(pairs: list[Pair], answers: dict[str, set[str]]) -> tuple[int, int, int]:
    """(twins whose right answers differ, twins with a right answer in common, twins not known)."""
    differ = common = unknown = 0
    for p in pairs:
        a, b = answers.get(p.text_a), answers.get(p.text_b)
        if not a or not b:
            unknown += 1
        elif a & b:
            common += 1
        else:
            differ += 1
    return differ, common, unknown


def wilson_upper(k: int, n: int, z: float = 1.959964) -> float:
    """Upper end of the Wilson 95% interval of a rate k/n (0 of 125 is at most 3.0%, not 0)."""
    if n == 0:
        return float("nan")
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def _fingerprint(pairs_file: Path, settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(pairs_file.read_bytes())
    for package in ("cache", "embeddings"):
        for src in sorted((ROOT / "src" / "thrifty" / package).rglob("*.py")):
            h.update(src.relative_to(ROOT).as_posix().encode())
            h.update(src.read_bytes())
    return h.hexdigest()[:16]


def qqp_verifier(data: Path, embedder: Embedder) -> tuple[LearnedVerifier, str]:
    """The verifier `thrifty cache calibrate --pairs qqp/pairs_dev.jsonl` fits (its defaults), fitted
    once per fingerprint and kept in CACHE_DIR; and where it is kept."""
    from thrifty.cache.calibrate import calibrate
    from thrifty.cache.pairs import read_pairs

    pairs_file = data / "qqp" / "pairs_dev.jsonl"
    settings = {"embedder": embedder.name, "max_false_hit_rate": DEFAULT_MAX_FALSE_HIT_RATE, "model": "auto",
                "folds": 5, "margin": 1.0, "top_k": DEFAULT_TOP_K, "confidence": DEFAULT_CONFIDENCE}
    path = CACHE_DIR / f"qqp-verifier-{embedder.name.replace(':', '_').replace('/', '_')}-" \
                       f"{_fingerprint(pairs_file, settings)}.json"
    if not path.exists():
        print(f"calibrating on {pairs_file} (minutes; kept in {path.relative_to(ROOT)})", flush=True)
        cal = calibrate(read_pairs(pairs_file), embedder, max_false_hit_rate=DEFAULT_MAX_FALSE_HIT_RATE,
                        model="auto", folds=5, margin=1.0, top_k=DEFAULT_TOP_K, confidence=DEFAULT_CONFIDENCE,
                        progress=lambda m: print(m, flush=True))
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        cal.verifier.save(tmp)
        tmp.replace(path)
        for stale in CACHE_DIR.glob(path.name.rsplit("-", 1)[0] + "-*.json"):
            if stale != path:  # fitted on other code or data: never read again
                stale.unlink()
    else:
        print(f"{path.relative_to(ROOT)}: the QQP-calibrated verifier, fitted earlier", flush=True)
    return LearnedVerifier.load(path), str(path.relative_to(ROOT))


def evaluate(name: str, pairs: list[Pair], embedder: Embedder, verifier: HitVerifier) -> dict[str, Any]:
    """One setting, as `thrifty cache eval` runs it: every text_a cached, every text_b looked up, a
    pair's hit = text_b answered with text_a's answer at the verifier's own threshold."""
    t0 = time.perf_counter()
    lookups, _ = decide_all(pairs, embedder, verifier)
    hit, served = decisions(pairs, lookups, verifier.threshold)
    neg = [i for i, p in enumerate(pairs) if p.label == 0]
    pos = [i for i, p in enumerate(pairs) if p.label == 1]
    false_hits = [i for i in neg if hit[i]]
    return {
        "setting": name, "embedder": embedder.name, "verifier": verifier.name,
        "threshold": float(verifier.threshold), "twins": len(neg), "duplicates": len(pos),
        "false_hits": len(false_hits), "false_hit_upper95": wilson_upper(len(false_hits), len(neg)),
        "twins_served_any": int(served[neg].sum()),
        "duplicates_served": int(hit[pos].sum()),
        "false_hit_examples": [{"text_a": pairs[i].text_a, "text_b": pairs[i].text_b,
                                "score": lookups[i].score_of(pairs[i].text_a)} for i in false_hits[:5]],
        "seconds": time.perf_counter() - t0,
    }


def veto_counts(pairs: Iterable[Pair]) -> dict[str, int]:
    """How many twins each hard veto separates (a pair may have several reasons; "none": the
    verifier alone decides)."""
    counts: dict[str, int] = {}
    for p in pairs:
        for reason in vetoes(p.text_a, p.text_b) or ["none"]:
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def without_options(pairs: list[Pair]) -> list[Pair]:
    """The same pairs, question sentences only: how the cache does when no option line is shared."""
    return [Pair(p.text_a.split("\n")[0], p.text_b.split("\n")[0], p.label) for p in pairs]


def derive(data: Path) -> tuple[list[Pair], list[Pair]]:
    """(WinoGrande twins, ARC duplicates) from the data folder's RouterBench CSVs."""
    folder = data / "routerbench"
    return twins(read_questions(folder / "winograde_train.csv")), duplicates(
        read_questions(folder / "arc_challenge_train.csv"))


def _pct(x: float) -> str:
    return f"{x:.1%}" if math.isfinite(x) else "n/a"


def render(results: list[dict[str, Any]], n_twins: int, n_dups: int, vetoed: dict[str, dict[str, int]],
           skipped: list[str], checked: tuple[int, int, int]) -> str:
    lines = [f"{n_twins} WinoGrande twins (hard negatives: final questions of `winograde_train.csv` whose most "
             f"similar other final question has TF-IDF cosine >= {TWIN_MIN_COSINE} and is not identical; they differ "
             "by a word or two and have opposite answers) and "
             f"{n_dups} ARC-Challenge duplicates (final questions of `arc_challenge_train.csv` repeated word for word "
             "with the same options), derived at run time from ../shared/data/routerbench. Each setting runs what "
             "`thrifty cache eval --pairs PAIRS.jsonl` runs: every text_a cached, every text_b looked up, hard vetoes "
             "applied, the verifier at its own threshold. `with options`: the question and its option lines, as "
             "the prompt gives them; `question only`: the sentence alone (no option line shared). The QQP-calibrated "
             "verifier is `thrifty cache calibrate --pairs qqp/pairs_dev.jsonl --embedder lexical` (defaults), "
             "fitted once and kept in .thrifty-cache/bench/.", "",
             f"Labels checked after the fact against the option a model scored correct chose: the right answers "
             f"differ for {checked[0]} twins, are the same for {checked[1]}, unknown for {checked[2]} (no model right "
             "on one of the two).", "",
             "| setting | text | verifier | threshold | twins | false hits | false-hit rate (95% upper) | "
             "twins served any entry | duplicates | duplicate hit rate |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        dup_rate = r["duplicates_served"] / r["duplicates"] if r["duplicates"] else float("nan")
        lines.append(f"| {r['setting']} | {r['form']} | {r['verifier']} | {r['threshold']:.4f} | {r['twins']} | "
                     f"{r['false_hits']} | {_pct(r['false_hits'] / r['twins'] if r['twins'] else float('nan'))} "
                     f"({_pct(r['false_hit_upper95'])}) | {r['twins_served_any']} | {r['duplicates']} | "
                     f"{_pct(dup_rate)} |")
    lines += ["", "Hard vetoes separating the twins (a twin may have several; `none`: left to the verifier): "
              + "; ".join(f"{form}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                          for form, counts in vetoed.items()) + ".",
              "", "A false hit is a twin answered with its other twin's cached answer: always a wrong answer. "
              "The upper bound is Wilson's 95% interval: no false hit in 125 twins still allows up to 3%. "
              "`twins served any entry` counts lookups that served some cached answer (another pair's twin too)."]
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedders", default="lexical,minilm", help="rule-verifier settings to run")
    ap.add_argument("--verifier", type=Path, help="use this verifier file (from `cache calibrate` with the lexical "
                    "embedder) instead of fitting one on the QQP pairs")
    ap.add_argument("--no-calibrated", action="store_true", help="skip the QQP-calibrated setting")
    ap.add_argument("--write", action="store_true", help="write the results to docs/benchmarks.md")
    args = ap.parse_args()
    data = Path(os.environ.get("THRIFTY_DATA_DIR") or ROOT.parent / "shared" / "data")
    twin_pairs, dup_pairs = derive(data)
    forms = {"with options": twin_pairs + dup_pairs, "question only": without_options(twin_pairs + dup_pairs)}
    print(f"{len(twin_pairs)} twins, {len(dup_pairs)} duplicates", flush=True)
    settings: list[tuple[str, Embedder, HitVerifier]] = []
    skipped: list[str] = []
    for spec in [s.strip() for s in args.embedders.split(",") if s.strip()]:
        if spec != "lexical" and not sentence_extra_installed():
            # MiniLM loads lazily: without the extra it would fail mid-run. Say so, run the rest.
            skipped.append(f"rules, {spec} (the embeddings extra is not installed)")
            continue
        emb = build_embedder(spec)
        settings.append((f"rules, {spec}", emb, RuleVerifier.for_embedder(emb.name)))
    if not args.no_calibrated:
        lexical = build_embedder("lexical")
        if args.verifier is not None:
            ver, where = LearnedVerifier.load(args.verifier), str(args.verifier)
        else:
            ver, where = qqp_verifier(data, lexical)
        print(f"calibrated verifier: {where}", flush=True)
        settings.append(("QQP-calibrated, lexical", lexical, ver))
    results = []
    for name, embedder, verifier in settings:
        for form, pairs in forms.items():
            res = {**evaluate(name, pairs, embedder, verifier), "form": form}
            print(json.dumps(res), flush=True)
            results.append(res)
    vetoed = {form: veto_counts(p for p in pairs if p.label == 0) for form, pairs in forms.items()}
    checked = label_check(twin_pairs, correct_options(data / "routerbench" / "winograde_train.csv"))
    body = render(results, len(twin_pairs), len(dup_pairs), vetoed, skipped, checked)
    print(body)
    if args.write:
        write_section("cache_adversarial", "Semantic cache on adversarial near-duplicates (WinoGrande twins, "
                      "ARC duplicates)", " ".join(["python", "bench/cache_adversarial.py", *sys.argv[1:]]), body)


if __name__ == "__main__":
    main()
