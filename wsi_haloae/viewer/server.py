"""`wsi-haloae view OUT/<slide>`: a local, read-only web viewer of one heatmap output folder.

The page (static/index.html, OpenSeadragon shipped in static/openseadragon with its BSD licence)
shows the slide as Deep Zoom tiles and the heatmap over it as colour-mapped tiles rendered on
the fly from the OME-Zarr pyramid, with opacity and threshold sliders, the regions' outlines,
artefact tiles, tile scores on hover and a coordinate readout with a shareable link.

Routes (GET and HEAD only; every other method gets 501 from the standard library):

    /                               the page
    /static/<file>                  files of the package's static folder, nothing else
    /api/info                       slide, heatmap, threshold and colour-ramp facts (JSON)
    /api/at?x=X&y=Y                 heatmap score and scored tile at level-0 point (X, Y)
    /api/artefacts                  level-0 corners and side of the tiles flagged as artefacts
    /slide/<level>/<col>_<row>.jpeg Deep Zoom tile of the slide
    /heatmap/<level>/<col>_<row>.png?threshold=T   Deep Zoom tile of the heatmap
    /files/<name>                   one of a fixed list of the folder's outputs (regions.geojson, ...)

Safety: it binds to 127.0.0.1 unless told otherwise, reads only the output folder's known files
and the one slide named in its summary.json, and refuses (403) any request whose decoded path
holds a `..` segment, a backslash or a NUL, whatever its encoding.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ..errors import OutputError
from ..heatmaps.colours import ScoreColours, score_colours
from ..slides.slide import Slide, open_slide
from .tiles import HeatmapTiles, SlideTiles

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SERVED_FILES = ("regions.geojson", "overlay.png", "top_tiles.png", "summary.json")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
    ".geojson": "application/geo+json",
}


class ViewerData:
    """Everything the viewer serves from one heatmap output folder, opened once."""

    def __init__(
        self, folder: str | Path, *, slide_path: str | Path | None = None, backend: str = "openslide"
    ):
        self.folder = Path(folder).resolve()
        summary_path = self.folder / "summary.json"
        if not summary_path.is_file():
            subfolders = sorted(p.name for p in self.folder.glob("*/summary.json"))
            hint = (
                f" (it holds slide folders: {', '.join(p.split('/')[0] for p in subfolders[:5])})"
                if subfolders
                else ""
            )
            raise OutputError(
                f"{self.folder} has no summary.json{hint}; pass one slide's output folder, OUT/<slide>"
            )
        self.summary: dict[str, Any] = json.loads(summary_path.read_text())
        slide_file = Path(slide_path) if slide_path is not None else Path(self.summary["slide"]["path"])
        if not slide_file.is_file():
            raise OutputError(
                f"the slide {slide_file} of {self.folder} is not there; pass its new path with --slide"
            )
        self.slide_path = slide_file.resolve()
        self.slide: Slide = open_slide(self.slide_path, backend=backend)  # type: ignore[arg-type]
        self.slide_tiles = SlideTiles(self.slide)
        heat = self.summary["heatmap"]
        self.heatmap = HeatmapTiles(self.folder / heat["path"], self.slide_tiles.deepzoom, heat["px_to_l0"])
        self.threshold = float(self.summary["threshold"]["value"])
        coarse, _ = self.heatmap._whole_level(self.heatmap.level_count - 1)
        self._coarse = coarse[np.isfinite(coarse)]
        self.base_colours = self.colours(self.threshold)
        self.tile_side_l0 = float(self.summary["grid"]["tile_size_l0"])
        self.tiles = self._tile_scores()

    def close(self) -> None:
        self.slide.close()

    def _tile_scores(self) -> dict[str, np.ndarray]:
        path = self.folder / "tile_scores.npz"
        if not path.is_file():
            return {}
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}

    @lru_cache(maxsize=64)  # noqa: B019 - one instance per server
    def colours(self, threshold: float) -> ScoreColours:
        return score_colours(threshold, self._coarse)

    def info(self) -> dict[str, Any]:
        deepzoom = self.slide_tiles.deepzoom
        colours = self.base_colours
        stops = [
            "#" + "".join(f"{round(c * 255):02x}" for c in colours.colour_of_position(p))
            for p in np.linspace(0, 1, 11)
        ]
        finite = self._coarse
        low = float(min(0.0, finite.min())) if finite.size else 0.0
        mpp = self.slide.mpp_um or tuple(self.summary["slide"].get("mpp_um_xy") or (None, None))
        return {
            "slide": {
                "name": self.slide_path.name,
                "width": self.slide.dimensions[0],
                "height": self.slide.dimensions[1],
                "mpp_um_xy": list(mpp),
            },
            "deepzoom": {
                "tile_size": deepzoom.tile_size,
                "overlap": deepzoom.overlap,
                "levels": deepzoom.level_count,
            },
            "heatmap": {"px_to_l0": self.heatmap.px_to_l0, "levels": self.heatmap.level_count},
            "threshold": {"value": self.threshold, "source": self.summary["threshold"].get("source", "")},
            "colours": {**colours.to_json(), "stops": stops},
            "score_range": [low, max(colours.vmax, self.threshold)],
            "model": self.summary.get("model", {}).get("run_dir", ""),
            "tiles": self.summary.get("tiles", {}),
            "regions": self.summary.get("regions", {}).get("count"),
            "artefacts": int(np.asarray(self.tiles.get("artefact", []), bool).sum()),
            "files": [name for name in SERVED_FILES if (self.folder / name).is_file()],
        }

    def at(self, x_l0: float, y_l0: float) -> dict[str, Any]:
        result: dict[str, Any] = {
            "x": x_l0,
            "y": y_l0,
            "heatmap": self.heatmap.score_at(x_l0, y_l0),
            "tile": None,
        }
        if self.tiles:
            xs, ys = self.tiles["x_l0"], self.tiles["y_l0"]
            side = self.tile_side_l0
            inside = np.flatnonzero((xs <= x_l0) & (x_l0 < xs + side) & (ys <= y_l0) & (y_l0 < ys + side))
            if inside.size:
                best = inside[np.argmax(self.tiles["score_mean"][inside])]
                tile = {"x": int(xs[best]), "y": int(ys[best]), "size": side}
                for key in ("score_mean", "score_max", "tissue_fraction"):
                    if key in self.tiles and np.isfinite(self.tiles[key][best]):
                        tile[key] = float(self.tiles[key][best])
                if "artefact" in self.tiles:
                    tile["artefact"] = bool(self.tiles["artefact"][best])
                result["tile"] = tile
        return result

    def artefacts(self) -> dict[str, Any]:
        flags = np.asarray(self.tiles.get("artefact", []), bool)
        corners = (
            np.stack([self.tiles["x_l0"][flags], self.tiles["y_l0"][flags]], axis=1).tolist()
            if flags.any()
            else []
        )
        return {"size": self.tile_side_l0, "tiles": corners}

    def file(self, name: str) -> Path | None:
        """A served output file of the folder, or None (unknown name, missing, or a link out)."""
        if name not in SERVED_FILES:
            return None
        path = (self.folder / name).resolve()
        if not path.is_file() or not path.is_relative_to(self.folder):
            return None
        return path


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ViewerHandler(BaseHTTPRequestHandler):
    """GET/HEAD only; routes as in the module docstring."""

    server: ViewerServer
    server_version = "wsi-haloae-viewer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def do_GET(self) -> None:
        self._respond(head=False)

    def _respond(self, head: bool) -> None:
        try:
            body, content_type, cache = self._route()
            status = HTTPStatus.OK
        except _Refused as refused:
            status, body, content_type, cache = refused.status, f"{refused}\n".encode(), "text/plain", False
        except Exception:  # a broken tile must not take the server down
            log.exception("viewer request %s failed", self.path)
            status, body, content_type, cache = (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                b"internal error\n",
                "text/plain",
                False,
            )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self) -> tuple[bytes, str, bool]:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        segments = path.split("/")
        if any(s in ("..", ".") for s in segments) or "\\" in path or "\x00" in path or "%" in path:
            raise _Refused(HTTPStatus.FORBIDDEN, "refused: the path leaves the viewer's files")
        query = parse_qs(parts.query)
        data = self.server.data
        if path in ("/", "/index.html"):
            return self._static("index.html"), _CONTENT_TYPES[".html"], False
        if path.startswith("/static/"):
            name = path[len("/static/") :]
            return self._static(name), _CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"), True
        if path == "/api/info":
            return _json(data.info()), _CONTENT_TYPES[".json"], False
        if path == "/api/at":
            x, y = _number(query, "x"), _number(query, "y")
            return _json(data.at(x, y)), _CONTENT_TYPES[".json"], False
        if path == "/api/artefacts":
            return _json(data.artefacts()), _CONTENT_TYPES[".json"], True
        if path.startswith("/files/"):
            found = data.file(path[len("/files/") :])
            if found is None:
                raise _Refused(HTTPStatus.NOT_FOUND, "not found")
            return found.read_bytes(), _CONTENT_TYPES.get(found.suffix, "application/octet-stream"), False
        if path.startswith(("/slide/", "/heatmap/")):
            return self._tile(segments, query)
        raise _Refused(HTTPStatus.NOT_FOUND, "not found")

    def _static(self, name: str) -> bytes:
        root = STATIC_DIR.resolve()
        candidate = (root / name).resolve()
        if not candidate.is_relative_to(root):
            raise _Refused(HTTPStatus.FORBIDDEN, "refused: the path leaves the viewer's files")
        if not candidate.is_file():
            raise _Refused(HTTPStatus.NOT_FOUND, "not found")
        return candidate.read_bytes()

    def _tile(self, segments: list[str], query: dict[str, list[str]]) -> tuple[bytes, str, bool]:
        kind, want_ext = ("slide", "jpeg") if segments[1] == "slide" else ("heatmap", "png")
        if len(segments) != 4 or not segments[2].isdigit():
            raise _Refused(HTTPStatus.NOT_FOUND, "not found")
        address, _, ext = segments[3].partition(".")
        col, _, row = address.partition("_")
        if ext != want_ext or not col.isdigit() or not row.isdigit():
            raise _Refused(HTTPStatus.NOT_FOUND, "not found")
        level, col_i, row_i = int(segments[2]), int(col), int(row)
        data = self.server.data
        try:
            if kind == "slide":
                image = data.slide_tiles.tile(level, col_i, row_i)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=85)
                return buffer.getvalue(), "image/jpeg", True
            threshold = _number(query, "threshold") if "threshold" in query else data.threshold
            image = data.heatmap.tile(level, col_i, row_i, data.colours(threshold))
        except ValueError as exc:
            raise _Refused(HTTPStatus.NOT_FOUND, str(exc)) from None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), "image/png", True


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], data: ViewerData) -> None:
        self.data = data
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(
    folder: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    slide_path: str | Path | None = None,
    backend: str = "openslide",
) -> ViewerServer:
    """A viewer server for heatmap output `folder` (not yet serving: call `serve_forever`, or
    `start_in_thread`). Port 0 picks a free one. Raises OutputError for a folder or slide that
    is not there, SlideError for a slide that does not open."""
    data = ViewerData(folder, slide_path=slide_path, backend=backend)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the viewer listens on %s: anyone who can reach this machine can see the slide", host)
    try:
        return ViewerServer((host, port), data)
    except OSError as exc:
        data.close()
        raise OutputError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None


def start_in_thread(server: ViewerServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="wsi-haloae-viewer", daemon=True)
    thread.start()
    return thread


def _json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def _number(query: dict[str, list[str]], key: str) -> float:
    try:
        value = float(query[key][0])
    except (KeyError, IndexError, ValueError):
        raise _Refused(HTTPStatus.BAD_REQUEST, f"query parameter {key} must be a number") from None
    if not math.isfinite(value):
        raise _Refused(HTTPStatus.BAD_REQUEST, f"query parameter {key} must be finite")
    return value
