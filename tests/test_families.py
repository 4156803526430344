"""One small model per timm family: supported ones gate, plan, compact exactly (fp64 vs the hard mask), save/load
and export with ONNX Runtime parity; the others are refused in one line. `FAMILIES` is also docs/models.md's
source: `PYTHONPATH=$PWD python tests/test_families.py` rewrites it, and a test checks it is in sync.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import randomize_gates, randomize_head

import vtpdeploy
from vtpdeploy.errors import UnsupportedModelError
from vtpdeploy.prune.arch import create_timm
from vtpdeploy.prune.sites import full_sites

torch.set_num_threads(1)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"
SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 10}
HYBRID = {"img_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 10}
ALL_SITES = "qkv inputs, V dims, fc1 inputs, hidden units"


@dataclass(frozen=True)
class Family:
    family: str
    name: str  # one timm name of the family
    pruned: str = ALL_SITES  # supported: what VTP prunes there; refused: ""
    refused: str = ""  # the words the one-line refusal contains
    kwargs: dict = field(default_factory=lambda: dict(SMALL))
    rate: float = 0.4  # of all gated dims; lower where sites behind a norm stay full
    e2e: bool = False  # run end to end by tests/test_family_pipeline.py (pipeline, export, INT8, readiness, planner)


FAMILIES = [
    Family("ViT (classic)", "vit_tiny_patch16_224"),
    Family("DeiT distilled", "deit_tiny_distilled_patch16_224"),
    Family("DeiT-III (LayerScale)", "deit3_small_patch16_224"),
    Family("CLIP ViT (pre-norm)", "vit_base_patch16_clip_224"),
    Family("SigLIP (MAP head)", "vit_base_patch16_siglip_224"),
    Family("DINOv2 with registers", "vit_small_patch14_reg4_dinov2"),
    Family("ViT, GAP + registers", "vit_betwixt_patch16_reg4_gap_256"),
    Family("ViT, qk-norm", "vit_tiny_patch16_224", kwargs={**SMALL, "qk_norm": True}, e2e=True),
    Family("ViT, bias-free projections", "vit_tiny_patch16_224", kwargs={**SMALL, "proj_bias": False}),
    Family("ViT, scale-norms (BEiT-3 style)", "vit_tiny_patch16_224",
           "qkv inputs, fc1 inputs (V dims and hidden units sit behind a norm: kept full)",
           kwargs={**SMALL, "scale_attn_norm": True, "scale_mlp_norm": True}, rate=0.25),
    Family("DINOv2-giant (SwiGLUPacked)", "vit_giant_patch14_dinov2", ALL_SITES + " (gate/value rows paired)",
           e2e=True),
    Family("AIMv2 (SwiGLU, RMSNorm, bias-free)", "aimv2_large_patch14_224", ALL_SITES + " (gate/value rows paired)",
           e2e=True),
    Family("Hybrid ResNet stem", "vit_tiny_r_s16_p8_224", ALL_SITES + " (the CNN stem is kept)",
           kwargs={**HYBRID, "img_size": 32, "patch_size": 2}, e2e=True),  # stride-4 stem: 4x4 tokens
    Family("Hybrid MobileCLIP stem", "vit_base_mci_224", ALL_SITES + " (the CNN stem is kept)",
           kwargs={**HYBRID, "embed_dim": 768, "mlp_ratio": 0.25}),  # the stem's 768 channels are the embedding
    Family("EVA-02 (RoPE, SwiGLU)", "eva02_tiny_patch14_224", ALL_SITES + " (gate/value rows paired)", e2e=True),
    Family("EVA-02 with MLP inner norm", "eva02_base_patch14_224",
           "qkv inputs, V dims, fc1 inputs (hidden units behind the inner norm: kept full)"),
    Family("DINOv3", "vit_small_patch16_dinov3", e2e=True),
    Family("DINOv3 SwiGLU", "vit_small_plus_patch16_dinov3", ALL_SITES + " (gate/value rows paired)"),
    Family("RoPE ViT", "vit_small_patch16_rope_224", e2e=True),
    Family("RoPE ViT, mixed (per-head) RoPE", "vit_small_patch16_rope_mixed_224", e2e=True),
    Family("RoPE ViT, GAP + register", "vit_medium_patch16_rope_reg1_gap_256"),
    Family("Perception Encoder", "vit_pe_core_tiny_patch16_384", e2e=True),
    Family("ResNet (not a ViT)", "resnet18", "", "not a timm VisionTransformer or Eva", {}),
    Family("ViT, residual post-norm blocks", "vit_base_patch16_rpn_224", "", "block 0 is ResPostBlock"),
    Family("ViT, parallel blocks", "vit_small_patch16_18x2_224", "", "block 0 is ParallelThingsBlock"),
    Family("ViT, fused parallel blocks", "vit_base_patch16_xp_224", "", "block 0 is ParallelScalingBlock"),
    Family("ViT, differential attention", "vit_tiny_patch16_224", "", "attention is DiffAttention",
           {**SMALL, "attn_layer": "diff"}),
    Family("EVA-CLIP post-norm", "eva02_enormous_patch14_clip_224", "", "block 0 is EvaBlockPostNorm"),
    Family("Sapiens2 (grouped-query attention)", "vit_base_patch16_sapiens2", "", "grouped-query attention",
           {**SMALL, "num_heads": 4, "embed_dim": 64, "num_kv_heads": 2}),
    Family("NaFlexVit", "naflexvit_base_patch16_gap", "", "NaFlexVit is not supported",
           {k: v for k, v in SMALL.items() if k not in ("img_size", "patch_size")}),
    Family("SAM ViT", "samvit_base_patch16", "", "VisionTransformerSAM is not supported",
           {**SMALL, "global_attn_indexes": (), "use_rel_pos": False}),
    Family("BEiT", "beit_base_patch16_224", "", "Beit is not supported"),
    Family("ViTamin (MbConv stem, GeGluMlp with an input norm)", "vitamin_small_224", "", "MLP is GeGluMlp",
           {k: v for k, v in SMALL.items() if k not in ("patch_size", "embed_dim", "num_heads")}),
    Family("Hybrid stem with a dynamic image size", "vit_tiny_r_s16_p8_224", "", "cannot be exported",
           {**HYBRID, "patch_size": 1, "dynamic_img_size": True}),
    Family("ViT relative position", "vit_relpos_base_patch16_224", "", "VisionTransformerRelPos is not supported"),
]
SUPPORTED = [f for f in FAMILIES if not f.refused]
REFUSED = [f for f in FAMILIES if f.refused]


def _id(f: Family) -> str:
    return f.family.split(" (")[0].lower().replace(" ", "_").replace(",", "")


def _gated(f: Family) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_timm(f.name, f.kwargs).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "gamma_1", "gamma_2")):  # LayerScale of random size and sign
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) * torch.where(torch.rand_like(p) < 0.3, -1.0, 1.0))
    randomize_head(model)
    vtpdeploy.add_gates(model)
    return randomize_gates(model).eval()


def _pruned_pair(f: Family) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(compact model, fp64 input, hard-mask logits), after checking the gates and the plan."""
    model = _gated(f)
    assert len(list(vtpdeploy.iter_gates(model))) == 4 * len(model.blocks)
    plan = vtpdeploy.plan(model, f.rate, importance="weight_l1")
    full = {(i, k) for i, b in enumerate(model.blocks) for k in full_sites(b)}
    assert all(len(g.kept) == g.size for g in plan.gates if (g.block, g.kind) in full)
    assert all(len(g.kept) < g.size for g in plan.gates if (g.block, g.kind) not in full and g.kind != "attn_v")
    x = torch.randn(2, 3, *model.patch_embed.img_size, dtype=torch.float64)
    with torch.no_grad():
        ref = vtpdeploy.apply_mask(copy.deepcopy(model), plan).eval()(x)
        small = vtpdeploy.compact(model, plan).eval()
    return small, x, ref


