"""The viewer in a real headless browser (Debian's chromium + chromedriver through selenium): the
page loads, the slide and heatmap tiles arrive, and a screenshot shows the heatmap's colour over
the hot box of tissue and the slide's own H&E elsewhere, at the places the level-0 coordinates say.

Skips, with the reason, when chromium, chromedriver or selenium is missing (`make browser`
installs the first two with apt where it can). Set WSI_HALOAE_SCREENSHOT=path to keep the shot.
"""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest
from outputs_fixture import HIGH, HOT, PX_TO_L0, THRESHOLD, make_output_folder
from PIL import Image

from wsi_haloae.slides.slide import open_slide
from wsi_haloae.viewer.server import make_server, start_in_thread

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1000, 800)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium on PATH (make browser: apt-get install chromium)"
    ),
    pytest.mark.skipif(
        CHROMEDRIVER is None, reason="no chromedriver on PATH (make browser: apt-get install chromium-driver)"
    ),
]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(small_slide, tmp_path_factory):
    folder = make_output_folder(tmp_path_factory.mktemp("browser"), small_slide.path)
    server = make_server(folder, port=0)
    start_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()
    server.data.close()


def _wait(driver, script: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}")


def test_page_shows_the_heatmap_over_the_tissue(browser, server, small_slide) -> None:
    browser.get(server.url)
    _wait(browser, "return window.wsiViewer && window.wsiViewer.ready")
    _wait(browser, "const s = window.wsiViewer; return s.loaded.slide && s.loaded.heatmap")
    time.sleep(0.5)  # the last tiles' draw and OpenSeadragon's fade-in
    _wait(browser, "const s = window.wsiViewer; return s.loaded.slide && s.loaded.heatmap")
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")).astype(int)
    if os.environ.get("WSI_HALOAE_SCREENSHOT"):
        Image.fromarray(shot.astype(np.uint8)).save(os.environ["WSI_HALOAE_SCREENSHOT"])
    osd_top = browser.execute_script("return document.getElementById('osd').getBoundingClientRect().top")

    def screen(x_l0: float, y_l0: float) -> tuple[int, int]:
        x, y = browser.execute_script(f"return window.wsiViewer.imageToElement({x_l0}, {y_l0})")
        return round(y + osd_top), round(x)

    data = server.data
    group_mask = data.heatmap._whole_level(0)[1]
    colour = data.colours(THRESHOLD).rgba(np.array([HIGH]))[0, :3].astype(int)
    opacity = 0.6
    rows, cols = HOT
    # heatmap pixels of the hot box on tissue, and low-score tissue pixels far from it
    hot = [
        (r, c)
        for r in range(rows.start + 2, rows.stop - 2, 3)
        for c in range(cols.start + 2, cols.stop - 2, 3)
        if group_mask[r, c]
    ]
    normal = [
        (r, c)
        for r in range(50, 90, 4)
        for c in range(70, 120, 4)
        if group_mask[r - 1 : r + 2, c - 1 : c + 2].all()
    ]
    assert len(hot) > 10 and len(normal) > 10
    (x_a, _), (x_b, _) = screen(0, 0)[::-1], screen(1000, 0)[::-1]
    scale = (x_b - x_a) / 1000  # screen px per level-0 px
    half = 3  # compare 7 x 7 screen px with the level-0 area they show
    side_l0 = max(1, round((2 * half + 1) / scale))

    def slide_mean(slide, x: float, y: float) -> np.ndarray:
        return (
            slide.read_region(round(x - side_l0 / 2), round(y - side_l0 / 2), 0, (side_l0, side_l0))
            .reshape(-1, 3)
            .mean(axis=0)
        )

    def shot_mean(sy: int, sx: int) -> np.ndarray:
        return shot[sy - half : sy + half + 1, sx - half : sx + half + 1].reshape(-1, 3).mean(axis=0)

    with open_slide(small_slide.path) as slide:
        errors_hot, errors_normal = [], []
        for r, c in hot:
            x, y = (c + 0.5) * PX_TO_L0, (r + 0.5) * PX_TO_L0
            want = (1 - opacity) * slide_mean(slide, x, y) + opacity * colour
            errors_hot.append(np.abs(shot_mean(*screen(x, y)) - want).max())
        for r, c in normal:
            x, y = (c + 0.5) * PX_TO_L0, (r + 0.5) * PX_TO_L0
            got, under = shot_mean(*screen(x, y)), slide_mean(slide, x, y)
            errors_normal.append(np.abs(got - under).max())  # untinted H&E
            assert np.abs(got - colour).sum() > 100
    # colour differences, 0-255: the blend over the hot box, the slide alone elsewhere
    print(f"colour error, hot box: median {np.median(errors_hot):.1f} max {max(errors_hot):.1f}")
    print(f"colour error, normal tissue: median {np.median(errors_normal):.1f} max {max(errors_normal):.1f}")
    assert np.median(errors_hot) < 12 and max(errors_hot) < 30, errors_hot
    assert np.median(errors_normal) < 12 and max(errors_normal) < 30, errors_normal

    # hovering reads the score back
    from selenium.webdriver.common.action_chains import ActionChains

    r, c = hot[len(hot) // 2]
    sy, sx = screen((c + 0.5) * PX_TO_L0, (r + 0.5) * PX_TO_L0)
    canvas = browser.find_element("css selector", "#osd .openseadragon-canvas")
    box = canvas.rect
    ActionChains(browser).move_to_element_with_offset(
        canvas, sx - box["x"] - box["width"] / 2, sy - box["y"] - box["height"] / 2
    ).perform()
    readout = _wait(browser, "return window.wsiViewer.lastReadout")
    assert f"heatmap {HIGH:.4g}".rstrip(".") in readout.replace("3.000", "3"), readout
    assert "x " in readout and "µm" in readout


def test_threshold_and_opacity_sliders_rerender_the_heatmap(browser, server) -> None:
    browser.get(server.url)
    _wait(browser, "const s = window.wsiViewer; return s && s.ready && s.loaded.slide && s.loaded.heatmap")
    data = server.data
    mask = data.heatmap._whole_level(0)[1]
    r, c = next(
        (r, c) for r in range(50, 90) for c in range(70, 120) if mask[r - 2 : r + 3, c - 2 : c + 3].all()
    )
    osd_top = browser.execute_script("return document.getElementById('osd').getBoundingClientRect().top")

    def pixel() -> np.ndarray:
        x, y = browser.execute_script(
            f"return window.wsiViewer.imageToElement({(c + 0.5) * PX_TO_L0}, {(r + 0.5) * PX_TO_L0})"
        )
        shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")).astype(int)
        sy, sx = round(y + osd_top), round(x)
        return shot[sy - 2 : sy + 3, sx - 2 : sx + 3].reshape(-1, 3).mean(axis=0)

    untinted = pixel()  # low-score tissue (0.3) below the threshold 1.0
    # the threshold slider down to ~0.1: the low tissue is now above it and gets the ramp colour
    browser.execute_script(
        "const e = document.getElementById('threshold'); e.value = 33; e.dispatchEvent(new Event('change'));"
    )
    _wait(browser, "const s = window.wsiViewer; return s.threshold < 0.2 && s.loaded.heatmap")
    time.sleep(0.5)
    tinted = pixel()
    assert np.abs(tinted - untinted).max() > 30, (untinted, tinted)
    # opacity 0 hides it again
    browser.execute_script(
        "const e = document.getElementById('opacity'); e.value = 0; e.dispatchEvent(new Event('input'));"
    )
    time.sleep(0.5)
    assert np.abs(pixel() - untinted).max() < 8
    assert THRESHOLD == 1.0
