"""``thrifty batch run|status|results|cancel``: many items, packed per call or sent as a
provider batch at half price (see docs/compression-and-batching.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from thrifty.cli.checks import comma_list, config_path, finite_float, int_at_least, writable_output
from thrifty.cli.signals import cancel_on_sigterm
from thrifty.errors import InvalidRequestError, ThriftyError, UsageError

if TYPE_CHECKING:
    from thrifty.batching.checkpoint import Checkpoint
    from thrifty.batching.items import Item
    from thrifty.batching.jobs import Job
    from thrifty.batching.runner import ItemResult
    from thrifty.gateway import Gateway

ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (default: $THRIFTY_CONFIG).")


def _gateway(config: Path | None) -> Gateway:
    """The gateway of ``config``. Batch runs and jobs live in its ledger database, so the config is
    loaded as ``report`` and ``keys`` load it: a ``${VAR}`` ledger DSN left empty is refused rather
    than a local SQLite ledger used, where `batch status` on the gateways would never find a job.
    Capture off (``tool_gateway``): a run's items are no traffic, and `serve` may hold the file."""
    from thrifty.cli.config_cmd import tool_gateway
    from thrifty.cli.ledger_cmd import load_ledger_config

    return tool_gateway(load_ledger_config(config_path(config)))


def _write(results: list[ItemResult], out: Path | None, ids: list[str | int]) -> None:
    """One line per result; ``ids`` (in the same order) give each line its id with the JSON type
    the items file used, so ``{"id": 7}`` comes back as 7, not "7". OUT is replaced atomically
    (a temporary file renamed over it): it is never seen half written."""
    lines = "".join(r.to_line(i) for r, i in zip(results, ids, strict=True))
    if out is None:
        sys.stdout.write(lines)
        return
    # A file of our own beside OUT (same file system, so the rename is atomic), created like
    # any file (the umask applies; an existing OUT's mode is kept).
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fh = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed below, before the rename
    except PermissionError:  # a writable OUT in a folder we cannot create files in
        out.write_text(lines, encoding="utf-8")
        return
    try:
        with fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        if out.exists():
            shutil.copymode(out, tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _checkpoint(gw: Gateway, items_file: Path, items: list[Item], out: Path | None, *, task: str,
                model: str | None, route: str | None, labels: list[str] | None, restart: bool) -> Checkpoint | None:
    """The progress file of this packed run: ``OUT.partial`` beside --out; without --out, beside
    ITEMS named by the run (``ITEMS.<run>.partial``). None (with a warning) where none can be kept."""
    from thrifty.batching.checkpoint import Checkpoint, run_id_for
    from thrifty.batching.runner import resolve_target

    if not task.strip():
        return None  # refused by run_batch, before any call
    run_id = run_id_for(resolve_target(gw, model, route), task, labels, items)
    path = out.with_name(out.name + ".partial") if out else items_file.with_name(f"{items_file.name}.{run_id[3:11]}.partial")
    try:
        cp = Checkpoint.open(path, run_id, restart=restart)
    except OSError as exc:
        typer.echo(f"warning: cannot keep the progress in {path} ({exc.strerror or exc}): an interrupted run "
                   "starts over; pass --out to keep it beside the output", err=True)
        return None
    if cp.replaced:
        why = "--restart" if restart else "it held another run's progress (other items, task, labels or model)"
        typer.echo(f"warning: {path}: progress dropped ({why}); starting over", err=True)
    elif cp.resumed:
        typer.echo(f"resuming: {cp.resumed} of {len(items)} items already done (kept in {path})", err=True)
    return cp


def _interrupted(cp: Checkpoint | None, n_items: int, deferred: bool) -> str:
    """The one line Ctrl-C leaves: what was kept, and how to go on."""
    if deferred:
        return ("thrifty: interrupted; the job is kept: run the same command again to resume it "
                "(`thrifty batch status` lists jobs)")
    if cp is None:
        return "thrifty: interrupted; no progress was kept"
    return (f"thrifty: interrupted; {cp.kept} of {n_items} items done, kept in {cp.path}: run the same command "
            "again to resume (--restart starts over)")


def _summary(results: list[ItemResult]) -> str:
    ok = sum(r.status == "ok" for r in results)
    failed = sum(r.status == "failed" for r in results)
    pending = len(results) - ok - failed
    costs = [r.cost_usd for r in results]
    spent = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in results) / max(1, len(results))
    money = "cost unknown" if spent is None else f"${spent:.6f} spent (${spent / max(1, len(results)):.8f}/item)"
    by: dict[str, int] = {}
    for r in results:
        by[r.produced] = by.get(r.produced, 0) + 1
    made = ", ".join(f"{k} {v}" for k, v in sorted(by.items()))
    tail = f", {pending} pending" if pending else ""
    return f"{len(results)} items: {ok} ok, {failed} failed{tail} ({made}); {money}; {tokens:.1f} tokens/item"


