"""Compaction: rebuild a gated ViT as a smaller ViT with no gates, from a prune plan.

Pruned dims are removed from the weights; kept gate values (and LayerScale) are folded into the
adjacent Linear weights. Attention keeps full-width Q/K (VTP gates only touch V) and supports heads
with uneven V dims (a paper-faithful plan can leave them) by padding V per head inside the kernel
call and gathering the real columns before proj. A head with no kept V dim has no output, so it is
removed whole: its Q/K rows go, and with them its QK^T, softmax and share of the reshapes. An attention
whose every head is dead, or an MLP with no hidden unit (`drop_sublayers` plans), outputs only its constant
proj / fc2 bias: the block adds that bias and skips the sublayer, its LayerNorm included (`removed`).
A block whose qkv_in / mlp_in gates keep every dim reads the LayerNorm output directly (no gather).
When the kept qkv_in / mlp_in sets of all blocks nest (`shared_input_order` plans), the residual stream
is put in one order in which each is a prefix (`residual.py`), and blocks slice instead of gathering.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, PlanError
from .arch import ArchSpec, BlockWidths, create_timm, describe
from .gates import check_supported, iter_gates
from .plan import apply_mask
from .residual import RestoreOrder, permute_outer, residual_order
from .schema import PrunePlan
from .sites import site_linear


def _input_selection(module: nn.Module, dim: int, in_width: int, slice_input: bool) -> tuple[bool, bool]:
    """(slice, gather) for a block input of `in_width` of `dim` residual dims. A gathering module holds its
    kept dims in the persistent `in_index` buffer; a slicing one needs none (they are a prefix)."""
    pruned = in_width != dim
    if not slice_input:
        module.register_buffer("in_index", torch.arange(in_width), persistent=True)
    return pruned and slice_input, pruned and not slice_input


def _linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """nn.Linear; a removed sublayer has zero-size weights, whose init torch warns is a no-op."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
        return nn.Linear(in_features, out_features, bias=bias)


