"""Halo attention (Vaswani et al., "Scaling Local Self-Attention", 2021), as HaloAE's block C uses it.

The feature map is cut into non-overlapping block x block query blocks; every query pixel of a
block attends to the (block + 2 halo)^2 window around its block. Windows reaching past the map
border are zero-padded and the padding is masked out: a query never puts weight on a position
outside the map (`model-spec.md`, "Halo attention").

`attention="uniform"` reproduces, as an explicit ablation, the official HaloAE layer, which fills
its mask on the *valid* positions instead: every interior block then averages its window
uniformly (1 / window^2 on each key), and blocks touching the border put all their weight on the
zero padding, whose values are zero.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttentionMode = Literal["masked", "uniform"]
# How the masked attention reaches `F.scaled_dot_product_attention` (the same function, see
# `HaloAttention`): "bias" passes the relative-position logits and the padding as an additive
# mask of (blocks, heads, block^2, window^2); "folded" moves both into extra query and key
# channels, so no mask exists and the fused (flash) kernels can run.
AttentionKernel = Literal["bias", "folded"]
ATTENTION_KERNELS: tuple[AttentionKernel, ...] = ("bias", "folded")
# Added to a padded key's logit in "folded": exp() of it is exactly 0 in float32 and bf16, and it
# stays finite in float16 and under any scale, unlike -inf times a zero channel.
_PAD_LOGIT = -1.0e4


class HaloAttention(nn.Module):
    """Multi-head halo self-attention with learned relative positions.

    Shapes: input (N, dim, H, W) -> output (N, dim, H, W); H and W must be multiples of
    `block_size`. Inside, queries, keys and values have `heads` x `dim_head` channels (1x1
    projections without bias, so a zero-padded pixel has zero key and value); the output is a 1x1
    projection back to `dim` channels, with bias.

    For a query at map pixel (y, x) and a key at (y', x') of its window, the logit is
    (q . k + q . (R_row[y' - y] + R_col[x' - x])) / sqrt(dim_head), where R_row and R_col are
    learned tables of 2 window - 1 vectors of size dim_head (window = block + 2 halo), indexed by
    the key-minus-query offset. (The official port indexes them by the key's window row minus the
    query's block row, a constant shift of `halo_size`: the same model with the table shifted.)
    Logits of padded positions are -inf before the softmax ("masked") or, in the official
    behaviour ("uniform"), the valid ones are replaced by the most negative float.

    The fast path is `F.scaled_dot_product_attention`, in one of two forms (`kernel`, settable
    on a built layer; `set_attention_kernel` sets every layer of a model):

    - "bias": the relative-position logits and the padding mask as one additive bias, a
      (B, heads, block^2, window^2) tensor per layer, which rules out the flash kernels.
    - "folded" (default on CUDA, `kernel_for`): q . R_row[y' - y] is, for a query, a vector over the window's key rows
      (and likewise for columns); with one-hot row and column channels on the keys, q_aug . k_aug
      = q . k / sqrt(d) + the row term + the column term. One more channel (1 on queries, -1e4
      on padded keys, 0 on valid ones) masks the padding. Channels are zero-padded to a multiple
      of 8 (values too), so the fused kernels take it: d + 2 window + 1 -> 56 for the paper's
      d = 16, window 16; more multiply-adds (3.5x on 2 of 47 GMAC per tile), no bias tensor.

    `attention_weights` computes the same softmax explicitly, for inspection and for the
    "uniform" ablation.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        block_size: int,
        halo_size: int,
        attention: AttentionMode = "masked",
    ) -> None:
        super().__init__()
        if attention not in ("masked", "uniform"):
            raise ValueError(f"attention must be 'masked' or 'uniform', not {attention!r}")
        self.heads = heads
        self.dim_head = dim_head
        self.block_size = block_size
        self.halo_size = halo_size
        self.window = block_size + 2 * halo_size
        self.attention = attention
        # None: "folded" on CUDA, "bias" elsewhere (see `kernel_for`)
        self.kernel: AttentionKernel | None = None
        inner = heads * dim_head
        self.to_q = nn.Conv2d(dim, inner, 1, bias=False)
        self.to_kv = nn.Conv2d(dim, 2 * inner, 1, bias=False)
        self.to_out = nn.Conv2d(inner, dim, 1)
        self.rel_row = nn.Parameter(torch.randn(2 * self.window - 1, dim_head) * dim_head**-0.5)
        self.rel_col = nn.Parameter(torch.randn(2 * self.window - 1, dim_head) * dim_head**-0.5)
        # rel_index[i, j]: table row for a query at block row i and a key at window row j
        # (key - query offset j - halo - i, shifted to start at 0).
        offsets = torch.arange(self.window)[None, :] - halo_size - torch.arange(block_size)[:, None]
        self.register_buffer("rel_index", offsets + self.window - 1, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(N, dim, H, W) -> (N, dim, H, W)."""
        n, _, height, width = x.shape
        if self.attention == "masked" and self.kernel_for(x.device) == "folded":
            q_aug, k_aug, v_aug = self._project_folded(x)
            out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., : self.dim_head]
            return self.to_out(self._merge_blocks(out, n, height, width))
        q, k, v, bias, valid = self._project(x)
        if self.attention == "masked":
            # -inf on padding (in place: the bias is a fresh tensor); every query keeps its own
            # block's keys, so no row is all -inf
            bias.masked_fill_(~valid, float("-inf"))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            out = (self._weights(q, k, bias, valid) @ v.float()).to(v.dtype)
        return self.to_out(self._merge_blocks(out, n, height, width))

    def kernel_for(self, device: torch.device) -> AttentionKernel:
        """The route this layer takes on `device`: its `kernel` if set, else "folded" on CUDA (no
        bias tensor, fused kernels) and "bias" on the CPU. On the CPU "folded" is faster (1.2x on
        a paper-size layer) but its wider matrix products gave last-bit differences between a
        dask worker process and the main process (tests/test_cohort.py), which would break the
        byte-identical resume and cohort outputs; "bias" does not."""
        if self.kernel is not None:
            return self.kernel
        return "folded" if device.type == "cuda" else "bias"

    def attention_weights(self, x: Tensor) -> Tensor:
        """The softmax weights the layer applies, float32.

        Shape (N, blocks, heads, block^2, window^2): blocks in row-major order over the map,
        queries row-major inside their block, keys row-major inside the window (padding
        included, where "masked" puts exactly zero weight).
        """
        n = x.shape[0]
        q, k, _, bias, valid = self._project(x)
        weights = self._weights(q, k, bias, valid)
        return weights.unflatten(0, (n, -1))

    def _weights(self, q: Tensor, k: Tensor, bias: Tensor, valid: Tensor) -> Tensor:
        logits = (q.float() @ k.float().transpose(-1, -2)) * self.dim_head**-0.5 + bias.float()
        if self.attention == "masked":
            logits = logits.masked_fill(~valid, float("-inf"))
        else:
            # The official layer's inverted mask: valid keys get the most negative float, so an
            # all-valid row is uniform and a border row keeps only its padded keys.
            logits = logits.masked_fill(valid, -torch.finfo(torch.float32).max)
        return logits.softmax(dim=-1)

    def _project_folded(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values with the relative positions and the mask folded in (see the
        class docstring): (B, heads, block^2, D), (B, heads, window^2, D) twice, D = d + 2 window
        + 1 rounded up to a multiple of 8; logits q_aug . k_aug (scale 1)."""
        q, k, v, by_row, by_col, valid = self._project_parts(x)
        b, win, d = self.block_size, self.window, self.dim_head
        blocks, heads = q.shape[0], q.shape[1]
        width = d + 2 * win + 1
        padded = -(-width // 8) * 8
        # key channels: one-hot of the key's window row, then of its column, then the mask
        eye = torch.eye(win, dtype=q.dtype, device=q.device)
        key_rows = eye[:, None, :].expand(win, win, win).reshape(win * win, win)  # row of key r*win+c
        key_cols = eye[None, :, :].expand(win, win, win).reshape(win * win, win)
        penalty = (~valid).to(q.dtype).reshape(-1, 1, win * win, 1) * _PAD_LOGIT  # (B, 1, win^2, 1)
        zeros_k = k.new_zeros(()).expand(blocks, heads, win * win, padded - width)
        k_aug = torch.cat(
            [
                k,
                key_rows.expand(blocks, heads, -1, -1),
                key_cols.expand(blocks, heads, -1, -1),
                penalty.expand(-1, heads, -1, -1),
                zeros_k,
            ],
            dim=-1,
        )
        q_aug = torch.cat(
            [
                q * d**-0.5,
                by_row.reshape(blocks, heads, b * b, win),
                by_col.reshape(blocks, heads, b * b, win),
                q.new_ones(()).expand(blocks, heads, b * b, 1),
                q.new_zeros(()).expand(blocks, heads, b * b, padded - width),
            ],
            dim=-1,
        )
        v_aug = torch.cat([v, v.new_zeros(()).expand(blocks, heads, win * win, padded - d)], dim=-1)
        return q_aug, k_aug, v_aug

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Queries, keys, values, relative-position bias and the valid-key mask, per block.

        q (B, heads, block^2, dim_head), k and v (B, heads, window^2, dim_head), bias
        (B, heads, block^2, window^2) and valid (B, 1, 1, window^2) bool, with B = N x blocks.
        """
        b, win = self.block_size, self.window
        q, k, v, by_row, by_col, valid = self._project_parts(x)
        bias = (by_row[..., :, None] + by_col[..., None, :]).reshape(-1, self.heads, b * b, win * win)
        return q, k, v, bias, valid

    def _project_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q, k, v as in `_project`; by_row and by_col (B, heads, block, block, window): the
        relative logits of each query (row, column of its block) for each key row and each key
        column of the window, already divided by sqrt(dim_head); valid as in `_project`."""
        n, _, height, width = x.shape
        b, h, win = self.block_size, self.halo_size, self.window
        assert height % b == 0 and width % b == 0, (
            f"halo attention: feature map {height}x{width} is not divisible by the block size {b}"
        )
        nby, nbx = height // b, width // b
        heads, d = self.heads, self.dim_head

        q = self.to_q(x)
        # (N, heads*d, H, W) -> (N, heads, d, nby, b, nbx, b) -> (N*nby*nbx, heads, b*b, d)
        q = q.reshape(n, heads, d, nby, b, nbx, b).permute(0, 3, 5, 1, 4, 6, 2).reshape(-1, heads, b * b, d)

        # Keys and values of the zero-padded map: to_kv has no bias, so padded pixels give 0.
        kv = F.pad(self.to_kv(x), (h, h, h, h))
        # (N, 2*heads*d, H+2h, W+2h) -> (N, 2*heads*d, nby, nbx, win, win)
        kv = _windows(kv, win, b)
        # -> (N, 2, heads, d, nby, nbx, win*win) -> (2, N*nby*nbx, heads, win*win, d)
        kv = kv.reshape(n, 2, heads, d, nby, nbx, win * win).permute(1, 0, 4, 5, 2, 6, 3)
        k, v = kv.reshape(2, -1, heads, win * win, d).unbind(0)

        # Relative logits: q . R for every offset, then picked per (query row, key row) and
        # (query column, key column) and summed into (block^2, window^2) per head and block.
        q_grid = q.unflatten(2, (b, b)) * d**-0.5  # (B, heads, b rows, b cols, d)
        rel_rows = q_grid @ self.rel_row.to(q.dtype).t()  # (B, heads, b, b, 2win-1)
        rel_cols = q_grid @ self.rel_col.to(q.dtype).t()
        index = self.rel_index  # (b, win)
        # -> (B, heads, b, b, win) each: by key row for the query's row, by key column for its column
        shape = (*rel_rows.shape[:-1], win)
        by_row = torch.gather(rel_rows, -1, index[None, None, :, None, :].expand(shape))
        by_col = torch.gather(rel_cols, -1, index[None, None, None, :, :].expand(shape))

        inside = F.pad(x.new_ones(1, 1, height, width, dtype=torch.bool), (h, h, h, h))
        # (1, 1, nby, nbx, win, win) -> (nby*nbx, win*win), repeated for the N images
        inside = _windows(inside, win, b).reshape(nby * nbx, win * win)
        valid = inside.repeat(n, 1)[:, None, None, :]
        return q, k, v, by_row, by_col, valid

    def _merge_blocks(self, out: Tensor, n: int, height: int, width: int) -> Tensor:
        b, heads, d = self.block_size, self.heads, self.dim_head
        nby, nbx = height // b, width // b
        out = out.reshape(n, nby, nbx, heads, b, b, d)
        if self.to_out.weight.is_contiguous(memory_format=torch.channels_last):
            # a channels_last model gets a channels_last map: (N, H, W, heads*d) viewed as NCHW,
            # so the output projection does not convert the layout back and forth
            out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(n, height, width, heads * d)
            return out.permute(0, 3, 1, 2)
        # (N*nby*nbx, heads, b*b, d) -> (N, nby, nbx, heads, b, b, d) -> (N, heads*d, H, W)
        out = out.permute(0, 3, 6, 1, 4, 2, 5)
        return out.reshape(n, heads * d, height, width)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, dim_head={self.dim_head}, block_size={self.block_size}, "
            f"halo_size={self.halo_size}, attention={self.attention!r}"
        )


def set_attention_kernel(model: nn.Module, kernel: AttentionKernel | None) -> None:
    """Make every `HaloAttention` of `model` use `kernel` ("bias" or "folded"; None: the device's
    default): same function, another route to the fused attention (see `HaloAttention`)."""
    if kernel is not None and kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}, not {kernel!r}")
    for module in model.modules():
        if isinstance(module, HaloAttention):
            module.kernel = kernel


def _windows(t: Tensor, win: int, step: int) -> Tensor:
    """(N, C, H', W') -> (N, C, rows, cols, win, win): the win x win windows every `step` pixels,
    as `t.unfold(2, win, step).unfold(3, win, step)` lays them out, by index selection (which
    exports to ONNX; unfold of a padded tensor does not)."""
    rows = (t.shape[2] - win) // step + 1
    cols = (t.shape[3] - win) // step + 1
    offsets = torch.arange(win, device=t.device)
    row_index = (torch.arange(rows, device=t.device)[:, None] * step + offsets).reshape(-1)
    col_index = (torch.arange(cols, device=t.device)[:, None] * step + offsets).reshape(-1)
    picked = t.index_select(2, row_index).index_select(3, col_index)  # (N, C, rows*win, cols*win)
    return picked.unflatten(3, (cols, win)).unflatten(2, (rows, win)).transpose(3, 4)
