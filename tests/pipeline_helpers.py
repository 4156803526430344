"""Shared helpers for pipeline/CLI tests: a tiny recipe and a CLI runner."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

TINY_RECIPE = {
    "seed": 0,
    "threads": 1,
    "model": {"name": "vit_tiny_patch16_224",
              "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2,
                         "num_classes": 10}},
    "data": {"kind": "digits", "batch_size": 128},
    "train": {"epochs": 2, "lr": 3e-3},
    "sparsify": {"epochs": 2, "lam": 1e-3, "lr": 1e-3},
    "prune": {"rate": 0.4},
    "finetune": {"epochs": 2, "lr": 1e-3},
}


def write_recipe(path: Path, overrides: dict | None = None) -> Path:
    recipe = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    for dotted, value in (overrides or {}).items():
        node = recipe
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_cli_inprocess(*args: str) -> subprocess.CompletedProcess:
    """Run `vtpdeploy ARGS` in this process (fast: no interpreter start, torch already imported)."""
    import contextlib
    import io

    from vtpdeploy.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(["vtpdeploy", *map(str, args)], code, out.getvalue(), err.getvalue())


def run_cli(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "vtpdeploy", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (to prove nothing was touched)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