@pytest.mark.parametrize("f", SUPPORTED, ids=_id)
def test_supported_family_prunes_exactly_and_saves(f: Family, tmp_path):
    small, x, ref = _pruned_pair(f)
    with torch.no_grad():
        assert ref.abs().max() > 0.05  # the logits depend on the weights, so a wrong slice shows
        assert float((ref - small(x)).abs().max()) <= 1e-9
        vtpdeploy.save(small, tmp_path / "model")
        small = small.float()  # load builds fp32 modules: the same weights rounded the same way
        assert torch.equal(vtpdeploy.load(tmp_path / "model")(x.float()), small(x.float()))


def _onnx_parity(f: Family, tmp_path, openvino: bool = False) -> None:
    from vtpdeploy.deploy.export import export_onnx

    small, x, _ = _pruned_pair(f)
    result = export_onnx(small.float(), tmp_path / "model.onnx", batch=1, simplify=False, openvino=openvino,
                         sample=x.float(), atol=1e-4)
    backends = [v["backend"] for v in result.validations]
    assert backends == ["ort", "openvino"][: 1 + openvino]
    assert all(v["max_abs_diff"] <= 1e-4 for v in result.validations)


# One family with every new part (RoPE, q/k/v bias fusion, GLU MLP) exports in the fast suite (ORT and OpenVINO);
# the rest are slow (ORT).
ONNX_FAST = "eva02_tiny_patch14_224"


