"""The `vtpdeploy` command line: `app.py` holds the Typer app and the entry point, one module per command."""

from .app import app, error_line, main

__all__ = ["app", "error_line", "main"]
