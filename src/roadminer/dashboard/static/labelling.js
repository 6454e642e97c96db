// The labelling page: keyboard (R roadwork, N no roadwork, S skip, U undo, arrows move) and clicks.
// State of the page for tests and scripts: window.__labelling = {ready, actions, focus, error}.
"use strict";
(function () {
  const grid = document.getElementById("grid");
  const statusEl = document.getElementById("status");
  const countsEl = document.getElementById("counts");
  const whoEl = document.getElementById("who");
  const filterEl = document.getElementById("filter");
  const KEYS = { r: "roadwork", n: "no_roadwork", s: "skip" };
  const NAMES = { roadwork: "roadwork", no_roadwork: "no roadwork", skip: "skipped" };
  const BUTTONS = { roadwork: "roadwork", no_roadwork: "no roadwork", skip: "skip" };
  let items = [];
  let counts = null;
  let focus = 0;
  const undoStack = []; // ids this page labelled, newest last
  const page = (window.__labelling = { ready: false, actions: 0, focus: 0, error: null });

  whoEl.value = localStorage.getItem("roadminer.labeller") || "human";
  whoEl.addEventListener("change", () => localStorage.setItem("roadminer.labeller", whoEl.value.trim() || "human"));
  filterEl.addEventListener("change", () => load());

  function say(text, err) {
    statusEl.textContent = text;
    statusEl.className = err ? "err" : "";
    page.error = err ? text : null;
  }

  function ago(ts) {
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function shortKey(hk) {
    return !hk ? "–" : hk.length <= 12 ? hk : hk.slice(0, 5) + "…" + hk.slice(-4);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function badge(it) {
    if (!it.labelled) return el("span", "badge", "unlabelled");
    const b = el("span", "badge " + it.label + " " + it.provenance, NAMES[it.label] + " · " + it.provenance);
    b.title = (it.labelled_by || "") + (it.teacher_probability != null ? " p=" + it.teacher_probability.toFixed(3) : "");
    return b;
  }

  function card(it, i) {
    const c = el("div", "item");
    c.dataset.id = it.id;
    c.dataset.label = it.label || "";
    c.dataset.provenance = it.provenance || "";
    const img = el("img");
    img.src = "../api/label/image/" + it.id;
    img.alt = it.id.slice(0, 12);
    img.loading = "lazy";
    c.appendChild(img);
    const r1 = el("div", "row");
    r1.appendChild(el("span", "p", "P = " + it.probability.toFixed(3)));
    r1.appendChild(badge(it));
    c.appendChild(r1);
    const tiers = el("div", "tiers");
    for (const [name, p] of Object.entries(it.tier_probs || {})) {
      const t = el("div", "tier");
      t.appendChild(el("span", "muted", name));
      const bar = el("span", "bar");
      const fill = el("i");
      fill.style.width = (100 * p).toFixed(1) + "%";
      bar.appendChild(fill);
      t.appendChild(bar);
      t.appendChild(el("span", "", p.toFixed(3)));
      tiers.appendChild(t);
    }
    c.appendChild(tiers);
    const chips = el("div", "chips");
    for (const r of it.reasons) chips.appendChild(el("span", "", r.replace(/_/g, " ")));
    c.appendChild(chips);
    const r2 = el("div", "row muted");
    r2.appendChild(el("span", "", "from " + shortKey(it.validator)));
    r2.appendChild(el("span", "", ago(it.ts)));
    r2.title = it.validator + " · " + new Date(it.ts * 1000).toISOString();
    c.appendChild(r2);
    const btns = el("div", "btns");
    for (const [k, v] of Object.entries(KEYS)) {
      const b = el("button", "", k.toUpperCase() + " " + BUTTONS[v]);
      b.addEventListener("click", (ev) => { ev.stopPropagation(); setFocus(i); label(v); });
      btns.appendChild(b);
    }
    c.appendChild(btns);
    c.addEventListener("click", () => setFocus(i));
    return c;
  }

  function render() {
    grid.textContent = "";
    if (!items.length) grid.appendChild(el("div", "empty", "Nothing to label here."));
    items.forEach((it, i) => grid.appendChild(card(it, i)));
    setFocus(Math.min(focus, Math.max(items.length - 1, 0)));
  }

  function setFocus(i) {
    const cards = grid.querySelectorAll(".item");
    cards.forEach((c) => c.classList.remove("focus"));
    if (!cards.length) return;
    focus = Math.max(0, Math.min(i, cards.length - 1));
    page.focus = focus;
    cards[focus].classList.add("focus");
    cards[focus].scrollIntoView({ block: "nearest" });
  }

  function replace(item) {
    const i = items.findIndex((x) => x.id === item.id);
    if (i < 0) return -1;
    items[i] = item;
    const old = grid.querySelectorAll(".item")[i];
    old.replaceWith(card(item, i));
    return i;
  }

  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const data = await r.json().catch(() => ({ error: "HTTP " + r.status }));
    if (!r.ok) throw new Error(data.error || "HTTP " + r.status);
    return data;
  }

  async function label(value) {
    const it = items[focus];
    if (!it) return;
    try {
      const res = await post("../api/label", { id: it.id, label: value, who: whoEl.value.trim() || "human" });
      undoStack.push(it.id);
      const i = replace(res.item);
      adjustCounts(it, res.item);
      page.actions += 1;
      say((res.changed ? "labelled " : "already ") + it.id.slice(0, 12) + " " + NAMES[value]);
      setFocus(i + 1 < items.length ? i + 1 : i);
    } catch (e) {
      say("could not label: " + e.message, true);
    }
  }

  async function undo() {
    const id = undoStack.pop();
    if (!id) { say("nothing to undo on this page"); return; }
    const before = items.find((x) => x.id === id);
    try {
      const res = await post("../api/label/undo", { id: id, who: whoEl.value.trim() || "human" });
      const i = replace(res.item);
      if (before) adjustCounts(before, res.item);
      page.actions += 1;
      say("undid " + id.slice(0, 12) + (res.item.labelled ? " (now " + NAMES[res.item.label] + ", " + res.item.provenance + ")" : ""));
      if (i >= 0) setFocus(i);
    } catch (e) {
      say("could not undo: " + e.message, true);
    }
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.target === whoEl || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key.toLowerCase();
    if (KEYS[k]) { ev.preventDefault(); label(KEYS[k]); }
    else if (k === "u") { ev.preventDefault(); undo(); }
    else if (k === "arrowright" || k === "j") { ev.preventDefault(); setFocus(focus + 1); }
    else if (k === "arrowleft" || k === "k") { ev.preventDefault(); setFocus(focus - 1); }
  });

  function showCounts(c) {
    countsEl.textContent = c.needs_human + " need a human · " + c.labelled + " labelled · " + c.all + " queued";
  }

  function adjustCounts(before, after) {
    // The server counted once at load; each label or undo moves one item between the counts.
    if (!counts) return;
    counts.needs_human += (before.provenance === "human") - (after.provenance === "human");
    counts.labelled += (after.labelled ? 1 : 0) - (before.labelled ? 1 : 0);
    showCounts(counts);
  }

  async function load() {
    page.ready = false;
    try {
      const r = await fetch("../api/label/items?status=" + encodeURIComponent(filterEl.value), { credentials: "same-origin" });
      const data = await r.json();
      if (!r.ok) throw new Error(data.error || "HTTP " + r.status);
      items = data.items;
      counts = data.counts;
      showCounts(counts);
      focus = 0;
      render();
      say(items.length ? "focus on the first image; R / N / S label it" : "");
    } catch (e) {
      say("could not load the queue: " + e.message, true);
    }
    page.ready = true;
  }

  load();
})();
