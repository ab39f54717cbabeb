"""Signals for long-running CLI commands (``batch run``, ``outcomes collect``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal


def cancel_on_sigterm(terminated: list[int]) -> None:
    """SIGTERM (``kill``, a container or job scheduler stopping the run) stops the running task
    as Ctrl-C does: it is cancelled, so what finished stays recorded (progress file, ledger)
    instead of the process dying between a paid call and its record. ``terminated`` gets the
    signal number, for the exit code (128 + 15)."""
    task = asyncio.current_task()
    if task is None:
        return

    def stop() -> None:
        terminated.append(signal.SIGTERM)
        task.cancel()

    # Windows has no loop signal handlers, and only the main thread may set one (in-process callers).
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
