"""Stain normalisation (Macenko, Reinhard): a stain-shifted tile is mapped back close to the
reference on optical-density statistics, the transform is deterministic, and it round-trips
through the model file; the synthetic writer's stain shift keeps the tissue and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wsi_haloae.config import TrainConfig, load_config, replace
from wsi_haloae.errors import CheckpointError
from wsi_haloae.model.haloae import HaloAE
from wsi_haloae.model.stain import (
    StainNormaliser,
    fit_stain_normaliser,
    macenko_stains,
    masked_quantile,
    optical_density,
    rgb_to_lab,
    stained_pixels,
)
from wsi_haloae.slides.synthetic import anomaly_mask, plan_synthetic_slide, render_region
from wsi_haloae.slides.tissue import tile_tissue
from wsi_haloae.training.checkpoint import load_trained, save_trained

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
SIZE = 64
SHIFT = 0.5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiles(count: int = 12) -> torch.Tensor:
    """(count, 3, SIZE, SIZE) tiles, nearly all tissue, from one synthetic tissue blob."""
    slide = plan_synthetic_slide("s.tiff", 4096, 4096, seed=1)
    min_x, min_y, max_x, max_y = slide.tissue_shapes[0].polygon.bounds
    rng = np.random.default_rng(3)
    tiles = []
    while len(tiles) < count:
        x, y = rng.uniform(min_x, max_x - SIZE), rng.uniform(min_y, max_y - SIZE)
        tile = render_region(slide, int(x), int(y), (SIZE, SIZE))
        if tile_tissue(tile[None], 4).mean() > 0.9:
            tiles.append(tile)
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def tiles() -> tuple[torch.Tensor, torch.Tensor]:
    reference = _tiles()
    return reference, _tiles_like(reference)


def _tiles_like(reference: torch.Tensor) -> torch.Tensor:
    """The reference tiles restained: the same pixels through the writer's stain shift."""
    from wsi_haloae.slides.synthetic import _restain

    rgb = reference.permute(0, 2, 3, 1).numpy() * 255
    shifted = np.clip(np.stack([_restain(t, SHIFT) for t in rgb]) + 0.5, 0, 255).astype(np.uint8)
    return torch.from_numpy(shifted).permute(0, 3, 1, 2).float() / 255


