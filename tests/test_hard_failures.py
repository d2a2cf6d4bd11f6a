"""Hard failures end in one line, and run folders never lie: a full disk (simulated by writers
that raise ENOSPC at their k-th write, and a real tmpfs where one can be mounted), crafted model
files, two trainings into one folder, a refused heatmap rerun, non-finite thresholds, an empty
run config, tiles of mixed sizes."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from wsi_haloae import files
from wsi_haloae.cli import main
from wsi_haloae.config import HeatmapConfig, TrainConfig, load_config
from wsi_haloae.errors import CheckpointError, DataError, OutputError
from wsi_haloae.files import output_lock
from wsi_haloae.heatmaps.heatmap import SCORES_NAME, STORE_NAME, SUMMARY_NAME, TILES_NAME, heatmap_slide
from wsi_haloae.slides.synthetic import SyntheticSlide
from wsi_haloae.slides.tiles import TileConfig, write_tiles
from wsi_haloae.training.checkpoint import MODEL_FILE, TrainedModel, load_train_state, load_trained
from wsi_haloae.training.train import CHECKPOINT, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# 2 µm/px tiles of 64 px on the 2048 x 1536 slide: an 8 x 6 grid, a 96 x 128 heatmap in bands of 8 rows
CFG = HeatmapConfig(
    mpp_um=2.0,  # coarser than the model (1 µm/px): a small heatmap, asked for explicitly
    allow_mpp_mismatch=True,
    workers=0,
    batch_size=4,
    chunk_px=8,
    min_region_um2=500.0,
    device="cpu",
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_original_open_temp = files._open_temp


def _tiny(epochs: int = 1) -> TrainConfig:
    return dataclasses.replace(load_config(TINY, TrainConfig), epochs=epochs, samples_per_epoch=4)


@pytest.fixture(scope="module")
def tiles(
    synthetic_slide_factory: Callable[..., SyntheticSlide], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    normal = synthetic_slide_factory(2048, 1536, mpp_um=0.5, tissue="blobs", anomalies=0, seed=5)
    folder = tmp_path_factory.mktemp("hard_tiles")
    write_tiles([normal.path], folder, TileConfig(mpp_um=1.0, tile_size_px=64, max_tiles=8))
    return folder


@pytest.fixture(scope="module")
def run_dir(tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(_tiny(2), tiles, tmp_path_factory.mktemp("hard_run") / "run", progress=False)


@pytest.fixture(scope="module")
def trained(run_dir: Path) -> TrainedModel:
    return load_trained(run_dir)


@pytest.fixture(scope="module")
def finished(
    small_slide: SyntheticSlide, trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An uninterrupted heatmap run: the reference outputs."""
    return heatmap_slide(small_slide.path, trained, tmp_path_factory.mktemp("hard_done"), CFG).out_dir


def _fail_at(k: int, exc: BaseException, calls: list[int]) -> Callable[[], None]:
    def tick() -> None:
        calls.append(1)
        if len(calls) == k:
            raise exc

    return tick


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _atomic_writes_fail_at(monkeypatch: pytest.MonkeyPatch, k: int, exc: BaseException) -> list[int]:
    """`files.write_atomically` (every atomic output) fails at its k-th file, as a full disk would."""
    calls: list[int] = []
    tick = _fail_at(k, exc, calls)
    original = files._open_temp

    def open_temp(path: Path):  # type: ignore[no-untyped-def]
        tick()
        return original(path)

    monkeypatch.setattr(files, "_open_temp", open_temp)
    return calls


