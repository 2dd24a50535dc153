// Search results as both pages show them: the grid of hits and the ranked slides. The search page
// (app.js) shows them for an uploaded image, the slide viewer (slide.js) for a region of the slide.
"use strict";

const HistosearchResults = (() => {
  function textSpan(className, text) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    return span;
  }

  function shortSource(source) {
    if (!source) return "";
    const parts = source.split(/[\\/]/);
    return parts[parts.length - 1];
  }

  // The viewer of a slide with the given items outlined.
  function viewerUrl(slideId, itemIds) {
    return `/static/slide.html?id=${encodeURIComponent(slideId)}&items=${itemIds.join(",")}`;
  }

  // One hit: a button with its thumbnail (shown by setImage, which adds the key when needed), or,
  // for an item of a feature archive (no pixels, no thumbnail_url), a text card that says so.
  function resultCard(hit, { setImage, onOpen }) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = hit.thumbnail_url ? "hit" : "hit text-card";
    button.dataset.id = hit.id;
    button.title = hit.source || `item ${hit.id}`;
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.append(
      textSpan("rank", `#${hit.rank}`),
      textSpan("label", hit.label || "—"),
      textSpan("score", hit.score.toFixed(3)),
    );
    if (hit.thumbnail_url) {
      const img = document.createElement("img");
      img.alt = `${hit.label || "unlabelled"} tile ${hit.id}`;
      img.loading = "lazy";
      setImage(img, hit.thumbnail_url);
      caption.append(textSpan("source", shortSource(hit.source)));
      button.append(img, caption);
    } else {
      const feature = hit.feature || {};
      const row = feature.row === null || feature.row === undefined ? "" : ` · row ${feature.row}`;
      caption.append(
        textSpan("group", hit.group || ""),
        textSpan("slide-id", `${feature.slide_id || shortSource(hit.source)}${row}`),
      );
      button.append(textSpan("no-pixels", hit.thumbnail_note || "no pixels to show"), caption);
    }
    button.addEventListener("click", () => onOpen(hit));
    item.append(button);
    return item;
  }

  // A slide among the top hits: opens the slide viewer with the slide's hits outlined.
  function slideLink(slide) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = viewerUrl(slide.slide_id, slide.hits.map((hit) => hit.id));
    link.textContent =
      `slide ${slide.group || slide.slide_id} · ${slide.label || "—"} · ` +
      `best ${slide.best_score.toFixed(3)} · ${slide.hit_count} hits`;
    item.append(link);
    return item;
  }

  function statusLine(body) {
    const t = body.timings;
    const count = body.queries
      ? body.queries.reduce((sum, answer) => sum + answer.results.length, 0)
      : body.results.length;
    if (!count) return "No archive items match these filters.";
    const tiles = body.query_tiles > 1 ? ` · ${body.query_tiles} query tiles` : "";
    const rows = body.queries ? ` for ${body.rows} query rows` : "";
    return (
      `${count} results${rows}${tiles} · decode ${t.decode_ms.toFixed(1)} ms · ` +
      `embed ${t.embed_ms.toFixed(1)} ms · search ${t.search_ms.toFixed(1)} ms`
    );
  }

  // The answer to an .npy of rows: one heading and one grid per row.
  function rowSection(answer, options) {
    const item = document.createElement("li");
    const heading = document.createElement("h2");
    heading.textContent = `Row ${answer.row}`;
    const grid = document.createElement("ol");
    grid.className = "grid";
    grid.replaceChildren(...answer.results.map((hit) => resultCard(hit, options)));
    item.append(heading, grid);
    return item;
  }

  // Fills the status line, the grid and the slide list of a page from a /search answer (one
  // query's `results`, or the per-row `queries` of a search by vectors).
  function render(body, { status, grid, slides, setImage, onOpen }) {
    status.textContent = statusLine(body);
    if (body.queries) {
      grid.className = "row-results";
      grid.replaceChildren(...body.queries.map((answer) => rowSection(answer, { setImage, onOpen })));
    } else {
      grid.className = "grid";
      grid.replaceChildren(...body.results.map((hit) => resultCard(hit, { setImage, onOpen })));
    }
    slides.replaceChildren(...(body.slides || []).map(slideLink));
  }

  return { render, viewerUrl, textSpan, shortSource };
})();
