// The search page: one query image, a grid of the most similar archive tiles, details on click.
// Over a feature archive (vectors, no pixels) it takes a JSON vector or an .npy of rows instead,
// and shows the hits as text cards.
// Plain browser JavaScript with no build step and nothing loaded from elsewhere; the results are
// drawn by results.js, shared with the slide viewer.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "histosearch.apiKey";

const state = { file: null, previewUrl: null, blobUrls: [], features: null, vectorsFile: null };

function apiKey() {
  return $("key-input").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function errorMessage(response) {
  // Every API error is JSON {code, detail}; anything else (a proxy page) is summarised by status.
  try {
    const body = await response.json();
    if (body && body.detail) return body.detail;
  } catch (_) {
    /* not JSON */
  }
  return `The server answered ${response.status} ${response.statusText}.`;
}

// Thumbnails are plain <img> links unless the server wants a key even for reads: then they are
// fetched with the key and shown from blob: URLs.
async function setImage(img, url) {
  if (!apiKey()) {
    img.src = url;
    return;
  }
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) return;
  const blobUrl = URL.createObjectURL(await response.blob());
  state.blobUrls.push(blobUrl);
  img.src = blobUrl;
}

function releaseBlobUrls() {
  state.blobUrls.forEach((url) => URL.revokeObjectURL(url));
  state.blobUrls = [];
}

