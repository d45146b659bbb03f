// crowdseg QA report: gallery filters, reviewer decisions (kept in localStorage) and the threshold explorer.
// Plain ES2017, no dependencies; every dynamic string goes in through textContent or value, never innerHTML.
(() => {
  "use strict";
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const json = (id) => JSON.parse(document.getElementById(id).textContent);
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");

  // ---- reviewer decisions -------------------------------------------------------------------------------------
  const meta = json("report-meta");
  const KEY = "crowdseg-decisions:" + meta.build_id;
  let decisions = {};
  try {
    decisions = JSON.parse(localStorage.getItem(KEY) || "{}") || {};
  } catch (e) {
    decisions = {}; // storage blocked or corrupt: decisions live in memory until downloaded
  }
  const save = () => {
    try {
      localStorage.setItem(KEY, JSON.stringify(decisions));
    } catch (e) {
      // storage blocked: keep them in memory
    }
  };
  const cards = $$(".card[data-photo]");
  const bar = document.getElementById("gallery-filters"); // absent when no photo is flagged

  function showDecision(card) {
    const d = decisions[card.dataset.photo] || {};
    $$("button[data-decision]", card).forEach((b) => {
      b.setAttribute("aria-pressed", String(b.dataset.decision === d.decision));
    });
    const note = $("input.note", card);
    if (note !== document.activeElement) note.value = d.note || "";
    card.dataset.decided = d.decision || "";
  }

  function setDecision(card, decision, note) {
    const id = card.dataset.photo;
    const d = { decision: decision, note: note };
    if (d.decision || d.note) decisions[id] = d;
    else delete decisions[id];
    save();
    showDecision(card);
    summarize();
    applyFilters();
  }

  function summarize() {
    const n = Object.values(decisions).filter((d) => d.decision).length;
    $("#decision-count").textContent = n === 1 ? "1 decision" : n + " decisions";
    $("#download-decisions").disabled = n === 0;
  }

  const csvCell = (s) => (/[",\r\n]|^\s|\s$/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s);

  function decisionsCsv() {
    const ids = Object.keys(decisions).filter((id) => decisions[id].decision).sort();
    const rows = ids.map((id) => [id, decisions[id].decision, decisions[id].note || ""].map(csvCell).join(","));
    return ["photo_id,decision,note", ...rows].join("\n") + "\n";
  }

  function download() {
    const url = URL.createObjectURL(new Blob([decisionsCsv()], { type: "text/csv;charset=utf-8" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "decisions.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  cards.forEach((card) => {
    showDecision(card);
    $$("button[data-decision]", card).forEach((b) =>
      b.addEventListener("click", () => {
        const current = (decisions[card.dataset.photo] || {}).decision;
        setDecision(card, current === b.dataset.decision ? "" : b.dataset.decision, $("input.note", card).value);
      }),
    );
    $("input.note", card).addEventListener("input", (e) => {
      setDecision(card, (decisions[card.dataset.photo] || {}).decision || "", e.target.value);
    });
  });
  if (bar) $("#download-decisions").addEventListener("click", download);

  // ---- gallery filters ----------------------------------------------------------------------------------------
  const keys = new Map(cards.map((c) => [c, JSON.parse(c.dataset.keys).map((k) => k.split("/"))]));

  function applyFilters() {
    const check = $("#filter-check").value;
    const severities = new Set($$("input[name=severity]:checked").map((i) => i.value));
    const decided = $("#filter-decision").value;
    let shown = 0;
    cards.forEach((card) => {
      const findings = keys.get(card).some(([c, s]) => (!check || c === check) && severities.has(s));
      const d = card.dataset.decided;
      const decision = !decided || (decided === "none" ? !d : d === decided);
      card.hidden = !(findings && decision);
      if (!card.hidden) shown += 1;
    });
    $("#filter-count").textContent = shown + " of " + cards.length + " photos shown";
  }

  if (bar) {
    $$("select, input", bar).forEach((el) => el.addEventListener("change", applyFilters));
    summarize();
    applyFilters();
  }

  // ---- threshold explorer -------------------------------------------------------------------------------------
  const explorer = document.getElementById("threshold-data");
  if (explorer) {
    const data = JSON.parse(explorer.textContent);
    const slider = $("#threshold-slider");
    const update = () => {
      const k = Number(slider.value);
      $("#threshold-value").textContent = data.grid[k].toFixed(2);
      data.classes.forEach((c, i) => {
        const row = $$("#threshold-table tbody tr")[i];
        const share = c.share[k];
        $(".at-share", row).textContent = pct(share);
        $(".bar > span", row).style.width = share === null ? "0" : (100 * share).toFixed(1) + "%";
        const known = share !== null && c.current_share !== null;
        const delta = known ? Math.round((share - c.current_share) * c.photos) : null;
        $(".at-delta", row).textContent = delta === null ? "–" : (delta > 0 ? "+" : "") + delta.toLocaleString("en");
        $(".at-delta", row).className = "num at-delta " + (delta > 0 ? "up" : delta < 0 ? "down" : "");
        const gold = $(".at-gold", row);
        if (gold) gold.textContent = c.gold[k] === null ? "–" : c.gold[k].toFixed(3) + " (" + c.gold_photos[k] + ")";
      });
    };
    slider.addEventListener("input", update);
    update();
  }
})();
