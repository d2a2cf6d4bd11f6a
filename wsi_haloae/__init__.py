"""wsi-haloae: annotation-free anomaly detection on whole-slide images with HaloAE."""

__version__ = "0.1.0"
