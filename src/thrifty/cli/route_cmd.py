"""Routing commands: ``route explain``, ``router train``, ``calibrate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml

DEFAULT_BASELINE = "gpt-4-1106-preview"


def _load_data(spec: str) -> Any:
    from thrifty.evaluation.dataset import load_outcomes

    try:
        from thrifty.evaluation.datasets import resolve_data

        return load_outcomes(resolve_data(spec))
    except ImportError:  # pragma: no cover - evaluation helpers absent
        return load_outcomes(spec)


def register(app: typer.Typer) -> None:
    route = typer.Typer(help="Inspect routing decisions.", no_args_is_help=True)

    @route.command("explain")
    def explain(
        prompt: str = typer.Argument(..., help="The user prompt to route."),
        config: Path = typer.Option(None, "--config", "-c", envvar="THRIFTY_CONFIG", help="Config file."),
        model: str = typer.Option("auto", help="The requested model ('auto' or 'route:NAME')."),
        task: str = typer.Option(None, help="A task label, as sent in metadata.task / x-thrifty-task."),
        as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
    ) -> None:
        """Show which route a prompt takes and why (no model is called)."""
        from thrifty.config import load_config
        from thrifty.errors import ConfigError
        from thrifty.pipeline.context import RequestContext
        from thrifty.routing import build_router
        from thrifty.types import ChatRequest

        if config is None:
            raise ConfigError("route explain needs a config: --config FILE (or THRIFTY_CONFIG)")
        cfg = load_config(config)
        router = build_router(cfg, cfg.build_catalog())
        if router is None:
            raise ConfigError(f"{config}: no routes configured (routing.routes is empty)")
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        if task:
            body["metadata"] = {"task": task}
        ctx = RequestContext(request=ChatRequest.from_body(body))
        decision = router.decide(ctx.request)
        plan = router.plan(ctx)
        assert plan is not None
        out: dict[str, Any] = {
            "route": decision.route, "task": decision.task, "source": decision.source, "reason": plan.reason,
            "plan": [{"model": t.model, "threshold": t.threshold} for t in plan.tiers],
            "kind": type(plan.policy).__name__ if plan.policy is not None else "single model",
            "guesses": [{"task": g.task, "source": g.source, "confidence": round(g.confidence, 4),
                         "detail": g.detail} for g in decision.guesses],
        }
        if as_json:
            typer.echo(json.dumps(out, indent=2))
            return
        typer.echo(f"route:  {out['route']}  ({out['kind']})")
        typer.echo(f"task:   {out['task'] or '-'}  from {out['source']}")
        typer.echo(f"why:    {out['reason']}")
        typer.echo("plan:   " + " -> ".join(t["model"] + (f" (>= {t['threshold']:g})" if t["threshold"] is not None
                                                          else "") for t in out["plan"]))
        for g in out["guesses"]:
            typer.echo(f"  guess {g['source']:<9} {g['task']:<16} confidence {g['confidence']:.2f}  {g['detail']}")

    app.add_typer(route, name="route")

    router_group = typer.Typer(help="Train learned routers from outcome data.", no_args_is_help=True)

    @router_group.command("train")
    def train(
        data: str = typer.Option(..., help="Outcomes: RouterBench CSV, thrifty JSONL, a folder, or 'routerbench'."),
        out: Path = typer.Option(..., help="Where to write the trained router (JSON)."),
        models: str = typer.Option(None, help="Comma-separated models to consider (default: all in the data)."),
        embedder: str = typer.Option("lexical", help="Prompt embedder: lexical or minilm."),
        c: float = typer.Option(0.5, help="Inverse regularisation strength of each model's logistic regression."),
        lam: float = typer.Option(0.0, help="Default lambda (accuracy per dollar) when a route sets no target."),
    ) -> None:
        """Learn each model's probability of success and expected cost per prompt."""
        from thrifty.routing.learned import train_router

        outcomes = _load_data(data)
        chosen = [m.strip() for m in models.split(",")] if models else None
        spec: Any = {"kind": "lexical", "dim": 512} if embedder == "lexical" else embedder
        router = train_router(outcomes, models=chosen, embedder=spec, c=c, lam=lam)
        router.save(out)
        typer.echo(f"{out}: router over {len(router.models)} model(s) trained on {len(outcomes)} prompt(s)")
        typer.echo(f"use it with: routing.routes.<name>.learned: {{file: {out}, target: 0.8}}")

    app.add_typer(router_group, name="router")

    @app.command("calibrate")
    def calibrate_cmd(
        data: str = typer.Option(..., help="Outcomes: RouterBench CSV, thrifty JSONL, a folder, or 'routerbench'."),
        target: str = typer.Option("accuracy>=0.95*baseline", help="'accuracy>=0.95*baseline' or 'accuracy>=0.83'."),
        out: Path = typer.Option(..., help="Where to write the config (YAML)."),
        config: Path = typer.Option(None, "--config", "-c", help="A config to copy, with its routing replaced."),
        baseline: str = typer.Option(DEFAULT_BASELINE, help="The baseline model."),
        folds: int = typer.Option(5, help="Cross-validation folds."),
        seed: int = typer.Option(0, help="Seed of the fold split."),
    ) -> None:
        """Choose the cheapest policy meeting TARGET under cross-validation and write it as config."""
        from thrifty.routing.calibrate import calibrate, parse_target

        tgt = parse_target(target)
        outcomes = _load_data(data)
        cal = calibrate(outcomes, tgt, baseline=baseline, folds=folds, seed=seed)
        for row in cal.cv:
            typer.echo(f"  budget <= {row['max_cost_share']:.3g}x: CV accuracy {row['accuracy']:.4f} "
                       f"at {row['cost_share']:.1%} of the baseline's cost")
        doc = _config_with(config, cal.section, outcomes.models, baseline)
        out.write_text(yaml.safe_dump(doc, sort_keys=False, width=120), encoding="utf-8")
        met = "met" if cal.chosen_budget is not None else "NOT met (wrote the most accurate budget tried)"
        typer.echo(f"target {tgt} (= {cal.required_accuracy:.4f}; baseline {cal.baseline_accuracy:.4f}): {met}")
        typer.echo(f"{out}: written; check it with: thrifty config check {out}")


def _config_with(base: Path | None, section: dict[str, Any], models: list[str], baseline: str) -> dict[str, Any]:
    """A whole config: ``base`` with its routing replaced, or a starter using one provider."""
    if base is not None:
        doc = yaml.safe_load(base.read_text(encoding="utf-8")) or {}
        doc["routing"] = section
        return doc  # type: ignore[no-any-return]
    return {
        "providers": {"default": {"base_url": "${OPENAI_BASE_URL:-https://api.openai.com/v1}",
                                  "api_key": "${OPENAI_API_KEY}"}},
        "models": {m: {"provider": "default"} for m in models},
        "baseline": baseline,
        "routing": section,
    }
