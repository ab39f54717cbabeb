"""``thrifty eval``: judge a routing policy by the accuracy it keeps per dollar, on replayed outcomes."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from thrifty.cli.checks import finite_float, int_at_least, writable_output
from thrifty.errors import InvalidRequestError, UsageError


def parse_sweep(value: str) -> tuple[float, ...]:
    if value.strip().lower() in ("", "none", "off"):
        return ()
    try:
        shares = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise InvalidRequestError(f"--sweep: expected comma-separated numbers like 0.05,0.1,0.2, got {value!r}") from None
    # nan compares False with everything, so "above 0" alone would let nan and inf through.
    if any(not math.isfinite(s) or s <= 0 for s in shares):
        raise InvalidRequestError("--sweep: every max cost share must be a finite number above 0")
    return shares


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        data: str = typer.Option(..., "--data", help="Outcome file, folder of them, or dataset name (routerbench)."),
        train: str | None = typer.Option(None, "--train", help="Fit the policy on this data, then judge on --data."),
        policy: Path | None = typer.Option(None, "--policy", help="Policy YAML (routing section or thrifty config)."),
        decisions: Path | None = typer.Option(None, "--decisions", help="Write one JSON line per prompt here."),
        plot: Path | None = typer.Option(None, "--plot", help="Write the cost-quality frontier PNG here."),
        as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
        via_http: bool = typer.Option(False, "--via-http", help="Run through the gateway and replay over loopback."),
        baseline: str = typer.Option("gpt-4-1106-preview", help="The model savings are measured against."),
        max_cost_share: float | None = typer.Option(
            None, "--max-cost-share", help="Fit the most accurate policy costing at most X times the baseline."),
        folds: int | None = typer.Option(
            None, help="Folds of cross-validation when fitting without --train (default 5)."),
        no_fit: bool = typer.Option(False, "--no-fit", help="Use the policy exactly as written (no fitting)."),
        sweep: str = typer.Option(
            "0.02,0.05,0.1,0.2,0.35,0.6", help="Max cost shares re-fitted for the frontier ('none' to skip)."),
        concurrency: int = typer.Option(32, help="Requests in flight at once."),
        seed: int | None = typer.Option(None, help="Seed of the cross-validation split (default 0)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Replay recorded outcomes of many LLMs through the real pipeline and score the policy."""
        from thrifty.evaluation.evaluate import EvalOptions
        from thrifty.evaluation.report import (
            check_plot_type,
            render_text,
            result_json,
            write_decisions,
            write_plot,
        )
        from thrifty.evaluation.session import run_eval

        # Every flag is checked before the data is loaded and the (minutes-long) fit and replay
        # start: --concurrency 0 would wait forever on a zero-slot semaphore, and an unwritable
        # --decisions/--plot would fail only after all the work.
        finite_float(max_cost_share, "--max-cost-share", 0, low_open=True)
        if no_fit and train is not None:
            # --train is data to fit on; --no-fit fits nothing, so it would be ignored without a word
            # and --data judged as if the policy had been fitted on it.
            raise UsageError("--train: nothing is fitted with --no-fit; give --train (fit on it, judge on --data) "
                             "or --no-fit (the policy as written), not both")
        int_at_least(concurrency, "--concurrency", 1)
        if (no_fit or train is not None) and (folds is not None or seed is not None):
            # They shape the cross-validation, which runs only when fitting on --data itself.
            flag = "--folds" if folds is not None else "--seed"
            raise UsageError(f"{flag}: there is no cross-validation with "
                             f"{'--no-fit' if no_fit else '--train'} (the policy is judged on --data as a whole)")
        folds = 5 if folds is None else folds
        seed = 0 if seed is None else seed
        if not no_fit and train is None:
            int_at_least(folds, "--folds", 2)
        writable_output(decisions, "--decisions")
        if plot is not None:
            writable_output(check_plot_type(plot, "--plot"), "--plot")
        options = EvalOptions(baseline=baseline, max_cost_share=max_cost_share, fit=not no_fit, folds=folds,
                              seed=seed, sweep=parse_sweep(sweep), concurrency=concurrency, via_http=via_http,
                              # --json too: the bar is on stderr (and only on a terminal),
                              # the JSON on stdout, so `--json > r.json` still shows the minutes pass.
                              progress=not quiet)
        result = run_eval(data, train=train, policy=policy, options=options)
        if decisions is not None:
            write_decisions(result.decisions, decisions)
        if plot is not None:
            write_plot(result, plot)
        for warning in result.warnings:
            typer.echo(f"warning: {warning}", err=True)
        if as_json:
            typer.echo(result_json(result))
            return
        typer.echo(render_text(result))
        for what, path in (("decisions", decisions), ("plot", plot)):
            if path is not None:
                typer.echo(f"{what} written to {path}")

    # `thrifty evaluate`: the same command under the name the product brief and some scripts use;
    # hidden from --help so the command list shows it once.
    app.command("evaluate", hidden=True, help="Same as `thrifty eval`.")(eval_)
