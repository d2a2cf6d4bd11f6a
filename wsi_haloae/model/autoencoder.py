"""Block C: the HaloNet autoencoder that reconstructs the VGG feature map.

    fm (N, 704, F, F) -> head: 5x5 conv, no padding, BN, ReLU -> (N, 234, F-4, F-4)
                      -> encoder stages -> code (N, 29, F-4, F-4)
                      -> decoder stages -> (N, 704, F-4, F-4) -> nearest resize -> fm_hat (N, 704, F, F)

Every stage is one residual bottleneck (`HaloBottleneck`) that keeps the spatial size; the stage
tables below are the spec's table (`model-spec.md`, block C) row by row. Channel counts scale with
`ModelConfig.width` (rounded, at least 1), except the 704 channels of fm at both ends.

Parameter counts, reconciled with the spec's table. The official code builds, in every stage, a
3x3 stride-2 convolution (`conv4`, out^2 x 9 weights, no bias; transposed in the decoder) that it
runs only for a stride-2 stage, and the trained model has none. We do not build it; the table
counts it. Per stage, ours + 9 out^2 = the table, to its precision:

    stage   ours        + unused conv4  = table
    head    4,118,868   -               4.1 M
    enc 1     609,626   +   492,804     1.10 M
    enc 2     239,672   +   123,201     0.36 M
    enc 3     128,766   +    30,276     0.16 M
    enc 4      40,432   +     7,569     0.05 M
    dec 1      16,971   +     7,569     0.02 M
    dec 2      65,289   +    31,329     0.10 M
    dec 3     201,474   +   125,316     0.33 M
    dec 4   1,577,594   +   505,521     2.08 M
    dec 5   1,194,224   + 4,460,544     5.65 M

The unused layers total 5,784,129 parameters (653,850 in the encoder, 5,130,279 in the decoder:
the spec's "5.8 M in stride-2 layers"). The bottleneck width of dec 2, dec 4 and dec 5 is one
channel below the output (58, 236, 703): the official code truncates the width where it rounds
the output (29 x 2.025 = 58.7 -> 58 and 59); keeping that makes dec 5 match the table exactly.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .halo import AttentionMode, HaloAttention

BlockC = Literal["halo", "cnn"]


class StageSpec(NamedTuple):
    """One bottleneck stage: channels in, bottleneck width, channels out, attention heads, k."""

    in_ch: int
    mid_ch: int
    out_ch: int
    heads: int
    kernel: int


HEAD_CHANNELS = 234  # 704 -> 234 by a 5x5 conv without padding (F -> F - 4)
HEAD_KERNEL = 5

ENCODER: tuple[StageSpec, ...] = (
    #          in  mid  out  heads  k
    StageSpec(234, 234, 234, 4, 3),  # enc 1
    StageSpec(234, 117, 117, 8, 3),  # enc 2
    StageSpec(117, 58, 58, 8, 5),  # enc 3
    StageSpec(58, 29, 29, 8, 5),  # enc 4: the code, 29 x (F-4) x (F-4)
)

DECODER: tuple[StageSpec, ...] = (
    #          in  mid  out  heads  k
    StageSpec(29, 29, 29, 4, 3),  # dec 1
    StageSpec(29, 58, 59, 8, 3),  # dec 2 (paper: 55 out)
    StageSpec(59, 118, 118, 8, 3),  # dec 3
    StageSpec(118, 236, 237, 8, 5),  # dec 4
    StageSpec(237, 703, 704, 8, 1),  # dec 5: back to fm's 704 channels
)


class HaloBottleneck(nn.Module):
    """Residual bottleneck with halo attention: (N, in, H, W) -> (N, out, H, W).

    1x1 conv -> BN -> ReLU -> halo attention -> ReLU -> k x k conv -> BN, plus the shortcut
    (identity, or 1x1 conv + BN when in != out), then ReLU. Decoder stages use stride-1 transposed
    convolutions (same shapes). `block_c="cnn"` puts a 3x3 convolution where the attention was
    (the paper's plain-CNN ablation). H and W must be multiples of the attention block size.
    """

    def __init__(
        self,
        spec: StageSpec,
        *,
        transposed: bool,
        block_c: BlockC,
        attention: AttentionMode,
        block_size: int,
        halo_size: int,
        dim_head: int,
    ) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.reduce = conv(spec.in_ch, spec.mid_ch, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(spec.mid_ch)
        self.attn: nn.Module
        if block_c == "halo":
            self.attn = HaloAttention(
                spec.mid_ch,
                heads=spec.heads,
                dim_head=dim_head,
                block_size=block_size,
                halo_size=halo_size,
                attention=attention,
            )
        else:
            self.attn = nn.Conv2d(spec.mid_ch, spec.mid_ch, 3, padding=1)
        self.expand = conv(spec.mid_ch, spec.out_ch, spec.kernel, padding=spec.kernel // 2, bias=False)
        self.bn_expand = nn.BatchNorm2d(spec.out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if spec.in_ch != spec.out_ch:
            projection = conv(spec.in_ch, spec.out_ch, 1, bias=False)
            self.shortcut = nn.Sequential(projection, nn.BatchNorm2d(spec.out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn_reduce(self.reduce(x)))
        out = F.relu(self.attn(out))
        out = self.bn_expand(self.expand(out))
        return F.relu(out + self.shortcut(x))


class HaloAutoencoder(nn.Module):
    """Block C: fm (N, C, F, F) -> fm_hat (N, C, F, F); F - 4 a multiple of the block size.

    C = `fm_channels` (704 for block B's VGG19 map) is not scaled by `cfg.width`. `head`,
    `encoder` and `decoder` are the three parts, callable on their own: the code after the
    encoder is (N, 29 x width, F - 4, F - 4).
    """

    def __init__(self, cfg: ModelConfig, fm_channels: int) -> None:
        super().__init__()

        def scaled(channels: int) -> int:
            return max(1, round(channels * cfg.width))

        def stages(table: tuple[StageSpec, ...], *, transposed: bool) -> nn.Sequential:
            built = []
            for i, spec in enumerate(table):
                last = transposed and i == len(table) - 1
                spec = spec._replace(
                    in_ch=scaled(spec.in_ch),
                    mid_ch=scaled(spec.mid_ch),
                    out_ch=fm_channels if last else scaled(spec.out_ch),
                )
                built.append(
                    HaloBottleneck(
                        spec,
                        transposed=transposed,
                        block_c=cfg.block_c,
                        attention=cfg.attention,
                        block_size=cfg.block_size,
                        halo_size=cfg.halo_size,
                        dim_head=cfg.dim_head,
                    )
                )
            return nn.Sequential(*built)

        self.head = nn.Sequential(
            nn.Conv2d(fm_channels, scaled(HEAD_CHANNELS), HEAD_KERNEL, bias=False),
            nn.BatchNorm2d(scaled(HEAD_CHANNELS)),
            nn.ReLU(inplace=True),
        )
        self.encoder = stages(ENCODER, transposed=False)
        self.decoder = stages(DECODER, transposed=True)

    def forward(self, fm: Tensor) -> Tensor:
        """(N, C, F, F) -> (N, C, F, F)."""
        code = self.encoder(self.head(fm))
        return F.interpolate(self.decoder(code), size=fm.shape[-2:], mode="nearest")