def _files_of(folder: Path, skip: tuple[str, ...] = (".lock",)) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _assert_same_heatmap(expected: Path, got: Path) -> None:
    for array in ("0", "labels/tissue/0"):
        np.testing.assert_array_equal(
            zarr.open_group(expected / STORE_NAME, mode="r")[array][:],
            zarr.open_group(got / STORE_NAME, mode="r")[array][:],
        )
    for name in (TILES_NAME, "regions.geojson", "overlay.png"):
        assert (expected / name).read_bytes() == (got / name).read_bytes(), name
    with np.load(expected / SCORES_NAME) as a, np.load(got / SCORES_NAME) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def _assert_same_model(a: Path, b: Path) -> None:
    """Same tensors and metadata (safetensors orders its metadata map at random, so not the bytes)."""
    with safe_open(str(a), framework="pt") as left, safe_open(str(b), framework="pt") as right:
        assert left.metadata() == right.metadata() and sorted(left.keys()) == sorted(right.keys())
        for key in left.keys():  # noqa: SIM118
            assert torch.equal(left.get_tensor(key), right.get_tensor(key)), key


def _assert_disk_full_line(exc: BaseException, folder: Path) -> None:
    message = str(exc)
    assert "No space left on device" in message and "free in" in message and str(folder) in message
    assert "free space" in message and "rerun" in message and "\n" not in message


# ---------------------------------------------------------------- disk full: heatmap


@pytest.mark.parametrize("k", [2, 30])
def test_heatmap_disk_full_in_a_zarr_chunk_write_then_rerun_is_identical(
    small_slide: SyntheticSlide,
    trained: TrainedModel,
    finished: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    k: int,
) -> None:
    calls: list[int] = []
    tick = _fail_at(k, _enospc(), calls)
    original = zarr.storage.LocalStore.set

    async def set_or_fail(self, key, value):  # type: ignore[no-untyped-def]
        if key.split("/")[-1].startswith("c") or "/c/" in key:  # chunk files, not metadata
            tick()
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_or_fail)
    with pytest.raises(OutputError) as raised:
        heatmap_slide(small_slide.path, trained, tmp_path, CFG)
    folder = tmp_path / small_slide.path.stem
    _assert_disk_full_line(raised.value, folder)
    assert not (folder / SUMMARY_NAME).exists()  # never presented as complete
    monkeypatch.undo()
    result = heatmap_slide(small_slide.path, trained, tmp_path, CFG)
    assert result.computed_tiles > 0
    _assert_same_heatmap(finished, folder)


