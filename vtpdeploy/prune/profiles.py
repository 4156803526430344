"""Hardware profiles: width constraints that make saved MACs real latency on a target runtime.

    from vtpdeploy.prune.profiles import constraints_for, check_plan, check_model
    c = constraints_for("cpu")                           # a WidthConstraints with profile="cpu"
    p = plan(gated_model, 0.4, constraints=c)
    assert not check_plan(p, c) and not check_model(compact(gated_model, p), c)

| profile       | round_to (qkv_in / V per head / mlp_in / mlp_hidden) | V heads aligned | allowed V head dims | min widths (qkv_in, mlp_in, mlp_hidden) |
|---------------|-------------------------------------------------------|-----------------|---------------------|------------------------------------------|
| `none`        | 1 / 1 / 1 / 1 (paper-faithful)                        | no              | any                 | 1                                        |
| `cpu`         | 16 / 8 / 16 / 32 (AVX-512 fp32 = 16 lanes); qkv_in / mlp_in share one residual ranking (sliced) | yes | multiples of 8 | 32, 32, 64 |
| `cpu-gather`  | as `cpu`, but each block keeps its own best qkv_in / mlp_in dims (gathered) | yes   | multiples of 8      | 32, 32, 64                               |
| `cpu-nogather`| as `cpu`; qkv_in and mlp_in kept full (`keep_full`)   | yes             | multiples of 8      | full, full, 64                           |
| `gpu-fp16`    | 8 / 8 / 8 / 64 (tensor cores, fused MHA %8)           | yes             | 16..256, %8         | 64, 64, 128                              |
| `gpu-int8`    | 32 / 16 / 32 / 64 (INT8 tensor-core tiles)            | yes             | {16, 32, 64}        | 64, 64, 128                              |
| `jetson-orin` | 32 / 16 / 32 / 64 (Orin GPU/DLA INT8)                 | yes             | {16, 32, 64}        | 64, 64, 128                              |

TensorRT fused-MHA limits the profiles encode: FP16 head dim % 8 == 0 and 16 ≤ d ≤ 256; INT8 head dim
∈ {16, 32, 64} and sequence length ≤ 512. VTP prunes only V dims (Q/K keep the model's head dim), so
the per-head *V* dim is what a plan changes; `check_model` also checks the Q/K head dims against the same
limits (DeiT's unpruned 64 passes every profile). Some fused kernels further need d_v == d_qk; then a
pruned V head falls back to the unfused path — measure (vtpdeploy bench). Under tied Q/K gates
(`add_gates(model, qk_dims="tied")`) each head keeps the same Q/K and V dims, so d_v == d_qk, and the
per-head width the profile allows (`v_head_dims`, `round_to["attn_v"]`) is the Q/K head dim too.

`cpu-nogather` moves the input-side share of the rate (qkv_in, mlp_in) to the V and MLP hidden dims:
every block reads the full LayerNorm output, so the compact model has no `index_select` before qkv
and fc1 (the Gather that cost 5 % of DeiT-B VTP-40 on ORT), and per removed dim the MACs saved are
about the same (a qkv_in dim saves ≈ 2·A + V MACs per token, an attn_v or mlp_hidden dim ≈ 2·D).

`cpu` keeps all four VTP sites, but every qkv_in / mlp_in gate keeps the top of one ranking of the residual
dims shared by all blocks (`shared_input_order`). Their kept sets then nest, and compaction orders the
residual stream once so that each block's kept inputs are a prefix: a `Slice` instead of a `Gather`, at any
rate (`cpu-nogather` cannot go above 5/7 of the gated dims). `cpu-gather` lets each block keep its own best
input dims (the `cpu` profile before the shared ranking), at the cost of a Gather per block input.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..errors import PlanError
from .residual import residual_order
from .schema import PrunePlan, WidthConstraints
from .sites import INPUT_KINDS, SITES, read_dims
from .widths import feasible_counts

_FP16_HEAD_DIMS = list(range(16, 257, 8))
_INT8_HEAD_DIMS = [16, 32, 64]
_INT8 = WidthConstraints(
    profile="gpu-int8",
    round_to={"qkv_in": 32, "attn_v": 16, "mlp_in": 32, "mlp_hidden": 64},
    head_aligned_v=True,
    v_head_dims=_INT8_HEAD_DIMS,
    min_width={"qkv_in": 64, "mlp_in": 64, "mlp_hidden": 128},
)

_CPU = WidthConstraints(
    profile="cpu",
    round_to={"qkv_in": 16, "attn_v": 8, "mlp_in": 16, "mlp_hidden": 32},
    head_aligned_v=True,
    v_head_dims=None,
    min_width={"qkv_in": 32, "mlp_in": 32, "mlp_hidden": 64},
    shared_input_order=True,
)

PROFILES: dict[str, WidthConstraints] = {
    "none": WidthConstraints(profile="none"),
    "cpu": _CPU,
    "cpu-gather": _CPU.model_copy(update={"profile": "cpu-gather", "shared_input_order": False},
                                  deep=True),  # as cpu, each block's own qkv/fc1 inputs (gathered)
    "cpu-nogather": _CPU.model_copy(update={"profile": "cpu-nogather", "keep_full": ["qkv_in", "mlp_in"],
                                            "shared_input_order": False},
                                    deep=True),  # as cpu, qkv/fc1 inputs never pruned
    "gpu-fp16": WidthConstraints(
        profile="gpu-fp16",
        round_to={"qkv_in": 8, "attn_v": 8, "mlp_in": 8, "mlp_hidden": 64},
        head_aligned_v=True,
        v_head_dims=_FP16_HEAD_DIMS,
        min_width={"qkv_in": 64, "mlp_in": 64, "mlp_hidden": 128},
    ),
    "gpu-int8": _INT8,
    "jetson-orin": _INT8.model_copy(update={"profile": "jetson-orin"}, deep=True),  # Orin GPU/DLA INT8: as gpu-int8
}

# Runtime limits checked on the compact model (not expressible as WidthConstraints fields).
LIMITS: dict[str, dict] = {
    "none": {},
    "cpu": {},
    "cpu-gather": {},
    "cpu-nogather": {},
    "gpu-fp16": {"qk_head_dims": _FP16_HEAD_DIMS},
    "gpu-int8": {"qk_head_dims": _INT8_HEAD_DIMS, "max_seq": 512},
    "jetson-orin": {"qk_head_dims": _INT8_HEAD_DIMS, "max_seq": 512},
}

NOTES: dict[str, str] = {
    "none": "paper-faithful: exact global threshold, uneven V heads (padded per head at run time)",
    "cpu": "x86 ORT/OpenVINO: AVX-512-friendly multiples, equal V heads, qkv/fc1 inputs sliced (no pad/gather)",
    "cpu-gather": "as cpu, but each block keeps its own best qkv/fc1 inputs (an input Gather per block)",
    "cpu-nogather": "as cpu, but qkv/fc1 inputs kept full (no input Gather); the rate goes to V and MLP hidden",
    "gpu-fp16": "TensorRT FP16: multiples of 8, fused MHA head dims 16..256 (%8)",
    "gpu-int8": "TensorRT INT8: multiples of 32, fused MHA head dims {16,32,64}, seq <= 512",
    "jetson-orin": "Jetson Orin TensorRT INT8: as gpu-int8",
}


def profile_names() -> list[str]:
    return list(PROFILES)


def constraints_for(name: str | None) -> WidthConstraints:
    """The WidthConstraints of profile `name` (a fresh copy); PlanError naming the valid ones otherwise."""
    key = "none" if name is None else str(name).strip().lower()
    if key not in PROFILES:
        raise PlanError(f"unknown hardware profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[key].model_copy(deep=True)


def _allowed_v(c: WidthConstraints, head_dim: int) -> list[int] | None:
    if c.v_head_dims:
        return [d for d in c.v_head_dims if d <= head_dim] or [head_dim]
    return None


def check_plan(plan: PrunePlan, constraints: WidthConstraints | None = None) -> list[str]:
    """Violations of `constraints` (default: the plan's own) in `plan`; [] when it complies."""
    c = constraints or plan.constraints
    bad = []
    for g in plan.gates:
        n = len(g.kept)
        if n not in feasible_counts(g.kind, g.size, c, plan.num_heads, plan.head_dim):
            bad.append(f"{g.name}: kept {n} of {g.size} is not a feasible width for profile {c.profile}")
    if c.head_aligned_v or c.v_head_dims or c.granularity == "head":
        for b in range(plan.num_blocks):
            bad += _check_v(f"blocks.{b}", plan.v_dims_per_head(b), c, plan.head_dim)
    if c.shared_input_order and residual_order(plan) is None and _pruned_inputs(plan):
        bad.append(f"qkv_in / mlp_in kept dims are not nested, as profile {c.profile} needs (one shared ranking)")
    return bad


def _pruned_inputs(plan: PrunePlan) -> bool:
    return any(len(g.kept) < g.size for g in plan.gates if g.kind in INPUT_KINDS)


def _check_v(where: str, v: list[int], c: WidthConstraints, head_dim: int) -> list[str]:
    """Head alignment over the live heads (a head with no V dims is removed whole, so it is allowed, and so is
    an attention with none: it is removed whole)."""
    bad = []
    v = [d for d in v if d]
    if not v:
        return bad
    if c.granularity == "head" and any(d != head_dim for d in v):
        bad.append(f"{where}: V dims per live head {v} are not whole heads of {head_dim}")
    if len(set(v)) != 1:
        bad.append(f"{where}: V dims per head {v} are not head-aligned")
    m = c.round_to.get("attn_v", 1)
    allowed = _allowed_v(c, head_dim)
    for d in set(v):
        if allowed is not None and d not in allowed:
            bad.append(f"{where}: V head dim {d} not in {allowed}")
        if allowed is None and d % m and d != head_dim:
            bad.append(f"{where}: V head dim {d} is not a multiple of {m}")
    return bad


def check_model(model: nn.Module, constraints: WidthConstraints, tokens: int | None = None) -> list[str]:
    """Violations of a profile in a compact model (widths, head dims incl. unpruned Q/K, sequence)."""
    c = constraints
    limits = LIMITS.get(c.profile, {})
    dims = read_dims(model)
    full = {"qkv_in": dims.embed_dim, "mlp_in": dims.embed_dim, "mlp_hidden": None}
    bad = []
    for i, blk in enumerate(dims.blocks):
        if not blk.compact:
            continue  # an unpruned block: full widths are always allowed
        for kind, full_width in full.items():
            if SITES[kind][0] in blk.removed_sublayers:
                continue  # a removed sublayer has no width to check
            w, m, lo = blk.size[kind], c.round_to.get(kind, 1), c.min_for(kind)
            if kind in c.keep_full and full_width is not None and w != full_width:
                bad.append(f"blocks.{i}.{kind}: width {w} but profile {c.profile} keeps it full ({full_width})")
            if w % m and w != full_width:
                bad.append(f"blocks.{i}.{kind}: width {w} is not a multiple of {m}")
            if w < lo and w != full_width:
                bad.append(f"blocks.{i}.{kind}: width {w} below the minimum {lo}")
        if c.head_aligned_v or c.v_head_dims or c.granularity == "head":
            bad += _check_v(f"blocks.{i}", blk.v_dims, c, blk.head_dim)
        if c.shared_input_order and (model.blocks[i].attn.gather_input or model.blocks[i].mlp.gather_input):
            bad.append(f"blocks.{i}: gathers its LayerNorm output; profile {c.profile} slices it")
        qk = limits.get("qk_head_dims")
        for d in sorted(set(blk.qk_dims)) if qk is not None else ():  # tied Q/K: the kept dims of each head
            if d not in qk:
                bad.append(f"blocks.{i}: Q/K head dim {d} not in the fused-MHA set for {c.profile}")
    max_seq = limits.get("max_seq")
    tokens = dims.tokens if tokens is None else tokens
    if max_seq is not None and tokens is not None and tokens > max_seq:
        bad.append(f"sequence length {tokens} exceeds {max_seq} (INT8 fused MHA)")
    return bad


def describe_profiles() -> list[Mapping]:
    """One row per profile (for docs and `--hardware` help)."""
    return [{"profile": n, **PROFILES[n].model_dump(exclude={"profile"}), "limits": LIMITS[n], "note": NOTES[n]}
            for n in PROFILES]