def _od_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per tile: the mean OD of the stained pixels (3) and the Macenko H and E vectors (6)."""
    od = optical_density(images.double().flatten(2))
    stained = stained_pixels(od)
    mean = (od * stained[:, None]).sum(2) / stained.sum(1, keepdim=True)
    stains, _ = macenko_stains(od, stained)
    return torch.cat([mean, stains.flatten(1)], dim=1)


def test_the_writer_shift_keeps_tissue_and_anomalies_and_is_off_by_default() -> None:
    plain = plan_synthetic_slide("s.tiff", 4096, 4096, anomalies=3, seed=4)
    zero = plan_synthetic_slide("s.tiff", 4096, 4096, anomalies=3, seed=4, stain_shift=0.0)
    shifted = plan_synthetic_slide("s.tiff", 4096, 4096, anomalies=3, seed=4, stain_shift=SHIFT)
    x, y = (int(v) for v in shifted.anomalies[0].polygon.centroid.coords[0])
    box = (x - 300, y - 300)
    np.testing.assert_array_equal(
        render_region(plain, *box, (256, 256)), render_region(zero, *box, (256, 256))
    )
    before, after = render_region(plain, *box, (256, 256)), render_region(shifted, *box, (256, 256))
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 8  # other colours ...
    np.testing.assert_array_equal(anomaly_mask(plain, *box, 256), anomaly_mask(shifted, *box, 256))
    # ... the same tissue (the tissue rule sees it the same, up to a few edge pixels)
    assert (tile_tissue(before[None], 4) != tile_tissue(after[None], 4)).mean() < 0.02


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_stain_shifted_tile_is_mapped_back_to_the_reference(tiles, method: str) -> None:
    reference, shifted = tiles
    normaliser = fit_stain_normaliser(method, reference)
    target = _od_statistics(normaliser(reference))
    before = (_od_statistics(shifted) - target).abs().mean(dim=0)
    after = (_od_statistics(normaliser(shifted)) - target).abs().mean(dim=0)
    print(method, before.numpy().round(3), after.numpy().round(3))
    # mean optical density of the stained pixels (measured: 0.42 -> 0.05 summed over R, G, B
    # with Macenko)
    if method == "macenko":  # mean OD and the stain vectors themselves come back
        assert after[:3].sum() < 0.3 * before[:3].sum()
        assert after[3:].sum() < 0.3 * before[3:].sum()
    else:
        # Reinhard matches per-channel lαβ statistics, a diagonal map that cannot undo a change of
        # stain vectors (a full 3 x 3 map in OD): mean OD improves, less (measured 0.56 -> 0.43) ...
        assert after[:3].sum() < 0.85 * before[:3].sum()
        # ... while its own statistics, over the stained pixels, come out on the target
        lab = rgb_to_lab(normaliser(shifted).double().flatten(2))
        stained = stained_pixels(optical_density(shifted.double().flatten(2)))
        for tile in range(len(shifted)):
            values = lab[tile][:, stained[tile]]
            torch.testing.assert_close(values.mean(1).float(), normaliser.lab_mean, atol=2e-3, rtol=0)
    # the normalised reference stays close to itself
    assert (normaliser(reference) - reference).abs().mean() < 0.03


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_is_deterministic_and_leaves_glass_tiles_alone(tiles, method: str) -> None:
    reference, shifted = tiles
    first, second = fit_stain_normaliser(method, reference), fit_stain_normaliser(method, reference.clone())
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    assert torch.equal(first(shifted), first(shifted.clone()))
    # a batch gives each tile what it gets alone
    torch.testing.assert_close(first(shifted)[3:4], first(shifted[3:4]), rtol=0, atol=1e-6)
    glass = torch.full((2, 3, SIZE, SIZE), 0.94)
    assert torch.equal(first(glass), glass)


def test_masked_quantile_matches_numpy() -> None:
    values = torch.tensor([[5.0, 1.0, 3.0, 9.0], [2.0, 8.0, 4.0, 6.0]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    expected = [np.quantile([5, 1, 3], 0.99), np.quantile([8, 4, 6], 0.99)]
    torch.testing.assert_close(
        masked_quantile(values, mask, 0.99), torch.tensor(expected, dtype=torch.float32)
    )


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_the_normaliser_round_trips_through_the_model_file(tiles, method: str, tmp_path: Path) -> None:
    reference, shifted = tiles
    normaliser = fit_stain_normaliser(method, reference)
    cfg = replace(load_config(TINY, TrainConfig), stain_normalisation=method)
    torch.manual_seed(0)
    model = HaloAE(cfg.model).eval()
    maps = {name: torch.rand(SIZE, SIZE) for name in ("mean", "median", "tissue_mean", "tissue_median")}
    scores = {name: torch.arange(5.0) for name in maps}
    save_trained(tmp_path / "model.safetensors", model, cfg, maps, scores, stain=normaliser)
    loaded = load_trained(tmp_path / "model.safetensors")
    assert isinstance(loaded.stain, StainNormaliser) and loaded.stain.method == method
    assert torch.equal(loaded.stain(shifted), normaliser(shifted))
    # a file whose config names a method but holds no stain tensors is refused, with the fix
    bare = replace(cfg, stain_normalisation="none")
    save_trained(tmp_path / "bare.safetensors", model, bare, maps, scores)
    tensors = load_file(tmp_path / "bare.safetensors")
    with safe_open(str(tmp_path / "bare.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    stored = json.loads(metadata["config"])
    stored["stain_normalisation"] = method
    save_file(tensors, tmp_path / "bad.safetensors", metadata={**metadata, "config": json.dumps(stored)})
    with pytest.raises(CheckpointError, match="stain normalisation cannot be read"):
        load_trained(tmp_path / "bad.safetensors")