def _refuse_all_failed(results: list[ItemResult]) -> None:
    """A run where no item succeeded is a failure (exit 2), not a result: scripts check the exit
    code. The lines are written first, so every item's error can still be read there."""
    if results and all(r.status == "failed" for r in results):
        first = next((r.error for r in results if r.error), "no answer")
        # An upstream's error text may span lines; the CLI error is one line.
        raise ThriftyError(f"all {len(results)} items failed; first error: {' '.join(first.split())[:300]}")


def _labels(flag: str | None) -> list[str] | None:
    """``--labels a,b,c`` as a list; a flag with no label in it is refused (it would silently
    mean "any output", the opposite of what restricting the outputs asked for)."""
    return None if flag is None else comma_list(flag, "--labels", "label", "a,b,c; or omit the flag")


def _deferred_only(deferred: bool, wait: bool | None, poll_interval: float | None) -> None:
    """``--no-wait`` and ``--poll-interval`` belong to ``--deferred``. Without it they would be
    ignored silently: a packed run always waits, so ``--no-wait`` meant to hand back a job id
    would instead block until every item is answered and paid for."""
    if deferred:
        return
    given = [flag for flag, used in (("--no-wait", wait is False), ("--poll-interval", poll_interval is not None))
             if used]
    if given:
        raise UsageError(f"{' and '.join(given)}: only with --deferred (a packed run waits for its answers)")


