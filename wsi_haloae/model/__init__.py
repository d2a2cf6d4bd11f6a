"""The HaloAE model: blocks B-E as PyTorch modules, and the anomaly-map functions.

`backbone` (B, VGG19 features and their weights) · `halo` (halo attention) · `autoencoder` (C) ·
`heads` (D, E) · `haloae` (the whole model) · `anomaly` (maps and scores from fm and fm_hat).
"""

from .anomaly import anomaly_map, feature_error, image_scores
from .backbone import BackboneWeights, VGGFeatures, load_backbone
from .haloae import HaloAE, HaloAEOutput

__all__ = [
    "BackboneWeights",
    "HaloAE",
    "HaloAEOutput",
    "VGGFeatures",
    "anomaly_map",
    "feature_error",
    "image_scores",
    "load_backbone",
]
