"""The latency table: per-part latency grids of one model shape on one device/backend, and their calibration.

A table's part sum (stem + attention and MLP parts per block) is mapped to whole-model latency by
its `Calibration`: a line fitted to whole compact models measured in the same interleaved run,
because parts timed alone miss the costs between them (the issue that made uncalibrated plans
consistently ~15 % slower than predicted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import VtpError
from ..fileio import atomic_write_text


class Grid(BaseModel):
    """ms[i][j] = latency at (a[i], b[j])."""

    model_config = ConfigDict(extra="forbid")

    a: list[int]
    b: list[int]
    ms: list[list[float]]

    def at(self, x: float, y: float) -> float:
        return float(_bilinear(self.a, self.b, self.ms, x, y))


def _bilinear(a, b, ms, x, y) -> float:
    """Bilinear interpolation on the grid, clamped to its edges (scipy's RegularGridInterpolator)."""
    from scipy.interpolate import RegularGridInterpolator

    values = np.asarray(ms, dtype=float)
    axes, point = [], []
    for axis, v, dim in ((a, x, 0), (b, y, 1)):
        if len(axis) == 1:  # a one-point axis: constant along it
            values = values.take([0, 0], axis=dim)
            axis = [axis[0], axis[0] + 1]
        axes.append(np.asarray(axis, dtype=float))
        point.append(min(max(float(v), axes[-1][0]), axes[-1][-1]))
    return float(RegularGridInterpolator(axes, values, method="linear")([point])[0])


class Calibration(BaseModel):
    """Whole-model latency = scale x part sum + offset_ms, fitted on whole compact models."""

    model_config = ConfigDict(extra="forbid")

    scale: float = 1.0
    offset_ms: float = 0.0
    points: list[dict] = Field(default_factory=list, description="{keep, part_sum_ms, measured_ms, spread_pct}")
    max_residual_pct: float = 0.0

    def apply(self, part_sum_ms: float) -> float:
        return self.scale * part_sum_ms + self.offset_ms

    def invert(self, whole_ms: float) -> float:
        return (whole_ms - self.offset_ms) / self.scale

    @classmethod
    def fit(cls, points: list[dict]) -> "Calibration":
        """Least-squares line through (part_sum_ms, measured_ms); one point (or a degenerate fit) gives
        a pure scale."""
        x = np.array([p["part_sum_ms"] for p in points], dtype=float)
        y = np.array([p["measured_ms"] for p in points], dtype=float)
        scale, offset = float(np.mean(y / x)), 0.0
        if len(points) >= 2 and np.ptp(x) > 0.05 * x.max():
            a, b = np.polyfit(x, y, 1)
            if 0.5 <= a <= 2.0:  # a steeper or flatter line is noise, not a property of the device
                scale, offset = float(a), float(b)
        pred = scale * x + offset
        residual = float(np.max(np.abs(pred - y) / y)) * 100.0
        return cls(scale=scale, offset_ms=offset, points=points, max_residual_pct=round(residual, 2))


class LatencyTable(BaseModel):
    """Per-part latency grids for one model shape on one device/backend (ms per forward of the part)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["vtpdeploy-latency"] = "vtpdeploy-latency"
    version: int = 2
    key: dict
    depth: int
    num_heads: int
    head_dim: int
    attn: Grid = Field(description="a: qkv_in width, b: per-head V width")
    mlp: Grid = Field(description="a: mlp_in width, b: hidden width")
    stem_ms: float
    created: str = ""
    measurements: int = 0
    rounds: int = 0
    spread_pct: float | None = Field(None, description="median over entries of the relative IQR of their rounds")
    calibration: Calibration | None = None

    # -- prediction ---------------------------------------------------------------------
    def attn_ms(self, qkv_in: float, v_per_head: float) -> float:
        """0 for a removed attention (no V dim): what is left of it, a bias add, is within the calibration."""
        return self.attn.at(qkv_in, v_per_head) if v_per_head > 0 else 0.0

    def mlp_ms(self, mlp_in: float, hidden: float) -> float:
        return self.mlp.at(mlp_in, hidden) if hidden > 0 else 0.0

    def block_ms(self, qkv_in: float, v_total: float, mlp_in: float, hidden: float) -> float:
        return self.attn_ms(qkv_in, v_total / self.num_heads) + self.mlp_ms(mlp_in, hidden)

    def part_sum_widths(self, widths) -> float:
        """Stem + parts for a list of `arch.BlockWidths` (or 4-tuples in GATE_KINDS order), uncalibrated."""
        total = self.stem_ms
        for w in widths:
            if hasattr(w, "qkv_in"):
                total += self.block_ms(w.qkv_in, sum(w.v_dims), w.mlp_in, w.mlp_hidden)
            else:
                total += self.block_ms(*w)
        return total

    def calibrated(self, part_sum_ms: float) -> float:
        return self.calibration.apply(part_sum_ms) if self.calibration else part_sum_ms

    def predict_widths(self, widths) -> float:
        """Predicted whole-model latency (calibrated part sum)."""
        return self.calibrated(self.part_sum_widths(widths))

    def predict_plan(self, plan) -> float:
        from ..prune.compact import widths_from_plan

        return self.predict_widths(widths_from_plan(plan))

    def full_part_sum_ms(self) -> float:
        return self.stem_ms + self.depth * (self.attn.ms[-1][-1] + self.mlp.ms[-1][-1])

    def full_ms(self) -> float:
        """Predicted latency of the unpruned widths."""
        return self.calibrated(self.full_part_sum_ms())

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise VtpError(f"{path}: latency table not found") from None
        except Exception as exc:
            raise VtpError(f"{path}: not a latency table ({str(exc).splitlines()[0][:160]})") from None
