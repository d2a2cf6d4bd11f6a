"""Fixtures shared by every test module: synthetic slides, the real test data, broken files, and
the `gpu` marker (tests marked `@pytest.mark.gpu` run only where CUDA is available)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wsi_haloae.slides.synthetic import SyntheticSlide, write_synthetic_slide

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CMU_SLIDE = "CMU-1-Small-Region.svs"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch  # only when a gpu test was collected: most test runs never pay for the import

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
    CPU results depend on the thread count, so runs compared byte for byte must share it, and on a
    few shared cores one thread is the fastest."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_slide_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., SyntheticSlide]:
    """`make(width_px=2048, height_px=1536, **kwargs)`: a synthetic slide written by
    `write_synthetic_slide` under a session temp folder, written once per distinct arguments."""
    folder = tmp_path_factory.mktemp("synthetic")
    written: dict[tuple[Any, ...], SyntheticSlide] = {}

    def make(width_px: int = 2048, height_px: int = 1536, **kwargs: Any) -> SyntheticSlide:
        key = (width_px, height_px, tuple(sorted(kwargs.items())))
        if key not in written:
            path = folder / f"synthetic_{len(written)}_{width_px}x{height_px}.tiff"
            written[key] = write_synthetic_slide(path, width_px, height_px, **kwargs)
        return written[key]

    return make


@pytest.fixture(scope="session")
def small_slide(synthetic_slide_factory: Callable[..., SyntheticSlide]) -> SyntheticSlide:
    """2048 × 1536 px at 0.5 µm/px, four tissue blobs (2 × 2 grid), three anomalies (one of each
    kind), seed 0; three levels (2048, 1024, 512 px wide)."""
    return synthetic_slide_factory(2048, 1536, mpp_um=0.5, tissue="blobs", anomalies=3, seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real test data (`../shared/data`); skips when this checkout has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cmu_slide(shared_data: Path) -> Path:
    """CMU-1-Small-Region.svs: a real Aperio slide, 2220 × 2967 px at 0.499 µm/px, one level."""
    path = shared_data / CMU_SLIDE
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def broken_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of files that are not usable slides:

    - `not_a_slide.png`: a plain 64 × 64 PNG image;
    - `text.txt`: a text file;
    - `truncated.svs`: the first 30 % of the bytes of the CMU slide (of a synthetic TIFF when
      the real data is absent);
    - `no_mpp.tiff`: a valid tiled pyramidal slide (1024 × 768 px, tissue everywhere) without
      resolution tags.
    """
    folder = tmp_path_factory.mktemp("broken")
    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    Image.fromarray(gradient).save(folder / "not_a_slide.png")
    (folder / "text.txt").write_text("This is a text file, not a slide.\n")
    source = SHARED_DATA / CMU_SLIDE
    if not source.is_file():
        source_folder = tmp_path_factory.mktemp("broken_source")
        source = write_synthetic_slide(source_folder / "source.tiff", 2048, 2048, tissue="full").path
    data = source.read_bytes()
    (folder / "truncated.svs").write_bytes(data[: int(len(data) * 0.3)])
    write_synthetic_slide(folder / "no_mpp.tiff", 1024, 768, mpp_um=None, tissue="full")
    return folder
