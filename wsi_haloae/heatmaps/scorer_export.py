"""`export`: the tile scorer of a trained model as one deployable file (ONNX or TorchScript).

What is exported is `infer.TileScorer` in float32 on the CPU, the whole path from pixels to
numbers, normalisation included:

    tiles (B, S, S, 3) uint8 RGB  ->  maps (B, S / 4, S / 4) float32   normalised anomaly maps,
                                                                      averaged over 4 x 4 px
                                      score_mean (B,) float32         tile scores: mean and max
                                      score_max (B,) float32          of the full-size map

(S = the model's tile size; the reference map of `normalisation`, median or mean, is baked in.)
The batch size B is fixed at export time (`batch_size`): pad the last batch of a slide, as the
CUDA engine does. ONNX uses the TorchScript-based exporter at opset 18; `check_export` runs the
file with onnxruntime (or TorchScript) on random tiles against the PyTorch scorer and returns the
max abs difference of each output.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError, OutputError
from ..files import write_atomically
from ..model.anomaly import Normalisation
from ..training.checkpoint import TrainedModel
from .infer import TileScorer

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("onnx", "torchscript")
INPUT_NAME = "tiles"
OUTPUT_NAMES = ("maps", "score_mean", "score_max")
ONNX_OPSET = 18


def export_scorer(
    trained: TrainedModel,
    path: str | Path,
    *,
    format: ExportFormat = "onnx",
    batch_size: int = 8,
    normalisation: Normalisation = "median",
) -> Path:
    """Write the scorer of `trained` (see the module docstring) to `path`; returns the path.

    Raises ConfigError for a bad format or batch size, OutputError when the file cannot be
    written (written to a temporary name first, then renamed)."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format {format!r} must be one of {', '.join(EXPORT_FORMATS)}")
    if batch_size < 1:
        raise ConfigError(f"export batch size {batch_size} must be at least 1")
    path = Path(path)
    if format == "onnx":
        _require("onnx")
    scorer = _cpu_scorer(trained, normalisation)
    size = scorer.size_px
    example = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8)
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
            if format == "onnx":
                torch.onnx.export(
                    scorer,
                    (example,),
                    str(partial),
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    opset_version=ONNX_OPSET,
                    dynamo=False,
                )
            else:
                torch.jit.save(torch.jit.trace(scorer, (example,), check_trace=False), str(partial))
        write_atomically(path, partial.read_bytes())
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); choose a writable --out") from None
    finally:
        partial.unlink(missing_ok=True)
    log.info("exported the %d x %d px tile scorer (batch %d, %s) to %s", size, size, batch_size, format, path)
    return path


def check_export(
    trained: TrainedModel,
    path: str | Path,
    *,
    format: ExportFormat = "onnx",
    normalisation: Normalisation = "median",
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Max abs difference of each output between the exported file and the PyTorch scorer on one
    batch of random tiles (ONNX: the batch size stored in the file; TorchScript: `batch_size`,
    the one it was exported with)."""
    scorer = _cpu_scorer(trained, normalisation)
    size = scorer.size_px
    if format == "onnx":
        _require("onnxruntime")
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        batch = session.get_inputs()[0].shape[0]
        tiles = _random_tiles(batch, size, seed)
        exported = session.run(list(OUTPUT_NAMES), {INPUT_NAME: tiles.numpy()})
    else:
        module = torch.jit.load(str(path), map_location="cpu")
        tiles = _random_tiles(batch_size, size, seed)  # a trace keeps the batch it saw
        with torch.inference_mode():
            exported = [t.numpy() for t in module(tiles)]
    with torch.inference_mode():
        expected = [t.numpy() for t in scorer(tiles)]
    return {
        name: float(np.abs(np.asarray(got, np.float64) - want).max())
        for name, got, want in zip(OUTPUT_NAMES, exported, expected)
    }


def _cpu_scorer(trained: TrainedModel, normalisation: Normalisation) -> TileScorer:
    if next(trained.model.parameters()).device.type != "cpu":
        raise ConfigError("export a model loaded on the CPU (load_trained(run, 'cpu'))")
    return TileScorer(trained, normalisation=normalisation).eval()


def _random_tiles(batch: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"ONNX export needs the {module} package; install it with: pip install 'wsi-haloae[export]'"
        )
