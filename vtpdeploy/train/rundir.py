"""The run directory: its lock and its manifest of stages and artifacts."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..console import package_versions
from ..errors import RunLockedError, VtpError
from ..fileio import atomic_write_json, sha256_file


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


RUN_PACKAGES = ("vtpdeploy", "torch", "timm", "onnx", "onnxruntime", "openvino", "tensorrt", "numpy")


def installed_versions() -> dict[str, str]:
    """Python and the installed RUN_PACKAGES (absent ones left out), for the manifest."""
    return {"python": sys.version.split()[0], **{k: v for k, v in package_versions(RUN_PACKAGES).items() if v}}


class RunDir:
    """A run directory. Only one pipeline may hold it; the manifest is rewritten atomically."""

    def __init__(self, path: Path, world_size: int = 1):
        self.path = Path(path)
        self.manifest_path = self.path / "manifest.json"
        self._lock_fh = None
        self.world_size = world_size
        self.manifest: dict = {}

    @staticmethod
    def check_usable(path: Path) -> None:
        """Refuse a path that exists and is not a run dir of ours (we never write into foreign dirs)."""
        if path.exists() and not path.is_dir():
            raise VtpError(f"--out {path}: exists and is not a directory")
        if path.is_dir() and any(path.iterdir()) and not (path / "manifest.json").is_file():
            raise VtpError(f"--out {path}: not empty and not a vtpdeploy run dir; refusing to write into it")
        probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
        if not os.access(probe, os.W_OK):
            raise VtpError(f"--out {path}: not writable")

    def open(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path / ".lock", "a")  # no truncation before we hold the lock
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise RunLockedError(f"{self.path}: another vtpdeploy pipeline is writing this run dir") from None
        self._lock_fh.truncate(0)
        self._lock_fh.write(f"{os.getpid()}\n")
        self._lock_fh.flush()
        if self.manifest_path.is_file():
            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except ValueError:
                self.manifest = {}
        self.manifest.setdefault("stages", {})
        self.manifest.update({"format": "vtpdeploy-run", "version": 1, "world_size": self.world_size,
                              "packages": installed_versions()})
        self.save()
        return self

    def close(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> "RunDir":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)

    # -- stages --------------------------------------------------------------------------------
    def stage(self, name: str) -> dict:
        return self.manifest["stages"].get(name, {})

    def is_done(self, name: str, key: str) -> bool:
        """Done with the same key, and every artifact still on disk with its recorded sha256."""
        entry = self.stage(name)
        if entry.get("status") != "done" or entry.get("key") != key:
            return False
        for art in entry.get("artifacts", {}).values():
            p = self.path / art["path"]
            if not p.is_file() or sha256_file(p) != art["sha256"]:
                return False
        return True

    def artifact_hashes(self, name: str) -> dict[str, str]:
        return {k: v["sha256"] for k, v in self.stage(name).get("artifacts", {}).items()}

    def start(self, name: str, key: str) -> float:
        self.manifest["stages"][name] = {"status": "running", "key": key, "started": _now()}
        self.save()
        return time.perf_counter()

    def finish(self, name: str, key: str, t0: float, artifacts: dict[str, Path], metrics: dict | None = None) -> None:
        """Mark done only now, after every artifact was written (atomically) and hashed."""
        entry = self.manifest["stages"][name]
        entry.update({
            "status": "done",
            "key": key,
            "ended": _now(),
            "duration_s": round(time.perf_counter() - t0, 3),
            "artifacts": {
                k: {"path": str(Path(p).relative_to(self.path)), "sha256": sha256_file(p)} for k, p in artifacts.items()
            },
            "metrics": metrics or {},
        })
        self.save()

    def keep_finished(self, names: list[str], log=None) -> list[Path]:
        """Move the finished artifacts of stages `names` (about to re-run) into history/<stage key>/, with the
        stage's manifest entry and the run's report, so a re-run never silently replaces results."""
        kept = []
        for name in names:
            entry = self.stage(name)
            arts = {k: a for k, a in entry.get("artifacts", {}).items() if self._intact(a)}
            if entry.get("status") not in ("done", "stale") or not arts:
                continue
            dest = self.path / "history" / entry["key"]
            for a in arts.values():
                target = dest / a["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path / a["path"], target)
            atomic_write_json(dest / "stage.json", {"stage": name, **entry})
            for report in ("report.json", "report.md"):
                if (self.path / report).is_file() and not (dest / report).exists():
                    shutil.copy2(self.path / report, dest / report)
            entry["status"] = "archived"
            self.manifest.setdefault("history", []).append({"stage": name, "key": entry["key"],
                                                             "dir": str(dest.relative_to(self.path)), "at": _now()})
            kept.append(dest)
        if kept:
            self.save()
            if log:
                log(f"re-running {', '.join(names)} (their inputs changed); the finished artifacts they replace are "
                    f"kept in {', '.join(str(d.relative_to(self.path)) for d in kept)}")
        return kept

    def _intact(self, art: dict) -> bool:
        p = self.path / art["path"]
        return p.is_file() and sha256_file(p) == art.get("sha256")

    def invalidate_from(self, names: list[str]) -> None:
        for n in names:
            entry = self.manifest["stages"].get(n)
            if entry and entry.get("status") == "done":
                entry["status"] = "stale"
        self.save()
