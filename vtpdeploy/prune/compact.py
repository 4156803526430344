"""Compaction: rebuild a gated ViT as a smaller ViT with no gates, from a prune plan.

Pruned dims are removed from the weights; kept gate values (and LayerScale) are folded into the
adjacent Linear weights. Attention keeps full-width Q/K (VTP gates only touch V) unless the model has
tied Q/K gates (`gates.TiedQKGatedLinear`): then each head keeps the same Q, K and V dims, and the attn_v
gate folds into the Wq rows too. It supports heads with uneven V (and tied Q/K) dims (a paper-faithful plan
can leave them) by padding them per head inside the kernel call and gathering the real V columns before proj. A head with no kept V dim has no output, so it is
removed whole: its Q/K rows go, and with them its QK^T, softmax and share of the reshapes. An attention
whose every head is dead, or an MLP with no hidden unit (`drop_sublayers` plans), outputs only its constant
proj / fc2 bias: the block adds that bias and skips the sublayer, its LayerNorm included (`removed`).
A block whose qkv_in / mlp_in gates keep every dim reads the LayerNorm output directly (no gather).
When the kept qkv_in / mlp_in sets of all blocks nest (`shared_input_order` plans), the residual stream
is put in one order in which each is a prefix (`residual.py`), and blocks slice instead of gathering.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import CheckpointError, PlanError
from .arch import ArchSpec, BlockWidths, create_timm, describe
from .compact_blocks import CompactAttention, CompactBlock, CompactMlp
from .families import prepare
from .gates import TiedQKGatedLinear, check_supported, iter_gates, qk_layout
from .plan import apply_mask
from .residual import RestoreOrder, permute_outer, residual_order
from .schema import PrunePlan
from .sites import site_linear


def build(spec: ArchSpec, base: nn.Module | None = None) -> nn.Module:
    """An untrained module skeleton for `spec` (random init; load weights afterwards). `base`: a plain timm model
    of `spec`'s name and kwargs to copy instead of creating one (MAC counts build many skeletons of one model)."""
    from .gates import add_gates

    model = copy.deepcopy(base) if base is not None else create_timm(spec.name, spec.kwargs)
    if spec.blocks is not None:
        if len(spec.blocks) != len(model.blocks):
            raise CheckpointError(f"architecture lists {len(spec.blocks)} blocks, model has {len(model.blocks)}")
        prepare(model)  # the skeleton reads the fused qkv of an Eva block
        blocks = [_skeleton_block(model, i, w, spec.input_slices) for i, w in enumerate(spec.blocks)]
        model.blocks = nn.ModuleList(blocks) if isinstance(model.blocks, nn.ModuleList) else nn.Sequential(*blocks)
        if spec.input_slices:  # the trunk runs on a reordered residual stream; the final norm restores the order
            model.norm = RestoreOrder(model.norm, model.embed_dim)
    elif spec.gated:
        add_gates(model, qk_dims=spec.qk_dims)
    model.vtp_spec = spec.model_copy(deep=True)
    return model


def _is_glu(mlp: nn.Module) -> bool:
    """SwiGLU (split fc1_g / fc1_x) or timm's GluMlp (one fc1 holding both halves)."""
    from timm.layers import GluMlp

    return hasattr(mlp, "fc1_g") or isinstance(mlp, GluMlp)


def _skeleton_block(model: nn.Module, index: int, widths: BlockWidths, slice_input: bool) -> CompactBlock:
    ref = model.blocks[index]
    attn, mlp, dim = ref.attn, ref.mlp, model.embed_dim
    rope = getattr(model, "rope", None) is not None and hasattr(attn, "num_prefix_tokens")
    compact_attn = CompactAttention(
        dim, widths.qkv_in, attn.num_heads, attn.head_dim, widths.v_dims,
        bias=site_linear(ref, "qkv_in").bias is not None, slice_input=slice_input, qk_dims=widths.qk_dims,
        q_norm=copy.deepcopy(attn.q_norm), k_norm=copy.deepcopy(attn.k_norm), norm=copy.deepcopy(attn.norm),
        rope_prefix=int(attn.num_prefix_tokens) if rope else None, rotate_half=bool(getattr(attn, "rotate_half", False)))
    compact_mlp = CompactMlp(
        dim, widths.mlp_in, widths.mlp_hidden, copy.deepcopy(mlp.act), bias=site_linear(ref, "mlp_in").bias is not None,
        slice_input=slice_input, glu=_is_glu(mlp), norm=copy.deepcopy(mlp.norm))
    return CompactBlock(copy.deepcopy(ref.norm1), compact_attn, copy.deepcopy(ref.norm2), compact_mlp)


