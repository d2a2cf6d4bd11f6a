"""The `tile` job on a full disk (writers that raise ENOSPC at their k-th write), its free-space
check, the fingerprint that keeps a resumed run from mixing tile sizes, and messages that name
the real cause: a grayscale slide, a tiny thumbnail, a slide listed twice, a file where a folder
goes, tifffile's own log lines."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wsi_haloae import files
from wsi_haloae.cli import main
from wsi_haloae.errors import ConfigError, OutputError
from wsi_haloae.files import check_unique_stems, ensure_writable_dir
from wsi_haloae.slides.slide import open_slide
from wsi_haloae.slides.synthetic import SyntheticSlide
from wsi_haloae.slides.tiles import FINGERPRINT_NAME, MANIFEST_NAME, TileConfig, write_tiles
from wsi_haloae.slides.tissue import detect_tissue

CFG = TileConfig(mpp_um=2.0, tile_size_px=64, thumbnail_px=512)
_original_open_temp = files._open_temp


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_atomic_write(monkeypatch: pytest.MonkeyPatch, k: int, exc: BaseException) -> list[Path]:
    calls: list[Path] = []

    def open_temp(path: Path):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == k:
            raise exc
        return _original_open_temp(path)

    monkeypatch.setattr(files, "_open_temp", open_temp)
    return calls


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(small_slide: SyntheticSlide, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiles_done")
    write_tiles([small_slide.path], out, CFG)
    return out / small_slide.path.stem


@pytest.mark.parametrize("k", [2, 7])
def test_tile_disk_full_in_the_tile_writer_then_rerun_is_identical(
    small_slide: SyntheticSlide, uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    calls = _fail_atomic_write(monkeypatch, k, _enospc())
    with pytest.raises(OutputError) as raised:
        write_tiles([small_slide.path], tmp_path, CFG)
    folder = tmp_path / small_slide.path.stem
    message = str(raised.value)
    assert len(calls) >= k and "No space left on device" in message and str(folder) in message
    assert "free in" in message and "free space" in message and "\n" not in message
    assert not (folder / MANIFEST_NAME).exists()  # never presented as complete
    monkeypatch.undo()
    write_tiles([small_slide.path], tmp_path, CFG)
    assert _folder_bytes(folder) == _folder_bytes(uninterrupted)


def test_tile_disk_full_in_pils_png_writer_is_one_line(
    small_slide: SyntheticSlide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Image.Image.save

    def save(self, fp, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(fp, (str, Path)) and Path(fp).name == "thumbnail.png":
            raise _enospc()
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    result = CliRunner().invoke(
        main, ["tile", str(small_slide.path), "--out", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "No space left on device" in line and "free in" in line
    assert not list(tmp_path.rglob(MANIFEST_NAME))


def test_tile_checks_free_space_before_writing(
    small_slide: SyntheticSlide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "free_bytes", lambda path: 4096)
    with pytest.raises(OutputError, match=r"the \d+ tiles of .* need|needs about .* has 4.0 KiB free"):
        write_tiles([small_slide.path], tmp_path, CFG)
    assert not list(tmp_path.rglob("tiles/*.png"))


@pytest.mark.parametrize("legacy", [False, True], ids=["fingerprint", "folder without one"])
def test_a_resumed_tile_run_with_other_settings_is_refused_not_mixed(
    small_slide: SyntheticSlide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    _fail_atomic_write(monkeypatch, 6, KeyboardInterrupt())  # Ctrl-C after a few 64-px tiles
    with pytest.raises(KeyboardInterrupt):
        write_tiles([small_slide.path], tmp_path, TileConfig(mpp_um=1.0, tile_size_px=64))
    monkeypatch.undo()
    folder = tmp_path / small_slide.path.stem
    assert list((folder / "tiles").glob("*.png")) and not (folder / MANIFEST_NAME).exists()
    if legacy:
        (folder / FINGERPRINT_NAME).unlink()
    before = _folder_bytes(folder)
    # the same footprint (128 level-0 px) in 128-px tiles: the same file names
    result = CliRunner().invoke(
        main,
        [
            "tile",
            str(small_slide.path),
            "--out",
            str(tmp_path),
            "--tile-size",
            "128",
            "--mpp",
            "0.5",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "holds unfinished tiles" in result.stderr and "64" in result.stderr and "128" in result.stderr
    assert _folder_bytes(folder) == before and not (folder / MANIFEST_NAME).exists()
    # the same settings resume
    again = CliRunner().invoke(
        main,
        [
            "tile",
            str(small_slide.path),
            "--out",
            str(tmp_path),
            "--tile-size",
            "64",
            "--mpp",
            "1",
            "--no-progress",
        ],
    )
    assert again.exit_code == 0, again.output
    sizes = {Image.open(p).size for p in (folder / "tiles").glob("*.png")}
    assert sizes == {(64, 64)}


def _grey_slide(path: Path) -> Path:
    import tifffile

    yy, xx = np.mgrid[0:768, 0:768]
    grey = np.where((yy - 384) ** 2 + (xx - 384) ** 2 < 250**2, 120, 235).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path


def test_a_grayscale_slide_is_told_it_has_no_colour(tmp_path: Path) -> None:
    slide = _grey_slide(tmp_path / "grey.tiff")
    result = CliRunner().invoke(main, ["tile", str(slide), "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "grey.tiff" in line and "has no colour" in line and "--min-tissue 0" in line
    with open_slide(slide) as opened:
        assert detect_tissue(opened, max_size_px=256).colourless


def test_a_blank_slide_is_not_called_colourless(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "blank.tiff"
    tifffile.imwrite(path, np.full((512, 512, 3), 245, np.uint8), tile=(256, 256), photometric="rgb")
    with open_slide(path) as opened:
        assert not detect_tissue(opened, max_size_px=256).colourless


def test_thumbnail_px_0_is_a_setting_error_not_a_corrupt_slide(
    small_slide: SyntheticSlide, tmp_path: Path
) -> None:
    with (
        open_slide(small_slide.path) as slide,
        pytest.raises(ConfigError, match="thumbnail_px 0 is too small"),
    ):
        detect_tissue(slide, max_size_px=0)
    config = tmp_path / "heatmap.yaml"
    config.write_text("thumbnail_px: 0\n")
    result = CliRunner().invoke(
        main,
        [
            "heatmap",
            str(small_slide.path),
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path),
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 2 and "heatmap.yaml: 'thumbnail_px' is 0, outside its range" in result.stderr
    assert "corrupt" not in result.stderr


def test_chunk_px_0_names_the_key_and_the_file(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    config = tmp_path / "heatmap.yaml"
    config.write_text("chunk_px: 0\n")
    result = CliRunner().invoke(
        main,
        [
            "heatmap",
            str(small_slide.path),
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path),
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 2 and f"{config}: 'chunk_px' is 0, outside its range [1, inf)" in result.stderr
    assert "band height" not in result.stderr


def test_the_same_slide_twice_and_a_name_clash_are_told_apart(tmp_path: Path) -> None:
    a = tmp_path / "x" / "s.svs"
    with pytest.raises(ConfigError, match=r"slide .*s\.svs is listed twice; list each slide once"):
        check_unique_stems([a, a])
    with pytest.raises(ConfigError, match="share the name 's'"):
        check_unique_stems([a, tmp_path / "y" / "s.svs"])


def test_a_file_where_a_folder_goes_is_named(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("")
    with pytest.raises(
        OutputError, match=rf"{blocker} is a file, not a folder; move the file away"
    ) as raised:
        ensure_writable_dir(blocker / "deeper")
    assert "File exists" not in str(raised.value)
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / small_slide.path.stem).write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_tiles([small_slide.path], tmp_path / "tiles", CFG)


def test_nan_and_inf_float_options_are_refused(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    for args, key in (
        (["tile", str(small_slide.path), "--out", str(tmp_path), "--mpp", "nan"], "'mpp_um' is nan"),
        (
            ["tile", str(small_slide.path), "--out", str(tmp_path), "--min-tissue", "inf"],
            "'min_tissue' is inf",
        ),
        (["make-slide", str(tmp_path / "s.tiff"), "--size", "64x64", "--mpp", "nan"], "--mpp is nan"),
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and key in result.stderr and "finite" in result.stderr, result.output


def test_tifffile_log_lines_do_not_precede_our_error(small_slide: SyntheticSlide, tmp_path: Path) -> None:
    """A real process (the CLI's logging setup is what is tested): tifffile used to log
    "ERROR tifffile: ... invalid page offset" before our line."""
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(small_slide.path.read_bytes()[:30_000])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_haloae.cli",
            "tile",
            str(truncated),
            "--out",
            str(tmp_path / "o"),
            "--backend",
            "tiffslide",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 2, result.stderr
    lines = [
        line for line in result.stderr.strip().splitlines() if "tifffile" in line or "error" in line.lower()
    ]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "truncated.tiff" in lines[0], result.stderr


def test_a_cohort_ends_without_dask_warnings_or_leaked_semaphores(
    synthetic_slide_factory, tmp_path: Path
) -> None:
    """A real process: the resource tracker's "leaked semaphore" UserWarning and the nanny's
    "still alive after 4.0 seconds, killing" are printed at interpreter and cluster shutdown."""
    slides = [str(synthetic_slide_factory(1024, 1024, anomalies=0, seed=seed).path) for seed in (21, 22)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_haloae.cli",
            "tile",
            *slides,
            "--out",
            str(tmp_path / "o"),
            "--mpp",
            "2",
            "--tile-size",
            "64",
            "--dask-workers",
            "2",
            "--dashboard",
            ":0",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 0, result.stderr
    noise = [line for line in result.stderr.splitlines() if " INFO " not in line and line.strip()]
    assert noise == [], result.stderr
    assert "2 slides:" in result.stdout
