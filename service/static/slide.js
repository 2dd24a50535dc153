// The slide viewer: /static/slide.html?id=SLIDE_ID&items=ID,ID,... shows the slide's Deep Zoom
// pyramid with OpenSeadragon (vendored, see scripts/vendor-viewer) and outlines the given items.
"use strict";

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

async function outlineItems(viewer) {
  const outlined = [];
  for (const id of itemIds) {
    try {
      const item = await fetchJson(`/images/${id}`);
      if (!item.tile || !item.extra || item.extra.slide_id !== slideId) continue;
      const { x, y, width, height } = item.tile;
      const box = document.createElement("div");
      box.className = "slide-hit";
      box.dataset.item = id;
      box.title = `item ${id}`;
      viewer.addOverlay({
        element: box,
        location: viewer.viewport.imageToViewportRectangle(x, y, width, height),
      });
      outlined.push(id);
    } catch (error) {
      showError(`item ${id}: ${error.message}`);
    }
  }
  document.getElementById("hit-info").textContent = outlined.length
    ? `${outlined.length} hit${outlined.length === 1 ? "" : "s"} outlined`
    : "";
  document.body.dataset.outlined = String(outlined.length);
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
  markOpenSeadragonStyleInjected();
  const viewer = OpenSeadragon({
    element: document.getElementById("viewer"),
    prefixUrl: "/static/vendor/openseadragon/images/",
    tileSources: slide.dzi_url,
    showNavigator: true,
    loadTilesWithAjax: Boolean(key),
    ajaxHeaders: headers,
  });
  viewer.addHandler("open", () => outlineItems(viewer));
  viewer.addHandler("open-failed", (event) => showError(`The slide could not be shown: ${event.message}`));
  viewer.addHandler("tile-loaded", () => {
    document.body.dataset.tilesLoaded = String(Number(document.body.dataset.tilesLoaded || 0) + 1);
  });
}

main();
