"""``thrifty outcomes collect``: outcome data (answers, costs, scores per model) from a team's own
prompts, for ``thrifty eval`` and ``thrifty calibrate`` (see docs/cli.md)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from thrifty.cli.checks import comma_list, config_path, finite_float, int_at_least, writable_output
from thrifty.cli.report_render import dollars
from thrifty.errors import DataError, UsageError

if TYPE_CHECKING:
    from thrifty.catalog import Catalog
    from thrifty.evaluation.collect import Estimate, Summary


def _model(catalog: Catalog, name: str, flag: str) -> str:
    if catalog.get(name) is None:
        known = ", ".join(sorted(m.name for m in catalog))
        raise UsageError(f"{flag}: unknown model {name!r} (models of the config: {known})")
    return name


def _models(catalog: Catalog, flag_value: str, reference: str) -> list[str]:
    """The candidates of ``--models`` (each once), then the reference when not among them."""
    names = comma_list(flag_value, "--models", "model", "a,b,c")
    chosen: dict[str, str] = {}  # catalog name -> name as given
    for name in names:
        own = catalog.get(_model(catalog, name, "--models"))
        assert own is not None
        if own.name in chosen and chosen[own.name] != name:
            raise UsageError(f"--models: {name!r} and {chosen[own.name]!r} are the same model")
        chosen.setdefault(own.name, name)
    ref = catalog.get(reference)
    assert ref is not None
    chosen.setdefault(ref.name, reference)  # a candidate named by an alias is the reference too
    return list(chosen.values())


def _money(usd: float) -> str:
    return "$" + dollars(usd)


def _estimate_line(est: Estimate, n_prompts: int, max_tokens: int | None, n_retries: int = 0) -> str:
    from thrifty.evaluation.collect import DEFAULT_OUTPUT_TOKENS

    judge = f" + {est.judge_calls} judge calls {_money(est.judge_usd)}" if est.judge_calls else ""
    unpriced = f"; no known price, not counted: {', '.join(est.unpriced)}" if est.unpriced else ""
    answers = (f"answers of at most {max_tokens} tokens" if max_tokens else
               f"answers assumed {DEFAULT_OUTPUT_TOKENS} tokens long; --max-tokens caps them")
    retries = f" and {n_retries} failed calls to retry" if n_retries else ""
    return (f"estimate: {n_prompts} prompts{retries}, {est.calls} calls {_money(est.usd)}{judge} = "
            f"{_money(est.total)} "
            f"({answers}{unpriced})")


def _summary_lines(summary: Summary, out: Path, before: int) -> list[str]:
    from thrifty.evaluation.collect_file import per_model

    kept = f" ({before} were already there)" if before else ""
    lines = [f"{summary.written} prompts written to {out}{kept}; {summary.calls} calls, "
             f"{_money(summary.spent + summary.judge_spent)} spent (answers {_money(summary.spent)}, "
             f"judge {_money(summary.judge_spent)})"]
    if summary.retried:
        lines.append(f"retried {summary.retried} failed calls: {summary.recovered} answered, "
                     f"{summary.retried - summary.recovered} failed again")
    if out.exists() and out.stat().st_size:
        for model, s in per_model(out).items():
            errors = f", {int(s['errors'])} failed" if s["errors"] else ""
            lines.append(f"  {model}: mean score {s['mean_score']:.3f}, mean cost {_money(s['mean_cost'])} "
                         f"over {int(s['prompts'])} prompts{errors}")
    return lines


def _warn_failed(out: Path, retry_failed: bool) -> None:
    """Say how many failed calls OUT still holds: eval and calibrate score each as a wrong answer."""
    from thrifty.evaluation.collect_file import failed_calls

    left = failed_calls(out)
    if left:
        how = ("run the same command again to retry them" if retry_failed else
               "kept by --no-retry-failed; run without it to retry them")
        typer.echo(f"warning: {left} failed calls remain in {out} (eval and calibrate score them 0): {how}",
                   err=True)


def _interrupted_line(done: int, total: int, out: Path, summary: Summary, to_retry: int) -> str:
    retried = f", {summary.retried} of {to_retry} failed calls asked again" if to_retry else ""
    return (f"thrifty: interrupted; {done} of {total} prompts done{retried}, kept in {out}: run the same "
            "command again to resume")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Build outcome data (answers, costs, scores per model) from your own prompts.",
                        no_args_is_help=True)

    @group.command("collect")
    def collect(
        prompts_file: Path = typer.Option(..., "--prompts", help='PROMPTS.jsonl: {"prompt"} or {"messages"} per line, '
                                          'optional "task", "answer", "id", "reference" (a capture '
                                          "file's served answer: its model's outcome when that model is "
                                          "--reference or in --models)."),
        models: str = typer.Option(..., "--models", help="Comma-separated models to collect answers of."),
        out: Path = typer.Option(..., "--out", help="OUT.jsonl (thrifty outcome JSONL); appended to, resumable."),
        reference: str | None = typer.Option(None, "--reference",
                                             help="The model whose answer is 'right' when a prompt has no answer "
                                                  "(default: the config's baseline)."),
        grader: str = typer.Option("auto", "--grader", help="auto | exact | judge."),
        judge_model: str | None = typer.Option(None, "--judge-model",
                                               help="The judge (default: the config's cheapest model)."),
        concurrency: int = typer.Option(4, "--concurrency", help="Calls in flight at once."),
        max_usd: float | None = typer.Option(None, "--max-usd", help="Refuse to start when the estimate is above it."),
        max_tokens: int | None = typer.Option(None, "--max-tokens", help="max_tokens of every answer (and of the "
                                              "estimate; default estimate 256)."),
        retry_failed: bool = typer.Option(True, "--retry-failed/--no-retry-failed",
                                          help="Ask the failed calls of lines already in OUT again (default), "
                                               "or keep them as they are."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
        config: Path | None = typer.Option(None, "--config", "-c", help="Config file (default: $THRIFTY_CONFIG)."),
    ) -> None:
        """Call every model on every prompt, grade the answers, append one outcome line per prompt to OUT.

        The calls go through the gateway with no cache, routing, compression or fallbacks; run the \
