"""Halo attention against the slow reference loop (`tests/reference/halo_reference.py`), its
masking, and the official code's uniform behaviour as an ablation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference.halo_reference import reference_halo_attention

from wsi_haloae.model.halo import ATTENTION_KERNELS, HaloAttention, set_attention_kernel


def _layer(dim: int, block: int, halo: int, heads: int = 2, dim_head: int = 4, **kw: object) -> HaloAttention:
    torch.manual_seed(0)
    layer = HaloAttention(dim, heads=heads, dim_head=dim_head, block_size=block, halo_size=halo, **kw)
    with torch.no_grad():  # a non-zero output bias, so a wrong bias path shows
        layer.to_out.bias.normal_()
    return layer


def _padding(height: int, width: int, block: int, halo: int) -> torch.Tensor:
    """(blocks, window^2) True where the window position lies outside the map, from coordinates."""
    win = block + 2 * halo
    rows = []
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            rows.append(
                [
                    not (0 <= y0 - halo + wy < height and 0 <= x0 - halo + wx < width)
                    for wy in range(win)
                    for wx in range(win)
                ]
            )
    return torch.tensor(rows)


# block, halo, H, W, heads, dim_head, N: interior and border blocks in every case; halo > block in one
CASES = [
    (4, 1, 12, 12, 2, 4, 2),
    (3, 2, 9, 12, 3, 5, 2),
    (2, 3, 10, 10, 1, 8, 1),
    (12, 2, 36, 36, 2, 4, 1),
]


@pytest.mark.parametrize("block, halo, height, width, heads, dim_head, n", CASES)
def test_equals_slow_reference(
    block: int, halo: int, height: int, width: int, heads: int, dim_head: int, n: int
) -> None:
    layer = _layer(6, block, halo, heads, dim_head)
    x = torch.randn(n, 6, height, width, generator=torch.Generator().manual_seed(1))
    expected, expected_weights = reference_halo_attention(layer, x)
    padding = _padding(height, width, block, halo)
    border = padding.any(dim=1)
    assert border.any() and (~border).any(), "each case must have border and interior blocks"

    with torch.no_grad():
        out = layer(x)
        weights = layer.attention_weights(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.double(), expected_weights, atol=1e-6, rtol=1e-5)


def test_rows_sum_to_one_over_valid_keys_and_never_weigh_padding() -> None:
    layer = _layer(5, 4, 2)
    x = torch.randn(2, 5, 12, 8)
    with torch.no_grad():
        weights = layer.attention_weights(x)  # (N, blocks, heads, 16, 64)
    padding = _padding(12, 8, 4, 2)[None, :, None, None, :].expand_as(weights)
    assert weights[padding].abs().max().item() == 0.0
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:-1]), atol=1e-6, rtol=0)
    # content-dependent: weights differ between queries of one block
    assert weights[0, 0, 0].std(dim=0).max() > 1e-3


def test_changing_one_key_changes_the_blocks_that_see_it_only() -> None:
    layer = _layer(4, 4, 1)
    x = torch.randn(1, 4, 12, 12)
    changed = x.clone()
    changed[0, :, 4, 4] += 3.0  # pixel of block (1, 1), inside the halo of block (0, 0)
    with torch.no_grad():
        before, after = layer(x), layer(changed)
    delta = (after - before).abs()
    assert delta[..., 0:4, 0:4].amax() > 1e-3  # block (0, 0) attends to it through its halo
    assert delta[..., 8:12, 8:12].amax() == 0.0  # block (2, 2) does not see it


def test_uniform_reproduces_the_official_inverted_mask() -> None:
    block, halo, size = 12, 2, 36
    win = block + 2 * halo
    layer = _layer(6, block, halo, attention="uniform")
    x = torch.randn(2, 6, size, size)
    padding = _padding(size, size, block, halo)
    border = padding.any(dim=1)
    with torch.no_grad():
        weights = layer.attention_weights(x)
        out = layer(x)

    interior = weights[:, ~border]
    torch.testing.assert_close(interior, torch.full_like(interior, 1 / win**2), atol=1e-9, rtol=0)
    edge = weights[:, border]  # all weight on the padded keys, none on the valid ones
    pad = padding[border][None, :, None, None, :].expand_as(edge)
    assert edge[~pad].abs().max().item() == 0.0
    torch.testing.assert_close(edge.sum(dim=-1), torch.ones(edge.shape[:-1]), atol=1e-6, rtol=0)

    # interior block (1, 1): the window mean of the values; border blocks: the zero values of the
    # padding, so only the output bias remains
    v = F.conv2d(x, layer.to_kv.weight)[:, layer.heads * layer.dim_head :]
    window_mean = v[:, :, block - halo : 2 * block + halo, block - halo : 2 * block + halo].mean(dim=(2, 3))
    centre = F.conv2d(window_mean[:, :, None, None], layer.to_out.weight, layer.to_out.bias)
    torch.testing.assert_close(out[:, :, 12:24, 12:24], centre.expand(-1, -1, 12, 12), atol=1e-5, rtol=1e-5)
    bias = layer.to_out.bias[None, :, None, None].expand(2, -1, 12, 12)
    torch.testing.assert_close(out[:, :, :12, :12], bias, atol=1e-6, rtol=0)


def test_map_not_divisible_by_block_names_the_sizes() -> None:
    layer = _layer(4, 4, 1)
    with pytest.raises(AssertionError, match=r"feature map 10x12 is not divisible by the block size 4"):
        layer(torch.randn(1, 4, 10, 12))


def test_channels_last_bf16_and_gradients() -> None:
    layer = _layer(8, 4, 2)
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        reference = layer(x)
        layer = layer.to(memory_format=torch.channels_last)
        channels_last = layer(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = layer(x)
    torch.testing.assert_close(channels_last, reference, atol=1e-5, rtol=1e-5)
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all()
    assert (bf16.float() - reference).abs().max() < 0.05 * reference.abs().max()

    x.requires_grad_(True)
    layer(x).square().sum().backward()
    grads = [x.grad, *(p.grad for p in layer.parameters())]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


# ---- the two routes into scaled_dot_product_attention, against the explicit softmax


@pytest.mark.parametrize("block, halo, height, width, heads, dim_head, n", CASES)
def test_sdpa_kernels_equal_the_explicit_softmax(
    block: int, halo: int, height: int, width: int, heads: int, dim_head: int, n: int
) -> None:
    layer = _layer(6, block, halo, heads, dim_head)
    x = torch.randn(n, 6, height, width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        q, k, v, bias, valid = layer._project(x)
        explicit = layer._weights(q, k, bias, valid) @ v  # the softmax written out, no SDPA
        expected = layer.to_out(layer._merge_blocks(explicit, n, height, width))
        outputs = {}
        for kernel in ATTENTION_KERNELS:
            set_attention_kernel(layer, kernel)
            outputs[kernel] = layer(x)
    for kernel, out in outputs.items():
        difference = (out - expected).abs().max().item()
        assert difference < 1e-5, f"{kernel}: max abs difference {difference:.2e}"
    # the folded route has no bias tensor: its keys carry the positions and the padding
    q_aug, k_aug, v_aug = layer._project_folded(x)
    assert q_aug.shape[-1] % 8 == 0 and q_aug.shape[-1] == k_aug.shape[-1] == v_aug.shape[-1]
    assert q_aug.shape[-1] >= dim_head + 2 * (block + 2 * halo) + 1


def test_folded_kernel_bf16_channels_last_and_gradients_match_bias() -> None:
    layer = _layer(8, 12, 2, heads=2, dim_head=16)
    x = torch.randn(2, 8, 24, 24, generator=torch.Generator().manual_seed(3))
    results = {}
    for kernel in ATTENTION_KERNELS:
        set_attention_kernel(layer, kernel)
        layer.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = layer(xg.contiguous(memory_format=torch.channels_last))
        out.square().sum().backward()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = layer(x)
        results[kernel] = (out.detach(), xg.grad, layer.rel_row.grad.clone(), bf16.float())
    (out_b, gx_b, gr_b, bf_b), (out_f, gx_f, gr_f, bf_f) = results["bias"], results["folded"]
    torch.testing.assert_close(out_f, out_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_f, gx_b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gr_f, gr_b, atol=1e-4, rtol=1e-4)
    # bf16: both within bf16 rounding of the float32 output
    scale = out_b.abs().max()
    assert (bf_f - out_b).abs().max() < 0.05 * scale and (bf_b - out_b).abs().max() < 0.05 * scale


def test_set_attention_kernel_names_the_choices() -> None:
    with pytest.raises(ValueError, match="bias, folded"):
        set_attention_kernel(_layer(4, 4, 1), "flash")


def test_channels_last_layer_keeps_channels_last() -> None:
    layer = _layer(8, 4, 2).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = layer(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
