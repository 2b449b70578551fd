// Backstory Generator: the page's main script (the CSP forbids inline code). store.js and
// render.js load before it, extras.js (export, history, permalink, re-roll) after it.
// Rule: user and model text only ever reaches the DOM through textContent / text nodes.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const els = {
    name: $("name"), description: $("description"), count: $("description-count"),
    length: $("length"), temperature: $("temperature"), seed: $("seed"),
    genre: $("genre"), tone: $("tone"), pov: $("pov"), structure: $("structure"), n: $("n"),
    setting: $("setting"), settingCount: $("setting-count"), roster: $("roster"),
    rosterField: $("roster-field"), modeRoster: $("mode-roster"), tabs: $("tabs"),
    permalink: $("permalink"), exportTools: $("export"),
    apiKeyField: $("api-key-field"), apiKey: $("api-key"),
    generate: $("generate"), generateLabel: $("generate-label"), stop: $("stop"),
    story: $("story"), meta: $("meta"), regenerate: $("regenerate"), copy: $("copy"),
    error: $("error"), errorText: $("error-text"), errorDismiss: $("error-dismiss"),
    example: $("example"), serverStatus: $("server-status"),
  };
  const LIMITS = { name: +form.dataset.nameMax, description: +form.dataset.descriptionMax,
                   setting: +form.dataset.settingMax };
  const ROSTER_MAX = 16;
  const CONTROLS = ["genre", "tone", "length", "pov", "structure"];  // selects sent as is
  // Mirrors backstory/text.py: C0/C1 controls (tab and newline allowed) and line separators.
  const CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]/;
  const KEY_STORE = "backstory-api-key";
  const HEADINGS = JSON.parse(form.dataset.sections);  // sections mode: key -> heading
  const EXAMPLES = [
    ["Kaylon", "An empire of androids that killed their biological creators."],
    ["Maren Vell", "A lighthouse keeper who bargains with the drowned to keep her island fed."],
    ["Oskar Thrane", "A disgraced royal cartographer who maps places that do not exist yet."],
  ];
  // Server field names (422 detail) -> the control that shows their error.
  const FIELDS = { name: els.name, description: els.description, length: els.length,
                   max_new_tokens: els.length, temperature: els.temperature, seed: els.seed,
                   genre: els.genre, tone: els.tone, pov: els.pov, structure: els.structure,
                   n: els.n, setting: els.setting, characters: els.roster };

  let controller = null;       // AbortController of the generation in flight
  let lastRequest = null;      // inputs of the last generation, for Regenerate
  let storyText = "";          // the story as plain text (what Copy copies)
  let stories = [];            // the finished stories shown (candidates or a roster: tabs)
  let current = 0;             // which of them is shown
  let exampleIndex = 0;

  // ---------- story rendering ----------

  // Paragraphs are separated by blank lines; we rebuild only what changed, once per frame.
  let renderQueued = false;
  function renderStory() {
    renderQueued = false;
    if (!storyText) return;  // nothing written yet: keep the placeholder or the empty panel
    const paragraphs = storyText.split(/\n\s*\n/);
    const nodes = els.story.querySelectorAll("p.story-paragraph");
    if (nodes.length === 0) els.story.replaceChildren();  // drop the placeholder
    paragraphs.forEach((text, i) => {
      let p = nodes[i];
      if (!p) {
        p = document.createElement("p");
        p.className = "story-paragraph";
        els.story.appendChild(p);
      }
      if (p.textContent !== text) p.textContent = text;
    });
    for (let i = paragraphs.length; i < nodes.length; i++) nodes[i].remove();
  }
  function queueRender() {
    if (!renderQueued) {
      renderQueued = true;
      requestAnimationFrame(renderStory);
    }
  }
  function resetStory() {
    storyText = "";
    els.story.replaceChildren();
    els.meta.textContent = "";
    els.regenerate.hidden = els.copy.hidden = els.permalink.hidden = true;
    els.exportTools.hidden = els.tabs.hidden = true;
  }
  function setState(state) {
    els.story.dataset.state = state;
    els.story.setAttribute("aria-busy", String(state === "streaming"));
  }

  // ---------- errors ----------

  function showError(message) {
    els.errorText.textContent = message;
    els.error.hidden = false;
  }
  function clearErrors() {
    els.error.hidden = true;
    els.errorText.textContent = "";
    for (const control of Object.values(FIELDS)) setFieldError(control, "");
  }
  function setFieldError(control, message) {
    const note = $(`${control.id}-error`);
    note.textContent = message;
    note.hidden = !message;
    // The error joins the field's description only while it is shown.
    const ids = (control.getAttribute("aria-describedby") || "").split(/\s+/)
      .filter((id) => id && id !== note.id);
    if (message) {
      ids.push(note.id);
      control.setAttribute("aria-invalid", "true");
      const options = control.closest("details");
      if (options) options.open = true;  // an error in a closed section would go unseen
    } else {
      control.removeAttribute("aria-invalid");
    }
    if (ids.length) control.setAttribute("aria-describedby", ids.join(" "));
    else control.removeAttribute("aria-describedby");
  }

  // ---------- inputs ----------

  function updateCounter() {
    for (const [input, count, limit] of [[els.description, els.count, LIMITS.description],
                                         [els.setting, els.settingCount, LIMITS.setting]]) {
      const used = [...input.value].length;
      count.textContent = `${used} / ${limit}`;
      count.classList.toggle("near-limit", used > limit * 0.9);
    }
  }

  const rosterMode = () => els.modeRoster.checked;

  // Roster lines "name: description" -> characters, or an error message.
  function parseRoster(text) {
    const lines = text.split("\n").map((l) => l.trim()).filter(Boolean);
    if (!lines.length) return { error: "Enter one character per line: name: description." };
    if (lines.length > ROSTER_MAX) return { error: `At most ${ROSTER_MAX} characters.` };
    const characters = [];
    for (const [i, line] of lines.entries()) {
      const colon = line.indexOf(":");
      const name = line.slice(0, colon).trim();
      const description = line.slice(colon + 1).trim();
      if (colon < 0 || !name || !description) {
        return { error: `Line ${i + 1}: write it as name: description.` };
      }
      if ([...name].length > LIMITS.name || [...description].length > LIMITS.description
          || CONTROL.test(line)) {
        return { error: `Line ${i + 1}: too long, or it has control characters.` };
      }
      characters.push({ name, description });
    }
    return { characters };
  }

  // Client-side checks mirror the server's (required, trimmed, length, no control characters);
  // the server still decides. Returns the request body, or null after showing the errors.
  function readInputs() {
    const errors = {};
    const body = {};
    if (rosterMode()) {
      const { characters, error } = parseRoster(els.roster.value);
      if (error) errors.characters = error;
      body.characters = characters;
    }
    for (const field of rosterMode() ? [] : ["name", "description"]) {
      const raw = FIELDS[field].value;
      const label = field === "name" ? "a name" : "a description";
      if (!raw.trim()) errors[field] = `Please enter ${label}.`;
      else if ([...raw].length > LIMITS[field]) {
        errors[field] = `Keep it under ${LIMITS[field] + 1} characters.`;
      } else if (CONTROL.test(raw)) errors[field] = "Remove the control characters.";
      body[field] = raw.trim();
    }
    for (const field of CONTROLS) if (FIELDS[field].value) body[field] = FIELDS[field].value;
    const setting = els.setting.value.trim();
    if (setting) {
      if ([...setting].length > LIMITS.setting) {
        errors.setting = `Keep it under ${LIMITS.setting + 1} characters.`;
      } else if (CONTROL.test(setting)) errors.setting = "Remove the control characters.";
      body.setting = setting;
    }
    if (!rosterMode() && els.n.value !== "1") body.n = Number(els.n.value);
    if (els.temperature.value) body.temperature = Number(els.temperature.value);
    const seed = els.seed.value.trim();
    if (seed) {
      if (!/^\d{1,10}$/.test(seed) || Number(seed) > 0xffffffff) {
        errors.seed = "A whole number from 0 to 4294967295.";
      }
      body.seed = Number(seed);
    }
    for (const [field, message] of Object.entries(errors)) setFieldError(FIELDS[field], message);
    const first = Object.keys(errors)[0];
    if (first) {
      showError(Object.keys(errors).length > 1 ? "Please fix the highlighted fields."
                                               : errors[first]);
      FIELDS[first].focus();
      return null;
    }
    return body;
  }

  function randomSeed() {
    return crypto.getRandomValues(new Uint32Array(1))[0];
  }

  // ---------- HTTP ----------

  function headers(extra) {
    const h = { Accept: "application/json, text/event-stream", ...extra };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) h["X-API-Key"] = key;
    return h;
  }

  class HttpError extends Error {
    constructor(status, message, detail, retryAfter) {
      super(message);
      Object.assign(this, { status, detail: detail || [], retryAfter });
    }
  }

  async function httpError(response) {
    let body = {};
    try { body = await response.json(); } catch { /* not JSON: fall back to the status */ }
    const message = body.error || `The server answered ${response.status} ${response.statusText}.`;
    return new HttpError(response.status, message, body.detail,
                         response.headers.get("Retry-After"));
  }

  // A minimal Server-Sent Events parser over fetch(), because EventSource cannot send headers.
  async function* readEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = { type: "message", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = done ? "" : lines.pop();  // keep a partial last line for the next chunk
      for (const line of lines) {
        if (line === "") {  // a blank line dispatches the event
          if (event.data.length) yield { type: event.type, data: event.data.join("\n") };
          event = { type: "message", data: [] };
        } else if (!line.startsWith(":")) {  // ":" lines are comments (keep-alives)
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event.type = value;
          else if (field === "data") event.data.push(value);
        }
      }
      if (done) return;
    }
  }

  async function streamStory(body, signal, onToken) {
    const query = new URLSearchParams(body);
    const response = await fetch(`/api/stream?${query}`, { headers: headers(), signal });
    if (!response.ok) throw await httpError(response);
    if (!response.body || typeof response.body.getReader !== "function") {
      response.body?.cancel?.();
      throw new TypeError("streaming is not supported here");
    }
    for await (const event of readEvents(response)) {
      const data = JSON.parse(event.data);
      if (event.type === "token") onToken(data.text);
      else if (event.type === "done") return data;
      else if (event.type === "error") throw new HttpError(data.status || 500, data.error);
    }
    throw new HttpError(0, "The connection closed before the story was finished.");
  }

  async function postJson(url, body, signal) {
    const response = await fetch(url, {
      method: "POST", headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body), signal,
    });
    if (!response.ok) throw await httpError(response);
    return response.json();
  }

  // ---------- the generation flow ----------

  function setBusy(busy, label) {
    els.generate.disabled = busy;
    els.generate.classList.toggle("busy", busy);
    els.generateLabel.textContent = label || "Generate backstory";
    els.stop.hidden = !busy;
    els.regenerate.disabled = busy;
  }

  async function run(body) {
    clearErrors();
    controller?.abort();
    controller = new AbortController();
    const { signal } = controller;
    lastRequest = body;
    resetStory();
    setState("streaming");
    setBusy(true, "Summoning…");
    let tokens = 0;
    // A run replaced by another (or by a story reopened from history) leaves the page alone.
    const superseded = () => controller?.signal !== signal;
    const onToken = (text) => {
      if (superseded()) return;
      tokens += 1;
      storyText += text;
      setBusy(true, `Writing… ${tokens} tokens`);
      queueRender();
    };
    try {
      let results;
      if (body.characters) {  // a roster: one request, written together in one batch
        setBusy(true, `Writing ${body.characters.length} stories…`);
        results = (await postJson("/api/roster", body, signal)).stories;
      } else if (body.n > 1) {  // candidates come whole, side by side as tabs
        setBusy(true, `Writing ${body.n} candidates…`);
        results = (await postJson("/api/generate", body, signal)).candidates;
      } else {
        try {
          results = [await streamStory(body, signal, onToken)];
        } catch (e) {
          // A network-level failure (not an HTTP answer, not Stop): try once without streaming.
          if (!(e instanceof TypeError) || signal.aborted) throw e;
          resetStory();
          setBusy(true, "Writing…");
          results = [await postJson("/api/generate", body, signal)];
        }
      }
      if (!superseded()) finish(results, body);
    } catch (e) {
      if (!superseded()) fail(e, signal);
    } finally {
      if (controller?.signal === signal) {
        controller = null;
        setBusy(false);
      }
    }
  }

  // The finished stories (one, n candidates or a roster), each with the request that
  // regenerates it alone (its permalink: same seed, same story).
  function finish(results, body, reopened = false) {
    stories = results.map((story) => ({
      ...story,
      request: story.request || window.Backstory.requestOf({
        ...body, name: story.name, description: story.description, seed: story.seed }),
    }));
    setState("done");
    const labels = stories.map((s, i) => (body.characters ? s.name : `#${i + 1} · seed ${s.seed}`));
    window.Backstory.render.tabs(els.tabs, labels, 0, show);
    show(0);
    els.regenerate.hidden = els.copy.hidden = els.permalink.hidden = false;
    els.exportTools.hidden = false;
    els.copy.textContent = "Copy";
    document.dispatchEvent(new CustomEvent("backstory:done", { detail: { stories, reopened } }));
  }

  function show(i) {
    current = i;
    const story = stories[i];
    storyText = story.backstory;
    window.Backstory.render.selectTab(els.tabs, i);
    els.story.replaceChildren();
    if (story.sections) {
      window.Backstory.render.sections(els.story, story, HEADINGS, reroll);
    } else {
      renderStory();
    }
    showMeta(story);
    history.replaceState(null, "", window.Backstory.permalink(story.request));
  }

  function showMeta(story) {
    // One span per item, so that "seed 1234567" never breaks across lines on a phone.
    els.meta.replaceChildren();
    const items = [story.model, `${story.tokens} tokens`, `${Number(story.seconds).toFixed(1)} s`,
                   `seed ${story.request.seed}`];
    if (story.rerolled) items.push(`re-rolled with seed ${story.seed}`);
    items.forEach((text, i) => {
      if (i) els.meta.append(" · ");
      els.meta.append(window.Backstory.render.el("span", "meta-item", text));
    });
    els.meta.dataset.seed = story.request.seed;
  }

  // Sections mode: write one section again with a new seed, the others kept as context.
  async function reroll(section, button) {
    const story = stories[current];
    button.disabled = true;
    button.textContent = "Writing…";
    clearErrors();
    try {
      const body = { ...story.request, structure: "sections", section,
                     context: story.sections, seed: randomSeed() };
      const result = await postJson("/api/reroll", body);
      stories[current] = { ...story, backstory: result.backstory, sections: result.sections,
                           seed: result.seed, rerolled: true };
      show(current);
      els.story.querySelector(`[data-section="${section}"] .reroll`)?.focus();
      document.dispatchEvent(new CustomEvent("backstory:changed", { detail: stories[current] }));
    } catch (e) {
      button.disabled = false;
      button.textContent = "Re-roll";
      showError(e instanceof HttpError ? e.message : "Could not re-roll the section.");
    }
  }

  // Fill the form from a story's request (a permalink, or a story reopened from history).
  function fillForm(request) {
    $("mode-one").checked = true;
    syncMode();
    els.name.value = request.name || "";
    els.description.value = request.description || "";
    for (const field of CONTROLS) FIELDS[field].value = request[field] || "";
    els.setting.value = request.setting || "";
    els.temperature.value = request.temperature || "";
    els.seed.value = request.seed ?? "";
    els.n.value = "1";
    updateCounter();
  }

  // Reopen a kept story as it was, without asking the server.
  function reopen(story, request) {
    const running = controller;
    controller = null;  // the run in flight (if any) is superseded: it stops and stays quiet
    running?.abort();
    setBusy(false);
    clearErrors();
    resetStory();
    fillForm(request);
    finish([story], request, true);
  }

  function syncMode() {
    const roster = rosterMode();
    els.rosterField.hidden = !roster;
    for (const node of form.querySelectorAll(".single")) node.hidden = roster;
    els.n.disabled = roster;
  }

  function fail(e, signal) {
    if (signal.aborted) {  // Stop: keep what was written so far
      renderStory();
      setState("idle");
      els.meta.textContent = storyText ? "Stopped before the end." : "";
      els.regenerate.hidden = false;
      els.copy.hidden = !storyText;
      if (!storyText) els.story.replaceChildren(placeholder());
      return;
    }
    renderStory();
    setState("error");
    if (!storyText) els.story.replaceChildren(placeholder());
    if (!(e instanceof HttpError)) {
      console.warn("generation failed", e);  // for developers; the alert is for people
      showError(e instanceof TypeError
        ? "Could not reach the server. Check your connection and try again."
        : "Something went wrong while writing the story. Please try again.");
      return;
    }
    if (e.status === 401) {
      showApiKey();
      const hadKey = Boolean(sessionStorage.getItem(KEY_STORE));
      showError(hadKey ? "That API key was not accepted. Check it and try again."
                       : "This server needs an API key. Enter it below and generate again.");
      els.apiKey.focus();
      return;
    }
    for (const { field, message } of e.detail) {
      const control = FIELDS[field] || FIELDS[field.split(".")[0]];
      if (control) setFieldError(control, message);
    }
    const wait = e.retryAfter ? ` Try again in ${e.retryAfter} s.` : "";
    showError(`${e.message}${/[.!?]$/.test(e.message) ? "" : "."}${wait}`);
  }

  function placeholder() {
    const p = document.createElement("p");
    p.className = "story-placeholder";
    p.textContent = "Your backstory will unfold here, word by word.";
    return p;
  }

  function showApiKey() {
    els.apiKeyField.hidden = false;
  }

  // ---------- copy ----------

  async function copyStory() {
    const done = (label) => {
      els.copy.textContent = label;
      setTimeout(() => { els.copy.textContent = "Copy"; }, 2000);
    };
    try {
      await navigator.clipboard.writeText(storyText);
      return done("Copied");
    } catch { /* no clipboard API or no permission: try the old way */ }
    const scratch = document.createElement("textarea");
    scratch.value = storyText;
    scratch.className = "offscreen";
    scratch.setAttribute("readonly", "");
    document.body.appendChild(scratch);
    scratch.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch { ok = false; }
    scratch.remove();
    if (ok) return done("Copied");
    // Last resort: select the story so the person can copy it themselves.
    getSelection().selectAllChildren(els.story);
    done("Press Ctrl+C");
  }

  // ---------- wiring ----------

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (controller) return;
    clearErrors();
    const body = readInputs();
    if (!body) return;
    if (body.seed === undefined) body.seed = randomSeed();  // shown in meta, reproducible
    run(body);
  });
  els.description.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  els.description.addEventListener("input", updateCounter);
  els.setting.addEventListener("input", updateCounter);
  for (const radio of form.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", syncMode);
  }
  window.Backstory.render.tabKeys(els.tabs, show);
  for (const control of Object.values(FIELDS)) {
    control.addEventListener("input", () => setFieldError(control, ""));
  }
  els.stop.addEventListener("click", () => controller?.abort());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && controller) controller.abort();
  });
  els.regenerate.addEventListener("click", () => {
    if (lastRequest && !controller) run({ ...lastRequest, seed: randomSeed() });
  });
  els.roster.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  els.copy.addEventListener("click", copyStory);
  els.errorDismiss.addEventListener("click", () => {
    els.error.hidden = true;
  });
  els.apiKey.addEventListener("input", () => {
    const key = els.apiKey.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  });
  els.example.addEventListener("click", () => {
    const [name, description] = EXAMPLES[exampleIndex];
    exampleIndex = (exampleIndex + 1) % EXAMPLES.length;
    const [nextName, nextDescription] = EXAMPLES[exampleIndex];
    els.name.value = name;
    els.description.value = description;
    setFieldError(els.name, "");
    setFieldError(els.description, "");
    updateCounter();
    els.example.textContent =
      `Try: ${nextName} — ${nextDescription.replace(/\.$/, "").replace(/^./, (c) => c.toLowerCase())}`;
    els.generate.focus();
  });

  // A key from earlier in this tab's session is reused and its field shown.
  // What extras.js (export, history, permalink) needs from the page.
  window.Backstory.app = {
    current: () => stories[current], headers, httpError, showError, fillForm, reopen,
    submit: () => form.requestSubmit(), busy: () => Boolean(controller),
  };
  syncMode();

  const savedKey = sessionStorage.getItem(KEY_STORE);
  if (savedKey) {
    els.apiKey.value = savedKey;
    showApiKey();
  }
  updateCounter();

  // The footer says whether the model is up; /status is public (no key needed).
  fetch("/status", { headers: { Accept: "application/json" } })
    .then((r) => r.json())
    .then((s) => {
      const ok = s.status === "ok";
      els.serverStatus.textContent = ok ? `Model ${s.model} on ${s.device} · ready`
                                        : "The model is not ready yet";
      els.serverStatus.classList.add(ok ? "ok" : "down");
    })
    .catch(() => {
      els.serverStatus.textContent = "Server status unknown";
    });
})();