same command again to resume, and to ask the calls that failed again."""
        # (The backslash joins the paragraph's lines: typer's help keeps a docstring's line breaks.)
        from thrifty.batching.progress import Progress
        from thrifty.cli.config_cmd import tool_gateway
        from thrifty.cli.ledger_cmd import load_ledger_config
        from thrifty.cli.signals import cancel_on_sigterm
        from thrifty.evaluation.collect import GRADERS, Collector, Options, estimate, load_prompts
        from thrifty.evaluation.collect_file import failed_lines, open_sink, pending, read_done, rewrite

        # Everything is checked before the first call.
        if grader not in GRADERS:
            raise UsageError(f"--grader: expected one of {', '.join(GRADERS)}, got {grader!r}")
        int_at_least(concurrency, "--concurrency", 1, 256)
        int_at_least(max_tokens, "--max-tokens", 1)
        finite_float(max_usd, "--max-usd", 0)
        writable_output(out, "--out")
        path = config_path(config)
        cfg = load_ledger_config(path)
        catalog = cfg.build_catalog()
        if reference is None:
            if not cfg.baseline:
                raise UsageError(f"--reference: {path} has no baseline; pass --reference MODEL")
            reference = cfg.baseline
        _model(catalog, reference, "--reference")
        chosen = _models(catalog, models, reference)
        # The reference under the name it has in the output (--models may name it by an alias).
        own = catalog.get(reference)
        reference = next(m for m in chosen if (catalog.get(m) or own) == own)
        cheapest = catalog.by_price() if judge_model is None else []
        if cheapest:
            judge_model = cheapest[0].name
        if judge_model is not None:
            _model(catalog, judge_model, "--judge-model")
        prompts = load_prompts(prompts_file)
        opts = Options(chosen, reference, grader, judge_model, max_tokens, concurrency)
        ids, digests, before = read_done(out, chosen)
        todo = pending(prompts, out, ids, digests)
        redos = failed_lines(out, opts) if retry_failed else []
        to_retry = sum(len(r.models) for r in redos)  # failed calls asked again
        if not todo and not redos:
            typer.echo(f"nothing to do: all {len(prompts)} prompts are in {out}")
            _warn_failed(out, retry_failed)
            return
        if before:
            again = (f"; {to_retry} failed calls of {len(redos)} lines asked again"
                     if redos else "")
            typer.echo(f"resuming: {len(prompts) - len(todo)} of {len(prompts)} prompts already in {out}{again}",
                       err=True)
        est = estimate(todo, opts, catalog, redos)
        typer.echo(_estimate_line(est, len(todo), max_tokens, to_retry))
        if max_usd is not None:
            if est.unpriced:
                raise UsageError(f"--max-usd: no known price for {', '.join(est.unpriced)}, so the spend cannot be "
                                 "estimated; give their price under models: in the config")
            if est.total > max_usd:
                raise UsageError(f"--max-usd: the estimated spend {_money(est.total)} is over {_money(max_usd)}; "
                                 "nothing was called (fewer prompts or models, a lower --max-tokens, or a higher "
                                 "--max-usd)")
        # Capture off: collect's calls are no traffic of the team's, and the capture file may be the
        # one a live gateway holds (and appends to) or the very prompts file read here.
        gw = tool_gateway(cfg)
        bar = Progress(len(todo) + len(redos), enabled=progress, desc="collect", unit="prompt")
        terminated: list[int] = []
        collector = Collector(gw, opts, None, on_done=lambda cost: bar.update(1, cost))

        async def main() -> Summary:
            cancel_on_sigterm(terminated)
            try:
                if redos:
                    try:
                        await collector.retry(redos)
                    finally:
                        # Also when interrupted: the calls retried so far are paid for, so kept.
                        rewrite(out, collector.redone)
                # Opened after the rewrite: a handle opened before would append to the replaced file.
                collector.sink = open_sink(out)
                return await collector.run(todo)
            finally:
                await gw.aclose()

        try:
            summary = asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not terminated:
                raise
            done = len(prompts) - len(todo) + collector.summary.written
            typer.echo(_interrupted_line(done, len(prompts), out, collector.summary, to_retry), err=True)
            raise typer.Exit(128 + (terminated[0] if terminated else signal.SIGINT)) from None
        finally:
            if collector.sink is not None:
                collector.sink.close()
            bar.close()
        for line in _summary_lines(summary, out, before):
            typer.echo(line)
        for why in summary.not_retried[:5]:
            typer.echo(f"warning: not retried: {out}: {why} (the line is kept as it was)", err=True)
        _warn_failed(out, retry_failed)
        if summary.not_retried and not summary.failed:
            typer.echo(f"thrifty: {len(summary.not_retried)} lines with failed calls not retried (their reference "
                       "or judge failed); run the same command again to retry them", err=True)
            raise typer.Exit(1)
        if summary.failed:
            for why in summary.failed[:5]:
                typer.echo(f"warning: not written: {prompts_file}: {why}", err=True)
            if not summary.written and not before:
                raise DataError(f"no prompt could be graded; first: {summary.failed[0]}")
            typer.echo(f"thrifty: {len(summary.failed)} prompts not written (their reference or judge failed); run "
                       "the same command again to retry only them", err=True)
            raise typer.Exit(1)

    app.add_typer(group, name="outcomes")

