// Rendering helpers: a story's sections (with their re-roll buttons) and the tabs that switch
// between candidates or roster members. Text only ever reaches the DOM as text.
"use strict";

window.Backstory = window.Backstory || {};

(() => {
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // One <section> per heading, in order; a missing one says so (and can be re-rolled).
  function sections(container, story, headings, onReroll) {
    container.replaceChildren();
    for (const [key, heading] of Object.entries(headings)) {
      const text = (story.sections && story.sections[key]) || "";
      const section = el("section", "story-section");
      section.dataset.section = key;
      const head = el("div", "section-head");
      const title = el("h3", "section-title", heading);
      title.id = `section-${key}`;
      section.setAttribute("aria-labelledby", title.id);
      const button = el("button", "button small reroll", "Re-roll");
      button.type = "button";
      button.setAttribute("aria-label", `Re-roll ${heading}`);
      button.addEventListener("click", () => onReroll(key, button));
      head.append(title, button);
      section.append(head, text
        ? el("p", "story-paragraph", text)
        : el("p", "section-missing", "Missing: the model did not write this section."));
      container.append(section);
    }
  }

  // WAI-ARIA tabs: one tab stop, arrows / Home / End move between tabs and select them.
  function tabs(list, labels, current, onSelect) {
    list.replaceChildren();
    list.hidden = labels.length < 2;
    labels.forEach((label, i) => {
      const tab = el("button", "tab", label);
      tab.type = "button";
      tab.id = `tab-${i}`;
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-controls", "story");
      tab.setAttribute("aria-selected", String(i === current));
      tab.tabIndex = i === current ? 0 : -1;
      tab.addEventListener("click", () => onSelect(i));
      list.append(tab);
    });
  }

  function selectTab(list, i) {
    [...list.children].forEach((tab, j) => {
      tab.setAttribute("aria-selected", String(i === j));
      tab.tabIndex = i === j ? 0 : -1;
    });
  }

  function tabKeys(list, onSelect) {
    list.addEventListener("keydown", (e) => {
      const all = [...list.children];
      const at = all.indexOf(document.activeElement);
      if (at < 0) return;
      const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: all.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      const i = (next + all.length) % all.length;
      onSelect(i);
      all[i].focus();
    });
  }

  window.Backstory.render = { el, sections, tabs, selectTab, tabKeys };
})();
