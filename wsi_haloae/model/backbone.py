"""Block B: the frozen VGG19 feature extractor and its weights.

Only VGG19's `features` up to relu3_4 run (torchvision indices 0-17: 8 of the 16 convolutions,
14.6 of the 25.5 GMAC per 256 px tile the official code spends). Four ReLU maps are pooled to a
quarter of the image and concatenated into the 704-channel map `fm`:

    relu1_1  64 ch  at S     -> average-pooled by 4
    relu2_1 128 ch  at S/2   -> average-pooled by 2
    relu3_1 256 ch  at S/4   -> as is
    relu3_4 256 ch  at S/4   -> as is

The official code upsamples every map to S (nearest) and averages 4 x 4 windows with stride 4,
which is the same pooling. Its VGG also reflection-pads before every convolution and returns the
padded maps of relu1_1, relu2_1 and relu3_1; `features="official"` reproduces that for parity.

Weights are chosen explicitly (`BackboneWeights`): torchvision's ImageNet weights (downloaded with
their checksum, or read from the torch hub cache offline), a local VGG19 state dict, or seeded
random weights for tests and demos, announced with a warning every time. There is no fallback
from one to another.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VGG19_Weights

from ..errors import BackboneWeightsError

log = logging.getLogger(__name__)

FeatureMode = Literal["pooled", "official"]
Padding = Literal["zeros", "reflect"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's VGG19 configuration "E" up to conv3_4 ("M" = 2x2 max pooling): features[0:18].
VGG19_TO_RELU3_4: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256)
# index in `features` of each kept ReLU -> average-pooling factor bringing its map to S/4
TAPS: dict[int, int] = {1: 4, 6: 2, 11: 1, 17: 1}  # relu1_1, relu2_1, relu3_1, relu3_4
RELU3_4 = 17
FM_CHANNELS = 704  # 64 + 128 + 256 + 256
RANDOM_SEED = 0


class BackboneWeights(Enum):
    """Where the VGG19 weights come from: the `weights` strings `load_backbone` accepts."""

    IMAGENET1K_V1 = "imagenet"  # torchvision's VGG19_Weights.IMAGENET1K_V1 (vgg19-dcbb9e9d.pth)
    FILE = "file"  # a local torchvision VGG19 state dict
    RANDOM = "random"  # seeded Kaiming initialisation; meaningless features, for tests and demos

    @classmethod
    def of(cls, weights: str) -> BackboneWeights:
        """'imagenet' and 'random' name themselves; anything else is a file path."""
        if weights in (cls.IMAGENET1K_V1.value, cls.RANDOM.value):
            return cls(weights)
        return cls.FILE


class VGGFeatures(nn.Module):
    """VGG19 up to relu3_4 with multi-scale pooling: (N, 3, S, S) -> (N, 704, S/4, S/4).

    Input: ImageNet-normalised RGB images, S a multiple of 4. Output channels in order relu1_1
    (64), relu2_1 (128), relu3_1 (256), relu3_4 (256). Parameters are frozen and the module stays
    in eval mode even when a parent calls `.train()`. State-dict keys are torchvision's
    (`features.0.weight` ... `features.16.bias`). `VGGFeatures()` alone has untrained weights and
    serves as a shell to load a saved model into; `load_backbone` is how to get real weights.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG19_TO_RELU3_4:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        """Stays in eval mode: the backbone is frozen (`mode` is ignored)."""
        return super().train(False)

    def forward(self, images: Tensor, features: FeatureMode = "pooled", padding: Padding = "zeros") -> Tensor:
        """(N, 3, S, S) normalised images -> fm (N, 704, S/4, S/4).

        `padding="reflect"` reflection-pads the input of every convolution, as the official
        network does, instead of torchvision's zero padding (same weights, same shapes). With
        `features="official"` the padding is always reflection. Measured on four 256 px synthetic
        tissue tiles with the seeded random VGG19 (ImageNet weights are not available offline;
        tests/test_protocol_fixes.py measures it): relu3_4's mean |difference| is
        85 % of its mean |value| in the outer 2 feature pixels, 10.9 % over the whole 64 x 64
        map, and exactly 0 at 12 or more feature pixels from the border.

        `features="official"` runs the official code's variant: reflection padding before each
        convolution, relu1_1/relu2_1/relu3_1 returned with one more reflected pixel per side
        (S+2, S/2+2, S/4+2), each map resized to S (nearest) and averaged over 4 x 4 windows.
        """
        size = images.shape[-1]
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2] != size or size % 4:
            raise ValueError(
                f"VGG features need (N, 3, S, S) images, S a multiple of 4; got {tuple(images.shape)}"
            )
        if features not in ("pooled", "official"):
            raise ValueError(f"features must be 'pooled' or 'official', not {features!r}")
        if padding not in ("zeros", "reflect"):
            raise ValueError(f"padding must be 'zeros' or 'reflect', not {padding!r}")
        official = features == "official"
        reflect = official or padding == "reflect"
        maps: list[Tensor] = []
        x = images
        for index, layer in enumerate(self.features):
            if reflect and isinstance(layer, nn.Conv2d):
                x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), layer.weight, layer.bias)
            else:
                x = layer(x)
            if index not in TAPS:
                continue
            if not official:
                maps.append(F.avg_pool2d(x, TAPS[index]) if TAPS[index] > 1 else x)
                continue
            # The official VGG returns relu1_1, relu2_1 and relu3_1 with the reflection padding
            # its next convolution reads (here added by that convolution itself).
            tapped = x if index == RELU3_4 else F.pad(x, (1, 1, 1, 1), mode="reflect")
            maps.append(F.avg_pool2d(F.interpolate(tapped, size=(size, size), mode="nearest"), 4))
        return torch.cat(maps, dim=1)


