"""Halo attention straight from its definition: slow, plain loops, the oracle for `HaloAttention`.

Definition (`model-spec.md`, "Halo attention"): the map is cut into block x block blocks. A query
pixel (y, x) of the block starting at (y0, x0) sees the keys of the window rows y0 - halo ..
y0 + block + halo - 1 and the same columns, but only those inside the map. Its weights are the
softmax, over those valid keys only, of (q . k + q . (R_row[y' - y + W - 1] + R_col[x' - x + W - 1]))
/ sqrt(dim_head), with W = block + 2 halo; its output is the weighted sum of the values, then the
layer's output projection. Everything runs in float64 on the layer's own parameters.
"""

from __future__ import annotations

import math

import torch


def reference_halo_attention(layer, x):
    """(output (N, dim, H, W), weights (N, blocks, heads, block^2, window^2)), float64.

    `weights` is laid out like `HaloAttention.attention_weights`, with zeros at padded keys.
    """
    b, h, heads, d = layer.block_size, layer.halo_size, layer.heads, layer.dim_head
    win = b + 2 * h
    x = x.double()
    n, _, height, width = x.shape
    w_q = layer.to_q.weight.double()[:, :, 0, 0]  # (heads*d, dim)
    w_kv = layer.to_kv.weight.double()[:, :, 0, 0]  # (2*heads*d, dim)
    q_all = torch.einsum("oc,nchw->nohw", w_q, x)
    k_all = torch.einsum("oc,nchw->nohw", w_kv[: heads * d], x)
    v_all = torch.einsum("oc,nchw->nohw", w_kv[heads * d :], x)
    rel_row, rel_col = layer.rel_row.double(), layer.rel_col.double()

    blocks_y, blocks_x = height // b, width // b
    attended = torch.zeros(n, heads * d, height, width, dtype=torch.float64)
    weights = torch.zeros(n, blocks_y * blocks_x, heads, b * b, win * win, dtype=torch.float64)
    for img in range(n):
        for block_row in range(blocks_y):
            for block_col in range(blocks_x):
                block = block_row * blocks_x + block_col
                y0, x0 = block_row * b, block_col * b
                # the window's keys that lie inside the map: their place in the window, row, column
                slots, rows, cols = zip(
                    *[
                        (wy * win + wx, y0 - h + wy, x0 - h + wx)
                        for wy in range(win)
                        for wx in range(win)
                        if 0 <= y0 - h + wy < height and 0 <= x0 - h + wx < width
                    ]
                )
                slots, rows, cols = torch.tensor(slots), torch.tensor(rows), torch.tensor(cols)
                for head in range(heads):
                    channels = slice(head * d, (head + 1) * d)
                    keys = k_all[img, channels][:, rows, cols].t()  # (valid keys, d)
                    values = v_all[img, channels][:, rows, cols].t()
                    for qi in range(b * b):
                        y, xq = y0 + qi // b, x0 + qi % b
                        q = q_all[img, channels, y, xq]
                        rel = rel_row[rows - y + win - 1] + rel_col[cols - xq + win - 1]  # (valid keys, d)
                        p = torch.softmax((keys @ q + rel @ q) / math.sqrt(d), dim=0)
                        attended[img, channels, y, xq] = p @ values
                        weights[img, block, head, qi, slots] = p
    w_out = layer.to_out.weight.double()[:, :, 0, 0]
    output = torch.einsum("oc,nchw->nohw", w_out, attended) + layer.to_out.bias.double()[None, :, None, None]
    return output, weights
