"""Stand-in TensorRT 8.6 / 10.x / 11.x (Python API and trtexec) for API-surface tests: never results.

`use_python_trt` puts a version's stand-in `tensorrt` module first on sys.path; `use_trtexec` puts a
stand-in `trtexec` of a version first on PATH. Both log every call to a JSON-lines file (`read_log`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

STANDINS = Path(__file__).resolve().parent
VERSIONS = {"8.6": "8.6.1.6", "10": "10.3.0.26", "11": "11.0.0.9"}  # what each stand-in's __version__ says
DIRS = {"8.6": "v8_6", "10": "v10", "11": "v11"}
TRTEXEC_VERSIONS = {"8.6": "8.6.1", "10": "10.3.0", "11": "11.0.0"}  # what trtexec's banner says


def python_dir(version: str) -> Path:
    return STANDINS / DIRS[version]


def use_python_trt(monkeypatch, version: str, log: Path):
    """Make `import tensorrt` give the stand-in for `version` (undone at teardown); returns the module."""
    monkeypatch.setenv("TRT_STANDIN_LOG", str(log))
    monkeypatch.delenv("VTPDEPLOY_TRT_BUILDER", raising=False)
    monkeypatch.syspath_prepend(str(python_dir(version)))
    package = python_dir(version) / "tensorrt"
    spec = importlib.util.spec_from_file_location("tensorrt", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    tensorrt = importlib.util.module_from_spec(spec)
    # Registered through monkeypatch *before* it runs, so teardown restores exactly what was there before
    # (nothing, on a machine without TensorRT) and later tests see no stand-in.
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    spec.loader.exec_module(tensorrt)
    assert getattr(tensorrt, "STANDIN", False) and tensorrt.__version__ == VERSIONS[version]
    return tensorrt


def write_trtexec(bin_dir: Path, version: str) -> Path:
    """A `trtexec` on `bin_dir` that runs the stand-in for `version` with this interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "trtexec"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDINS / "trtexec.py"}" "{TRTEXEC_VERSIONS[version]}" "$@"\n')
    exe.chmod(0o755)
    return exe


def use_trtexec(monkeypatch, tmp_path: Path, version: str, log: Path) -> Path:
    """Put the stand-in trtexec for `version` first on PATH and make it the builder (undone at teardown)."""
    from vtpdeploy.deploy.export.trt_versions import trtexec_version

    exe = write_trtexec(tmp_path / f"trtexec-{DIRS[version]}", version)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("VTPDEPLOY_TRT_BUILDER", "trtexec")
    monkeypatch.setenv("TRT_STANDIN_LOG", str(log))
    trtexec_version.cache_clear()
    return exe


def read_log(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
