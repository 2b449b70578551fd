// History kept in this browser (localStorage; nothing is stored on the server) and permalinks
// (the URL query carries a story's inputs, settings and seed: opening it regenerates the story).
"use strict";

window.Backstory = window.Backstory || {};

(() => {
  const KEY = "backstory-history";
  const MAX = 50;  // the last stories; older ones fall off
  // What regenerates one story: the inputs, the controls, the sampling option and the seed.
  const REQUEST_FIELDS = ["name", "description", "genre", "tone", "length", "pov", "setting",
                          "structure", "temperature", "seed"];

  function load() {
    try {
      const items = JSON.parse(localStorage.getItem(KEY) || "[]");
      return Array.isArray(items) ? items : [];
    } catch {
      return [];  // unreadable (edited by hand, or storage disabled): start again
    }
  }

  function save(items) {
    try {
      localStorage.setItem(KEY, JSON.stringify(items.slice(0, MAX)));
    } catch { /* storage full or disabled: history is best effort */ }
  }

  // A story written again (a permalink reloaded) replaces its older copy instead of piling up.
  function add(story, request) {
    const id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    const entry = { id, saved: new Date().toISOString(), story, request };
    const same = (e) => e.story.backstory === story.backstory
      && JSON.stringify(e.request) === JSON.stringify(request);
    save([entry, ...load().filter((e) => !same(e))]);
    return entry;
  }

  function update(id, story) {
    save(load().map((e) => (e.id === id ? { ...e, story } : e)));
  }

  function remove(id) {
    save(load().filter((e) => e.id !== id));
  }

  function clear() {
    try { localStorage.removeItem(KEY); } catch { /* nothing to clear */ }
  }

  // Only the fields that regenerate the story, as text, empty ones left out.
  function requestOf(fields) {
    const out = {};
    for (const f of REQUEST_FIELDS) {
      const v = fields[f];
      if (v !== undefined && v !== null && v !== "") out[f] = v;
    }
    return out;
  }

  function permalink(request) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(requestOf(request))) query.set(k, String(v));
    return `${location.pathname}?${query}`;
  }

  function fromUrl() {
    const query = new URLSearchParams(location.search);
    if (!query.get("name") || !query.get("description")) return null;
    const out = {};
    for (const f of REQUEST_FIELDS) if (query.has(f)) out[f] = query.get(f);
    return out;
  }

  Object.assign(window.Backstory, {
    history: { load, add, update, remove, clear }, permalink, fromUrl, requestOf,
  });
})();