@pytest.mark.parametrize("f", [f for f in SUPPORTED if f.name == ONNX_FAST], ids=_id)
def test_new_family_exports_with_ort_and_openvino_parity(f: Family, tmp_path):
    pytest.importorskip("openvino")
    _onnx_parity(f, tmp_path, openvino=True)


@pytest.mark.slow
@pytest.mark.parametrize("f", [f for f in SUPPORTED if f.name != ONNX_FAST], ids=_id)
def test_every_supported_family_exports_with_ort_parity(f: Family, tmp_path):
    _onnx_parity(f, tmp_path)


@pytest.mark.parametrize("f", REFUSED, ids=_id)
def test_other_families_are_refused_in_one_line(f: Family):
    torch.manual_seed(0)
    model = create_timm(f.name, f.kwargs)
    keys = list(model.state_dict())
    with pytest.raises(UnsupportedModelError) as info:
        vtpdeploy.add_gates(model)
    message = str(info.value)
    assert "\n" not in message and f.refused in message and message.startswith(f.name)
    assert list(model.state_dict()) == keys  # refused before anything was changed


def test_geglu_with_the_gate_in_the_second_half_pairs_its_rows():
    """timm's GluMlp keeps the gate in fc1's second half by default (GeGLU with GELU here): the kept hidden units'
    value rows and gate rows (H apart) are kept together."""
    from timm.layers import GluMlp

    torch.manual_seed(0)
    model = create_timm("vit_tiny_patch16_224", {**SMALL, "mlp_layer": GluMlp, "act_layer": "gelu"}).double().eval()
    assert model.blocks[0].mlp.gate_last and model.blocks[0].mlp.fc1.out_features == 2 * 96
    randomize_head(model)
    randomize_gates(vtpdeploy.add_gates(model))
    plan = vtpdeploy.plan(model.eval(), 0.4, importance="weight_l1")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = vtpdeploy.apply_mask(copy.deepcopy(model), plan)(x)
        small = vtpdeploy.compact(model, plan).eval()
        assert float((ref - small(x)).abs().max()) <= 1e-9
    kept = len(plan.gate(0, "mlp_hidden").kept)
    assert small.blocks[0].mlp.glu and small.blocks[0].mlp.fc1.out_features == 2 * kept < 2 * 96


def test_latency_ladder_keeps_the_sites_behind_a_norm_full():
    from vtpdeploy.latency import ladder_plan

    f = next(f for f in SUPPORTED if "scale_attn_norm" in f.kwargs)
    plan = ladder_plan(_gated(f), keep=0.5)
    widths = {(g.block, g.kind): (len(g.kept), g.size) for g in plan.gates}
    assert all(kept == size for (_, kind), (kept, size) in widths.items() if kind in ("attn_v", "mlp_hidden"))
    assert all(kept < size for (_, kind), (kept, size) in widths.items() if kind in ("qkv_in", "mlp_in"))


