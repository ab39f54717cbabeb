"""Entry point of the ``thrifty`` command.

Each command group lives in its own module exposing ``register(app)``; ``COMMAND_MODULES``
is the one visible list of them. Errors from the thrifty tree are printed as one line
(``thrifty: <message>``) with exit code 2, never as a traceback; so are operating-system
errors reading or writing a file the user named (a full disk, a path that vanished mid-run),
and so are the parser's own usage errors (a missing option, a value that is not a number, an
unknown flag or command): typer would draw those as a multi-line box. Ctrl-C is one line too,
``thrifty: interrupted`` with exit code 130 (typer alone would exit 130 saying nothing).
"""

from __future__ import annotations

import importlib
import io
import logging
import sys
from pathlib import PurePath
from typing import Any

import typer
from typer.core import TyperGroup

from thrifty.errors import ThriftyError, printable

# Order here is the order in `thrifty --help`.
COMMAND_MODULES: list[str] = [
    "thrifty.cli.serve_cmd",
    "thrifty.cli.mock_cmd",
    "thrifty.cli.init_cmd",
    "thrifty.cli.config_cmd",
    "thrifty.cli.estimate_cmd",
    "thrifty.cli.report_cmd",
    "thrifty.cli.ledger_cmd",
    "thrifty.cli.cache_cmd",
    "thrifty.cli.demo_cmd",
    "thrifty.cli.eval_cmd",
    "thrifty.cli.outcomes_cmd",
    "thrifty.cli.replay_cmd",
    "thrifty.cli.keys_cmd",
    "thrifty.cli.compress_cmd",
    "thrifty.cli.batch_cmd",
    "thrifty.cli.route_cmd",
]


class Interrupted(Exception):
    """Ctrl-C reached a command that does not handle it itself. typer would turn it into a bare
    exit code 130 with nothing said; this carries it past typer to ``main``, which says so in
    one line. (``batch run`` and ``outcomes collect`` catch Ctrl-C themselves, print what was
    kept and exit 130: their exit passes through untouched.)"""


class _Group(TyperGroup):
    """The top-level group: every command runs inside its ``invoke``, so one place sees Ctrl-C."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted from None


def build_app() -> typer.Typer:
    app = typer.Typer(
        cls=_Group,
        name="thrifty",
        help="thrifty: cut LLM API spend with routing, cascades, caching, compression and batching.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A group whose module is not written yet must not break the others.
            if exc.name == module_name:
                continue
            raise
        module.register(app)
    return app


class _WarningLines(logging.Handler):
    """Library warnings (an unpriced model, a skipped file) as ``warning: <message>`` lines on
    stderr, each said once per command (a model priced twice is one unknown price). Without a
    handler Python prints the bare message, unlike the CLI's own warnings. Writes to the stderr
    of the moment (tests swap it), not the one seen when it was made."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"{record.levelname.lower()}: {record.getMessage()}"
        except Exception:  # a malformed log call must not break the command
            return
        if line not in self.seen:
            self.seen.add(line)
            typer.echo(line, err=True)


def _cli_logging() -> None:
    """The ``thrifty`` logger as a command starts: the one-line handler, nothing said yet.
    ``serve`` replaces it with JSON lines (thrifty.logs.setup_logging); a command run after it
    in the same process (tests) starts from this state again, not from serve's."""
    from thrifty.logs import JsonFormatter

    log = logging.getLogger("thrifty")
    log.handlers[:] = [_WarningLines()]
    log.setLevel(logging.NOTSET)
    log.propagate = True
    # serve's JSON handler on the root logger (other libraries' records) goes too: thrifty's own
    # records propagate there again and would be written twice, once as JSON.
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h.formatter, JsonFormatter)]


def main(argv: list[str] | None = None) -> None:
    _cli_logging()
    app = build_app()
    try:
        # Not standalone: the parser's errors reach us instead of being drawn as a rich box.
        # --help (and a bare group, which prints its help) still prints as typer renders it.
        result = app(args=argv, prog_name="thrifty", standalone_mode=False)
    except typer.TyperException as exc:
        # The base of typer's (vendored click's) usage errors. A bare group has already
        # printed its help when this is raised (typer checks the class by name, as here).
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(2)
        typer.echo(f"thrifty: {_usage_message(exc)}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("thrifty: aborted", err=True)
        sys.exit(1)
    except Interrupted:
        # 128 + SIGINT, as a shell reports a process Ctrl-C ended; what the command had not yet
        # written is not written (outputs are written whole, at the end).
        typer.echo("thrifty: interrupted", err=True)
        sys.exit(130)
    except ThriftyError as exc:
        typer.echo(f"thrifty: {printable(str(exc))}", err=True)
        sys.exit(2)
    except UnicodeDecodeError as exc:
        # A file that is not UTF-8 text (a binary or UTF-16 file named as the config, workloads
        # or spill file): most readers name the file in a ThriftyError themselves; this is the
        # net for those that let the decoder's error through, one line instead of a traceback.
        where = _file_being_read(exc)
        typer.echo(printable(f"thrifty: {where or 'a file given'} is not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start})"), err=True)
        sys.exit(2)
    except OSError as exc:
        # Flags naming files are checked before work starts (cli/checks.py); this is the net
        # for what changes underneath a run. One line, with the path when the OS gives it.
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        typer.echo(printable(f"thrifty: {exc.strerror or exc}{where}"), err=True)
        sys.exit(2)
    # Non-standalone mode returns the command's value, or the code of an explicit typer.Exit.
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def _file_being_read(exc: BaseException) -> str | None:
    """The file a decoding error was reading, as the innermost frame holding one knows it (a
    ``Path`` reading its text, or an open text file): the decoder's own error names no file."""
    found: str | None = None
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, PurePath):
                found = str(value)
            elif isinstance(value, io.TextIOBase) and isinstance(name := getattr(value, "name", None), str):
                found = name
        tb = tb.tb_next
    return found


def _usage_message(exc: typer.TyperException) -> str:
    """The parser's message on one line, with where to read the command's options."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", "") or "thrifty"
    return f"{message} (see '{path} --help')"


if __name__ == "__main__":  # pragma: no cover
    main()
