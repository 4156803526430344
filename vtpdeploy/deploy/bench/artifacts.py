"""What a bench ARTIFACT names (run dir, saved model, ONNX, engine, timm name), and what each
backend needs from it: an nn.Module for torch, an ONNX file for ort/openvino (exported on the fly
and cached, keyed by the source's sha256), an engine for trt.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import CheckpointError, VtpError
from .onnx_info import onnx_input_shape, onnx_param_count

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
MB = 1024.0 * 1024.0


def user_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "vtpdeploy" / "bench"


@dataclass
class Artifact:
    """One model to benchmark. `kind`: run | saved | onnx | engine | timm."""

    spec: str
    kind: str
    path: Path | None = None
    which: str = "model"
    timm_name: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    label: str = ""
    precision: str = "auto"  # TensorRT engine precision: auto (read from the ONNX) | fp32 | fp16 | int8
    trt_info: dict[int, dict] = field(default_factory=dict)  # batch -> what the engine timed there is
    _source: Any = None
    _counts: dict | None = None
    _sha: str | None = None

    # ---- the torch model ---------------------------------------------------------------
    @property
    def has_module(self) -> bool:
        return self.kind in ("run", "saved", "timm")

    def source(self):
        if self._source is None:
            from ..sources import load_source

            if self.kind == "timm":
                import torch

                from ...prune.arch import create_timm
                from ..sources import ModelSource

                torch.manual_seed(0)
                model = create_timm(self.timm_name, self.timm_kwargs).eval()
                from ...prune.arch import describe

                self._source = ModelSource(model, self.label, describe(model).data_config)
            elif self.kind == "run":
                self._source = load_source(self.path, which=self.which)
            elif self.kind == "saved":
                self._source = load_source(self.path)
            else:
                raise VtpError(f"{self.spec}: a {self.kind} artifact has no PyTorch model; use --backend ort/openvino/trt")
        return self._source

    def module(self):
        return self.source().model

    def input_chw(self) -> tuple[int, int, int] | None:
        """(C, H, W) the artifact expects, when it can be told without building a runner."""
        if self.has_module:
            return tuple(int(v) for v in self.source().data_config["input_size"])
        if self.kind == "onnx":
            shape = onnx_input_shape(self.path)
            if len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
                return tuple(shape[1:])
        return None

    # ---- identity and size -------------------------------------------------------------
    def sha256(self) -> str:
        if self._sha is None:
            from ...fileio import sha256_file

            h = hashlib.sha256()
            if self.kind == "timm":
                h.update(json.dumps([self.timm_name, self.timm_kwargs], sort_keys=True).encode())
            else:
                for p in self.files():
                    h.update(sha256_file(p).encode())
            self._sha = h.hexdigest()
        return self._sha

    def files(self) -> list[Path]:
        if self.kind == "run":
            base = self.path / self.which
            return [base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")]
        if self.kind == "saved":
            return [self.path.with_name(self.path.name + ".safetensors"), self.path.with_name(self.path.name + ".json")]
        if self.kind in ("onnx", "engine"):
            extra = [q for q in (Path(str(self.path) + ".data"), self.path.with_suffix(".onnx.data")) if q.is_file()]
            return [self.path, *sorted(set(extra))]
        return []

    def file_mb(self, backend_file: Path | None = None) -> float | None:
        files = self.files() if backend_file is None else [backend_file, *_external_data(backend_file)]
        files = [f for f in files if f.is_file()]
        return round(sum(f.stat().st_size for f in files) / MB, 3) if files else None

    def counts(self) -> dict:
        """{'params', 'macs', 'counts_from'} per image; MACs None when they cannot be known."""
        if self._counts is None:
            self._counts = self._count()
        return self._counts

    def _count(self) -> dict:
        if self.kind == "run":
            try:
                rep = json.loads((self.path / "report.json").read_text())
                key = "compact" if self.which == "model" else self.which
                params, macs = rep["params"][key], rep["macs"][key]
                if isinstance(params, int) and isinstance(macs, int):
                    return {"params": params, "macs": macs, "counts_from": "report.json"}
            except (OSError, ValueError, KeyError, TypeError):
                pass
        if self.has_module:
            from ...prune.counting import count

            c = count(self.module())
            return {"params": c["params"], "macs": c["macs"], "counts_from": "counted"}
        side = self._sidecar_counts()
        if side is not None:
            return side
        onnx_path = self.path if self.kind == "onnx" else self.path.with_suffix(".onnx")
        if onnx_path.is_file():
            return {"params": onnx_param_count(onnx_path), "macs": None, "counts_from": "onnx-initializers"}
        return {"params": None, "macs": None, "counts_from": None}

    def _sidecar_counts(self) -> dict | None:
        from ..sources import saved_base

        from .provenance import export_record

        record = export_record(self.path)
        if record is not None and isinstance((record.get("counts") or {}).get("params"), int):
            return {"params": record["counts"]["params"], "macs": record["counts"].get("macs"),
                    "counts_from": "export.json"}
        stem = self.path.with_suffix("")
        for meta in (Path(str(self.path) + ".json"), stem.with_name(stem.name + ".meta.json")):
            try:
                data = json.loads(meta.read_text())
                if isinstance(data, dict) and isinstance(data.get("params"), int):
                    return {"params": data["params"], "macs": data.get("macs"), "counts_from": meta.name}
            except (OSError, ValueError):
                continue
        base = saved_base(stem)
        if base is not None:
            from ...prune.counting import count
            from ...prune.saving import load

            c = count(load(base))
            return {"params": c["params"], "macs": c["macs"], "counts_from": f"{base.name} (source model)"}
        return None

    # ---- what a backend runs ------------------------------------------------------------
    def for_backend(self, backend: str, batch: int, threads: int | None = None):
        """(artifact for make_runner, file it came from or None)."""
        if backend == "torch":
            if not self.has_module:
                raise VtpError(f"{self.spec}: the torch backend needs a run dir, saved model or timm name, not a {self.kind} file")
            files = self.files()
            return self.module(), (files[0] if files else None)
        if backend == "trt":
            from .engines import engine_record, engine_for

            if self.kind == "engine":
                self.trt_info[batch] = engine_record(self.path, self.precision)
                return self.path, self.path
            onnx_path = self.onnx_for(batch, threads)
            engine, self.trt_info[batch] = engine_for(onnx_path, self.precision, batch,
                                                      self._engine_folder(onnx_path))
            return engine, engine
        if self.kind == "engine":
            raise VtpError(f"{self.spec}: a TensorRT engine only runs on --backend trt")
        path = self.onnx_for(batch, threads)
        return path, path

    def onnx_for(self, batch: int, threads: int | None = None) -> Path:
        if self.kind == "onnx":
            return self.path
        path = self._cache_path(batch)
        if not path.is_file():
            for stale in path.parent.glob(f"{self._cache_stem()}.*.b{batch}.onnx"):
                stale.unlink(missing_ok=True)  # an older export of a model that has since changed
            self._export(path, batch, threads)
        return path

    def _engine_folder(self, onnx_path: Path) -> Path:
        """Where bench engines go: the bench cache, never beside an export's model.engine."""
        if self.cache_dir is not None:
            folder = Path(self.cache_dir)
        elif self.kind == "onnx":
            folder = onnx_path.parent / "bench_cache"
        else:
            folder = self._cache_path(1).parent
        return folder if _writable(folder) else user_cache_dir()

    def _cache_stem(self) -> str:
        if self.kind == "run":
            return self.which
        if self.kind == "saved":
            return self.path.name
        return self.timm_name or "model"

    def _cache_path(self, batch: int) -> Path:
        name = f"{self._cache_stem()}.{self.sha256()[:12]}.b{batch}.onnx"
        if self.cache_dir is not None:
            return Path(self.cache_dir) / name
        if self.kind == "run":
            folder = self.path / "bench_cache"
        elif self.kind == "saved":
            folder = self.path.parent / "bench_cache"
        else:
            folder = user_cache_dir()
        if not _writable(folder):
            folder = user_cache_dir()
        return folder / name

    def _export(self, path: Path, batch: int, threads: int | None) -> None:
        from ..export import export_onnx
        from ..export.onnx_export import random_inputs

        sample = random_inputs(self.input_chw(), batch)
        export_onnx(self.module(), path, batch=batch, sample=sample, openvino=False, threads=threads, atol=1e-3)


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _external_data(onnx_path: Path) -> list[Path]:
    return [q for q in (Path(str(onnx_path) + ".data"),) if q.is_file()]