class CompactAttention(nn.Module):
    """Self-attention with kept input dims, full Q/K heads and per-head V widths `v_dims`."""

    def __init__(self, dim: int, in_width: int, num_heads: int, head_dim: int, v_dims: list[int], bias: bool,
                 slice_input: bool = False):
        """`num_heads` / `v_dims`: the source model's heads and V dims per head; heads with 0 V dims are dropped.
        `slice_input`: the kept inputs are the first `in_width` dims of the (reordered) residual stream."""
        super().__init__()
        if len(v_dims) != num_heads or min(v_dims, default=-1) < 0:
            raise PlanError(f"attention needs {num_heads} V widths >= 0, got {v_dims}")
        self.removed_heads = [h for h, n in enumerate(v_dims) if n == 0]
        v_dims = [int(n) for n in v_dims if n]
        self.num_heads, self.head_dim, self.v_dims = len(v_dims), head_dim, v_dims
        self.removed = not v_dims  # every head dead: the output is proj.bias (CompactBlock skips the call)
        self.in_width = in_width
        self.slice_input, self.gather_input = _input_selection(self, dim, in_width, slice_input)
        self.qk_width = 2 * self.num_heads * head_dim
        self.qkv = _linear(in_width, self.qk_width + sum(v_dims), bias=bias)
        self.proj = _linear(sum(v_dims), dim)
        self.uniform_v = len(set(v_dims)) <= 1
        self.max_v = max(v_dims, default=0)
        # Every live V head keeps all head_dim dims: Q, K and V split the qkv output in one reshape (one
        # Split and one Transpose in the ONNX graph instead of two each).
        self.full_v = self.uniform_v and self.max_v == head_dim
        pad_index, out_index, offset = [], [], 0
        for h, n in enumerate(v_dims):
            pad_index += [offset + j if j < n else sum(v_dims) for j in range(self.max_v)]
            out_index += [h * self.max_v + j for j in range(n)]
            offset += n
        # Non-persistent: derived from v_dims, so never out of sync with the weights.
        self.register_buffer("v_pad_index", torch.tensor(pad_index, dtype=torch.long), persistent=False)
        self.register_buffer("v_out_index", torch.tensor(out_index, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        if self.gather_input:
            x = x.index_select(-1, self.in_index)
        elif self.slice_input:
            x = x[..., : self.in_width]
        qkv = self.qkv(x)
        if self.full_v:  # V heads as wide as Q/K (whole heads): one reshape + permute for all three, as timm does
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k = qkv[..., : self.qk_width].reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            v = qkv[..., self.qk_width :]
            if not self.uniform_v:
                v = F.pad(v, (0, 1)).index_select(-1, self.v_pad_index)
            v = v.reshape(B, N, self.num_heads, self.max_v).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.max_v)
        if not self.uniform_v:
            out = out.index_select(-1, self.v_out_index)
        return self.proj(out)

    def extra_repr(self) -> str:
        if self.removed:
            return "removed (every head dead: outputs proj.bias)"
        removed = f", removed_heads={self.removed_heads}" if self.removed_heads else ""
        return f"heads={self.num_heads}, head_dim={self.head_dim}, v_dims={self.v_dims}{removed}"


class CompactMlp(nn.Module):
    """fc2(act(fc1(x[..., in_index]))) with kept input dims and a pruned hidden width."""

    def __init__(self, dim: int, in_width: int, hidden: int, act: nn.Module, bias: bool = True,
                 slice_input: bool = False):
        super().__init__()
        self.in_width = in_width
        self.removed = hidden == 0  # no hidden unit: the output is fc2.bias (CompactBlock skips the call)
        self.slice_input, self.gather_input = _input_selection(self, dim, in_width, slice_input)
        self.fc1 = _linear(in_width, hidden, bias=bias)
        self.act = act
        self.fc2 = _linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gather_input:
            x = x.index_select(-1, self.in_index)
        elif self.slice_input:
            x = x[..., : self.in_width]
        return self.fc2(self.act(self.fc1(x)))

    def extra_repr(self) -> str:
        return "removed (no hidden unit: outputs fc2.bias)" if self.removed else ""


class CompactBlock(nn.Module):
    """Pre-norm transformer block; LayerScale is folded into proj/fc2."""

    def __init__(self, dim: int, widths: BlockWidths, num_heads: int, head_dim: int, qkv_bias: bool,
                 norm1: nn.Module, norm2: nn.Module, act: nn.Module, slice_input: bool = False):
        super().__init__()
        self.norm1 = norm1
        self.attn = CompactAttention(dim, widths.qkv_in, num_heads, head_dim, widths.v_dims, qkv_bias, slice_input)
        self.norm2 = norm2
        self.mlp = CompactMlp(dim, widths.mlp_in, widths.mlp_hidden, act, slice_input=slice_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + (self.attn.proj.bias if self.attn.removed else self.attn(self.norm1(x)))
        return x + (self.mlp.fc2.bias if self.mlp.removed else self.mlp(self.norm2(x)))


def build(spec: ArchSpec) -> nn.Module:
    """An untrained module skeleton for `spec` (random init; load weights afterwards)."""
    from .gates import add_gates

    model = create_timm(spec.name, spec.kwargs)
    if spec.blocks is not None:
        if len(spec.blocks) != len(model.blocks):
            raise CheckpointError(f"architecture lists {len(spec.blocks)} blocks, model has {len(model.blocks)}")
        model.blocks = nn.Sequential(*[_skeleton_block(model, i, w, spec.input_slices)
                                       for i, w in enumerate(spec.blocks)])
        if spec.input_slices:  # the trunk runs on a reordered residual stream; the final norm restores the order
            model.norm = RestoreOrder(model.norm, model.embed_dim)
    elif spec.gated:
        add_gates(model)
    model.vtp_spec = spec.model_copy(deep=True)
    return model


def _skeleton_block(model: nn.Module, index: int, widths: BlockWidths, slice_input: bool) -> CompactBlock:
    ref = model.blocks[index]
    attn = ref.attn
    return CompactBlock(
        dim=model.embed_dim,
        widths=widths,
        num_heads=attn.num_heads,
        head_dim=attn.head_dim,
        qkv_bias=site_linear(ref, "qkv_in").bias is not None,
        norm1=copy.deepcopy(ref.norm1),
        norm2=copy.deepcopy(ref.norm2),
        act=copy.deepcopy(ref.mlp.act),
        slice_input=slice_input,
    )


def widths_from_plan(plan: PrunePlan) -> list[BlockWidths]:
    return [
        BlockWidths(
            qkv_in=len(plan.gate(b, "qkv_in").kept),
            v_dims=plan.v_dims_per_head(b),
            mlp_in=len(plan.gate(b, "mlp_in").kept),
            mlp_hidden=len(plan.gate(b, "mlp_hidden").kept),
        )
        for b in range(plan.num_blocks)
    ]


def _layer_scale(module: nn.Module, dim: int, like: torch.Tensor) -> torch.Tensor:
    gamma = getattr(module, "gamma", None)
    return gamma.detach() if gamma is not None else torch.ones(dim, dtype=like.dtype, device=like.device)


@torch.no_grad()
def _compact_block_state(block: nn.Module, plan: PrunePlan, b: int, prefix: str,
                         order: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The compact block's tensors. `order`: the residual stream's new order (residual.py), or None: kept
    input dims are then gathered through `in_index`; with an order they are its first dims (a slice)."""
    attn, mlp = block.attn, block.mlp
    dim = attn.proj.linear.out_features
    A = attn.num_heads * attn.head_dim

    def kept(kind: str, device) -> torch.Tensor:
        return torch.tensor(plan.gate(b, kind).kept, dtype=torch.long, device=device)

    def inputs(kind: str, device) -> torch.Tensor:
        """The residual dims a block input reads, in the order its Linear's columns will have."""
        return kept(kind, device) if order is None else order.to(device)[: len(plan.gate(b, kind).kept)]

    def stream(t: torch.Tensor) -> torch.Tensor:
        """A tensor indexed by the residual stream on dim 0, in the stream's order."""
        return t if order is None else t.index_select(0, order.to(t.device))

    state: dict[str, torch.Tensor] = {}
    # qkv: keep gated input columns (gate folded), all Q/K rows, kept V rows.
    qkv = attn.qkv.linear
    k_in = inputs("qkv_in", qkv.weight.device)
    k_v = kept("attn_v", qkv.weight.device)
    hd = attn.head_dim
    live = [h for h, n in enumerate(plan.v_dims_per_head(b)) if n]  # dead heads lose their Q/K rows too
    qk_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd, device=k_v.device) for h in live]
                        or [k_v.new_empty(0)])
    rows = torch.cat([qk_rows, A + qk_rows, 2 * A + k_v])
    w = qkv.weight[:, k_in] * attn.qkv.gate[k_in]
    if order is None:
        state[f"{prefix}attn.in_index"] = k_in.cpu()
    state[f"{prefix}attn.qkv.weight"] = w[rows]
    if qkv.bias is not None:
        state[f"{prefix}attn.qkv.bias"] = qkv.bias[rows]
    # proj: kept V columns with the attn_v gate folded; LayerScale folded into rows.
    proj = attn.proj.linear
    g1 = _layer_scale(block.ls1, dim, proj.weight)
    state[f"{prefix}attn.proj.weight"] = stream(g1[:, None] * proj.weight[:, k_v] * attn.proj.gate[k_v])
    state[f"{prefix}attn.proj.bias"] = stream(g1 * proj.bias if proj.bias is not None else torch.zeros_like(g1))
    # MLP
    fc1, fc2 = mlp.fc1.linear, mlp.fc2.linear
    k_mi = inputs("mlp_in", fc1.weight.device)
    k_h = kept("mlp_hidden", fc1.weight.device)
    if order is None:
        state[f"{prefix}mlp.in_index"] = k_mi.cpu()
    state[f"{prefix}mlp.fc1.weight"] = (fc1.weight[:, k_mi] * mlp.fc1.gate[k_mi])[k_h]
    state[f"{prefix}mlp.fc1.bias"] = fc1.bias[k_h]
    g2 = _layer_scale(block.ls2, dim, fc2.weight)
    state[f"{prefix}mlp.fc2.weight"] = stream(g2[:, None] * fc2.weight[:, k_h] * mlp.fc2.gate[k_h])
    state[f"{prefix}mlp.fc2.bias"] = stream(g2 * fc2.bias)
    for name in ("norm1", "norm2"):
        for pname, p in getattr(block, name).state_dict().items():
            state[f"{prefix}{name}.{pname}"] = stream(p) if p.dim() == 1 and p.numel() == dim else p
    return state


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
    spec = describe(model).model_copy(update={"gated": False, "blocks": widths_from_plan(plan),
                                              "input_slices": order_t is not None})
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
