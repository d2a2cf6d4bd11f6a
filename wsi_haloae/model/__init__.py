"""The HaloAE model: blocks B-E as PyTorch modules, and the anomaly-map functions.

`backbone` (B, VGG19 features and their weights) · `halo` (halo attention) · `autoencoder` (C) ·
`heads` (D, E) · `haloae` (the whole model) · `anomaly` (maps and scores from fm and fm_hat) ·
`stain` (Macenko and Reinhard stain normalisation).
"""

from .anomaly import anomaly_map, feature_error, image_scores
from .backbone import BackboneWeights, VGGFeatures, load_backbone
from .haloae import HaloAE, HaloAEOutput
from .stain import StainNormaliser, fit_stain_normaliser

__all__ = [
    "BackboneWeights",
    "HaloAE",
    "HaloAEOutput",
    "StainNormaliser",
    "VGGFeatures",
    "anomaly_map",
    "feature_error",
    "fit_stain_normaliser",
    "image_scores",
    "load_backbone",
]