def resolve(spec: str, cache_dir: Path | None = None) -> Artifact:
    """A candidate ARTIFACT: run dir, saved model (X or X.safetensors/X.json), X.onnx or X.engine."""
    from ..sources import is_run_dir, saved_base

    path = Path(spec)
    if is_run_dir(path):
        art = Artifact(spec, "run", path=path, which="model", cache_dir=cache_dir, label=f"{path.resolve().name}/model")
        if saved_base(path / "model") is None:
            raise CheckpointError(f"{path}: run dir has no finished model.safetensors/model.json")
        return art
    base = saved_base(path)
    if base is not None:
        return Artifact(spec, "saved", path=base, cache_dir=cache_dir, label=base.name)
    if path.suffix == ".onnx" and path.is_file():
        if path.stat().st_size == 0:
            raise VtpError(f"{path}: empty ONNX file")
        onnx_input_shape(path)  # truncated or garbage files fail here, with one line
        return Artifact(spec, "onnx", path=path, cache_dir=cache_dir, label=path.name)
    if path.suffix in ENGINE_SUFFIXES and path.is_file():
        if path.stat().st_size == 0:
            raise VtpError(f"{path}: empty engine file")
        return Artifact(spec, "engine", path=path, cache_dir=cache_dir, label=path.name)
    if path.with_suffix(".safetensors").is_file() and path.suffix in (".safetensors", ".json"):
        raise CheckpointError(f"{path}: saved model is missing its {path.with_suffix('.json').name} architecture file")
    if not path.exists():
        raise VtpError(f"{path}: no such artifact (run dir, saved model, .onnx or .engine)")
    raise VtpError(f"{path}: not a run dir (manifest.json), saved model (X.safetensors + X.json), .onnx or engine file")


