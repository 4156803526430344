"""Hardware profiles: constraints hold in the plan and in the compact model, exactness, realised rate."""

from __future__ import annotations

import pytest
import torch
from conftest import gated_random, image_batch, make_vit, masked_and_compact, max_diff

import vtpdeploy
from vtpdeploy import PlanError, WidthConstraints, plan
from vtpdeploy.prune.profiles import (
    PROFILES,
    check_model,
    check_plan,
    constraints_for,
    describe_profiles,
)
from vtpdeploy.prune.widths import (
    allocate,
    feasible_counts,
    nearest,
    rate_bound,
    select_kept,
)

# head_dim 64 (as DeiT), 3 heads, hidden 768, 17 tokens: every profile can prune it.
MID = dict(embed_dim=192, num_heads=3, depth=2)
RATE_TOL = 0.02  # stated bound: |realised - requested| <= 2 % of gated dims on this model (see rate_bound)


@pytest.fixture(scope="module")
def mid_model():
    return gated_random(make_vit(**MID), seed=21)


def test_pipeline_hardware_help_names_every_profile():
    from helpers import run_cli_inprocess

    proc = run_cli_inprocess("pipeline", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.replace("│", " ").split())
    assert all(f" {name}," in text or f" {name}." in text for name in PROFILES), text


def test_profiles_and_lookup():
    assert set(PROFILES) == {"none", "cpu", "cpu-gather", "cpu-nogather", "gpu-fp16", "gpu-int8", "jetson-orin"}
    for name in PROFILES:
        c = constraints_for(name)
        assert isinstance(c, WidthConstraints) and c.profile == name
        assert c is not PROFILES[name]  # a copy: callers may edit it
    assert constraints_for("CPU").profile == "cpu"
    assert constraints_for(None).profile == "none"
    with pytest.raises(PlanError) as exc:
        constraints_for("tpu")
    msg = str(exc.value)
    assert "\n" not in msg and "'tpu'" in msg
    for name in PROFILES:
        assert name in msg
    assert PROFILES["none"] == WidthConstraints()
    for name in ("gpu-int8", "jetson-orin"):
        assert PROFILES[name].v_head_dims == [16, 32, 64]
    fp16 = PROFILES["gpu-fp16"].v_head_dims
    assert all(d % 8 == 0 and 16 <= d <= 256 for d in fp16)
    assert [r["profile"] for r in describe_profiles()] == list(PROFILES)


@pytest.mark.parametrize("name", list(PROFILES))
@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_profile_holds_in_plan_and_compact_model(mid_model, name, rate):
    c = constraints_for(name)
    p = plan(mid_model, rate, importance="gate", constraints=c)
    assert p.constraints == c and p.constraints.profile == name
    s = p.summary()
    assert s["profile"] == name and s["requested_rate"] == rate
    assert abs(s["realised_rate"] - rate) <= RATE_TOL
    assert check_plan(p) == []
    masked, small = masked_and_compact(mid_model, p)
    assert check_model(small, c) == []
    x = image_batch(mid_model)
    with torch.no_grad():
        assert max_diff(masked(x), small(x)) <= 1e-4
    for b, blk in enumerate(small.blocks):
        v = blk.attn.v_dims
        assert v == p.v_dims_per_head(b)
        widths = {"qkv_in": blk.attn.qkv.in_features, "mlp_in": blk.mlp.fc1.in_features,
                  "mlp_hidden": blk.mlp.fc1.out_features}
        if name == "none":
            continue
        assert len(set(v)) == 1 and blk.attn.uniform_v  # head-aligned: no pad/gather
        for kind, w in widths.items():
            full = 768 if kind == "mlp_hidden" else 192
            assert w == full or (w % c.round_to[kind] == 0 and w >= c.min_width[kind]), (kind, w)
        if name in ("gpu-int8", "jetson-orin"):
            assert v[0] in (16, 32, 64)
        if name == "gpu-fp16":
            assert v[0] % 8 == 0 and 16 <= v[0] <= 256
        if name in ("cpu", "cpu-nogather"):
            assert v[0] % 8 == 0
        if name == "cpu-nogather":  # no input gathers: qkv and fc1 read the full LayerNorm output
            assert widths["qkv_in"] == widths["mlp_in"] == 192
            assert not blk.attn.gather_input and not blk.mlp.gather_input


def test_realised_rate_close_and_bounded(mid_model):
    sizes = {(g.block, g.kind): g.size for g in plan(mid_model, 0.3).gates}
    for name in PROFILES:
        c = constraints_for(name)
        bound = rate_bound(c, sizes, 3, 64)
        for rate in (0.1, 0.3, 0.5):
            p = plan(mid_model, rate, constraints=c)
            assert abs(p.realised_rate - rate) <= max(bound, 1.0 / p.total_dims), (name, rate, p.realised_rate, bound)