INTRO = [
    "# Supported models",
    "",
    "Generated from `tests/test_families.py` (`PYTHONPATH=$PWD python tests/test_families.py`), which builds each",
    "family small (random init, depth 2) and checks gates, plan, compaction against the hard mask in fp64",
    "(<= 1e-9), save/load and ONNX Runtime parity (<= 1e-4); refused families must fail in one line.",
    "",
    "Two block maps stand behind `prune/sites.py`: timm's `VisionTransformer` (any patch or hybrid CNN stem; the",
    "stem is kept as it is and the transformer behind it is pruned) and timm's `Eva` (EVA-02, DINOv3, RoPE ViTs,",
    "Perception Encoder; `prune/families.py` fuses its q/k/v projections into one `qkv`). Both get the same four",
    "gates per block, and the width profiles apply unchanged. Q/K are never pruned, so qk-norm and RoPE are copied",
    "into the compact attention as they are. In a GLU MLP (SwiGLU, GeGLU, `GluMlp`) one gate on each hidden unit",
    "keeps or drops its gate and value rows of fc1 together. Linears without a bias compact like biased ones.",
    "",
    "## Sites behind a norm",
    "",
    "A norm that normalises over the gated features themselves (the attention scale-norm over all heads' V dims,",
    "BEiT-3 / `scale_attn_norm`; the MLP inner norm over the hidden units, EVA-02 `scale_mlp` / `scale_mlp_norm`)",
    "makes pruning that site inexact: a removed feature changes the norm's statistics. The gate sits after the",
    "norm (on the Linear input, like every VTP gate), and every plan keeps that site full (`sites.full_sites`);",
    "the other sites remove its share, so the plan still removes the requested rate of all gated dims when it can,",
    "and says how much can go when it cannot. Compact and hard-mask models stay exactly equal.",
    "",
    "## End to end",
    "",
    "One family per new block layout runs the whole tool in `tests/test_family_pipeline.py`: `vtpdeploy pipeline",
    "recipes/quickstart.yaml` (digits) with `--set model.name=NAME --set model.kwargs=...` (the small kwargs below,",
    "one epoch of sparse training and of fine-tuning), exporting ONNX with ONNX Runtime and OpenVINO (f32) parity",
    "(<= 1e-4), INT8 (QDQ, TensorRT-valid) and the TensorRT readiness report (every op native on TensorRT 10);",
    "then the latency-guided planner plans the run's gated model to a target on a latency table (an injected",
    "measurement), and that plan compacts exactly. In the table, ✓ is checked per family (for the classic ViT by",
    "the pipeline's own tests), · is not checked per family (the same block map and modules as a checked one).",
    "",
    "Two ops needed an exporter-time decomposition (`deploy/export/symbolics.py`, registered only while",
    "exporting): `aten::rms_norm` (AIMv2; ONNX has `RMSNormalization` only from opset 23) and a negative-dim",
    "`aten::repeat_interleave` (mixed RoPE), whose torch symbolic rewrote a constant that other ops share. And",
    "the exporter traces a model behind a `forward(x)`: Eva's `forward(x, attn_mask=None, is_causal=False)` had",
    "its bool default traced as a tensor input, so no unpruned Eva-class model exported (the compact ones did).",
    "",
]
STAGES = ["prune/compact", "ONNX/ORT", "OpenVINO", "INT8", "readiness", "planner"]


def _stage_cells(f: Family) -> list[str]:
    checked = f.e2e or f.family == "ViT (classic)"
    return ["exact", "✓"] + ["✓" if checked else "·"] * (len(STAGES) - 2)


def render_models_md() -> str:
    """docs/models.md from FAMILIES."""
    lines = INTRO + ["| family | example timm name | pruned | " + " | ".join(STAGES) + " |",
                     "|---" * (3 + len(STAGES)) + "|"]
    for f in SUPPORTED:
        extra = {k: v for k, v in f.kwargs.items() if k not in {**SMALL, **HYBRID, "mlp_ratio": 0}}
        note = f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else ""
        lines.append(f"| {f.family} | `{f.name}`{note} | {f.pruned}. | " + " | ".join(_stage_cells(f)) + " |")
    lines += ["", "## Refused (one-line error at `add_gates`)", "", "| family | example timm name | reason |",
              "|---|---|---|"]
    for f in REFUSED:
        extra = {k: v for k, v in f.kwargs.items() if k not in SMALL}
        note = f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra and f.name != "resnet18" else ""
        lines.append(f"| {f.family} | `{f.name}`{note} | {f.refused} |")
    return "\n".join(lines) + "\n"


def test_models_md_is_in_sync():
    assert DOCS.read_text() == render_models_md(), "docs/models.md is stale: run python tests/test_families.py"


if __name__ == "__main__":
    DOCS.write_text(render_models_md())
    sys.stdout.write(f"wrote {DOCS}\n")
