"""CLI commands, one module each, registered by vtpdeploy.cli."""
