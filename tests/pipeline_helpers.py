"""Deprecated alias of tests/helpers.py, kept while files that other sessions are editing still import it."""

from helpers import (
    TINY_RECIPE,
    assert_one_line_error,
    run_cli,
    run_cli_inprocess,
    tree_digest,
    write_recipe,
)
