"""Routing commands: ``route explain``, ``router train``, ``calibrate``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml

if TYPE_CHECKING:  # imported lazily at run time: the CLI starts without the evaluation stack
    from thrifty.evaluation.dataset import OutcomeSet

DEFAULT_BASELINE = "gpt-4-1106-preview"


def _load_data(spec: str) -> Any:
    from thrifty.evaluation.dataset import load_outcomes
    from thrifty.evaluation.datasets import resolve_data
    from thrifty.evaluation.hygiene import fill_missing_costs
    from thrifty.evaluation.prices import derive_prices

    outcomes = load_outcomes(resolve_data(spec))
    # A missing cost read as $0 would make that model look free to the fit (hygiene.py).
    filled = fill_missing_costs(outcomes, derive_prices(outcomes))
    if filled:
        typer.echo(f"warning: {filled} outcomes had no recorded cost: estimated from their tokens at the model's "
                   "price", err=True)
    return outcomes


def register(app: typer.Typer) -> None:
    route = typer.Typer(help="Inspect routing decisions.", no_args_is_help=True)

    @route.command("explain")
    def explain(
        prompt: str = typer.Argument(..., help="The user prompt to route."),
        config: Path = typer.Option(None, "--config", "-c", envvar="THRIFTY_CONFIG", help="Config file."),
        model: str = typer.Option("auto", help="The requested model: 'auto', 'route:NAME', or a model name or "
                                  "alias (explained as going straight to it)."),
        task: str = typer.Option(None, help="A task label, as sent in metadata.task / x-thrifty-task."),
        as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
    ) -> None:
        """Show which route a prompt takes and why (no model is called)."""
        from thrifty.config import load_config
        from thrifty.errors import ConfigError
        from thrifty.pipeline.context import RequestContext
        from thrifty.pipeline.route import RouteStage
        from thrifty.routing import build_router
        from thrifty.types import ChatRequest

        if config is None:
            raise ConfigError("route explain needs a config: --config FILE (or THRIFTY_CONFIG)")
        cfg = load_config(config)
        catalog = cfg.build_catalog()
        router = build_router(cfg, catalog)
        if router is None and cfg.default_model is None and catalog.get(model) is None \
                and (model == "auto" or model.startswith("route:")):
            raise ConfigError(f"{config}: no routes configured (routing.routes is empty) and no default_model "
                              f"to serve {model!r}")
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        if task:
            body["metadata"] = {"task": task}
        ctx = RequestContext(request=ChatRequest.from_body(body))
        # The gateway's own route stage decides, so the explanation cannot drift from what
        # `serve` does: a model the catalog knows is served as asked (no route), 'auto' and
        # 'route:NAME' go to the router, anything else is a one-line NotFoundError listing models.
        plan = RouteStage(catalog, router, cfg.default_model).decide(ctx)
        out: dict[str, Any]
        if ctx.route is None:
            served = plan.tiers[0].model
            named = catalog.get(model) is not None
            # Not by name and no route: 'auto' with no router (or none matching) is served by
            # default_model, as `serve` does.
            # The same keys as a routed answer (scripts read them), empty where no route applies.
            out = {"route": None, "task": None, "source": "named" if named else "default_model",
                   "reason": (f"{plan.reason}: no routing, the request goes straight to {served}" if named else
                              f"{plan.reason}: {model!r} is served by default_model, {served} (no routing)"),
                   "kind": "model requested by name" if named else "default model", "how": None,
                   "models": [served], "description": None, "max_cost_usd": None,
                   "plan": [{"model": served, "threshold": None}], "guesses": [], "classifier": None,
                   "split_to": None}
        else:
            assert router is not None  # a route was chosen, so by the router
            out = _explain_route(router, ctx, plan)
        if as_json:
            typer.echo(json.dumps(out, indent=2))
            return
        typer.echo(f"route:  {out['route'] or '-'}  ({out['kind']}" + (f": {out['how']})" if out.get("how") else ")"))
        if out.get("description"):
            typer.echo(f"        {out['description']}")
        if out.get("split_to"):
            typer.echo(f"split:  served by route {out['split_to']} (the route's split)")
        typer.echo(f"task:   {out['task'] or '-'}  from {out['source']}")
        typer.echo(f"why:    {out['reason']}")
        typer.echo("plan:   " + " -> ".join(t["model"] + (f" (>= {t['threshold']:g})" if t["threshold"] is not None
                                                          else "") for t in out["plan"]))
        if out.get("max_cost_usd") is not None:
            typer.echo(f"budget: max_cost_usd {out['max_cost_usd']:g} (no call whose estimate would exceed it)")
        clf = out.get("classifier")
        if clf:
            outcomes = ", ".join(f"{task} -> {r}" for task, r in clf["outcomes"].items())
            typer.echo(f"classify: decided by a call to {clf['model']} (not made here); its answer picks the route: "
                       f"{outcomes}; anything else -> {clf['otherwise']} (the plan above)")
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
        from thrifty.cli.checks import finite_float, writable_output
        from thrifty.embeddings import build_embedder
        from thrifty.routing.learned import train_router

        # Checked before loading and training (minutes with --embedder minilm).
        finite_float(c, "--c", 0, low_open=True)  # sklearn needs C > 0
        finite_float(lam, "--lam", 0)
        writable_output(out, "--out")
        spec: Any = {"kind": "lexical", "dim": 512} if embedder == "lexical" else embedder
        # Cheap (models load lazily): a bad value is named as the flag, before the data is read.
        build_embedder(spec, key="--embedder")
        outcomes = _load_data(data)
        chosen = _chosen_models(models, outcomes.models) if models is not None else None
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
        config: Path = typer.Option(None, "--config", "-c", help="A config to copy: its providers, models and other "
                                    "sections kept, its routing replaced by the calibrated one (its routes the "
                                    "calibration does not replace are kept)."),
        baseline: str = typer.Option(None, help=f"The baseline model (default: the --config's baseline, else "
                                     f"{DEFAULT_BASELINE})."),
        folds: int = typer.Option(5, help="Cross-validation folds."),
        seed: int = typer.Option(0, help="Seed of the fold split."),
    ) -> None:
        """Choose the cheapest policy meeting TARGET under cross-validation and write it as config."""
        from thrifty.cli.checks import int_at_least, writable_output
        from thrifty.errors import DataError
        from thrifty.evaluation.prices import derive_prices
        from thrifty.routing.calibrate import calibrate, parse_target

        # Everything that can be refused is refused before the cross-validation (the slow part).
        tgt = parse_target(target)
        int_at_least(folds, "--folds", 2)  # before the data loads; its size bounds it from above below
        writable_output(out, "--out")
        base = _read_base_config(config) if config is not None else None
        # Named in an error as the user gave it: a baseline taken from --config or the default
        # is not a "--baseline" they typed.
        source = "--baseline"
        if baseline is None:
            # A team calibrating its own config means its own baseline, not RouterBench's GPT-4.
            own = base.get("baseline") if base is not None else None
            baseline = own if isinstance(own, str) and own else DEFAULT_BASELINE
            source = f"the baseline of {config}" if baseline == own else "the default baseline"
        outcomes = _load_data(data)
        if baseline not in outcomes.models:
            hint = "" if source == "--baseline" else "; pass --baseline MODEL"
            raise DataError(f"{source} {baseline!r} is not in the data (models: {', '.join(outcomes.models)}){hint}")
        # One prompt per test fold at least; more folds would only repeat work (and 100000 hangs).
        int_at_least(folds, "--folds", 2, len(outcomes))
        if base is not None:
            listed = outcomes.models
            outcomes = _servable(outcomes, base, config, baseline, source)
            left_out = [m for m in listed if m not in outcomes.models]
            if left_out:  # said, not silent: the team may have forgotten to list a model
                typer.echo(f"note: {', '.join(left_out)}: in the data but not among the models of {config}, so "
                           f"left out of the calibration (list them under models: to consider them)")
        # The --config's `routing.fit` tunes the fit (min_family_prompts, depth...), as it does
        # for `thrifty eval`: ignored, a team's 15-prompt tasks never got routes of their own.
        routing = base.get("routing") if base is not None else None
        spec = {"fit": routing["fit"]} if isinstance(routing, dict) and routing.get("fit") else None
        cal = calibrate(outcomes, tgt, baseline=baseline, folds=folds, seed=seed, spec=spec)
        for row in cal.cv:
            typer.echo(f"  budget <= {row['max_cost_share']:.3g}x: CV accuracy {row['accuracy']:.4f} "
                       f"at {row['cost_share']:.1%} of the baseline's cost")
        # Without a base config the written one prices each model from the data's recorded
        # costs (the fit `eval` uses), so `config check` knows every price and the routes'
        # cost estimates match what was calibrated.
        prices: dict[str, dict[str, float]] = derive_prices(outcomes) if base is None else {}
        if base is not None:
            assert config is not None
            doc, notes = _merged_with_base(base, cal.section, baseline, config.resolve().parent, out.resolve().parent,
                                           {i.task for i in outcomes if i.task})
            for note in notes:
                typer.echo(f"note: {note}")
        else:
            doc = _config_with(cal.section, outcomes.models, baseline, prices)
        out.write_text(yaml.safe_dump(doc, sort_keys=False, width=120), encoding="utf-8")
        _check_written(out)
        goal = f"target {tgt} (= {cal.required_accuracy:.4f}; baseline {cal.baseline_accuracy:.4f})"
        if cal.chosen_budget is None:
            # A missed target is a failure a script must see (exit 1), but the file is still
            # useful: it holds the most accurate budget tried.
            best = max((row["accuracy"] for row in cal.cv), default=float("nan"))
            typer.echo(f"thrifty: {goal} NOT met (best CV accuracy {best:.4f}); {out} was written anyway "
                       f"with the most accurate budget tried", err=True)
            raise typer.Exit(1)
        typer.echo(f"{goal}: met")
        typer.echo(f"{out}: written; check it with: thrifty config check {out}")


def _explain_route(router: Any, ctx: Any, plan: Any) -> dict[str, Any]:
    """``route explain``'s answer for a routed request: the route in people's terms (kind, models
    in calling order), never the policy's class name. When only the LLM classifier can decide,
    the plan shown is the default route's and ``classifier`` lists where each answer leads."""
    decision = router.decide(ctx.request)
    # The route that serves this prompt: the decided one, or its split's target (Plan.route).
    desc = router.describe(plan.route or decision.route)
    by_llm = decision.source == "default" and router.llm is not None
    if "thresholds" in desc:
        steps = [{"model": m, "threshold": t} for m, t in zip(desc["models"], desc["thresholds"], strict=True)]
    elif desc["kind"] == "learned" and not by_llm:
        steps = [{"model": t.model, "threshold": None} for t in plan.tiers]  # the model chosen for this prompt
    else:
        steps = [{"model": m, "threshold": None} for m in desc["models"]]
    out: dict[str, Any] = {
        "route": decision.route, "task": decision.task, "source": decision.source, "reason": plan.reason,
        "kind": desc["kind"], "how": desc["how"], "models": desc["models"], "description": desc["description"],
        "max_cost_usd": desc["max_cost_usd"], "plan": steps,
        "guesses": [{"task": g.task, "source": g.source, "confidence": round(g.confidence, 4),
                     "detail": g.detail} for g in decision.guesses],
        "classifier": None,  # always present (null unless the LLM classifier decides), as every key
        # The route whose models serve this prompt when the route's split sends it elsewhere, else null.
        "split_to": plan.route if plan.route and plan.route != decision.route else None,
    }
    if by_llm:
        out["classifier"] = {"model": router.llm.cfg.model, "outcomes": router.classifier_outcomes(),
                             "otherwise": decision.route}
        out["reason"] += f"; the LLM classifier ({router.llm.cfg.model}) decides first"
    return out


