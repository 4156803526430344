"""Stand-in for the TensorRT 11.x (what pip install tensorrt resolves to) Python API surface. NOT TensorRT: API-surface tests only.

It builds no engine (a placeholder that says so); see ../../_surface.py for the per-version differences.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_trt_standin_surface", Path(__file__).resolve().parents[2] / "_surface.py")
_surface = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_surface)
_surface.install(globals(), "11.0.0.9")
