"""The `vtpdeploy` command line. Commands only parse arguments and call stage modules.

Each command lives in `vtpdeploy/cli/<name>.py` and exposes `register(app)`; heavy backends
are imported inside the command functions, so `vtpdeploy --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from ..console import one_line

COMMAND_MODULES = ("pipeline", "recipe", "inspect", "export", "calib", "bench", "gate", "report", "latency_cache")
ERROR_LIMIT = 400  # characters of the one-line error a command prints

app = typer.Typer(
    name="vtpdeploy",
    help="Prune timm Vision Transformers with VTP and compile them into real, smaller, validated models.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    log_format: str = typer.Option("rich", "--log-format", help="Progress on stderr: rich (default; progress bars "
                                   "on a terminal) or json (one JSON line per stage and epoch event, for CI)."),
) -> None:
    """Global options."""
    from ..errors import VtpError

    if log_format not in ("rich", "json"):
        raise VtpError(f"--log-format {log_format!r}: choose rich or json")
    ctx.ensure_object(dict)["log_format"] = log_format


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"vtpdeploy.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"vtpdeploy.cli.{name}":
                continue  # command not built yet
            raise
        module.register(app)


_register_commands()


def _click_exception_types() -> tuple[tuple, tuple, tuple]:
    """(exit, abort, usage) exception classes of typer's vendored click and of the click package."""
    exit_types, abort_types, usage_types = [typer.Exit], [typer.Abort], []
    try:
        from typer._click.exceptions import ClickException

        usage_types.append(ClickException)
    except ImportError:
        pass
    try:
        import click

        exit_types.append(click.exceptions.Exit)
        abort_types.append(click.exceptions.Abort)
        usage_types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(exit_types), tuple(abort_types), tuple(usage_types)


def main(argv: list[str] | None = None) -> None:
    """Entry point: known errors print one line and exit 2; `--debug` re-raises them."""
    from ..errors import VtpError

    exit_types, abort_types, usage_types = _click_exception_types()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=args, prog_name="vtpdeploy", standalone_mode=False)
    except exit_types as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except abort_types:
        _fail("aborted", 130)
    except usage_types as exc:
        if debug:
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(0)
        _fail(one_line(exc.format_message(), ERROR_LIMIT), 2)
    except VtpError as exc:
        if debug:
            raise
        _fail(one_line(exc, ERROR_LIMIT), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        if debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {one_line(exc, ERROR_LIMIT)} (rerun with --debug)", 1)
    sys.exit(rc if isinstance(rc, int) else 0)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)
