/* wsi-haloae viewer: the slide and its heatmap as two OpenSeadragon layers of the same Deep Zoom
   geometry, region outlines and artefact tiles on a canvas above them, scores on hover. */
"use strict";

(async function main() {
  const info = await (await fetch("/api/info")).json();
  const S = info.slide, DZ = info.deepzoom;
  const state = {
    info: info, threshold: info.threshold.value, opacity: 0.6, ready: false,
    loaded: { slide: false, heatmap: false }, regions: null, artefacts: null,
  };
  window.wsiViewer = state;
  const $ = (id) => document.getElementById(id);

  function tileSource(kind, ext, query) {
    return {
      width: S.width, height: S.height, tileSize: DZ.tile_size, tileOverlap: DZ.overlap,
      minLevel: 0, maxLevel: DZ.levels - 1,
      getTileUrl: (level, x, y) => `/${kind}/${level}/${x}_${y}.${ext}` + (query ? `?${query}` : ""),
    };
  }
  const heatmapSource = () => tileSource("heatmap", "png", `threshold=${state.threshold}`);

  const viewer = OpenSeadragon({
    id: "osd", prefixUrl: "/static/openseadragon/images/", showNavigationControl: false,
    drawer: "canvas", maxZoomPixelRatio: 4, visibilityRatio: 0.5, animationTime: 0.5,
    tileSources: [
      { tileSource: tileSource("slide", "jpeg") },
      { tileSource: heatmapSource(), opacity: state.opacity },
    ],
  });
  state.viewer = viewer;
  const slideItem = () => viewer.world.getItemAt(0);
  const heatmapItem = () => viewer.world.getItemAt(1);

  viewer.world.addHandler("add-item", (event) => {
    const item = event.item;
    const kind = viewer.world.getIndexOfItem(item) === 0 ? "slide" : "heatmap";
    state.loaded[kind] = item.getFullyLoaded();
    item.addHandler("fully-loaded-change", (e) => {
      state.loaded[viewer.world.getIndexOfItem(item) === 0 ? "slide" : "heatmap"] = e.fullyLoaded;
    });
  });

  /* level-0 pixel -> position in the viewer element, and back */
  state.imageToElement = (x, y) => {
    const p = slideItem().imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
    return [p.x, p.y];
  };
  state.elementToImage = (x, y) => {
    const p = slideItem().viewerElementToImageCoordinates(new OpenSeadragon.Point(x, y));
    return [p.x, p.y];
  };

  /* controls */
  const [low, high] = info.score_range;
  const logScale = info.colours.log;
  const lowEnd = logScale ? info.threshold.value / 10 : low;
  const toValue = (p) => logScale ? lowEnd * Math.pow(high / lowEnd, p / 1000) : low + (high - low) * p / 1000;
  const toPosition = (v) => logScale ? 1000 * Math.log(v / lowEnd) / Math.log(high / lowEnd) : 1000 * (v - low) / (high - low);
  const showThreshold = () => { $("threshold-value").textContent = state.threshold.toPrecision(4); };
  $("threshold").value = toPosition(state.threshold);
  showThreshold();
  $("ramp").style.background = `linear-gradient(to right, ${info.colours.stops.join(", ")})`;
  $("ramp").title = `anomaly score ${info.threshold.value.toPrecision(3)} → ${info.colours.vmax.toPrecision(3)}` +
    (logScale ? " (log)" : "");

  function setThreshold(value) {
    state.threshold = value;
    showThreshold();
    state.loaded.heatmap = false;
    viewer.addTiledImage({ tileSource: heatmapSource(), index: 1, replace: true, opacity: currentOpacity() });
  }
  const currentOpacity = () => ($("show-heatmap").checked ? state.opacity : 0);
  $("threshold").addEventListener("input", (e) => { state.threshold = toValue(+e.target.value); showThreshold(); });
  $("threshold").addEventListener("change", (e) => setThreshold(toValue(+e.target.value)));
  $("threshold-reset").addEventListener("click", () => {
    $("threshold").value = toPosition(info.threshold.value);
    setThreshold(info.threshold.value);
  });
  $("opacity").addEventListener("input", (e) => {
    state.opacity = +e.target.value;
    if (heatmapItem()) heatmapItem().setOpacity(currentOpacity());
  });
  $("show-heatmap").addEventListener("change", () => heatmapItem() && heatmapItem().setOpacity(currentOpacity()));
  $("show-regions").addEventListener("change", draw);
  $("show-artefacts").addEventListener("change", async () => {
    if ($("show-artefacts").checked && state.artefacts === null) {
      state.artefacts = await (await fetch("/api/artefacts")).json();
    }
    draw();
  });
  $("artefact-count").textContent = `(${info.artefacts})`;
  const mpp = S.mpp_um_xy;
  const t = info.tiles || {};
  $("facts").textContent = `${S.name} · ${mpp[0] ? mpp[0].toPrecision(4) + " µm/px" : "no mpp"} · model ${info.model}` +
    ` · threshold ${info.threshold.value.toPrecision(4)} (${info.threshold.source})` +
    ` · ${t.tissue ?? "?"} tiles, ${t.anomalous ?? "?"} above, ${info.regions ?? "?"} regions`;
  $("title").textContent = S.name;

  /* outlines and artefact tiles on a canvas over the viewer */
  const canvas = $("outlines");
  const context = canvas.getContext("2d");
  if (info.files.includes("regions.geojson")) {
    fetch("/files/regions.geojson").then((r) => r.json()).then((g) => { state.regions = g; draw(); });
  }
  function draw() {
    const box = viewer.element.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(box.width * ratio) || canvas.height !== Math.round(box.height * ratio)) {
      canvas.width = Math.round(box.width * ratio); canvas.height = Math.round(box.height * ratio);
      canvas.style.width = `${box.width}px`; canvas.style.height = `${box.height}px`;
    }
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, box.width, box.height);
    if (!slideItem()) return;
    const [x0, y0] = state.imageToElement(0, 0);
    const [x1] = state.imageToElement(S.width, 0);
    const scale = (x1 - x0) / S.width;
    if ($("show-artefacts").checked && state.artefacts) {
      const side = state.artefacts.size * scale;
      context.fillStyle = "rgba(96, 96, 96, 0.6)";
      context.strokeStyle = "rgb(60, 60, 60)";
      for (const [x, y] of state.artefacts.tiles) {
        context.fillRect(x0 + x * scale, y0 + y * scale, side, side);
        context.strokeRect(x0 + x * scale, y0 + y * scale, side, side);
      }
    }
    if ($("show-regions").checked && state.regions) {
      context.strokeStyle = "rgb(0, 229, 255)";
      context.lineWidth = 2;
      for (const feature of state.regions.features) {
        const g = feature.geometry;
        const polygons = g.type === "Polygon" ? [g.coordinates] : g.coordinates;
        context.beginPath();
        for (const rings of polygons) {
          for (const ring of rings) {
            ring.forEach(([x, y], i) => {
              const px = x0 + x * scale, py = y0 + y * scale;
              if (i === 0) context.moveTo(px, py); else context.lineTo(px, py);
            });
            context.closePath();
          }
        }
        context.stroke();
      }
    }
  }
  viewer.addHandler("update-viewport", draw);
  viewer.addHandler("resize", draw);

  /* hover readout: level-0 position, µm, heatmap and tile scores */
  let pending = false, next = null;
  async function lookup(x, y) {
    if (pending) { next = [x, y]; return; }
    pending = true;
    try {
      const at = await (await fetch(`/api/at?x=${x}&y=${y}`)).json();
      const um = mpp[0] ? ` · ${(x * mpp[0]).toFixed(1)} µm, ${(y * mpp[1]).toFixed(1)} µm` : "";
      let text = `x ${Math.floor(x)}, y ${Math.floor(y)} px (level 0)${um}`;
      text += at.heatmap === null ? " · no score" : ` · heatmap ${at.heatmap.toPrecision(4)}`;
      if (at.tile) {
        const tile = at.tile;
        text += ` · tile (${tile.x}, ${tile.y}) score ${tile.score_mean !== undefined ? tile.score_mean.toPrecision(4) : "?"}`;
        text += tile.score_mean > state.threshold ? " anomalous" : " normal";
        if (tile.artefact) text += " · artefact";
      }
      $("readout").textContent = text;
      state.lastReadout = text;
    } finally {
      pending = false;
      if (next) { const [nx, ny] = next; next = null; lookup(nx, ny); }
    }
  }
  viewer.canvas.addEventListener("mousemove", (event) => {
    const box = viewer.element.getBoundingClientRect();
    const [x, y] = state.elementToImage(event.clientX - box.left, event.clientY - box.top);
    if (x >= 0 && y >= 0 && x < S.width && y < S.height) lookup(x, y);
  });

  /* shareable link: #x=&y=&zoom= (level-0 centre and OpenSeadragon zoom) */
  function updateLink() {
    const centre = slideItem().viewportToImageCoordinates(viewer.viewport.getCenter(true));
    const hash = `#x=${Math.round(centre.x)}&y=${Math.round(centre.y)}&zoom=${viewer.viewport.getZoom(true).toPrecision(4)}`;
    $("link").href = hash;
    history.replaceState(null, "", hash);
  }
  viewer.addHandler("animation-finish", updateLink);
  viewer.addHandler("open", () => {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.has("x") && params.has("y")) {
      const point = slideItem().imageToViewportCoordinates(+params.get("x"), +params.get("y"));
      if (params.has("zoom")) viewer.viewport.zoomTo(+params.get("zoom"), null, true);
      viewer.viewport.panTo(point, true);
    }
    state.ready = true;
    draw();
  });
})();
