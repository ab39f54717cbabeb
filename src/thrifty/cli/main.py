"""Entry point of the ``thrifty`` command.

Each command group lives in its own module exposing ``register(app)``; ``COMMAND_MODULES``
is the one visible list of them. Errors from the thrifty tree are printed as one line
(``thrifty: <message>``) with exit code 2, never as a traceback; so are operating-system
errors reading or writing a file the user named (a full disk, a path that vanished mid-run).
"""

from __future__ import annotations

import importlib
import sys

import typer

from thrifty.errors import ThriftyError

# Order here is the order in `thrifty --help`.
COMMAND_MODULES: list[str] = [
    "thrifty.cli.serve_cmd",
    "thrifty.cli.mock_cmd",
    "thrifty.cli.init_cmd",
    "thrifty.cli.config_cmd",
    "thrifty.cli.estimate_cmd",
    "thrifty.cli.report_cmd",
    "thrifty.cli.cache_cmd",
    "thrifty.cli.demo_cmd",
    "thrifty.cli.eval_cmd",
    "thrifty.cli.replay_cmd",
    "thrifty.cli.keys_cmd",
    "thrifty.cli.compress_cmd",
    "thrifty.cli.batch_cmd",
    "thrifty.cli.route_cmd",
]


def build_app() -> typer.Typer:
    app = typer.Typer(
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


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    try:
        app(args=argv, prog_name="thrifty", standalone_mode=True)
    except ThriftyError as exc:
        typer.echo(f"thrifty: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        # Flags naming files are checked before work starts (cli/checks.py); this is the net
        # for what changes underneath a run. One line, with the path when the OS gives it.
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        typer.echo(f"thrifty: {exc.strerror or exc}{where}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
