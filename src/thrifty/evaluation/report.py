"""Rendering an evaluation: the savings line, the comparison table, the per-task table, the plot."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from rich.markup import escape

from thrifty.errors import UsageError
from thrifty.evaluation.evaluate import EvalResult
from thrifty.evaluation.metrics import Decision, Row
from thrifty.strictjson import dumps


def savings_line(result: EvalResult) -> str:
    base = result.row(f"always {result.baseline}").overall
    ours = result.policy.overall
    saved = 100.0 * (1 - ours.cost / base.cost) if base.cost else 0.0
    return (f"always {result.baseline}: ${base.cost:.2f}, accuracy {base.accuracy:.3f}; "
            f"thrifty: ${ours.cost:.2f}, accuracy {ours.accuracy:.3f}; saved {saved:.1f}%")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _table(title: str, columns: list[str], rows: list[list[str]]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console = Console(file=io.StringIO(), width=140, force_terminal=False)
    console.print(table)
    return str(console.file.getvalue())  # type: ignore[attr-defined]


def _row_cells(r: Row, prompts: int) -> list[str]:
    s = r.overall
    # A model recorded on only some prompts is judged on those (reference.py): say on how many.
    name = r.name if s.prompts == prompts else f"{r.name} (on {s.prompts} prompts)"
    return [name, f"{s.accuracy:.3f}", f"${s.cost:.4f}", _pct(s.cost_share), f"{s.calls_per_prompt:.2f}",
            str(s.errors)]


def render_text(result: EvalResult) -> str:
    cols = ["policy", "accuracy", "cost", "cost vs baseline", "calls/prompt", "errors"]
    parts = [_table(f"thrifty eval: {result.prompts} prompts, baseline {result.baseline}; fitting: {result.fitting}",
                    cols, [_row_cells(r, result.prompts) for r in result.rows])]
    tasks = sorted(result.policy.tasks)
    if len(tasks) > 1:
        shown = [r for r in result.rows if r.kind in ("policy", "reference") or r.name == f"always {result.baseline}"]
        per_task = []
        for r in shown:
            for t in tasks:
                s = r.tasks.get(t)
                if s is not None:
                    per_task.append([escape(f"{r.name} [{t}]"), f"{s.accuracy:.3f}", f"${s.cost:.4f}", _pct(s.cost_share),
                                     f"{s.calls_per_prompt:.2f}", str(s.errors)])
        parts.append(_table("per task", cols, per_task))
    f = result.figures
    parts.append(
        f"frontier: AIQ {f['aiq']:.3f} (models alone {f['aiq_models_only']:.3f}, oracle {f['aiq_oracle']:.3f}); "
        f"cost to reach the baseline's accuracy {_pct(f['cost_share_to_baseline_accuracy'])}, "
        f"95% of it {_pct(f['cost_share_to_95pct_baseline_accuracy'])} of the baseline's cost"
    )
    parts.append(savings_line(result))
    return "\n".join(parts)


def write_decisions(decisions: list[Decision], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for d in decisions:
            fh.write(json.dumps(d.to_json()) + "\n")


# Image types matplotlib's Agg backend writes with its own dependencies (pgf needs LaTeX, avif
# a Pillow plugin, raw/rgba are not image files), so a run never fails at its very end on them.
PLOT_TYPES = ("png", "svg", "svgz", "pdf", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def check_plot_type(path: str | Path, flag: str = "--plot") -> Path:
    """``path`` when its extension is an image type ``write_plot`` can produce, else
    ``UsageError`` naming ``flag``. Called before an evaluation starts: ``savefig`` picks the
    format from the extension and would otherwise refuse ``p.txt`` only after all the work.
    (Whether the path can be written is the CLI's check, ``cli.checks.writable_output``.)"""
    p = Path(path)
    suffix = p.suffix.lower().lstrip(".")
    if suffix not in PLOT_TYPES:
        got = f"'.{suffix}'" if suffix else "no extension"
        raise UsageError(f"{flag}: {p}: unsupported image type ({got}); use one of "
                         + ", ".join("." + t for t in PLOT_TYPES))
    return p


def write_plot(result: EvalResult, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6))
    models = [r for r in result.rows if r.kind == "model"]
    for r in models:
        x, y = 100 * (r.overall.cost_share or 0.0), r.overall.accuracy
        ax.scatter([x], [y], color="grey", s=25, zorder=2)
        ax.annotate(r.name.removeprefix("always ").split("/")[-1], (x, y), fontsize=7, xytext=(4, -3),
                    textcoords="offset points", color="dimgrey")
    hull = result.figures["frontier"]
    ax.plot([100 * c for c, _ in hull], [a for _, a in hull], color="tab:blue", lw=1.5, zorder=3,
            label=f"thrifty frontier (AIQ {result.figures['aiq']:.3f})")
    pts = result.figures["points"]
    ax.scatter([100 * c for c, _ in pts], [a for _, a in pts], color="tab:blue", s=18, zorder=4)
    p = result.policy.overall
    ax.scatter([100 * (p.cost_share or 0.0)], [p.accuracy], color="tab:red", marker="*", s=160, zorder=5,
               label="thrifty (default)")
    for name, marker, color in (("oracle", "D", "tab:green"), ("best per-task model", "s", "tab:purple"),
                                ("random routing", "x", "black")):
        ref = result.row(name).overall
        ax.scatter([100 * (ref.cost_share or 0.0)], [ref.accuracy], marker=marker, color=color, s=40, zorder=4,
                   label=name)
    base = result.figures["baseline_accuracy"]
    ax.axhline(base, color="grey", ls=":", lw=1, label=f"{result.baseline} accuracy")
    # Costs span two orders of magnitude; a log axis bounded by the smallest positive cost
    # keeps the cheap end readable (a zero cost, e.g. all cache hits, is drawn at the left edge).
    shares = [100 * (r.overall.cost_share or 0.0) for r in result.rows] + [100 * c for c, _ in pts]
    positive = [x for x in shares if x > 0]
    ax.set_xscale("log")
    if positive:
        ax.set_xlim(min(positive) / 1.5, max(positive) * 1.5)
    ax.set_xlabel(f"cost, % of always {result.baseline}")
    ax.set_ylabel("accuracy (mean score)")
    ax.set_title(f"cost-quality frontier on {result.prompts} prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no point hidden
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def result_json(result: EvalResult) -> str:
    out: dict[str, Any] = result.to_json()
    out["summary"] = savings_line(result)
    return dumps(out, indent=2)  # strict JSON: a figure that is NaN (no data for it) becomes null