def test_heatmap_disk_full_in_an_output_file_then_rerun_is_identical(
    small_slide: SyntheticSlide,
    trained: TrainedModel,
    finished: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def open_temp(path: Path):  # type: ignore[no-untyped-def]
        if path.name == TILES_NAME:  # every band is written: the outputs come next
            raise _enospc()
        return _original_open_temp(path)

    monkeypatch.setattr(files, "_open_temp", open_temp)
    with pytest.raises(OutputError, match=rf"{TILES_NAME} .No space left on device"):
        heatmap_slide(small_slide.path, trained, tmp_path, CFG)
    folder = tmp_path / small_slide.path.stem
    assert not (folder / SUMMARY_NAME).exists()
    monkeypatch.undo()
    heatmap_slide(small_slide.path, trained, tmp_path, CFG)
    _assert_same_heatmap(finished, folder)


def test_heatmap_checks_free_space_before_starting(
    small_slide: SyntheticSlide, trained: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "free_bytes", lambda path: 1000)
    with pytest.raises(
        OutputError, match=r"the heatmap of .* needs about .* has 1000 bytes free; free space"
    ):
        heatmap_slide(small_slide.path, trained, tmp_path, CFG)
    assert not (tmp_path / small_slide.path.stem / SUMMARY_NAME).exists()
    assert not list((tmp_path / small_slide.path.stem / STORE_NAME).glob("0/c/*"))


# ---------------------------------------------------------------- disk full: train


def test_train_disk_full_at_the_resume_checkpoint_then_resume_is_identical(
    tiles: Path, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    # atomic writes: config.yaml, metrics (epoch 0), last.pt (epoch 0), metrics (epoch 1), last.pt
    calls = _atomic_writes_fail_at(monkeypatch, 5, _enospc())
    with pytest.raises(OutputError) as raised:
        train(_tiny(2), tiles, out, progress=False)
    assert len(calls) == 5
    _assert_disk_full_line(raised.value, out / "checkpoints")
    assert not (out / MODEL_FILE).exists() and load_train_state(out / CHECKPOINT)["epoch"] == 1
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(files, "_open_temp", _original_open_temp)
    train(_tiny(2), tiles, out, resume=True, progress=False)
    _assert_same_model(out / MODEL_FILE, run_dir / MODEL_FILE)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def test_a_real_torch_save_onto_a_full_disk_is_one_line(
    tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint file's write fails (torch.save straight into the file used to turn this into
    "RuntimeError: [enforce fail at inline_container.cc] unexpected pos")."""

    class FullDisk:
        def __init__(self, handle):  # type: ignore[no-untyped-def]
            self._handle = handle

        def write(self, data):  # type: ignore[no-untyped-def]
            raise _enospc()

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self._handle, name)

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self._handle.close()

    def open_temp(path: Path):  # type: ignore[no-untyped-def]
        handle, name = _original_open_temp(path)
        return (FullDisk(handle), name) if path.name == "last.pt" else (handle, name)

    monkeypatch.setattr(files, "_open_temp", open_temp)
    with pytest.raises(OutputError, match="last.pt .No space left on device"):
        train(_tiny(1), tiles, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT).exists() and not list((tmp_path / "run").rglob("*.tmp"))


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0, reason="mounting a tmpfs needs root on Linux"
)
def test_a_real_3_mb_tmpfs(small_slide: SyntheticSlide, run_dir: Path, tmp_path: Path) -> None:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("mount -t tmpfs failed here (a container without CAP_SYS_ADMIN?)")
    try:
        (mount / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 + 900 * 1024))
        for args in (
            ["tile", str(small_slide.path), "--out", str(mount / "tiles"), "--no-progress"],
            [
                "heatmap",
                str(small_slide.path),
                "--model",
                str(run_dir),
                "--out",
                str(mount / "maps"),
                "--mpp",
                "2",
                "--allow-mpp-mismatch",
                "--device",
                "cpu",
                "--no-progress",
            ],
        ):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 2, result.output
            line = result.stderr.strip().splitlines()[-1]
            assert line.startswith("error: ") and ("No space left" in line or "free space" in line), line
        assert not list(mount.rglob("manifest.csv")) and not list(mount.rglob(SUMMARY_NAME))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ---------------------------------------------------------------- crafted model files


def _craft(run_dir: Path, tmp_path: Path, change: Callable[[dict, dict], None]) -> Path:
    with safe_open(str(run_dir / MODEL_FILE), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    change(tensors, metadata)
    folder = tmp_path / "crafted"
    folder.mkdir()
    save_file(tensors, str(folder / MODEL_FILE), metadata=metadata)
    return folder


def _nan_at(name: str) -> Callable[[dict, dict], None]:
    def change(tensors: dict, metadata: dict) -> None:
        if name == "a weight":
            name_ = next(
                k for k in sorted(tensors) if k.startswith("model.") and tensors[k].is_floating_point()
            )
            return _nan_at(name_)(tensors, metadata)
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan")

    return change


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda t, m: t.__setitem__("train_scores.median", torch.zeros(0)), "train_scores.median holds (0,)"),
        (
            lambda t, m: t.__setitem__("train_scores.mean", torch.zeros(2, 2)),
            "train_scores.mean holds (2, 2)",
        ),
        (lambda t, m: t.__setitem__("median_map", torch.zeros(32, 32)), "median_map is (32, 32)"),
        (_nan_at("median_map"), "median_map holds NaN"),
        (_nan_at("mean_map"), "mean_map holds NaN"),
        (_nan_at("train_scores.mean"), "train_scores.mean holds NaN"),
        (_nan_at("a weight"), "holds NaN"),
    ],
    ids=[
        "empty scores",
        "2-D scores",
        "wrong-shape map",
        "NaN median map",
        "NaN mean map",
        "NaN score",
        "NaN weight",
    ],
)
def test_crafted_model_files_give_the_checkpoint_error(
    run_dir: Path, tmp_path: Path, change: Callable[[dict, dict], None], words: str
) -> None:
    crafted = _craft(run_dir, tmp_path, change)
    with pytest.raises(CheckpointError) as raised:
        load_trained(crafted)
    message = str(raised.value)
    assert words in message and str(crafted / MODEL_FILE) in message and "re-train" in message
    assert "\n" not in message


def test_a_model_storing_percentile_200_says_the_value_comes_from_the_model(
    run_dir: Path, tmp_path: Path
) -> None:
    def change(tensors: dict, metadata: dict) -> None:
        config = json.loads(metadata["config"])
        config["score_percentile"] = 200.0
        metadata["config"] = json.dumps(config)

    crafted = _craft(run_dir, tmp_path, change)
    with pytest.raises(
        CheckpointError, match=r"the config stored in model file .*crafted.*'score_percentile' is 200"
    ):
        load_trained(crafted)


def test_nan_reference_map_is_refused_at_load_not_after_scoring(
    small_slide: SyntheticSlide, run_dir: Path, tmp_path: Path
) -> None:
    crafted = _craft(run_dir, tmp_path, _nan_at("median_map"))
    result = CliRunner().invoke(
        main,
        [
            "heatmap",
            str(small_slide.path),
            "--model",
            str(crafted),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and "median_map holds NaN" in result.stderr
    assert "tile scores are missing" not in result.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["slide", "last.pt", "config.yaml", "other .pt"])
def test_model_pointing_at_a_non_model_file_says_so(
    small_slide: SyntheticSlide, run_dir: Path, tmp_path: Path, kind: str
) -> None:
    other = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, other)
    target = {
        "slide": small_slide.path,
        "last.pt": run_dir / CHECKPOINT,
        "config.yaml": run_dir / "config.yaml",
        "other .pt": other,
    }[kind]
    result = CliRunner().invoke(
        main, ["heatmap", str(small_slide.path), "--model", str(target), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert f"{target} is not a model file" in line and "pass a training run folder" in line
    assert "corrupt" not in line and "re-train" not in line


@pytest.mark.parametrize("content", ["malicious", "random"])
def test_a_malicious_or_random_last_pt_never_quotes_torchs_advice(
    tiles: Path, tmp_path: Path, content: str
) -> None:
    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("this ran",))

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    if content == "malicious":
        torch.save({"format": "x", "payload": Payload()}, out / CHECKPOINT)
    else:
        (out / CHECKPOINT).write_bytes(b"\x80\x02" + bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as raised:
        train(_tiny(1), tiles, out, resume=True, progress=False)
    message = str(raised.value)
    assert "weights_only" not in message and "will likely succeed" not in message and "\n" not in message
    assert "not a wsi-haloae training checkpoint" in message and "not loaded" in message


# ---------------------------------------------------------------- heatmap run folders


def test_a_refused_rerun_leaves_the_finished_folder_byte_identical(
    small_slide: SyntheticSlide, trained: TrainedModel, finished: Path, tmp_path: Path
) -> None:
    folder = tmp_path / finished.name
    shutil.copytree(finished, folder)
    before = _files_of(folder)
    other_model = dataclasses.replace(trained, median_map=trained.median_map + 1.0)
    with pytest.raises(OutputError, match="different fingerprint"):
        heatmap_slide(small_slide.path, other_model, tmp_path, CFG)
    assert _files_of(folder) == before  # summary.json included: still finished
    again = heatmap_slide(small_slide.path, trained, tmp_path, CFG)
    assert again.computed_tiles == 0 and _files_of(folder) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_thresholds_are_refused(
    small_slide: SyntheticSlide, run_dir: Path, tmp_path: Path, value: str
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "heatmap",
            str(small_slide.path),
            "--model",
            str(run_dir),
            "--out",
            str(tmp_path / "o"),
            "--threshold",
            value,
        ],
    )
    assert result.exit_code == 2, result.output
    assert "'threshold' is" in result.stderr and "finite number" in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_slide_listed_twice_is_told_so(
    small_slide: SyntheticSlide, run_dir: Path, tmp_path: Path
) -> None:
    path = str(small_slide.path)
    result = CliRunner().invoke(
        main,
        ["heatmap", path, path, "--model", str(run_dir), "--out", str(tmp_path / "o"), "--scheduler", "none"],
    )
    assert result.exit_code == 2 and "is listed twice; list each slide once" in result.stderr
    assert "separate --out" not in result.stderr


def test_out_that_is_a_file_is_named_as_such(
    small_slide: SyntheticSlide, run_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "maps" / small_slide.path.stem  # where the slide's folder goes
    blocker.parent.mkdir()
    blocker.write_text("not a folder")
    result = CliRunner().invoke(
        main, ["heatmap", str(small_slide.path), "--model", str(run_dir), "--out", str(blocker.parent)]
    )
    assert result.exit_code == 2, result.output
    assert f"{blocker} is a file, not a folder" in result.stderr and "File exists" not in result.stderr


# ---------------------------------------------------------------- training run folders


def test_a_second_training_into_a_locked_folder_is_refused_before_writing(
    tiles: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with (
        output_lock(out),
        pytest.raises(OutputError, match=rf"another run is writing {out} \(pid {os.getpid()}\)"),
    ):
        train(_tiny(1), tiles, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no config.yaml, metrics or checkpoint


HOLD_LOCK = """
import sys
from wsi_haloae.files import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_two_concurrent_cli_trainings_one_is_refused(tiles: Path, tmp_path: Path) -> None:
    """The second `train` into a folder another process holds exits 2 with the holder's pid."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD_LOCK,
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(
            main, ["train", "--tiles", str(tiles), "--out", str(out), "--config", str(TINY), "--no-progress"]
        )
        assert result.exit_code == 2 and f"(pid {holder.pid})" in result.stderr, result.output
        assert not (out / "config.yaml").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.communicate("")


def test_resume_with_an_empty_run_config_is_refused(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("")
    result = CliRunner().invoke(main, ["train", "--tiles", str(tiles), "--out", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    assert f"{out / 'config.yaml'} is empty" in result.stderr and "--config" in result.stderr
    assert not (out / "checkpoints").exists()


def test_the_run_config_is_written_atomically(
    tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _atomic_writes_fail_at(monkeypatch, 1, _enospc())  # the first atomic write of a run: config.yaml
    with pytest.raises(OutputError, match="config.yaml .No space left"):
        train(_tiny(1), tiles, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()  # absent, never empty


def test_train_refuses_tiles_whose_size_differs_from_the_manifest(tiles: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "tiles"
    shutil.copytree(tiles, mixed)
    victim = min(mixed.rglob("tiles/*.png"))
    Image.new("RGB", (128, 128), (200, 100, 150)).save(victim)
    with pytest.raises(DataError, match=r"is 128 x 128 px but .*manifest.csv says 64 px"):
        train(_tiny(1), mixed, tmp_path / "run", progress=False)


def test_colour_jitter_below_zero_is_refused_before_training(tiles: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(TINY.read_text() + "colour_jitter: -5\n")
    result = CliRunner().invoke(
        main, ["train", "--tiles", str(tiles), "--out", str(tmp_path / "run"), "--config", str(config)]
    )
    assert result.exit_code == 2 and "'colour_jitter' is -5.0, outside its range [0, 0.5]" in result.stderr
    assert not (tmp_path / "run").exists()


def test_another_thread_count_changes_scores_only_within_the_documented_tolerance(
    small_slide: SyntheticSlide, trained: TrainedModel, finished: Path, tmp_path: Path
) -> None:
    """docs/scaling.md: a cohort worker's thread count differs from a one-by-one run's; the
    scores then agree within 1e-5 relative plus 1e-5 of the largest score."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        other = heatmap_slide(small_slide.path, trained, tmp_path, CFG).out_dir
    finally:
        torch.set_num_threads(threads)
    with np.load(finished / SCORES_NAME) as a, np.load(other / SCORES_NAME) as b:
        for key in ("score_mean", "score_max"):
            scale = float(np.abs(a[key]).max())
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_array_equal(a["x_l0"], b["x_l0"])