def _chosen_models(flag: str, available: list[str]) -> list[str]:
    """The ``--models`` list, each one in the data; else ``UsageError`` listing the data's models
    (a router over a model the data never answered for, or over "", is useless at serve time)."""
    from thrifty.errors import UsageError

    chosen = [m.strip() for m in flag.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in available]
    if not chosen or unknown:
        what = f"not in the data: {', '.join(unknown)}" if unknown else "no model names given"
        raise UsageError(f"--models: {what} (available: {', '.join(available)})")
    return list(dict.fromkeys(chosen))  # a repeated name would train the same model twice


def _read_base_config(path: Path) -> dict[str, Any]:
    """The ``--config`` to copy, read as the raw YAML tree (its ``${VAR}``s kept, as the user
    wrote them) and validated whole before calibration starts, as the gateway builds it: its
    routes are kept in the written config (unless the calibration replaces one by name), so the
    sections naming them (``cache.routes.NAME``, ``batching.route``) stay valid, and an unknown
    model or unreadable file in them is refused now, not after the cross-validation.
    ``read_raw`` and ``load_config`` give one-line ``ConfigError``s."""
    from thrifty.config import load_config, read_raw
    from thrifty.routing import build_router

    raw, _ = read_raw(path)
    cfg = load_config(path)
    build_router(cfg, _quiet_catalog(cfg))
    return raw