def test_allocation_removes_rounding_drift():
    # 24 gates of 100 dims; the threshold keeps 59 of each -> nearest multiple of 16 is 64 everywhere: +5 per gate.
    c = WidthConstraints(profile="t", round_to={"mlp_hidden": 16})
    g = torch.Generator().manual_seed(0)
    keys = [(i, "mlp_hidden") for i in range(24)]
    scores = {k: torch.rand(100, generator=g) for k in keys}
    counts = {k: 59 for k in keys}
    naive = sum(nearest(feasible_counts("mlp_hidden", 100, c, 1, 1), 59) for _ in keys)
    assert naive - sum(counts.values()) == 24 * 5  # the drift per-gate rounding would make
    alloc = allocate(counts, scores, c, 1, 1)
    assert all(v % 16 == 0 or v == 100 for v in alloc.values())
    assert abs(sum(alloc.values()) - sum(counts.values())) <= 8  # half a step
    # the gates rounded down are those whose marginal dims score worst
    down = [k for k in keys if alloc[k] < 64]
    up = [k for k in keys if alloc[k] >= 64]
    assert down and up

    def marginal(k):  # mean score of dims 49..64 of this gate
        return float(scores[k].sort(descending=True).values[48:64].mean())

    assert max(marginal(k) for k in down) <= min(marginal(k) for k in up) + 1e-6


def test_allocation_groups_and_trivial_constraints():
    keys = [(0, "qkv_in"), (0, "mlp_in"), (1, "qkv_in"), (1, "mlp_in")]
    scores = {k: torch.arange(48, dtype=torch.float32) for k in keys}
    counts = {k: 40 for k in keys}
    c = WidthConstraints(round_to={"qkv_in": 16, "mlp_in": 16})
    alloc = allocate(counts, scores, c, 3, 16, groups=[[k] for k in keys])  # per-gate groups: plain rounding
    assert all(v == 48 for v in alloc.values())
    none = allocate({k: 0 for k in keys}, scores, WidthConstraints(), 3, 16)
    assert all(v == 1 for v in none.values())  # `none`: only the minimum of one


def test_feasible_counts_and_select_kept_head_aligned():
    c = constraints_for("gpu-int8")
    assert feasible_counts("attn_v", 192, c, 3, 64) == [48, 96, 192]
    assert feasible_counts("attn_v", 48, c, 3, 16) == [48]
    assert feasible_counts("qkv_in", 192, c, 3, 64) == [64, 96, 128, 160, 192]
    assert feasible_counts("qkv_in", 48, c, 3, 16) == [48]  # no multiple fits above the minimum: keep full
    s = torch.rand(192, generator=torch.Generator().manual_seed(1))
    kept = select_kept(s, 100, "attn_v", c, 3, 64)
    assert len(kept) == 96
    for h in range(3):
        in_head = [i for i in kept if i // 64 == h]
        assert len(in_head) == 32
        others = [i for i in range(64 * h, 64 * h + 64) if i not in in_head]
        assert min(s[in_head]) > max(s[others])
    cpu = constraints_for("cpu")
    assert feasible_counts("attn_v", 192, cpu, 3, 64) == [24 * k for k in range(1, 9)]


def test_profile_none_is_the_paper_plan(mid_model):
    paper = plan(mid_model, 0.4)
    assert plan(mid_model, 0.4, constraints=constraints_for("none")) == paper
    assert check_plan(paper, constraints_for("cpu"))  # the paper plan is not a cpu plan: the profile changes it


def test_check_model_reports_violations(mid_model):
    p = plan(mid_model, 0.45)  # paper-faithful: uneven V heads, odd widths
    small = vtpdeploy.compact(mid_model, p)
    bad = check_model(small, constraints_for("gpu-int8"))
    assert bad and all("\n" not in b for b in bad)
    assert check_plan(p, constraints_for("gpu-int8"))
    assert check_model(small, constraints_for("none")) == []
    # INT8 fused MHA: sequence <= 512, Q/K head dim in {16,32,64}
    assert any("sequence length" in b for b in check_model(small, constraints_for("gpu-int8"), tokens=577))
    odd = vtpdeploy.compact(gated_random(make_vit(embed_dim=120, num_heads=3, depth=1), seed=2),
                            plan(gated_random(make_vit(embed_dim=120, num_heads=3, depth=1), seed=2), 0.3))
    assert any("Q/K head dim 40" in b for b in check_model(odd, constraints_for("gpu-int8")))
