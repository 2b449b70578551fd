// Keeping and carrying stories: export (Markdown, JSON, Character Card V2, made by the server's
// /api/export), the local history panel, the permalink, and opening a permalink.
"use strict";

(() => {
  const B = window.Backstory;
  const app = B.app;
  const $ = (id) => document.getElementById(id);
  const els = { history: $("history"), empty: $("history-empty"), exportAll: $("history-export"),
                clear: $("history-clear"), permalink: $("permalink"), exportTools: $("export") };
  let entryOf = new Map();  // a shown story -> its history entry id (to update after a re-roll)

  function download(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = B.render.el("a");
    link.href = url;
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  async function exportStory(format) {
    const story = app.current();
    if (!story) return;
    try {
      const response = await fetch(`/api/export?format=${format}`, {
        method: "POST", headers: app.headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(story),
      });
      if (!response.ok) throw await app.httpError(response);
      const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      download(await response.blob(), name ? name[1] : `backstory.${format}`);
    } catch (e) {
      app.showError(e.message || "Could not export the story.");
    }
  }

  function when(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
  }

  function renderHistory() {
    const entries = B.history.load();
    els.history.replaceChildren();
    els.empty.hidden = entries.length > 0;
    els.exportAll.disabled = els.clear.disabled = entries.length === 0;
    for (const entry of entries) {
      const { story, request } = entry;
      const item = B.render.el("li", "history-item");
      const text = B.render.el("div", "history-text");
      const controls = ["genre", "tone", "pov", "structure"].map((k) => request[k]).filter(Boolean);
      text.append(B.render.el("strong", "history-name", story.name),
                  B.render.el("span", "history-meta",
                              [...controls, `seed ${request.seed}`, when(entry.saved)].join(" · ")));
      const open = B.render.el("button", "button small", "Open");
      open.type = "button";
      open.setAttribute("aria-label", `Open ${story.name} (seed ${request.seed})`);
      open.addEventListener("click", () => {
        app.reopen(story, request);
        $("story").focus();
      });
      const remove = B.render.el("button", "button small", "Delete");
      remove.type = "button";
      remove.setAttribute("aria-label", `Delete ${story.name} (seed ${request.seed})`);
      remove.addEventListener("click", () => {
        const next = item.nextElementSibling || item.previousElementSibling;
        B.history.remove(entry.id);
        renderHistory();
        // Keep keyboard focus in the list rather than losing it to the page.
        const id = next && next.dataset.id;
        (els.history.querySelector(`[data-id="${id}"] button`) || els.exportAll).focus();
      });
      item.dataset.id = entry.id;
      item.append(text, open, remove);
      els.history.append(item);
    }
  }

  document.addEventListener("backstory:done", (e) => {
    if (e.detail.reopened) return;  // already kept
    entryOf = new Map();
    for (const story of [...e.detail.stories].reverse()) {  // the first story ends on top
      entryOf.set(story, B.history.add(story, story.request).id);
    }
    renderHistory();
  });
  document.addEventListener("backstory:changed", (e) => {  // a re-rolled section
    const id = [...entryOf.entries()].find(([s]) => s.request === e.detail.request)?.[1];
    if (id) B.history.update(id, e.detail);
    renderHistory();
  });

  for (const button of els.exportTools.querySelectorAll("button[data-format]")) {
    button.addEventListener("click", () => exportStory(button.dataset.format));
  }
  els.exportAll.addEventListener("click", () => {
    const all = JSON.stringify(B.history.load().map(({ story }) => story), null, 2);
    download(new Blob([all], { type: "application/json" }), "backstories.json");
  });
  els.clear.addEventListener("click", () => {
    B.history.clear();
    renderHistory();
  });
  els.permalink.addEventListener("click", async () => {
    const story = app.current();
    const url = new URL(B.permalink(story.request), location.href).href;
    try {
      await navigator.clipboard.writeText(url);
      els.permalink.textContent = "Link copied";
    } catch {
      els.permalink.textContent = "Link in the address bar";  // show() keeps it there
    }
    setTimeout(() => { els.permalink.textContent = "Copy link"; }, 2000);
  });

  renderHistory();
  // A permalink: fill the form from the URL and write the same story again.
  const linked = B.fromUrl();
  if (linked) {
    app.fillForm(linked);
    app.submit();
  }
})();