def _quiet_catalog(cfg: Any) -> Any:
    """The config's catalog without its price warnings (``config check`` reports those)."""
    import logging

    log = logging.getLogger("thrifty.catalog")
    previous, log.disabled = log.disabled, True
    try:
        return cfg.build_catalog()
    finally:
        log.disabled = previous


def _merged_with_base(base: dict[str, Any], section: dict[str, Any], baseline: str, base_dir: Path,
                      out_dir: Path, data_tasks: set[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``base`` with the calibrated routing, and the notes saying what changed.

    The calibrated section decides how requests are classified (``default_route``, ``classify``)
    and its routes win on a name clash; the base's other routes and its ``tasks`` map are kept
    (clients may name them, other sections may configure them), with their relative files made
    relative to the written config. ``baseline`` becomes the one the routes were fitted against.
    ``tasks`` entries for labels of the calibration data (``data_tasks``) are dropped: a client
    label is looked up first, so they would send those prompts past the calibrated routes."""
    from thrifty.routing.formats import FAMILIES

    notes: list[str] = []
    old: dict[str, Any] = base["routing"] if isinstance(base.get("routing"), dict) else {}
    old_routes: dict[str, Any] = old.get("routes") or {}
    routing = dict(section)
    replaced = [n for n in old_routes if n in section["routes"]]
    kept = {n: _rebased(r, base_dir, out_dir) for n, r in old_routes.items() if n not in section["routes"]}
    routing["routes"] = {**section["routes"], **kept}
    tasks = dict(old.get("tasks") or {})  # each target is a kept or a calibrated route
    # The CV figures were measured with these labels routed by the calibrated section; a base
    # entry mapping one to a hand-made route would silently serve those prompts otherwise.
    # So would an entry keyed by a format family's name: the router looks a prompt's format up in
    # the same map, so `tasks: {code: X}` would take every unlabelled code prompt past the
    # calibrated `code` route.
    shadowing = sorted(t for t in tasks if t in (data_tasks or set()) or t in FAMILIES)
    for task in shadowing:
        del tasks[task]
    tasks.update(section.get("tasks") or {})  # the labels the fit gave routes of their own
    if tasks:
        routing["tasks"] = tasks
    if shadowing:
        notes.append(f"routing.tasks: dropped {', '.join(shadowing)} (labels of the calibration data or prompt "
                     f"formats, which the calibrated routes serve as measured)")
    same_name = sorted(n for n in kept if n in (data_tasks or set()) and n not in tasks)
    if same_name:
        notes.append(f"routing.routes: {', '.join(same_name)} kept from the base config is named like a task of the "
                     f"data, so requests labelled with it go to that route, not to the calibrated ones (rename it "
                     f"to have them routed as calibrated)")
    if replaced:
        notes.append(f"routing.routes: {', '.join(replaced)} replaced by the calibrated route(s) of that name")
    if kept:
        notes.append(f"routing.routes: kept {', '.join(kept)} from the base config (reachable as route:NAME and "
                     f"by task labels)")
    dropped = [k for k in ("classify", "default_route", "embedder") if k in old and old[k] != section.get(k)]
    if dropped:
        notes.append(f"routing: the base's {', '.join(dropped)} replaced by the calibrated section's (requests "
                     f"are classified as the routes were fitted)")
    if base.get("baseline") not in (None, baseline):
        notes.append(f"baseline: {base['baseline']} -> {baseline} (the model the routes were fitted against)")
    return {**base, "baseline": baseline, "routing": routing}, notes


def _rebased(route: Any, base_dir: Path, out_dir: Path) -> Any:
    """A copied route whose relative ``file``s (learned router, learned scorers) still point at
    the same files from the written config's folder."""
    if base_dir == out_dir or not isinstance(route, dict):
        return route

    def fix(node: Any) -> Any:
        if isinstance(node, list):
            return [fix(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: fix(v) for k, v in node.items()}
        f = out.get("file")
        if isinstance(f, str) and f and not Path(f).is_absolute() and "${" not in f:
            out["file"] = os.path.relpath(base_dir / f, out_dir)
        return out

    return {k: fix(v) if k in ("learned", "scorer") else v for k, v in route.items()}


def _check_written(out: Path) -> None:
    """The written config loads and its router builds, as ``config check`` and ``serve`` need."""
    from thrifty.config import load_config
    from thrifty.errors import ConfigError
    from thrifty.routing import build_router

    try:
        cfg = load_config(out)
        build_router(cfg, _quiet_catalog(cfg))
    except ConfigError as exc:
        raise ConfigError(f"{out} was written but does not load: {exc.message}") from None


def _servable(data: OutcomeSet, base: dict[str, Any], path: Path, baseline: str,
              source: str = "--baseline") -> OutcomeSet:
    """``data`` restricted to the models the base config lists, so the written config only routes
    to models it can serve (``serve`` rejects routes to unlisted models). ``UsageError`` when the
    baseline is not among them: every fitted route falls back to it."""
    from thrifty.errors import UsageError
    from thrifty.evaluation.dataset import OutcomeSet

    listed = base.get("models") or {}
    names = set(listed) if isinstance(listed, dict) else set()
    if baseline not in names:
        raise UsageError(f"{source} {baseline!r} is not one of the models of {path} "
                         f"({', '.join(sorted(names)) or 'none'}); the calibrated routes fall back to it")
    return OutcomeSet(data.items, [m for m in data.models if m in names])


def _config_with(section: dict[str, Any], models: list[str], baseline: str,
                 prices: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A whole starter config (no ``--config``): one provider, ``prices`` (USD per million
    tokens) on the models that have them."""
    return {
        "providers": {"default": {"base_url": "${OPENAI_BASE_URL:-https://api.openai.com/v1}",
                                  "api_key": "${OPENAI_API_KEY}"}},
        "models": {m: {"provider": "default", **({"price": prices[m]} if m in prices else {})} for m in models},
        "baseline": baseline,
        "routing": section,
    }
