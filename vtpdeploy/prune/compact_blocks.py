"""The modules of a compact ViT block: attention with full (or tied) Q/K and per-head V widths, the (GLU) MLP,
the block.

They serve both block maps (`families`): timm ViT blocks and Eva blocks. What the two differ in is carried
as modules and flags copied from the source block: qk-norm (`q_norm` / `k_norm`, per head, so dropping a
dead head's Q/K rows leaves the others' untouched), RoPE on Q/K (never pruned, so the rotation is the
source's), a scale-norm before proj and an inner MLP norm (both over sites every plan keeps full), and a
GLU MLP whose fc1 holds the kept gate rows then the kept value rows of each hidden unit.
Tied Q/K (`qk_dims`) keeps per head the Q/K dims of its V dims; zero padding of uneven heads adds 0 to q·k, and
the softmax scale stays the source's head_dim**-0.5 (passed to SDPA when the kept Q/K width differs).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PlanError


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


def _select_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if module.gather_input:
        return x.index_select(-1, module.in_index)
    if module.slice_input:
        return x[..., : module.in_width]
    return x


def _pad_index(dims: list[int]) -> torch.Tensor:
    """Per head, its columns then the index of one appended zero column up to the widest head."""
    width, index, offset = max(dims, default=0), [], 0
    for n in dims:
        index += [offset + j if j < n else sum(dims) for j in range(width)]
        offset += n
    return torch.tensor(index, dtype=torch.long)


def _heads(t: torch.Tensor, pad_index: torch.Tensor | None, heads: int, width: int) -> torch.Tensor:
    """(B, N, Σ dims) -> (B, heads, N, width); `pad_index` (uneven heads): zero-pad each head to `width`."""
    if pad_index is not None:
        t = F.pad(t, (0, 1)).index_select(-1, pad_index)
    B, N = t.shape[:2]
    return t.reshape(B, N, heads, width).transpose(1, 2)


def _live_qk_dims(qk_dims: list[int] | None, v_dims: list[int], head_dim: int, q_norm: nn.Module | None,
                  k_norm: nn.Module | None, rope_prefix: int | None) -> list[int]:
    """The Q/K dims of each live head (`head_dim` each unless tied); PlanError where tied dims are not exact."""
    if qk_dims is None:
        return [head_dim for n in v_dims if n]
    if len(qk_dims) != len(v_dims) or any(bool(q) != bool(v) or not 0 <= q <= head_dim for q, v in zip(qk_dims, v_dims)):
        raise PlanError(f"tied Q/K dims {qk_dims} do not match the V dims {v_dims} (a live head needs 1..{head_dim})")
    if rope_prefix is not None or any(not isinstance(n, (nn.Identity, type(None))) for n in (q_norm, k_norm)):
        raise PlanError("tied Q/K dims are not exact with RoPE or qk-norm")
    return [int(q) for q in qk_dims if q]


class CompactAttention(nn.Module):
    """Self-attention with kept input dims, full (or tied) Q/K heads and per-head V widths `v_dims`."""

    def __init__(self, dim: int, in_width: int, num_heads: int, head_dim: int, v_dims: list[int], bias: bool,
                 slice_input: bool = False, *, q_norm: nn.Module | None = None, k_norm: nn.Module | None = None,
                 norm: nn.Module | None = None, rope_prefix: int | None = None, rotate_half: bool = False,
                 qk_dims: list[int] | None = None):
        """`num_heads` / `v_dims`: the source model's heads and V dims per head; heads with 0 V dims are dropped.
        `slice_input`: the kept inputs are the first `in_width` dims of the (reordered) residual stream.
        `q_norm` / `k_norm` / `norm`: the source's qk-norm and scale-norm; `rope_prefix`: the tokens RoPE
        skips (None: the model passes no RoPE). `qk_dims`: Q/K dims per source head (None: `head_dim` each)."""
        super().__init__()
        if len(v_dims) != num_heads or min(v_dims, default=-1) < 0:
            raise PlanError(f"attention needs {num_heads} V widths >= 0, got {v_dims}")
        self.removed_heads = [h for h, n in enumerate(v_dims) if n == 0]
        self.live_heads = [h for h, n in enumerate(v_dims) if n]
        qk = _live_qk_dims(qk_dims, v_dims, head_dim, q_norm, k_norm, rope_prefix)
        v_dims = [int(n) for n in v_dims if n]
        self.num_heads, self.head_dim, self.v_dims = len(v_dims), head_dim, v_dims
        self.qk_dims, self.tied_qk = qk, qk_dims is not None
        self.removed = not v_dims  # every head dead: the output is proj.bias (CompactBlock skips the call)
        self.in_width = in_width
        self.slice_input, self.gather_input = _input_selection(self, dim, in_width, slice_input)
        self.uniform_qk, self.max_qk = len(set(qk)) <= 1, max(qk, default=head_dim)
        self.qk_width = 2 * sum(qk)
        # SDPA scales by the padded Q/K width; the source's scale is head_dim**-0.5 (None: the same, not passed).
        self.scale = head_dim ** -0.5 if self.max_qk != head_dim else None
        self.qkv = _linear(in_width, self.qk_width + sum(v_dims), bias=bias)
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()
        self.norm = norm if norm is not None else nn.Identity()
        self.proj = _linear(sum(v_dims), dim)
        self.rope_prefix, self.rotate_half = rope_prefix, rotate_half
        self.uniform_v = len(set(v_dims)) <= 1
        self.max_v = max(v_dims, default=0)
        # Every live head keeps as many V as Q/K dims, the same in all heads: Q, K and V split the qkv output in
        # one reshape (one Split and one Transpose in the ONNX graph instead of two each).
        self.full_v = self.uniform_v and self.uniform_qk and self.max_v == self.max_qk
        out_index = [h * self.max_v + j for h, n in enumerate(v_dims) for j in range(n)]
        # Non-persistent: derived from v_dims / qk_dims, so never out of sync with the weights.
        self.register_buffer("v_pad_index", _pad_index(v_dims), persistent=False)
        self.register_buffer("v_out_index", torch.tensor(out_index, dtype=torch.long), persistent=False)
        if not self.uniform_qk:
            self.register_buffer("qk_pad_index", _pad_index(qk), persistent=False)
        self.register_buffer("live_index", torch.tensor(self.live_heads, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(_select_input(self, x))
        if self.full_v:  # V heads as wide as Q/K (whole heads): one reshape + permute for all three, as timm does
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.max_qk).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k = self._split_qk(qkv[..., : self.qk_width], B, N)
            v = _heads(qkv[..., self.qk_width :], None if self.uniform_v else self.v_pad_index, self.num_heads,
                       self.max_v)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None and self.rope_prefix is not None:
            q, k = self._rotate(q, rope), self._rotate(k, rope)
        scale = {} if self.scale is None else {"scale": self.scale}
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **scale)
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.max_v)
        if not self.uniform_v:
            out = out.index_select(-1, self.v_out_index)
        return self.proj(self.norm(out))

    def _split_qk(self, qk: torch.Tensor, B: int, N: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k) as (B, heads, N, max_qk); uneven tied heads are zero-padded (a zero dim adds 0 to q·k)."""
        if self.uniform_qk:
            q, k = qk.reshape(B, N, 2, self.num_heads, self.max_qk).permute(2, 0, 3, 1, 4)
            return q, k
        q, k = qk.chunk(2, dim=-1)
        return tuple(_heads(t, self.qk_pad_index, self.num_heads, self.max_qk) for t in (q, k))

    def _rotate(self, t: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """timm's RoPE on the non-prefix tokens; a per-head RoPE keeps only the live heads' rows."""
        from timm.layers import apply_rot_embed_cat

        if rope.dim() >= 3 and rope.shape[-3] != 1 and self.removed_heads:
            rope = rope.index_select(-3, self.live_index)
        n = self.rope_prefix
        rotated = apply_rot_embed_cat(t[:, :, n:, :], rope, half=self.rotate_half)
        return torch.cat([t[:, :, :n, :], rotated], dim=2).type_as(t)

    def extra_repr(self) -> str:
        if self.removed:
            return "removed (every head dead: outputs proj.bias)"
        removed = f", removed_heads={self.removed_heads}" if self.removed_heads else ""
        tied = f", qk_dims={self.qk_dims}" if self.tied_qk else ""
        return f"heads={self.num_heads}, head_dim={self.head_dim}, v_dims={self.v_dims}{tied}{removed}"


class CompactMlp(nn.Module):
    """fc2(norm(act(fc1(x[..., in_index])))) with kept input dims and a pruned hidden width.

    `glu`: fc1 outputs each kept hidden unit's gate row then (in a second half) its value row, and the hidden
    unit is act(gate) * value (SwiGLU, GeGLU, timm's GluMlp in either gate order)."""

    def __init__(self, dim: int, in_width: int, hidden: int, act: nn.Module, bias: bool = True,
                 slice_input: bool = False, *, glu: bool = False, norm: nn.Module | None = None):
        super().__init__()
        self.in_width = in_width
        self.removed = hidden == 0  # no hidden unit: the output is fc2.bias (CompactBlock skips the call)
        self.slice_input, self.gather_input = _input_selection(self, dim, in_width, slice_input)
        self.glu = glu
        self.fc1 = _linear(in_width, 2 * hidden if glu else hidden, bias=bias)
        self.act = act
        self.norm = norm if norm is not None else nn.Identity()
        self.fc2 = _linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(_select_input(self, x))
        if self.glu:
            gate, value = h.chunk(2, dim=-1)
            h = self.act(gate) * value
        else:
            h = self.act(h)
        return self.fc2(self.norm(h))

    def extra_repr(self) -> str:
        return "removed (no hidden unit: outputs fc2.bias)" if self.removed else ("glu" if self.glu else "")


class CompactBlock(nn.Module):
    """Pre-norm transformer block; LayerScale is folded into proj/fc2. Takes Eva's RoPE arguments too."""

    def __init__(self, norm1: nn.Module, attn: CompactAttention, norm2: nn.Module, mlp: CompactMlp):
        super().__init__()
        self.norm1 = norm1
        self.attn = attn
        self.norm2 = norm2
        self.mlp = mlp

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """`is_causal`: accepted because Eva passes it; image models never set it (a traced export sees a tensor)."""
        if self.attn.removed:
            x = x + self.attn.proj.bias
        elif rope is None and attn_mask is None:
            x = x + self.attn(self.norm1(x))
        else:
            x = x + self.attn(self.norm1(x), rope=rope, attn_mask=attn_mask)
        return x + (self.mlp.fc2.bias if self.mlp.removed else self.mlp(self.norm2(x)))
