"""The `vtpdeploy` command line: `app.py` holds the Typer app and the entry point, one module per command."""

from .app import app, main

__all__ = ["app", "main"]