def widths_from_plan(plan: PrunePlan, tied_qk: bool = False) -> list[BlockWidths]:
    """The compact widths of every block; `tied_qk`: Q/K keep each head's V dims (a tied Q/K gated model)."""
    return [
        BlockWidths(
            qkv_in=len(plan.gate(b, "qkv_in").kept),
            v_dims=plan.v_dims_per_head(b),
            mlp_in=len(plan.gate(b, "mlp_in").kept),
            mlp_hidden=len(plan.gate(b, "mlp_hidden").kept),
            qk_dims=plan.v_dims_per_head(b) if tied_qk else None,
        )
        for b in range(plan.num_blocks)
    ]


def _layer_scale(block: nn.Module, n: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """LayerScale n (1: attention, 2: MLP) of a timm ViT block (`ls1.gamma`) or an Eva block (`gamma_1`)."""
    ls = getattr(block, f"ls{n}", None)
    gamma = getattr(ls, "gamma", None) if ls is not None else getattr(block, f"gamma_{n}", None)
    return gamma.detach() if gamma is not None else torch.ones(dim, dtype=like.dtype, device=like.device)


def _bias_or_zeros(linear: nn.Linear) -> torch.Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


def _fc1_rows(mlp: nn.Module, k_h: torch.Tensor, k_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the compact fc1: the kept inputs (gate folded) of each kept hidden unit's row; for a
    GLU MLP its gate rows, then its value rows, each pair kept or dropped together."""
    gate = (mlp.fc1_x if hasattr(mlp, "fc1_x") else mlp.fc1).gate

    def rows(linear: nn.Linear, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = (linear.weight[:, k_in] * gate[k_in])[index]
        return w, linear.bias[index] if linear.bias is not None else None

    if hasattr(mlp, "fc1_g"):  # SwiGLU: act(fc1_g(x)) * fc1_x(x)
        parts = [rows(mlp.fc1_g.linear, k_h), rows(mlp.fc1_x.linear, k_h)]
    elif _is_glu(mlp):  # GluMlp: one fc1, halves (x1, x2); the gate is x2 when gate_last
        hidden = mlp.fc2.linear.in_features
        gate_rows, value_rows = (k_h + hidden, k_h) if mlp.gate_last else (k_h, k_h + hidden)
        parts = [rows(mlp.fc1.linear, gate_rows), rows(mlp.fc1.linear, value_rows)]
    else:
        return rows(mlp.fc1.linear, k_h)
    bias = torch.cat([b for _, b in parts]) if parts[0][1] is not None else None
    return torch.cat([w for w, _ in parts]), bias


def _qkv_rows(attn: nn.Module, k_in: torch.Tensor, k_v: torch.Tensor,
              live: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the compact qkv: the kept input columns (qkv_in gate folded); the live heads' Q/K rows, or
    under tied Q/K the kept V dims' Q/K rows with the attn_v gate folded into Q; the kept V rows."""
    qkv, hd = attn.qkv.linear, attn.head_dim
    A = attn.num_heads * hd
    tied = isinstance(attn.qkv, TiedQKGatedLinear)
    qk_rows = k_v if tied else torch.cat(
        [torch.arange(h * hd, (h + 1) * hd, device=k_v.device) for h in live] or [k_v.new_empty(0)])
    rows = torch.cat([qk_rows, A + qk_rows, 2 * A + k_v])
    weight = (qkv.weight[:, k_in] * attn.qkv.gate[k_in])[rows]
    bias = qkv.bias[rows] if qkv.bias is not None else None
    if tied:  # the attn_v gate scales the Q rows of its dims
        q_gate = torch.cat([attn.proj.gate[k_v], weight.new_ones(2 * len(k_v))])
        weight, bias = weight * q_gate[:, None], bias * q_gate if bias is not None else None
    return weight, bias


@torch.no_grad()
def _compact_block_state(block: nn.Module, plan: PrunePlan, b: int, prefix: str,
                         order: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The compact block's tensors. `order`: the residual stream's new order (residual.py), or None: kept
    input dims are then gathered through `in_index`; with an order they are its first dims (a slice)."""
    attn, mlp = block.attn, block.mlp
    dim = attn.proj.linear.out_features
    device = attn.proj.linear.weight.device

    def kept(kind: str) -> torch.Tensor:
        return torch.tensor(plan.gate(b, kind).kept, dtype=torch.long, device=device)

    def inputs(kind: str) -> torch.Tensor:
        """The residual dims a block input reads, in the order its Linear's columns will have."""
        return kept(kind) if order is None else order.to(device)[: len(plan.gate(b, kind).kept)]

    def stream(t: torch.Tensor) -> torch.Tensor:
        """A tensor indexed by the residual stream on dim 0, in the stream's order."""
        return t if order is None else t.index_select(0, order.to(t.device))

    state: dict[str, torch.Tensor] = {}
    k_in, k_v = inputs("qkv_in"), kept("attn_v")
    if order is None:
        state[f"{prefix}attn.in_index"] = k_in.cpu()
    live = [h for h, n in enumerate(plan.v_dims_per_head(b)) if n]  # dead heads lose their Q/K rows too
    state[f"{prefix}attn.qkv.weight"], qkv_bias = _qkv_rows(attn, k_in, k_v, live)
    if qkv_bias is not None:
        state[f"{prefix}attn.qkv.bias"] = qkv_bias
    # proj: kept V columns with the attn_v gate folded; LayerScale folded into rows.
    proj = attn.proj.linear
    g1 = _layer_scale(block, 1, dim, proj.weight)
    state[f"{prefix}attn.proj.weight"] = stream(g1[:, None] * proj.weight[:, k_v] * attn.proj.gate[k_v])
    state[f"{prefix}attn.proj.bias"] = stream(g1 * _bias_or_zeros(proj))
    # MLP: fc1 rows of the kept hidden units (paired gate/value rows in a GLU), fc2 columns with the gate folded.
    k_mi, k_h, fc2 = inputs("mlp_in"), kept("mlp_hidden"), mlp.fc2.linear
    if order is None:
        state[f"{prefix}mlp.in_index"] = k_mi.cpu()
    state[f"{prefix}mlp.fc1.weight"], fc1_bias = _fc1_rows(mlp, k_h, k_mi)
    if fc1_bias is not None:
        state[f"{prefix}mlp.fc1.bias"] = fc1_bias
    g2 = _layer_scale(block, 2, dim, fc2.weight)
    state[f"{prefix}mlp.fc2.weight"] = stream(g2[:, None] * fc2.weight[:, k_h] * mlp.fc2.gate[k_h])
    state[f"{prefix}mlp.fc2.bias"] = stream(g2 * _bias_or_zeros(fc2))
    for name in ("norm1", "norm2"):
        for pname, p in getattr(block, name).state_dict().items():
            state[f"{prefix}{name}.{pname}"] = stream(p) if p.dim() == 1 and p.numel() == dim else p
    for name in ("attn.q_norm", "attn.k_norm", "attn.norm", "mlp.norm"):  # over heads / V / hidden: kept full
        for pname, p in block.get_submodule(name).state_dict().items():
            state[f"{prefix}{name}.{pname}"] = p
    return state


def compact_spec(model: nn.Module, plan: PrunePlan, input_slices: bool = False) -> ArchSpec:
    """The architecture of the compact model `plan` makes of the gated `model` (`input_slices`: see residual.py)."""
    return describe(model).model_copy(update={"gated": False, "qk_dims": "full", "input_slices": input_slices,
                                              "blocks": widths_from_plan(plan, qk_layout(model) == "tied")})


@torch.no_grad()
def compact(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """A new, gate-free module in which every pruned dim is physically removed.

    Its outputs equal those of `apply_mask(copy_of_model, plan)`; the original model is unchanged.
    """
    if not any(True for _ in iter_gates(model)):
        raise PlanError("compact needs a gated model (add_gates, then plan)")
    plan.check_fits(model)
    check_supported(model)  # timm layout with biased proj/fc1/fc2, which compaction folds into
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    order, order_t = residual_order(plan), None
    outer = permute_outer(state, order) if order is not None else None
    if outer is not None:  # None: no nested inputs, or a tensor outside the residual map; keep the gathers
        state, order_t = outer, torch.tensor(order, dtype=torch.long)
    spec = compact_spec(model, plan, input_slices=order_t is not None)
    for b, block in enumerate(model.blocks):
        state.update(_compact_block_state(block, plan, b, f"blocks.{b}.", order_t))
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    new = build(spec).to(device=device, dtype=dtype)
    new.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return new.train(model.training)


@torch.no_grad()
def compact_validated(model: nn.Module, plan: PrunePlan, sample: torch.Tensor, atol: float = 1e-4) -> tuple[nn.Module, float]:
    """compact() followed by a check against the hard-mask model; returns (model, max |Δlogit|)."""
    from .numerics import assert_close

    masked = apply_mask(copy.deepcopy(model), plan).eval()
    small = compact(model, plan).eval()
    diff = assert_close(masked(sample), small(sample), atol, "compact vs hard-mask model")
    return small, diff
