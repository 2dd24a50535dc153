// The slide viewer: /static/slide.html?id=SLIDE_ID&items=ID,ID,... shows the slide's Deep Zoom
// pyramid with OpenSeadragon (vendored, see scripts/vendor-viewer) and outlines the given items.
// A click searches with the tile-sized region centred on it, a shift-drag with a rectangle: the
// service reads the region from the slide itself (POST /search with slide_id and a level-0 box).
// "Find similar slides" searches with the whole slide (query_slide_id): each ranked slide links
// to this viewer with its matching regions (the answer's evidence items) outlined.
"use strict";

const REGION_K = 12;
// A quick click that OpenSeadragon reports right after a shift-drag is not a second search.
const CLICK_AFTER_DRAG_MS = 500;

const params = new URLSearchParams(window.location.search);
const slideId = params.get("id") || "";
const itemIds = (params.get("items") || "").split(",").filter((value) => /^\d+$/.test(value));
// Reads may need the key (HISTOSEARCH_REQUIRE_KEY_FOR_SEARCH): the search page keeps it for the tab.
const key = window.sessionStorage.getItem("histosearch.apiKey") || "";
const headers = key ? { Authorization: `Bearer ${key}` } : {};

// OpenSeadragon injects a <style> element (an outline rule for touch screens, kept in style.css)
// unless one marked data-openseadragon-mobile-css exists, and the page's CSP refuses inline styles.
// The marker is an element named "style" outside HTML's namespace: matched, but no style sheet.
function markOpenSeadragonStyleInjected() {
  const marker = document.createElementNS("urn:histosearch:marker", "style");
  marker.setAttribute("data-openseadragon-mobile-css", "true");
  document.head.appendChild(marker);
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

async function fetchJson(url) {
  const response = await fetch(url, { headers });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      detail = (await response.json()).detail || detail;
    } catch (_) {
      // not JSON: keep the status line
    }
    throw new Error(detail);
  }
  return response.json();
}

function describe(slide) {
  document.getElementById("slide-title").textContent =
    `${slide.label || "unlabelled"} · ${slide.group || slide.slide_id}`;
  const mpp = `${slide.mpp_x.toFixed(3)} µm/px`;
  const tiles = slide.tiles === null ? "indexing unfinished" : `${slide.tiles} tiles indexed`;
  document.getElementById("slide-meta").textContent =
    `${slide.width}×${slide.height} px · ${mpp} · ${slide.vendor || "unknown format"} · ${tiles}`;
}

function outline(viewer, id, tile) {
  const box = document.createElement("div");
  box.className = "slide-hit";
  box.dataset.item = id;
  box.title = `item ${id}`;
  viewer.addOverlay({
    element: box,
    location: viewer.viewport.imageToViewportRectangle(tile.x, tile.y, tile.width, tile.height),
  });
}

function reportOutlined(count) {
  document.getElementById("hit-info").textContent = count
    ? `${count} hit${count === 1 ? "" : "s"} outlined`
    : "";
  document.body.dataset.outlined = String(count);
}

async function outlineItems(viewer) {
  let outlined = 0;
  for (const id of itemIds) {
    try {
      const item = await fetchJson(`/images/${id}`);
      if (!item.tile || !item.extra || item.extra.slide_id !== slideId) continue;
      outline(viewer, id, item.tile);
      outlined += 1;
    } catch (error) {
      showError(`item ${id}: ${error.message}`);
    }
  }
  reportOutlined(outlined);
}

// ---- searching with a region of the slide ------------------------------------------------------

// Level-0 pixels along one of the index's tiles (tile_size px at tile_mpp um/px).
function tileSide(slide) {
  if (!slide.tile_size || !slide.tile_mpp) return 256;
  return Math.max(1, Math.round((slide.tile_size * slide.tile_mpp) / slide.mpp_x));
}

// A level-0 box of whole pixels between two image points, cut to the slide.
function boxBetween(slide, a, b) {
  const left = Math.max(0, Math.floor(Math.min(a.x, b.x)));
  const top = Math.max(0, Math.floor(Math.min(a.y, b.y)));
  const right = Math.min(slide.width, Math.ceil(Math.max(a.x, b.x)));
  const bottom = Math.min(slide.height, Math.ceil(Math.max(a.y, b.y)));
  return { x: left, y: top, width: Math.max(0, right - left), height: Math.max(0, bottom - top) };
}

// One tile of the index centred on a point, moved inside the slide where it would cross an edge.
function tileAround(slide, point) {
  const side = tileSide(slide);
  const width = Math.min(side, slide.width);
  const height = Math.min(side, slide.height);
  const x = Math.min(Math.max(0, Math.round(point.x - width / 2)), slide.width - width);
  const y = Math.min(Math.max(0, Math.round(point.y - height / 2)), slide.height - height);
  return { x, y, width, height };
}

