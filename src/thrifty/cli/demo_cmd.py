"""``thrifty demo`` (what ``make demo`` runs): the savings thrifty's default policy gets on real data.

With the RouterBench data (THRIFTY_DATA_DIR/routerbench, ../shared/data/routerbench, or the
download cache) it runs ``thrifty eval`` with the bundled default policy and prints the savings
line, the comparison table and where the frontier plot went. Without it, it says in one line how
to fetch the data, then shows a short live gateway session against the mock upstream instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from thrifty.evaluation.datasets import download, local_copy, missing_hint

# Realistic traffic for the fallback demo: chat, a classification, a summary, code, by name and auto.
_MIX = [
    ("auto", "faq", "How do I reset my password?"),
    ("auto", "classify", "Classify the sentiment of: 'The delivery was late again.'"),
    ("auto", "summarize", "Summarize in one sentence: thrifty routes easy prompts to cheap models."),
    ("gpt-4o", "code", "Write a Python function that reverses a linked list."),
    ("auto", "faq", "What are your opening hours?"),
    ("qwen3-8b", None, "Translate 'good morning' to French."),
]


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        fetch: bool = typer.Option(False, "--download", help="Download the RouterBench data (7 MB) if missing."),
        plot: Path = typer.Option(Path(".thrifty-cache/demo/frontier.png"), help="Where to write the plot."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Show what thrifty saves: replay 11 real LLMs on RouterBench (or a live mock session)."""
        folder = local_copy("routerbench")
        if folder is None and fetch:
            typer.echo("downloading RouterBench (sha256-checked) ...", err=True)
            folder = download("routerbench")
        if folder is None:
            typer.echo(missing_hint("routerbench"))
            _mock_session()
            return
        _main_job(folder, plot, quiet)


def _main_job(folder: Path, plot: Path, quiet: bool) -> None:
    from thrifty.evaluation.evaluate import EvalOptions
    from thrifty.evaluation.report import render_text, write_decisions, write_plot
    from thrifty.evaluation.session import run_eval

    _check_outputs(plot)
    typer.echo(f"thrifty demo: replaying RouterBench ({folder}) through the pipeline with the default policy",
               err=True)
    result = run_eval(folder, options=EvalOptions(progress=not quiet))
    write_plot(result, plot)
    write_decisions(result.decisions, plot.with_name("decisions.jsonl"))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(render_text(result))  # ends with the savings line
    typer.echo(f"plot: {plot}   decisions: {plot.with_name('decisions.jsonl')}")


def _check_outputs(plot: Path) -> None:
    """Refuse an unusable --plot (or the decisions file written beside it) before the replay,
    which takes a minute: creating the plot's folder is part of the demo, a path that cannot
    be written is a one-line UsageError instead of a traceback after all the work."""
    from thrifty.cli.checks import writable_output
    from thrifty.errors import UsageError
    from thrifty.evaluation.report import check_plot_type

    try:
        plot.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--plot: cannot create folder {plot.parent}: {exc.strerror or exc}") from None
    writable_output(check_plot_type(plot, "--plot"), "--plot")
    writable_output(plot.with_name("decisions.jsonl"), "--plot (decisions.jsonl beside it)")


def _mock_session() -> None:
    """A short live session: mock upstream + gateway on loopback, the openai client, a spend report."""
    import openai

    from thrifty.cli.report_render import render
    from thrifty.gateway import Gateway
    from thrifty.ledger.report import spend_report
    from thrifty.mock import MockConfig, create_app, run_in_thread

    typer.echo("meanwhile, a live gateway session against the mock upstream:")
    with tempfile.TemporaryDirectory(prefix="thrifty-demo-") as tmp, run_in_thread(create_app(MockConfig())) as mock:
        tiers = {"qwen3-8b": "nano", "deepseek-v4-flash": "small", "qwen3-32b": "medium",
                 "deepseek-reasoner": "large", "gpt-4o": "premium"}
        config = {
            "providers": {"mock": {"base_url": mock.url + "/v1", "api_key": "sk-demo"}},
            "models": {m: {"provider": "mock", "tier": t} for m, t in tiers.items()},
            "baseline": "gpt-4o",
            "default_model": "deepseek-v4-flash",
            "ledger": {"path": str(Path(tmp) / "ledger.db")},
        }
        gateway = Gateway.from_config(config)
        with run_in_thread(gateway.app()) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="demo-client", max_retries=0)
            for model, task, prompt in _MIX:
                extra = {"metadata": {"task": task}} if task else {}
                reply = client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": prompt}], extra_body=extra)
                body = reply.parse()
                text = (body.choices[0].message.content or "").replace("\n", " ")
                typer.echo(f"  {model:>9} -> {reply.headers.get('x-thrifty-model')}: "
                           f"${float(reply.headers.get('x-thrifty-cost-usd') or 0):.6f}  {text[:60]}")
            stream = client.chat.completions.create(model="auto", stream=True,
                                                    messages=[{"role": "user", "content": "Tell me a short joke."}])
            typer.echo("  stream: " + "".join(c.choices[0].delta.content or "" for c in stream if c.choices)[:70])
        gateway.flush()
        assert gateway.ledger is not None
        typer.echo(render(spend_report(gateway.ledger.store, "model"), "table", "model"))
        gateway.close()
