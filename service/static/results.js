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

  // One hit: a button with its thumbnail (shown by setImage, which adds the key when needed).
  function resultCard(hit, { setImage, onOpen }) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hit";
    button.dataset.id = hit.id;
    button.title = hit.source || `item ${hit.id}`;
    const img = document.createElement("img");
    img.alt = `${hit.label || "unlabelled"} tile ${hit.id}`;
    img.loading = "lazy";
    setImage(img, hit.thumbnail_url);
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.append(
      textSpan("rank", `#${hit.rank}`),
      textSpan("label", hit.label || "—"),
      textSpan("score", hit.score.toFixed(3)),
      textSpan("source", shortSource(hit.source)),
    );
    button.append(img, caption);
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
    if (!body.results.length) return "No archive items match these filters.";
    const tiles = body.query_tiles > 1 ? ` · ${body.query_tiles} query tiles` : "";
    return (
      `${body.results.length} results${tiles} · decode ${t.decode_ms.toFixed(1)} ms · ` +
      `embed ${t.embed_ms.toFixed(1)} ms · search ${t.search_ms.toFixed(1)} ms`
    );
  }

  // Fills the status line, the grid and the slide list of a page from a /search answer.
  function render(body, { status, grid, slides, setImage, onOpen }) {
    status.textContent = statusLine(body);
    grid.replaceChildren(...body.results.map((hit) => resultCard(hit, { setImage, onOpen })));
    slides.replaceChildren(...(body.slides || []).map(slideLink));
  }

  return { render, viewerUrl, textSpan, shortSource };
})();
