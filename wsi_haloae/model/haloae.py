"""HaloAE (Mathian et al., VISAPP 2023): blocks B-E of `model-spec.md` in one module.

    images (N, 3, S, S) in [0, 1] -> ImageNet normalisation
      -> B  frozen VGG19 features          fm       (N, 704, F, F), F = S / 4
      -> C  HaloNet autoencoder            fm_hat   (N, 704, F, F)
      -> D  image reconstructor            image_hat (N, 3, S, S), a normalised image
      -> E  Cut&Paste classifier           logits   (N, 2)

The anomaly map needs B and C only (`forward(..., heads=False)`, then `anomaly.py`). The module
knows nothing of slides, files or training; the same forward serves training and inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from .autoencoder import HaloAutoencoder
from .backbone import FM_CHANNELS, IMAGENET_MEAN, IMAGENET_STD, VGGFeatures, load_backbone
from .heads import CutPasteClassifier, ImageDecoder


@dataclass
class HaloAEOutput:
    """What one forward pass returns (tensors in the dtype the model ran in)."""

    fm: Tensor  # (N, 704, F, F) backbone features, F = S / 4
    fm_hat: Tensor  # (N, 704, F, F) reconstruction (block C)
    image_hat: Tensor | None  # (N, 3, S, S) reconstruction of the normalised image (D); None if heads=False
    logits: Tensor | None  # (N, 2) Cut&Paste classifier (E); None if heads=False


class HaloAE(nn.Module):
    """The HaloAE model of `cfg`; `backbone` None loads `cfg.backbone_weights`.

    The backbone is a registered, frozen submodule kept in eval mode, so the state dict holds
    everything needed to rebuild the model (random backbones included). Raises ConfigError when
    the tile size does not fit the architecture: S a multiple of 4 and S/4 - 4 a positive
    multiple of `cfg.block_size`.
    """

    def __init__(self, cfg: ModelConfig, backbone: VGGFeatures | None = None) -> None:
        super().__init__()
        _check(cfg)
        self.config = cfg
        self.backbone = backbone if backbone is not None else load_backbone(cfg.backbone_weights)
        self.autoencoder = HaloAutoencoder(cfg, FM_CHANNELS)
        self.image_decoder = ImageDecoder(FM_CHANNELS, cfg.decoder_first_channels, cfg.decoder_middle_layers)
        self.classifier = CutPasteClassifier(cfg.image_size_px)
        # The official initialisation of blocks C and D (E keeps PyTorch's default, as there).
        for module in [*self.autoencoder.modules(), *self.image_decoder.modules()]:
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: Tensor) -> Tensor:
        """(N, 3, S, S) RGB in [0, 1] -> ImageNet-normalised, same shape."""
        return (images - self.mean) / self.std

    def forward(self, images: Tensor, *, heads: bool = True) -> HaloAEOutput:
        """images (N, 3, S, S) float RGB in [0, 1], S = cfg.image_size_px.

        heads=False runs blocks B and C only (all an anomaly map needs). No gradient flows into
        the backbone or back to the images through it.
        """
        size = self.config.image_size_px
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"HaloAE expects (N, 3, {size}, {size}) images, got {tuple(images.shape)}")
        with torch.no_grad():
            fm = self.backbone(self.normalise(images), self.config.features, padding=self.config.vgg_padding)
        fm_hat = self.autoencoder(fm)
        if not heads:
            return HaloAEOutput(fm=fm, fm_hat=fm_hat, image_hat=None, logits=None)
        image_hat = self.image_decoder(fm_hat)
        return HaloAEOutput(fm=fm, fm_hat=fm_hat, image_hat=image_hat, logits=self.classifier(image_hat))


def _check(cfg: ModelConfig) -> None:
    size, block = cfg.image_size_px, cfg.block_size
    if size % 4 or size < 4:
        raise ConfigError(f"model image_size_px {size} must be a positive multiple of 4 (fm is S/4)")
    encoded = size // 4 - 4  # after the head's unpadded 5x5 conv
    if block < 1 or encoded < 1 or encoded % block:
        raise ConfigError(
            f"model image_size_px {size} gives a {encoded} px encoded map (S/4 - 4), which block_size "
            f"{block} does not divide; pick S/4 - 4 a multiple of block_size (256 and 12, 64 and 4)"
        )
    if cfg.halo_size < 0 or cfg.dim_head < 1 or cfg.width <= 0:
        raise ConfigError(
            f"model halo_size {cfg.halo_size}, dim_head {cfg.dim_head} and width {cfg.width} must be "
            ">= 0, >= 1 and > 0"
        )
    if cfg.decoder_first_channels < 1 or cfg.decoder_middle_layers < 0:
        raise ConfigError(
            f"model decoder_first_channels {cfg.decoder_first_channels} must be >= 1 and "
            f"decoder_middle_layers {cfg.decoder_middle_layers} >= 0"
        )