def resolve_baseline(baseline: str | None, candidates: list[Artifact], cache_dir: Path | None = None) -> Artifact | None:
    """--baseline: unpruned | TIMM_NAME | PATH | none; default: the candidate's unpruned counterpart (its run
    dir's, or the one its export.json names), never an unrelated model."""
    from ..sources import saved_base
    from .provenance import default_baseline

    if baseline is None:
        found = default_baseline(candidates)
        if isinstance(found, Path):
            if saved_base(found / "unpruned") is None:
                raise CheckpointError(f"{found}: run dir has no unpruned.safetensors/unpruned.json to compare "
                                      "against; give --baseline PATH|TIMM_NAME, or --baseline none")
            return Artifact("unpruned", "run", path=found, which="unpruned", cache_dir=cache_dir,
                            label=f"{found.resolve().name}/unpruned")
        baseline = found
    if baseline.lower() == "none":
        return None
    if baseline == "unpruned":
        run = next((c for c in candidates if c.kind == "run"), None)
        if run is None:
            raise VtpError("--baseline unpruned needs a run dir ARTIFACT; give a timm name, a path or 'none'")

        if saved_base(run.path / "unpruned") is None:
            raise CheckpointError(f"{run.path}: run dir has no unpruned.safetensors/unpruned.json to compare against")
        return Artifact("unpruned", "run", path=run.path, which="unpruned", cache_dir=cache_dir,
                        label=f"{run.path.resolve().name}/unpruned")
    if Path(baseline).exists():
        art = resolve(baseline, cache_dir)
        art.label = f"{art.label} (baseline)" if any(c.label == art.label for c in candidates) else art.label
        return art
    import timm

    if timm.is_model(baseline):
        kwargs: dict[str, Any] = {}
        chw = _first_chw(candidates)
        if chw is not None:  # same input as the candidate, so the speedup compares like with like
            cfg = timm.get_pretrained_cfg(baseline)
            default = tuple(getattr(cfg, "input_size", None) or ()) if cfg is not None else ()
            if tuple(chw) != default:
                kwargs = {"img_size": [chw[1], chw[2]], "in_chans": chw[0]}
        label = baseline if not kwargs else f"{baseline}@{chw[1]}x{chw[2]}"
        return Artifact(baseline, "timm", timm_name=baseline, timm_kwargs=kwargs, cache_dir=cache_dir, label=label)
    raise VtpError(f"--baseline {baseline!r}: not 'unpruned', 'none', an existing path or a timm model name")


def _first_chw(candidates: list[Artifact]):
    for c in candidates:
        try:
            chw = c.input_chw()
        except VtpError:
            continue
        if chw is not None:
            return chw
    return None