// The query region's outline; a refused region stays outlined in the error's colour, so that the
// message beside the slide points at the place it is about.
function showRegion(viewer, box, refused = false) {
  let element = document.getElementById("query-region");
  const location = viewer.viewport.imageToViewportRectangle(box.x, box.y, box.width, box.height);
  if (element) {
    viewer.updateOverlay(element, location);
  } else {
    element = document.createElement("div");
    element.id = "query-region";
    element.className = "slide-region";
    viewer.addOverlay({ element, location });
  }
  element.classList.toggle("refused", refused);
  element.title = refused ? "this region was refused: see the message above" : "query region";
}

// The outlines of one answered search: its region and its hits on this slide, nothing earlier.
function showSearchOutlines(viewer, box, hits, refused = false) {
  viewer.clearOverlays();
  showRegion(viewer, box, refused);
  hits.forEach((hit) => outline(viewer, hit.id, hit.tile));
  reportOutlined(hits.length);
}

// A failed search leaves no outline of an earlier search's hits, whose list is gone too.
function showRefused(viewer, box, message) {
  showError(message);
  showSearchOutlines(viewer, box, [], true);
  document.getElementById("results").replaceChildren();
  document.getElementById("slide-results").replaceChildren();
}

function setImage(img, url) {
  if (!key) {
    img.src = url;
    return;
  }
  fetch(url, { headers })
    .then((response) => (response.ok ? response.blob() : null))
    .then((blob) => {
      if (blob) img.src = URL.createObjectURL(blob);
    });
}

// A hit on this slide is shown here; a hit on another slide opens that slide's viewer.
function openHit(viewer, hit) {
  const hitSlide = hit.extra && hit.extra.slide_id;
  if (!hitSlide || !hit.tile) return;
  if (hitSlide !== slideId) {
    window.location.href = HistosearchResults.viewerUrl(hitSlide, [hit.id]);
    return;
  }
  const { x, y, width, height } = hit.tile;
  viewer.viewport.fitBoundsWithConstraints(
    viewer.viewport.imageToViewportRectangle(x - width, y - height, 3 * width, 3 * height),
  );
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.detail) return body.detail;
  } catch (_) {
    /* not JSON */
  }
  return `The server answered ${response.status} ${response.statusText}.`;
}

async function searchRegion(viewer, box) {
  if (box.width < 1 || box.height < 1) return;
  showRegion(viewer, box);
  showError("");
  const status = document.getElementById("status");
  status.textContent = `Searching with the region ${box.width}×${box.height} at (${box.x}, ${box.y})…`;
  const form = new FormData();
  form.append("slide_id", slideId);
  ["x", "y", "width", "height"].forEach((name) => form.append(name, String(box[name])));
  form.append("k", String(REGION_K));
  try {
    const response = await fetch("/search", { method: "POST", body: form, headers });
    if (!response.ok) {
      showRefused(viewer, box, await errorMessage(response));
      status.textContent = "No results.";
      return;
    }
    const body = await response.json();
    HistosearchResults.render(body, {
      status,
      grid: document.getElementById("results"),
      slides: document.getElementById("slide-results"),
      setImage,
      onOpen: (hit) => openHit(viewer, hit),
    });
    status.textContent =
      `Region ${box.width}×${box.height} at (${box.x}, ${box.y}): ${status.textContent}`;
    const here = body.results.filter((hit) => hit.tile && hit.extra && hit.extra.slide_id === slideId);
    showSearchOutlines(viewer, box, here);
  } catch (error) {
    showRefused(viewer, box, `The server could not be reached (${error.message}).`);
    status.textContent = "";
  } finally {
    document.body.dataset.regionSearches = String(Number(document.body.dataset.regionSearches || 0) + 1);
  }
}

function wireRegionSearch(viewer, slide) {
  let drag = null;
  let lastDragSearch = 0;
  const imagePoint = (position) => viewer.viewport.viewerElementToImageCoordinates(position);
  viewer.addHandler("canvas-click", (event) => {
    // Clicks search instead of zooming; a drag (not quick) pans as usual.
    event.preventDefaultAction = true;
    if (!event.quick || Date.now() - lastDragSearch < CLICK_AFTER_DRAG_MS) return;
    searchRegion(viewer, tileAround(slide, imagePoint(event.position)));
  });
  viewer.addHandler("canvas-press", (event) => {
    drag = event.originalEvent && event.originalEvent.shiftKey
      ? { start: imagePoint(event.position), end: null }
      : null;
  });
  viewer.addHandler("canvas-drag", (event) => {
    if (!drag) return;
    event.preventDefaultAction = true; // draw the rectangle, do not pan
    drag.end = imagePoint(event.position);
    showRegion(viewer, boxBetween(slide, drag.start, drag.end));
  });
  viewer.addHandler("canvas-release", () => {
    const finished = drag;
    drag = null;
    if (!finished || !finished.end) return; // a shift-click: the click searches
    lastDragSearch = Date.now();
    searchRegion(viewer, boxBetween(slide, finished.start, finished.end));
  });
}