function chooseFile(file) {
  if (!file) return;
  showError("");
  state.file = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const preview = $("query-preview");
  // Browsers cannot draw TIFF: keep the file name visible and let the server decode it.
  preview.onerror = () => {
    preview.hidden = true;
    $("drop-hint").hidden = false;
    $("drop-hint").textContent = file.name;
  };
  preview.src = state.previewUrl;
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("query-info").textContent = `${file.name} · ${formatBytes(file.size)}`;
  $("search-button").disabled = false;
  search();
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function hasQuery() {
  if (!state.features) return Boolean(state.file);
  return Boolean(state.vectorsFile || $("vector-input").value.trim());
}

function searchForm() {
  const form = new FormData();
  if (!state.features) {
    form.append("image", state.file, state.file.name);
  } else if (state.vectorsFile) {
    form.append("vectors", state.vectorsFile, state.vectorsFile.name);
  } else {
    form.append("vector", $("vector-input").value.trim());
  }
  form.append("k", $("k-input").value || "12");
  const label = $("label-input").value.trim();
  const group = $("group-input").value.trim();
  if (label) form.append("label", label);
  if (group) form.append("exclude_group", group);
  return form;
}

async function search() {
  if (!hasQuery()) return;
  showError("");
  $("status").textContent = "Searching…";
  $("search-button").disabled = true;
  try {
    const response = await fetch("/search", {
      method: "POST",
      body: searchForm(),
      headers: authHeaders(),
    });
    if (!response.ok) {
      showError(await errorMessage(response));
      $("status").textContent = "No results.";
      $("results").replaceChildren();
      return;
    }
    renderResults(await response.json());
  } catch (error) {
    showError(`The server could not be reached (${error.message}).`);
    $("status").textContent = "";
  } finally {
    $("search-button").disabled = false;
  }
}

function renderResults(body) {
  releaseBlobUrls();
  $("query-info").textContent = queryInfo(body);
  HistosearchResults.render(body, {
    status: $("status"),
    grid: $("results"),
    slides: $("slide-results"),
    setImage,
    onOpen: showDetail,
  });
  rememberLabels(body.results || body.queries.flatMap((answer) => answer.results));
}

function queryInfo(body) {
  const q = body.query;
  if (q) return `${state.file.name} · ${q.width}×${q.height} ${q.format} (${q.mode})`;
  const v = body.query_vector;
  if (!v) return "";
  const what = body.queries
    ? `${state.vectorsFile.name} · ${body.rows} rows`
    : v.item_id !== null && v.item_id !== undefined
      ? `item ${v.item_id}'s stored code`
      : "one vector";
  return `${what} of ${v.dim} numbers (${v.feature_model})`;
}

function rememberLabels(results) {
  addLabelOptions(results.map((hit) => hit.label).filter(Boolean));
}

function addLabelOptions(labels) {
  const list = $("known-labels");
  const known = new Set([...list.options].map((option) => option.value));
  labels
    .filter((label) => !known.has(label))
    .forEach((label) => {
      known.add(label);
      const option = document.createElement("option");
      option.value = label;
      list.append(option);
    });
}

function showDetail(hit) {
  const thumb = $("detail-thumb");
  thumb.hidden = !hit.thumbnail_url;
  if (hit.thumbnail_url) setImage(thumb, hit.thumbnail_url);
  else thumb.removeAttribute("src");
  $("detail-title").textContent = `#${hit.rank} · ${hit.label || "unlabelled"} · score ${hit.score.toFixed(3)}`;
  drawPosition(hit);
  const feature = hit.feature || {};
  const fields = [
    ["id", hit.id],
    ["label", hit.label],
    ["group", hit.group],
    ["slide", feature.slide_id],
    ["row", feature.row],
    ["dataset", hit.dataset],
    ["source", hit.source],
    ["added", hit.added_at ? new Date(hit.added_at).toLocaleString() : null],
  ];
  $("detail-fields").replaceChildren(
    ...fields
      .filter(([, value]) => value !== null && value !== undefined && value !== "")
      .flatMap(([name, value]) => [textElement("dt", name), textElement("dd", String(value))]),
  );
  $("detail").showModal();
}

function textElement(tag, text) {
  const element = document.createElement(tag);
  element.textContent = text;
  return element;
}

// The source image itself is not stored, so its outline is drawn to scale and the tile is placed
// on it where it was cut from.
function drawPosition(hit) {
  const map = $("source-map");
  const box = $("tile-box");
  const size = hit.source_size;
  const tile = hit.tile || (size ? { x: 0, y: 0, width: size.width, height: size.height } : null);
  if (!hit.thumbnail_url) {
    map.hidden = true;
    $("position-text").textContent = `${hit.thumbnail_note || "No pixels to show"}.`;
    return;
  }
  if (!size || !tile) {
    map.hidden = true;
    $("position-text").textContent = "The source image size is not recorded for this item.";
    return;
  }
  map.hidden = false;
  const maxSide = 260;
  const scale = Math.min(maxSide / size.width, maxSide / size.height);
  map.style.width = `${Math.max(8, size.width * scale)}px`;
  map.style.height = `${Math.max(8, size.height * scale)}px`;
  box.style.left = `${tile.x * scale}px`;
  box.style.top = `${tile.y * scale}px`;
  box.style.width = `${Math.max(3, tile.width * scale)}px`;
  box.style.height = `${Math.max(3, tile.height * scale)}px`;
  box.style.backgroundImage = `url("${$("detail-thumb").src || hit.thumbnail_url}")`;
  $("detail-thumb").onload = () => {
    box.style.backgroundImage = `url("${$("detail-thumb").src}")`;
  };
  $("position-text").textContent = hit.tile
    ? `Tile ${tile.width}×${tile.height} at (${tile.x}, ${tile.y}) in a ` +
      `${size.width}×${size.height} source image.`
    : `Whole image, ${size.width}×${size.height}.`;
}

async function loadStats() {
  try {
    const response = await fetch("/stats", { headers: authHeaders() });
    if (!response.ok) return;
    const stats = await response.json();
    $("archive-stats").textContent =
      stats.index_kind === "features"
        ? `${stats.items.toLocaleString()} items · feature archive: ${stats.feature_dim}-d ` +
          `vectors of ${stats.feature_model} · ${stats.bits}-bit codes`
        : `${stats.items.toLocaleString()} tiles · ${stats.bits}-bit codes · ` +
          stats.model_card.backbone;
    if (stats.index_kind === "features") {
      useFeatureQueries({ dim: stats.feature_dim, model: stats.feature_model });
    }
    $("k-input").max = String(stats.max_k || 100);
    addLabelOptions(Object.keys(stats.labels || {}).filter((label) => label !== "(none)"));
  } catch (_) {
    /* the page still works without the numbers */
  }
}

// A feature archive has no pixels: the image drop zone gives way to a vector field and an .npy
// chooser (the server would refuse an image with 422 index_kind_mismatch).
function useFeatureQueries(features) {
  state.features = features;
  $("drop-zone").hidden = true;
  $("vector-query").hidden = false;
  $("vector-help").textContent =
    `This archive holds feature vectors of ${features.dim} numbers from ${features.model}, ` +
    "not images: search it with one such vector, or an .npy of rows (each answered on its own).";
  $("status").textContent = "Paste a feature vector or choose an .npy to search the archive.";
  $("search-button").disabled = !hasQuery();
}

function wireVectorFields() {
  $("vector-input").addEventListener("input", () => {
    state.vectorsFile = null;
    $("vectors-input").value = "";
    $("search-button").disabled = !hasQuery();
  });
  $("vectors-input").addEventListener("change", (event) => {
    state.vectorsFile = event.target.files[0] || null;
    $("search-button").disabled = !hasQuery();
    search();
  });
}

function wireDropZone() {
  const zone = $("drop-zone");
  ["dragenter", "dragover"].forEach((name) =>
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    }),
  );
  ["dragleave", "drop"].forEach((name) =>
    zone.addEventListener(name, () => zone.classList.remove("dragging")),
  );
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    chooseFile(event.dataTransfer.files[0]);
  });
  $("file-input").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  // The drop zone is a focusable label: Enter or Space opens the file chooser from the keyboard.
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file-input").click();
    }
  });
}

function wireKeyField() {
  const input = $("key-input");
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  input.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, input.value.trim());
    // Where reads need the key, the archive's kind and numbers come once it is given.
    loadStats();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wireDropZone();
  wireVectorFields();
  wireKeyField();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  loadStats();
});
