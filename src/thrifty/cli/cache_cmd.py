"""``thrifty cache stats|clear|eval|calibrate``: inspect, empty and measure the response cache."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import typer

from thrifty.cache.config import DEFAULT_CONFIDENCE, DEFAULT_MAX_FALSE_HIT_RATE, DEFAULT_TOP_K
from thrifty.cli.checks import dumps, finite_float, int_at_least, writable_output
from thrifty.cli.report_cmd import parse_when
from thrifty.errors import ConfigError, InvalidRequestError, UsageError

ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (default: $THRIFTY_CONFIG).")


def _config(path: Path | None, required: bool = True, ledger: bool = False) -> Any:
    """The config ``--config`` (else ``$THRIFTY_CONFIG``) names. ``ledger``: the command reads the
    ledger database, so it is loaded as ``report`` loads it (ledger_cmd.load_ledger_config): an
    empty ``${VAR}`` DSN is refused rather than reading some local SQLite file instead."""
    from thrifty.cli.checks import config_path
    from thrifty.config import load_config

    if not required and not (path or os.environ.get("THRIFTY_CONFIG")):
        return None
    source = config_path(path)
    if ledger:
        from thrifty.cli.ledger_cmd import load_ledger_config

        return load_ledger_config(source)
    return load_config(source)


def _backend(cfg: Any) -> Any:
    from thrifty.cache.build import open_backend

    if cfg.cache is None:
        raise ConfigError("this config has no `cache` section (see docs/caching.md)")
    return open_backend(cfg, cfg.cache)


EMBEDDER_HELP = ("lexical, minilm or auto (default: the config's, else the verifier's, else auto: minilm when "
                 "the embeddings extra is installed, else lexical).")


def _embedder(spec: str | None, cfg: Any, verifier: Any = None) -> Any:
    """--embedder, else the config's, else the one the verifier in use (``verifier``, else the
    config's) was calibrated with, else "auto": the bundled MiniLM when the embeddings extra is
    installed (it serves far more duplicates at the same false-hit rate, docs/benchmarks.md), the
    lexical embedder without it."""
    from thrifty.cache.build import embedder_spec, load_verifiers
    from thrifty.embeddings import build_embedder

    if spec is not None:
        return build_embedder(spec, key="--embedder")  # a bad value names the flag, not a config key
    if cfg is not None and cfg.cache is not None and cfg.cache.semantic.embedder is not None:
        return build_embedder(cfg.cache.semantic.embedder)
    if verifier is None and cfg is not None and cfg.cache is not None and cfg.cache.semantic.verifier:
        verifier = load_verifiers(cfg, cfg.cache)[cfg.cache.semantic.verifier]
    if getattr(verifier, "embedder", ""):
        return build_embedder(embedder_spec([verifier]))
    return build_embedder("auto")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect, clear and measure the response cache.", no_args_is_help=True)

    @group.command("stats")
    def stats(
        config: Path | None = ConfigOpt,
        since: str | None = typer.Option(None, help="Only requests since: 7d, 24h, 30m or an ISO date."),
        by: str | None = typer.Option(None, help="Group by tenant, model, route or day."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Hits, misses, hit rate and dollars saved (from the ledger), and what the cache holds."""
        from thrifty.cache.stats import as_dicts, ledger_stats
        from thrifty.ledger.store import open_store

        cutoff = parse_when(since, "--since")
        cfg = _config(config, ledger=True)
        rows: list[Any] = []
        path = cfg.resolve_path(cfg.ledger.path)
        if cfg.ledger.dsn or Path(path).exists():
            store = open_store(path, cfg.ledger.dsn)
            try:
                rows = ledger_stats(store, by, cutoff)
            finally:
                store.close()
        backend = _backend(cfg)
        try:
            held = asyncio.run(backend.stats())
        finally:
            asyncio.run(backend.aclose())
        if as_json:
            typer.echo(dumps({"requests": as_dicts(rows), "store": held}, indent=2))
            return
        # The partial column (embeddings requests with some inputs cached) only where there are some.
        partial = any(r.partials for r in rows)
        typer.echo(f"{'scope' if by is None else by:<24} {'hits':>8} {'misses':>8} {'bypass':>8} "
                   + (f"{'partial':>8} " if partial else "") + f"{'hit rate':>9} {'saved $':>12}")
        for r in rows:
            typer.echo(f"{r.group:<24} {r.hits:>8} {r.misses:>8} {r.bypasses:>8} "
                       + (f"{r.partials:>8} " if partial else "") + f"{r.hit_rate:>9.1%} {r.saved_usd:>12.6f}")
        if not rows:
            typer.echo("(no cached-route requests in the ledger yet)")
        typer.echo(f"store ({cfg.cache.backend}): {held['entries']} entries, {held['vectors']} vectors"
                   + (f", {held['bytes']} bytes" if held["bytes"] else ""))

    @group.command("clear")
    def clear(
        config: Path | None = ConfigOpt,
        all_: bool = typer.Option(False, "--all", help="Delete every entry."),
        tenant: str | None = typer.Option(None, help="Only this tenant's entries (key id or anon-... hash)."),
        model: str | None = typer.Option(None, help="Only entries for this requested model."),
        older_than: str | None = typer.Option(None, "--older-than",
                                              help="Only entries older than: 7d, 24h, 30m or an ISO date."),
    ) -> None:
        """Delete cache entries: all, by tenant, by model and/or older than an age."""

        if not (all_ or tenant or model or older_than):
            raise InvalidRequestError("say what to clear: --all, --tenant, --model and/or --older-than")
        if all_ and (tenant or model or older_than):
            # Which one was meant is a guess either way, and one of the guesses deletes everything.
            given = ", ".join(f for f, v in (("--tenant", tenant), ("--model", model),
                                             ("--older-than", older_than)) if v)
            raise UsageError(f"--all deletes every entry and cannot be combined with {given}; "
                             "give --all alone, or only the filters")
        cutoff = parse_when(older_than, "--older-than")
        backend = _backend(_config(config))

        async def run() -> int:
            try:
                return int(await backend.clear(tenant=tenant, model=model, older_than=cutoff))
            finally:
                await backend.aclose()

        typer.echo(f"deleted {asyncio.run(run())} entries")

    @group.command("eval")
    def eval_(
        pairs: Path = typer.Option(..., "--pairs", help="Labelled pairs JSONL: text_a, text_b, label."),
        calibrate_on: Path | None = typer.Option(None, "--calibrate-on", help="Fit the verifier and threshold on "
                                                 "these pairs, judge on --pairs."),
        decisions: Path | None = typer.Option(None, "--decisions", help="Write {index, hit, served} per pair here "
                                               "(hit = the cache would answer text_b with text_a's answer)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        verifier: Path | None = typer.Option(None, help="A verifier file from `cache calibrate` (default: the "
                                             "config's, else the built-in rule verifier)."),
        embedder: str | None = typer.Option(None, help=EMBEDDER_HELP),
        # None when not given: these three fit the --calibrate-on verifier and are refused without it.
        max_false_hit_rate: float | None = typer.Option(
            None, "--max-false-hit-rate", help=f"--calibrate-on: the calibration target (default {DEFAULT_MAX_FALSE_HIT_RATE:g})."),
        model: str | None = typer.Option(None, help="--calibrate-on: the verifier model, auto (default), "
                                         "lgbm+density, lgbm, logreg+density, logreg or cosine (see `cache calibrate`)."),
        top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", help="Candidates the verifier sees per lookup."),
        confidence: float | None = typer.Option(
            None, "--confidence", help="--calibrate-on: how sure it must be that the false-hit rate is at most the "
            f"target (default {DEFAULT_CONFIDENCE:g}; 0: match it on average instead)."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """Cache every text_a, look up every text_b: duplicate hit rate, false-hit rate, latency."""
        from thrifty.cache.calibrate import calibrate
        from thrifty.cache.evaluation import (
            decide_all,
            decision_rows,
            keep_out_of_sample,
            render_text,
            report,
        )
        from thrifty.cache.pairs import read_pairs
        from thrifty.cache.verifier import HitVerifier, LearnedVerifier, RuleVerifier

        # Before the embedder loads and the pairs are embedded (minutes with a sentence model).
        writable_output(decisions, "--decisions")
        _calibration_flags(calibrate_on, {"--max-false-hit-rate": max_false_hit_rate, "--model": model,
                                          "--confidence": confidence})
        max_false_hit_rate = _rate(DEFAULT_MAX_FALSE_HIT_RATE if max_false_hit_rate is None else max_false_hit_rate,
                                   "--max-false-hit-rate")
        int_at_least(top_k, "--top-k", 1)
        confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
        _confidence(confidence)
        model = _verifier_model(model or "auto")
        cfg = _config(config, required=False)
        # The verifier file in use is read once: it also names the embedder when none is given.
        loaded: LearnedVerifier | None = None
        if calibrate_on is None and verifier is not None:
            loaded = LearnedVerifier.load(verifier)
        elif calibrate_on is None and cfg is not None and cfg.cache is not None and cfg.cache.semantic.verifier:
            loaded = LearnedVerifier.load(cfg.resolve_path(cfg.cache.semantic.verifier))
        emb = _embedder(embedder, cfg, loaded)
        judged = read_pairs(pairs)
        fitted: dict[str, Any] = {}
        positions: list[int] | None = None  # of the judged pairs in --pairs, once some are left out
        ver: HitVerifier
        if calibrate_on is not None:
            calibration = read_pairs(calibrate_on)
            judged, positions, overlap = keep_out_of_sample(judged, calibration)
            if overlap:
                _say(f"warning: {overlap}")
            cal = calibrate(calibration, emb, max_false_hit_rate=max_false_hit_rate, model=model,
                            progress=_say, top_k=top_k, confidence=confidence or None)
            ver, fitted = cal.verifier, cal.summary()
        else:
            ver = loaded if loaded is not None else RuleVerifier.for_embedder(emb.name)
        _check_embedder(ver, emb.name)
        _say(f"eval: caching the text_a and looking up the text_b of {len(judged):,} pairs")
        lookups, latency = decide_all(judged, emb, ver, top_k=top_k)
        rep = report(judged, lookups, latency, ver, ver.threshold, emb)
        if fitted:
            rep["calibration"] = fitted
        if decisions is not None:
            with decisions.open("w", encoding="utf-8") as fh:
                for row in decision_rows(judged, lookups, ver.threshold, positions):
                    fh.write(json.dumps(row) + "\n")
        # A rate over no pairs is NaN: strict JSON (null) for jq and JSON.parse, "n/a" in the table.
        typer.echo(dumps(rep, indent=2) if as_json else render_text(rep))

    @group.command("calibrate")
    def calibrate_(
        pairs: Path = typer.Option(..., "--pairs", help="Labelled pairs JSONL: text_a, text_b, label."),
        max_false_hit_rate: float = typer.Option(DEFAULT_MAX_FALSE_HIT_RATE, "--max-false-hit-rate",
                                                 help="Largest share of non-duplicates that may be served."),
        out: Path = typer.Option(Path("cache-verifier.json"), "--out", "-o", help="Where to write the verifier."),
        embedder: str | None = typer.Option(None, help=EMBEDDER_HELP),
        model: str = typer.Option("auto", help="auto (the best of lgbm+density, lgbm and cosine in CV), lgbm "
                                  "(gbm extra), logreg, cosine, or lgbm+density / logreg+density: also weigh how "
                                  "crowded the cache is around both questions, gated by the plain scorer "
                                  "(see docs/caching.md)."),
        folds: int = typer.Option(5, help="Cross-validation folds."),
        margin: float = typer.Option(1.0, help="Calibrate to margin x the target (below 1: room for new-data "
                                     "variance)."),
        confidence: float = typer.Option(DEFAULT_CONFIDENCE, "--confidence",
                                         help="How sure calibration must be that the false-hit rate is at most "
                                         "the target (0: match it on average instead)."),
        top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", help="Candidates the verifier sees per lookup."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """Fit a hit verifier and its threshold on labelled pairs; point cache.semantic.verifier at --out."""
        from thrifty.cache.calibrate import calibrate
        from thrifty.cache.pairs import read_pairs

        # Before the embedder loads and cross-validation runs (minutes with a sentence model);
        # --out is written only at the end of it.
        _rate(max_false_hit_rate, "--max-false-hit-rate")
        # Cross-validation needs two folds at least (one fold leaves nothing to train on).
        int_at_least(folds, "--folds", 2)
        finite_float(margin, "--margin", 0, low_open=True)
        if margin * max_false_hit_rate >= 1:
            raise UsageError(f"--margin: margin x --max-false-hit-rate must stay below 1 (every pair would be "
                             f"served), got {margin} x {max_false_hit_rate}")
        int_at_least(top_k, "--top-k", 1)
        _confidence(confidence)
        _verifier_model(model)
        writable_output(out, "--out")
        cfg = _config(config, required=False)
        emb = _embedder(embedder, cfg)
        cal = calibrate(read_pairs(pairs), emb, max_false_hit_rate=max_false_hit_rate, model=model, folds=folds,
                        progress=_say, margin=margin, top_k=top_k, confidence=confidence or None)
        cal.verifier.save(out)
        s = cal.summary()
        s["out"] = str(out)
        s["embedder"] = emb.name
        if as_json:
            typer.echo(dumps(s, indent=2))
            return
        typer.echo(f"wrote {out} (embedder {emb.name}, model {cal.verifier.info['model']}, "
                   f"threshold {s['threshold']:.4f})")
        typer.echo(f"cross-validated ({folds} folds): duplicate hit rate {s['cv_duplicate_hit_rate']:.2%}, "
                   f"false-hit rate {s['cv_false_hit_rate']:.3%} (worst fold {s['cv_false_hit_rate_max']:.3%})")

    app.add_typer(group, name="cache")


def _calibration_flags(calibrate_on: Path | None, given: dict[str, object]) -> None:
    """``cache eval``'s calibration flags without ``--calibrate-on`` are refused: nothing is
    calibrated then (the verifier is --verifier's, the config's or the rule verifier, at its own
    threshold), so a --max-false-hit-rate would be ignored while the user reads the report as
    meeting it."""
    named = [flag for flag, value in given.items() if value is not None]
    if calibrate_on is None and named:
        raise UsageError(f"{', '.join(named)}: only with --calibrate-on (they fit the verifier on those pairs); "
                         "without it the verifier in use keeps its own threshold")


def _rate(value: float, flag: str) -> float:
    """A false-hit rate target: a finite share strictly between 0 and 1 (0 serves nothing, 1
    serves everything; NaN would reach the threshold search and fail inside it)."""
    finite_float(value, flag, 0, 1, low_open=True)
    if value >= 1:
        raise UsageError(f"{flag}: expected a finite number > 0 and < 1, got {value}")
    return value


def _confidence(value: float) -> None:
    """--confidence: 0 (match the target on average) or a probability below 1."""
    finite_float(value, "--confidence", 0)
    if value >= 1:
        raise UsageError(f"--confidence: expected 0, or a probability below 1 such as 0.9, got {value}")


def _verifier_model(model: str) -> str:
    """--model checked before the pairs are embedded (calibrate() checks it only after)."""
    from thrifty.cache.calibrate import MODELS

    if model not in MODELS:
        raise UsageError(f"--model: expected one of {', '.join(MODELS)}, got {model!r}")
    return model


def _say(message: str) -> None:
    """Progress on stderr, so that --json output on stdout stays parseable."""
    typer.echo(message, err=True)


def _check_embedder(verifier: Any, embedder_name: str) -> None:
    fitted_on = getattr(verifier, "embedder", None)
    if fitted_on and fitted_on != embedder_name:
        raise ConfigError(f"the verifier was fitted with embedder {fitted_on}, not {embedder_name}: pass the "
                          "same --embedder or re-run `thrifty cache calibrate`")
