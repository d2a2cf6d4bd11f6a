"""Blocks D and E: the image reconstructor and the Cut&Paste classifier on its output."""

from __future__ import annotations

from torch import Tensor, nn


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    # reflection padding, as the official decoder's ReflectionPad2d(1) + unpadded conv
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, padding_mode="reflect")


class ImageDecoder(nn.Module):
    """Block D: fm_hat (N, C, F, F) -> reconstructed normalised image (N, 3, 4F, 4F).

    In order (`model-spec.md`, block D, as trained with first_channels 380, 4 middle layers):
    3x3 conv C -> first_channels, ReLU; `middle_layers` 3x3 convs halving the channels
    (380 -> 190 -> 95 -> 47 -> 23), each with ReLU; 3x3 conv -> 3, ReLU, x2 nearest upsample;
    3x3 conv 3 -> 3, x2 nearest upsample. Every conv is reflection-padded. The last conv has no
    activation: the official ReLU there cannot produce the negative values of a normalised image.
    """

    def __init__(self, in_channels: int, first_channels: int, middle_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv3x3(in_channels, first_channels), nn.ReLU(inplace=True)]
        channels = first_channels
        for _ in range(middle_layers):
            layers += [_conv3x3(channels, max(1, channels // 2)), nn.ReLU(inplace=True)]
            channels = max(1, channels // 2)
        layers += [
            _conv3x3(channels, 3),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv3x3(3, 3),
            nn.Upsample(scale_factor=2, mode="nearest"),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, fm_hat: Tensor) -> Tensor:
        """(N, C, F, F) -> (N, 3, 4F, 4F)."""
        return self.layers(fm_hat)


class CutPasteClassifier(nn.Module):
    """Block E: reconstructed image (N, 3, S, S) -> logits (N, 2), 0 = original, 1 = Cut&Paste copy.

    One linear layer on the flattened image (3 S^2 inputs, 196,608 at S = 256).
    """

    def __init__(self, size_px: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * size_px * size_px, 2)

    def forward(self, image_hat: Tensor) -> Tensor:
        """(N, 3, S, S) -> (N, 2)."""
        return self.linear(image_hat.flatten(1))