def _job_line(job: Job, counts: dict[str, int]) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return (f"{job.job_id}  {job.status:<9}  round {job.round}  provider batch {job.batch_id or '-'} "
            f"({job.provider_status or '-'})  {job.n_items} items: {shown}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Run many items cheaply: packed calls, or provider batches (--deferred).",
                        no_args_is_help=True)

    @group.command("run")
    def run(
        items_file: Path = typer.Argument(..., metavar="ITEMS.jsonl", help='One {"id", "input"} object per line.'),
        task: str = typer.Option(..., "--task", help="What to do with each item (the instruction)."),
        model: str | None = typer.Option(None, "--model", help="Model to use."),
        route: str | None = typer.Option(None, "--route", help="Route to use (instead of --model)."),
        pack: int | None = typer.Option(None, "--pack", help="Items per call (default: batching.pack, 10)."),
        out: Path | None = typer.Option(None, "--out", help="Write OUT.jsonl (default: standard output)."),
        deferred: bool = typer.Option(False, "--deferred", help="Use the provider Batch API (half price, later)."),
        labels: str | None = typer.Option(None, "--labels", help="Comma-separated allowed outputs (classification)."),
        concurrency: int | None = typer.Option(None, "--concurrency", help="Packed calls in flight."),
        wait: bool | None = typer.Option(None, "--wait/--no-wait",
                                         help="--deferred: wait for the results (default), or print the job id and return."),
        poll_interval: float | None = typer.Option(None, "--poll-interval", help="--deferred: seconds between polls."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
        restart: bool = typer.Option(False, "--restart",
                                     help="Start over: drop the progress an interrupted run kept (packed runs)."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """Run --task on every item of ITEMS.jsonl: one output line per item, with its cost share.

        A packed run keeps its progress (OUT.partial, or ITEMS.<run>.partial without --out): \
run the same command again after an interruption and only the unfinished items are run."""
        # (The backslash joins the paragraph's lines: typer's help keeps a docstring's line breaks.)
        from thrifty.batching.items import load_items

        # Flags first: --out is written only after every item was paid for, so an unwritable one
        # found at the end would lose the whole run. The upper bounds are batching's in the config.
        writable_output(out, "--out")
        int_at_least(pack, "--pack", 1, 200)
        int_at_least(concurrency, "--concurrency", 1, 256)
        finite_float(poll_interval, "--poll-interval", 0, low_open=True)
        if restart and deferred:
            raise UsageError("--restart: only for packed runs; a --deferred job resumes by itself "
                             "(`thrifty batch cancel JOB` stops it)")
        _deferred_only(deferred, wait, poll_interval)
        label_list = _labels(labels)
        items = load_items(items_file)
        gw = _gateway(config)
        held: list[Checkpoint] = []  # the packed run's progress file, once open
        terminated: list[int] = []  # the signal that stopped the run, once one did

        async def main() -> tuple[list[ItemResult], Job | None]:
            cancel_on_sigterm(terminated)
            try:
                if deferred:
                    from thrifty.batching.deferred import DeferredRunner

                    if route:
                        raise InvalidRequestError("--deferred needs --model (a provider batch runs on one model)")
                    runner = DeferredRunner(gw)
                    try:
                        job = await runner.submit(items, task=task, model=model, labels=label_list)
                        if wait is not False:
                            job = await runner.wait(job.job_id, poll_interval)
                        return await asyncio.to_thread(runner.results, job.job_id), job
                    finally:
                        await runner.aclose()
                from thrifty.batching.runner import run_batch

                cp = _checkpoint(gw, items_file, items, out, task=task, model=model, route=route,
                                 labels=label_list, restart=restart)
                held.extend([cp] if cp else [])
                results = await run_batch(gw, items, task=task, model=model, route=route, pack=pack,
                                          labels=label_list, concurrency=concurrency, progress=progress,
                                          checkpoint=cp)
                return results, None
            finally:
                await gw.aclose()

        try:
            results, job = asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            # asyncio.run cancelled the run, which kept what had finished: one line, no traceback.
            if isinstance(exc, asyncio.CancelledError) and not terminated:
                raise
            for cp in held:
                cp.close()
            typer.echo(_interrupted(held[0] if held else None, len(items), deferred), err=True)
            # 128 + the signal, as a shell reports a process the signal ended.
            raise typer.Exit(128 + (terminated[0] if terminated else signal.SIGINT)) from None
        except BaseException:
            for cp in held:
                cp.close()
            raise
        if job is not None and not job.done:
            # The commands shown run as printed: with --config when it was given (without it they
            # read $THRIFTY_CONFIG, as this run did).
            cfg = f" --config {shlex.quote(str(config))}" if config is not None else ""
            typer.echo(f"job {job.job_id} submitted ({job.provider_status or job.status}); "
                       f"`thrifty batch status {job.job_id}{cfg}` to check, "
                       f"`thrifty batch results {job.job_id}{cfg}` to fetch",
                       err=True)
            typer.echo(job.job_id)
            return
        _write(results, out, [it.json_id for it in items])
        typer.echo(_summary(results), err=True)
        for cp in held:
            # Complete (or nothing kept): the progress is no longer needed. Else running again
            # retries only the failed items.
            failed = sum(r.status != "ok" for r in results)
            if not failed or not cp.kept:
                cp.remove()
                continue
            cp.close()
            typer.echo(f"{failed} items failed; run the same command again to retry only them "
                       f"({cp.kept} done are kept in {cp.path}; --restart starts over)", err=True)
        _refuse_all_failed(results)

    @group.command("status")
    def status(
        job_id: str | None = typer.Argument(None, help="A job id (or its prefix); all jobs when omitted."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """Poll the provider once and show the job(s): status, round, items by state."""
        from thrifty.batching.deferred import DeferredRunner

        gw = _gateway(config)

        async def main() -> list[str]:
            runner = DeferredRunner(gw)
            try:
                jobs = [runner.jobs.get(job_id)] if job_id else runner.jobs.all_jobs()
                lines = []
                for job in jobs:
                    # Gateway jobs are polled by the gateway's collector, which serves the waiting
                    # clients; polling them here would record their answers twice.
                    if not job.done and not is_gateway_job(job):
                        job = await runner.poll(job.job_id)
                    lines.append(_job_line(job, runner.jobs.counts(job.job_id)))
                return lines
            finally:
                await runner.aclose()
                await gw.aclose()

        lines = asyncio.run(main())
        typer.echo("\n".join(lines) if lines else "no batch jobs")

    @group.command("results")
    def results(
        job_id: str = typer.Argument(..., help="A job id (or its prefix)."),
        out: Path | None = typer.Option(None, "--out", help="Write OUT.jsonl (default: standard output)."),
        wait: bool = typer.Option(False, "--wait/--no-wait", help="Poll until the job is finished."),
        poll_interval: float | None = typer.Option(None, "--poll-interval", help="Seconds between polls."),
        config: Path | None = ConfigOpt,
    ) -> None:
        """One line per item (pending ones too, until the job finishes)."""
        from thrifty.batching.deferred import DeferredRunner

        writable_output(out, "--out")
        finite_float(poll_interval, "--poll-interval", 0, low_open=True)
        if poll_interval is not None and not wait:
            # Without --wait the job is polled once: the interval would be ignored silently.
            raise UsageError("--poll-interval: only with --wait (without it the job is polled once)")
        gw = _gateway(config)

        async def main() -> tuple[list[ItemResult], Job, list[str | int]]:
            runner = DeferredRunner(gw)
            try:
                job = refuse_gateway_job(runner.jobs.get(job_id))
                job = await (runner.wait(job.job_id, poll_interval) if wait else runner.poll(job.job_id))
                return runner.results(job.job_id), job, [it.json_id for it in runner.jobs.items(job.job_id)]
            finally:
                await runner.aclose()
                await gw.aclose()

        found, job, ids = asyncio.run(main())
        _write(found, out, ids)
        typer.echo(f"{job.job_id} {job.status}: " + _summary(found), err=True)

    @group.command("cancel")
    def cancel(job_id: str = typer.Argument(..., help="A job id (or its prefix)."),
               config: Path | None = ConfigOpt) -> None:
        """Cancel the provider batch; answers it already has are kept, the rest reported failed."""
        from thrifty.batching.deferred import DeferredRunner

        gw = _gateway(config)

        async def main() -> str:
            runner = DeferredRunner(gw)
            try:
                refuse_gateway_job(runner.jobs.get(job_id))
                job = await runner.cancel(job_id)
                return _job_line(job, runner.jobs.counts(job.job_id))
            finally:
                await runner.aclose()
                await gw.aclose()

        typer.echo(asyncio.run(main()))

    app.add_typer(group, name="batch")


def is_gateway_job(job: Job) -> bool:
    from thrifty.batching.collector import GATEWAY_TASK

    return job.task == GATEWAY_TASK


def refuse_gateway_job(job: Job) -> Job:
    """Jobs of deferrable gateway requests belong to the gateway; the CLI only shows them."""
    if is_gateway_job(job):
        raise InvalidRequestError(
            f"job {job.job_id} holds deferrable gateway requests; the gateway that created it polls and answers it"
            " (`thrifty batch status` shows it)"
        )
    return job


