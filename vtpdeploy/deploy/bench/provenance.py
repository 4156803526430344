"""Where an exported ONNX or engine came from (its export.json), and so which unpruned model bench compares it with."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import VtpError


def export_record(path: Path) -> dict | None:
    """export.json beside an exported ONNX or engine, when it lists that file; else None."""
    try:
        record = json.loads((path.parent / "export.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    names = {a.get("path") for a in (record.get("artifacts") or {}).values() if isinstance(a, dict)}
    names |= {Path(e.get("engine", "")).name for e in (record.get("engines") or {}).values() if isinstance(e, dict)}
    return record if path.name in names else None


def counterpart_run(art) -> Path | None:
    """The run dir whose unpruned model is `art`'s counterpart: the run itself, or the export's provenance."""
    from ..sources import is_run_dir

    if art.kind == "run":
        return art.path if art.which == "model" else None
    if art.kind == "saved":
        return art.path.parent if art.path.name == "model" and is_run_dir(art.path.parent) else None
    if art.kind in ("onnx", "engine"):
        prov = (export_record(art.path) or {}).get("provenance") or {}
        run = Path(prov["run_dir"]) if prov.get("run_dir") and prov.get("which") == "model" else None
        return run if run is not None and is_run_dir(run) else None
    return None


def default_baseline(candidates: list) -> str | Path:
    """`unpruned` for a run dir, the provenance run dir for an export of one; else a one-line refusal."""
    first = candidates[0]
    if first.kind == "run":
        return "unpruned"
    run = counterpart_run(first)
    if run is not None:
        return run
    raise VtpError(f"{first.spec}: no known unpruned counterpart to compare against (not a run dir, and no "
                   "export.json naming the run it came from); give --baseline PATH|TIMM_NAME, or --baseline none")