// ---- slides like this one (POST /search with query_slide_id) ----------------------------------

// One ranked slide or case: a link to the viewer with its evidence outlined (whole-slide images),
// else its evidence items' sources.
function similarEntry(result) {
  const item = document.createElement("li");
  const text =
    `#${result.rank} ${result.kind === "group" ? "case" : "slide"} ${result.id}` +
    ` · ${result.label || "—"} · ${result.group} · score ${result.score.toFixed(3)} · ` +
    `${result.evidence.length} matching region${result.evidence.length === 1 ? "" : "s"}`;
  const url = result.viewer_url ||
    (result.evidence.length && result.evidence[0].extra && /^[0-9a-f]+$/.test(result.evidence[0].extra.slide_id || "")
      ? HistosearchResults.viewerUrl(
        result.evidence[0].extra.slide_id,
        result.evidence.filter((e) => e.extra.slide_id === result.evidence[0].extra.slide_id).map((e) => e.id),
      )
      : null);
  if (url) {
    const link = document.createElement("a");
    link.href = url;
    link.textContent = text;
    item.append(link);
  } else {
    item.textContent = text;
  }
  return item;
}

async function searchSimilarSlides() {
  const status = document.getElementById("similar-status");
  const list = document.getElementById("similar-results");
  status.textContent = "Searching with the whole slide…";
  showError("");
  const form = new FormData();
  form.append("query_slide_id", slideId);
  form.append("group_by", document.getElementById("similar-group-by").value);
  form.append("aggregation", document.getElementById("similar-aggregation").value);
  form.append("k", "10");
  try {
    const response = await fetch("/search", { method: "POST", body: form, headers });
    if (!response.ok) {
      showError(await errorMessage(response));
      status.textContent = "No results.";
      list.replaceChildren();
      return;
    }
    const body = await response.json();
    list.replaceChildren(...body.results.map(similarEntry));
    const left = body.query.excluded_group ? `, ${body.query.excluded_group} left out` : "";
    status.textContent = body.results.length
      ? `${body.results.length} ${body.group_by === "group" ? "cases" : "slides"} like this one ` +
        `(${body.query.mosaic_items} of its ${body.query.items} tiles searched${left}) · ` +
        `${body.timings.total_ms.toFixed(1)} ms`
      : "No other slides in the archive.";
  } catch (error) {
    showError(`The server could not be reached (${error.message}).`);
    status.textContent = "";
  } finally {
    document.body.dataset.similarSearches =
      String(Number(document.body.dataset.similarSearches || 0) + 1);
  }
}

function wireSimilarSlides() {
  document.getElementById("similar-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchSimilarSlides();
  });
}

async function main() {
  if (!/^[0-9a-f]+$/.test(slideId)) {
    showError("No slide given: open this page from a search result.");
    return;
  }
  let slide;
  try {
    slide = await fetchJson(`/slides/${slideId}`);
  } catch (error) {
    showError(`Slide ${slideId}: ${error.message}`);
    return;
  }
  describe(slide);
  wireSimilarSlides();
  if (typeof OpenSeadragon === "undefined") {
    showError(
      "The slide viewer is not installed on this server (OpenSeadragon is built into " +
        "service/static/vendor by `make vendor-viewer`); the slide's details are shown without it.",
    );
    document.getElementById("viewer").hidden = true;
    document.getElementById("viewer-help").hidden = true;
    return;
  }
  markOpenSeadragonStyleInjected();
  const viewer = OpenSeadragon({
    element: document.getElementById("viewer"),
    prefixUrl: "/static/vendor/openseadragon/images/",
    tileSources: slide.dzi_url,
    showNavigator: true,
    loadTilesWithAjax: Boolean(key),
    ajaxHeaders: headers,
    gestureSettingsMouse: { clickToZoom: false },
  });
  viewer.addHandler("open", () => {
    outlineItems(viewer);
    wireRegionSearch(viewer, slide);
    document.body.dataset.viewerOpen = "true";
  });
  viewer.addHandler("open-failed", (event) => showError(`The slide could not be shown: ${event.message}`));
  viewer.addHandler("tile-loaded", () => {
    document.body.dataset.tilesLoaded = String(Number(document.body.dataset.tilesLoaded || 0) + 1);
  });
}

main();