def load_backbone(weights: str = "imagenet", *, progress: bool = False) -> VGGFeatures:
    """A frozen VGG19 feature extractor with the weights `weights` names.

    `weights`: "imagenet" (torchvision's VGG19 ImageNet weights, checksum-verified when
    downloaded, read from the torch hub cache when present), "random" (seeded, logged at WARNING
    on every call), or the path of a torchvision VGG19 state dict (read with weights_only=True;
    only `features.0`-`features.16` are used). Raises BackboneWeightsError when the weights
    cannot be had or do not fit. `progress` shows the download's progress bar.
    """
    kind = BackboneWeights.of(weights)
    model = VGGFeatures()
    if kind is BackboneWeights.RANDOM:
        log.warning(
            "VGG19 backbone with RANDOM weights (seed %d): its features are meaningless, "
            "fit for tests and demos only; use backbone_weights 'imagenet' for real models",
            RANDOM_SEED,
        )
        generator = torch.Generator().manual_seed(RANDOM_SEED)
        for module in model.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", generator=generator)
                nn.init.zeros_(module.bias)
        return model
    if kind is BackboneWeights.IMAGENET1K_V1:
        state = _imagenet_state_dict(progress)
        source = f"torchvision {VGG19_Weights.IMAGENET1K_V1.url}"
    else:
        state = _file_state_dict(Path(weights))
        source = weights
    problem = _mismatch(model, state)
    if problem:
        raise BackboneWeightsError(f"{source} is not a torchvision VGG19 state dict: {problem}")
    model.load_state_dict({key: state[key] for key in model.state_dict()})
    log.info("VGG19 backbone weights: %s", source)
    return model


def _imagenet_state_dict(progress: bool) -> Mapping[str, object]:
    url = VGG19_Weights.IMAGENET1K_V1.url
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
    except Exception as exc:  # offline (URLError), bad checksum (RuntimeError), unreadable cache file, ...
        raise BackboneWeightsError(
            f"cannot get the ImageNet VGG19 weights ({type(exc).__name__}: {exc}); download {url} "
            f"on a connected machine and pass its path as backbone_weights, or put it in {cache}"
        ) from None


def _file_state_dict(path: Path) -> Mapping[str, object]:
    if not path.is_file():
        raise BackboneWeightsError(
            f"VGG19 weights file {path} does not exist; pass 'imagenet', 'random' or the path of "
            "torchvision's vgg19-dcbb9e9d.pth"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code objects, not a torch file, ...
        raise BackboneWeightsError(
            f"VGG19 weights file {path} cannot be read as a state dict ({type(exc).__name__}); "
            "pass torchvision's vgg19-dcbb9e9d.pth"
        ) from None
    if not isinstance(state, Mapping):
        raise BackboneWeightsError(
            f"VGG19 weights file {path} holds a {type(state).__name__}, not a state dict; "
            "pass torchvision's vgg19-dcbb9e9d.pth"
        )
    return state


def _mismatch(model: VGGFeatures, state: Mapping[str, object]) -> str | None:
    """The first key of `model` that `state` lacks or holds with another shape, as a phrase."""
    for key, expected in model.state_dict().items():
        value = state.get(key)
        if value is None:
            return f"it has no '{key}'"
        if not isinstance(value, Tensor) or value.shape != expected.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            return f"'{key}' is {shape}, VGG19 needs {tuple(expected.shape)}"
    return None
