"""The typed bench report: one `Row` per model x backend x batch, one `Comparison` per candidate vs the baseline.

`run_bench` builds these and writes them as plain JSON (`model_dump(exclude_unset=True)`: a backend's extras appear
only on its rows). docs/bench.md holds `schema_markdown()`; tests/test_bench.py checks it is current:

    python -c "from vtpdeploy.deploy.bench.schema import schema_markdown; print(schema_markdown())"
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Row(BaseModel):
    """One model on one backend at one batch size."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="unique label")
    role: Literal["baseline", "candidate"]
    artifact: str = Field(description="what was given on the command line")
    kind: str = Field(description="run | saved | onnx | engine | timm")
    backend: str
    device: str
    batch: int
    input_shape: list[int]
    iters: int = Field(description="timed calls")
    blocks: int = Field(description="interleaved rounds")
    warmup_iters: int
    latency_ms: dict[str, float] = Field(description="mean, p50, p90, p95, p99, min, max")
    throughput_ips: float = Field(description="batch x calls per second")
    peak_mem_mb: float | None = Field(description="see docs/bench.md 'Peak memory'; null when unknown")
    memory: dict[str, Any] = Field(description="how the memory was measured, and weights vs activations")
    macs: int | None
    params: int | None
    counts_from: str | None = Field(description="where params and MACs come from")
    file_mb: float | None = Field(description="the file the backend ran; null for a timm name on torch")
    block_means_ms: list[float] = Field(description="one mean per round: the bootstrap's input")
    latencies_ms: list[float] = Field(description="per call, at most 2000 (evenly subsampled)")
    # each runner's own extras (Runner.row_extras), present only on its backend's rows
    precision: str | None = Field(None, description="torch: the dtype the model ran in (fp32 | fp16)")
    spin: str | None = Field(None, description="ort: thread spinning (on | run | off)")
    tensorrt: dict[str, Any] | None = Field(None, description="trt: version, precision, TF32, flags, GPU and clocks")
    power: dict[str, Any] | None = Field(None, description="with tegrastats: input power, power state, energy")


class Comparison(BaseModel):
    """A candidate against the baseline, same backend and batch."""

    model_config = ConfigDict(extra="forbid")

    candidate: str
    baseline: str
    backend: str
    batch: int
    speedup: float = Field(description="baseline mean / candidate mean")
    speedup_ci: list[float] = Field(description="95 % paired-bootstrap interval over rounds")
    ci_method: str
    mac_ratio: float | None = Field(description="baseline MACs / candidate MACs; null when unknown")
    efficiency: float | None = Field(description="speedup / mac_ratio (E)")
    efficiency_ci: list[float] | None


Warnings = TypeAdapter(Annotated[list[str], Field(
    description="one line per combination that runs but gives numbers not to trust as-is (e.g. an s8 INT8 ONNX "
                "timed on a CPU runtime); the CLI prints them")])


def schema_markdown() -> str:
    """The JSON schema of a result row, a comparison and the report's warnings, as docs/bench.md's fenced block."""
    schema = {"result": Row.model_json_schema(), "comparison": Comparison.model_json_schema(),
              "warnings": Warnings.json_schema()}
    return "```json\n" + json.dumps(schema, indent=1, ensure_ascii=False) + "\n```"
