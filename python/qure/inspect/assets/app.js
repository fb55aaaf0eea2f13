// qure inspect: the viewer. Data arrive as <script> files (data/summary.js, data/pNNNNN.js)
// calling the two globals below, because browsers refuse fetch() of JSON from file:// pages.
"use strict";
(function () {
  const ROWS_PER_LIST_PAGE = 50;
  const MAX_CACHED_PAGES = 24;
  const SVG = "http://www.w3.org/2000/svg";
  const state = {
    s: null,            // the summary
    order: null,        // Int32Array: query indices of the list (filtered and sorted)
    pos: new Int32Array(0), // query index -> position in order (-1: filtered out)
    listPage: 0,
    current: -1,
    pages: new Map(),   // data page number -> decoded page
    waiting: new Map(), // data page number -> [resolve, reject][]
    lower: null,        // lower-cased ids and texts, built on the first search
    sortKey: "q",
    logX: true,         // the score curve's x axis
    descending: false,
    query: "",
    token: 0,
  };
  const $ = (id) => document.getElementById(id);
  const fmtInt = (v) => Number(v).toLocaleString("en-US");
  const fmtScore = (v) => (Number.isFinite(v) ? v.toFixed(4) : "–");
  const fmtGrade = (v) => (v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(2));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function float32(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  window.qureInspectFailed = function (src) {
    const main = $("detail");
    main.replaceChildren(el("p", { class: "error", text: "Could not load " + src + ": is the page's data folder next to index.html?" }));
    document.body.dataset.state = "error";
  };

  window.qureInspectSummary = function (summary) {
    state.s = summary;
    try {
      boot();
    } catch (err) {
      $("detail").replaceChildren(el("p", { class: "error", text: "The page failed to start: " + err }));
      document.body.dataset.state = "error";
      throw err;
    }
  };

  window.qureInspectPage = function (k, page) {
    const w = state.s.window, t = state.s.top;
    page.curveValues = float32(page.curve);
    page.gradeValues = page.grades ? float32(page.grades) : null;
    page.row = (i) => ({
      curve: page.curveValues.subarray(i * w, (i + 1) * w),
      grades: page.gradeValues ? page.gradeValues.subarray(i * t, (i + 1) * t) : null,
    });
    state.pages.set(k, page);
    if (state.pages.size > MAX_CACHED_PAGES) state.pages.delete(state.pages.keys().next().value);
    for (const [resolve] of state.waiting.get(k) || []) resolve(page);
    state.waiting.delete(k);
  };

  function loadPage(k) {
    if (state.pages.has(k)) return Promise.resolve(state.pages.get(k));
    return new Promise((resolve, reject) => {
      const list = state.waiting.get(k);
      if (list) { list.push([resolve, reject]); return; }
      state.waiting.set(k, [[resolve, reject]]);
      const src = "data/p" + String(k).padStart(5, "0") + ".js";
      const tag = document.createElement("script");
      tag.src = src;
      tag.onload = () => tag.remove();
      tag.onerror = () => {
        tag.remove();
        for (const [, fail] of state.waiting.get(k) || []) fail(new Error("could not load " + src));
        state.waiting.delete(k);
      };
      document.head.append(tag);
    });
  }

  // ---- the list: search, sort, paging

  function col(name) { return state.s.columns[name]; }
  function queryId(q) { const ids = col("id"); return ids ? ids[q] : String(q); }
  function sortKeys() {
    const s = state.s, keys = [["q", "query order"], ["rank", "target rank"]];
    if (s.bands) keys.push(["band_size", "band size"], ["band_start", "band start rank"]);
    if (s.relevance) {
      if (s.bands) keys.push(["fn_band", "false negatives in the band"], ["fn_above", "false negatives above the band"]);
      keys.push(["fn_top", "false negatives in the top " + s.top], ["fn_total", "false negatives, all"]);
    }
    return keys;
  }

  function rebuildOrder() {
    const s = state.s, n = s.queries;
    let idx = [];
    const needle = state.query.trim().toLowerCase();
    if (needle) {
      if (!state.lower) {
        const ids = col("id"), texts = col("text");
        state.lower = new Array(n);
        for (let q = 0; q < n; q++) {
          state.lower[q] = ((ids ? ids[q] : String(q)) + "\u0000" + (texts ? texts[q] : "")).toLowerCase();
        }
      }
      for (let q = 0; q < n; q++) if (state.lower[q].includes(needle)) idx.push(q);
    } else {
      idx = Array.from({ length: n }, (_, q) => q);
    }
    const key = state.sortKey, sign = state.descending ? -1 : 1;
    if (key !== "q") {
      const values = col(key);
      idx.sort((a, b) => {
        const va = values[a], vb = values[b];
        if (va < 0 || vb < 0) return va < 0 && vb < 0 ? a - b : va < 0 ? 1 : -1; // unknown last
        return va === vb ? a - b : sign * (va - vb);
      });
    } else if (state.descending) {
      idx.reverse();
    }
    state.order = Int32Array.from(idx);
    state.pos = new Int32Array(n).fill(-1);
    state.order.forEach((q, i) => { state.pos[q] = i; });
  }

  function listPages() { return Math.max(1, Math.ceil(state.order.length / ROWS_PER_LIST_PAGE)); }

  function renderHead() {
    const s = state.s;
    const cells = [["id", "Query", "query id"], ["rank", "Rank", "the target's rank (0 = first)"]];
    if (s.bands) cells.push(["band", "Band", "band size: mined negatives"]);
    if (s.relevance) {
      cells.push(s.bands
        ? ["fn", "FN b/a", "false negatives (grade ≥ " + s.fn_grade + ") in the band / left above it"]
        : ["fn", "FN", "false negatives (grade ≥ " + s.fn_grade + ") in the top " + s.top]);
    }
    cells.push(["text", "Text", "the query's text"]);
    $("table-head").replaceChildren(...cells.map(([k, label, title]) =>
      el("th", { scope: "col", class: k === "text" || k === "id" ? null : "num" }, el("abbr", { title, text: label }))));
  }

  function renderList() {
    const s = state.s, order = state.order;
    const pages = listPages();
    state.listPage = Math.min(Math.max(0, state.listPage), pages - 1);
    const from = state.listPage * ROWS_PER_LIST_PAGE;
    const to = Math.min(order.length, from + ROWS_PER_LIST_PAGE);
    const rank = col("rank"), texts = col("text");
    const rows = [];
    for (let i = from; i < to; i++) {
      const q = order[i];
      const cells = [
        el("td", {}, el("a", { href: "#q=" + q, text: queryId(q) })),
        el("td", { class: "num", text: rank[q] >= 0 ? fmtInt(rank[q]) : "–" }),
      ];
      if (s.bands) cells.push(el("td", { class: "num", text: col("band_size")[q] >= 0 ? fmtInt(col("band_size")[q]) : "–" }));
      if (s.relevance) {
        const text = s.bands
          ? fmtCount(col("fn_band")[q]) + "/" + fmtCount(col("fn_above")[q])
          : fmtCount(col("fn_top")[q]);
        cells.push(el("td", { class: "num", text }));
      }
      const t = texts ? texts[q] : "";
      cells.push(el("td", { class: "text", title: t, text: t }));
      const tr = el("tr", { "data-q": q, "aria-current": q === state.current ? "true" : null,
        onclick: (ev) => { ev.preventDefault(); select(q); } }, ...cells);
      rows.push(tr);
    }
    $("rows").replaceChildren(...rows);
    $("list-page").textContent = "list page " + fmtInt(state.listPage + 1) + " of " + fmtInt(pages);
    $("list-prev").disabled = state.listPage === 0;
    $("list-next").disabled = state.listPage >= pages - 1;
    const total = s.queries;
    $("count").textContent = order.length === total
      ? fmtInt(total) + " queries"
      : fmtInt(order.length) + " of " + fmtInt(total) + " queries match";
  }
  function fmtCount(v) { return v >= 0 ? fmtInt(v) : "–"; }

  function markCurrentRow() {
    for (const tr of $("rows").children) {
      if (Number(tr.dataset.q) === state.current) {
        tr.setAttribute("aria-current", "true");
        // keep the row in view inside the list (never scrolling the page itself)
        const wrap = tr.closest(".table-wrap"), box = tr.getBoundingClientRect(), frame = wrap.getBoundingClientRect();
        if (box.top < frame.top + 24 || box.bottom > frame.bottom) wrap.scrollTop += box.top - frame.top - wrap.clientHeight / 2;
      } else {
        tr.removeAttribute("aria-current");
      }
    }
  }

  // ---- one query

  function select(q, opts) {
    const s = state.s;
    if (!(q >= 0 && q < s.queries)) return;
    state.current = q;
    const i = state.pos[q];
    if (i >= 0) {
      const page = Math.floor(i / ROWS_PER_LIST_PAGE);
      if (page !== state.listPage) { state.listPage = page; renderList(); }
    }
    markCurrentRow();
    if (!(opts && opts.keepHash)) history.replaceState(null, "", "#q=" + q);
    const token = ++state.token;
    const main = $("detail");
    main.setAttribute("aria-busy", "true");
    loadPage(Math.floor(q / s.page_size)).then((page) => {
      if (token !== state.token) return;
      renderQuery(q, page);
      main.setAttribute("aria-busy", "false");
      main.dataset.query = String(q);
      document.body.dataset.state = "ready";
    }, (err) => {
      if (token !== state.token) return;
      main.replaceChildren(el("p", { class: "error", text: String(err.message || err) }));
      main.setAttribute("aria-busy", "false");
      document.body.dataset.state = "error";
    });
  }

  function step(delta) {
    const order = state.order;
    if (!order.length) return;
    let i = state.pos[state.current];
    if (i < 0) i = delta > 0 ? -1 : order.length;
    const next = Math.min(order.length - 1, Math.max(0, i + delta));
    if (order[next] !== state.current) select(order[next]);
  }

  function imageUrl(i) {
    const s = state.s;
    return "img/" + Math.floor(i / s.images_per_folder) + "/" + i + "." + s.images;
  }
  function imageName(rec, i) {
    return rec.names && rec.names[i] !== undefined ? rec.names[i] : "image " + i;
  }
  function picture(rec, i, alt) {
    if (!state.s.images || i < 0) return el("div", { class: "noimg", role: "img", "aria-label": alt, text: i >= 0 ? "#" + i : "none" });
    return el("img", { src: imageUrl(i), alt, loading: "lazy", decoding: "async", width: 96, height: 96, title: alt });
  }

  function regionOf(rank, rec) {
    const b = rec.band;
    if (rec.rank >= 0 && rank === rec.rank) return "target";
    if (b && b.start !== undefined) {
      if (rank >= b.start && rank <= b.end) return "bandrange";
      if (rec.rank >= 0 && rank > rec.rank && rank < b.start) return "above";
    }
    return "";
  }

  function card(rec, item) {
    // item: {g, rank, score, grade, inBand}
    const s = state.s, tags = [], classes = ["card"];
    const region = regionOf(item.rank, rec);
    const isTarget = item.g === rec.target;
    const isFn = !isTarget && s.relevance && Number.isFinite(item.grade) && item.grade >= s.fn_grade;
    if (isTarget) { classes.push("target"); tags.push(el("span", { class: "tag target", text: "target" })); }
    if (item.inBand) { classes.push("band"); tags.push(el("span", { class: "tag band", text: "band" })); }
    else if (region === "bandrange" && !isTarget) { classes.push("excluded"); tags.push(el("span", { class: "tag excluded", title: "inside the band's ranks but removed from it (a known positive or a duplicate)", text: "removed" })); }
    else if (region === "above") { classes.push("above"); }
    if (isFn) { classes.push("fn"); tags.push(el("span", { class: "tag fn", title: "graded at least " + s.fn_grade + ": a plausible false negative", text: "FN" })); }
    if (item.g === rec.ref) tags.push(el("span", { class: "tag ref", text: "reference" }));
    const words = ["Rank " + (item.rank >= 0 ? item.rank : "unknown") + ": " + imageName(rec, item.g)];
    if (isTarget) words.push("the target");
    if (item.inBand) words.push("in the band");
    if (isFn) words.push("false negative");
    words.push("score " + fmtScore(item.score));
    if (s.relevance) words.push("grade " + fmtGrade(item.grade));
    const meta = el("div", { class: "meta" },
      el("span", { text: "#" + (item.rank >= 0 ? fmtInt(item.rank) : "?") }),
      el("span", { text: fmtScore(item.score) }));
    const grade = s.relevance ? el("div", { class: "meta" }, el("span", { class: "muted", text: "grade" }), el("span", { class: "grade", text: fmtGrade(item.grade) })) : null;
    return el("li", { class: classes.join(" "), "data-rank": item.rank, "data-g": item.g },
      picture(rec, item.g, words.join(", ")), meta, grade, el("div", { class: "tags" }, ...tags));
  }

  function renderQuery(q, page) {
    const s = state.s;
    const rec = page.queries[q - page.start];
    const { curve, grades } = page.row(q - page.start);
    const main = $("detail");
    const text = s.columns.text ? s.columns.text[q] : null;
    const i = state.pos[q];
    const where = i >= 0 ? fmtInt(i + 1) + " of " + fmtInt(state.order.length) : "not in the list";
    const nav = el("div", { class: "qnav" },
      el("button", { type: "button", id: "prev", "aria-keyshortcuts": "ArrowLeft k", title: "Previous query (← or k)", onclick: () => step(-1), disabled: i <= 0 }, "← Previous"),
      el("span", { class: "muted", id: "position", text: where }),
      el("button", { type: "button", id: "next", "aria-keyshortcuts": "ArrowRight j", title: "Next query (→ or j)", onclick: () => step(1), disabled: i < 0 || i >= state.order.length - 1 }, "Next →"),
      el("span", { class: "muted" }, el("kbd", { text: "←" }), " ", el("kbd", { text: "→" })));
    const head = el("div", { class: "qhead" },
      el("h2", { id: "query-title", text: "Query " + queryId(q) }),
      el("span", { class: "muted", text: "index " + q }), nav);

    const facts = el("dl", { class: "facts" });
    const fact = (label, value, id) => facts.append(el("div", {}, el("dt", { text: label }), el("dd", { id, text: value })));
    fact("target rank", rec.rank >= 0 ? fmtInt(rec.rank) + (rec.rank < s.top ? "" : " (below the top " + s.top + ")") : rec.target >= 0 ? "–" : "no target", "fact-rank");
    const b = rec.band;
    if (b) {
      fact("band", fmtInt(b.size) + (b.size === 1 ? " item" : " items"), "fact-band");
      if (b.start !== undefined) {
        fact("band ranks", fmtInt(b.start) + "–" + fmtInt(b.end), "fact-band-ranks");
        fact("drops", "after ranks " + fmtInt(b.start - 1) + " and " + fmtInt(b.end) + " (tail positions " + b.drops[0] + ", " + b.drops[1] + ")", "fact-drops");
      } else {
        // drops of -1: no pair qualified, or a miner that does not cut a band between drops
        fact("drops", b.size ? "none (these negatives were not cut between two drops)" : "none qualified: empty band", "fact-drops");
      }
      if (b.tail !== null && b.tail !== undefined) fact("tail looked at", fmtInt(b.tail) + " items", "fact-tail");
    }
    if (rec.fn) {
      const f = rec.fn, parts = [fmtInt(f.count) + " in all", fmtInt(f.top) + " in the top " + s.top];
      if (f.above !== undefined) parts.push(fmtInt(f.above) + " left above the band");
      if (f.band !== undefined) parts.push(fmtInt(f.band) + " in the band");
      fact("false negatives (≥ " + s.fn_grade + ")", parts.join(", "), "fact-fn");
    }

    const refAlt = "Reference image of query " + queryId(q) + (rec.ref >= 0 ? " (" + imageName(rec, rec.ref) + ")" : "");
    const tgtAlt = "Target image of query " + queryId(q) + (rec.target >= 0 ? " (" + imageName(rec, rec.target) + ")" : "");
    const pair = el("div", { class: "pair" + (s.pixelated ? " pixelated" : "") },
      el("figure", {}, picture(rec, rec.ref, refAlt), el("figcaption", { text: "reference" })),
      el("figure", {}, picture(rec, rec.target, tgtAlt), el("figcaption", { text: rec.target >= 0 ? "target (rank " + (rec.rank >= 0 ? rec.rank : "?") + ")" : "no target" })));
    const about = el("div", {}, text !== null ? el("blockquote", { class: "text", id: "query-text", text }) : null, facts);
    const query = el("section", { class: "query", "aria-labelledby": "query-title" }, pair, about);

    const scale = el("button", { type: "button", id: "xscale", "aria-pressed": String(state.logX), title: "Switch the rank axis between linear and logarithmic",
      onclick: () => { state.logX = !state.logX; renderQuery(q, page); } }, "log rank axis");
    const curveSection = el("section", { "aria-labelledby": "curve-heading" },
      el("div", { class: "qhead" }, el("h2", { id: "curve-heading", text: "Score curve: the first " + fmtInt(Math.min(s.window, s.gallery)) + " ranks" }), scale),
      legend(), scoreCurve(rec, curve));

    const topIn = new Set(b && b.intop ? b.intop : []);
    const items = [];
    for (let j = 0; j < rec.top.length; j++) {
      if (rec.top[j] < 0) continue;
      items.push(card(rec, { g: rec.top[j], rank: j, score: curve[j], grade: grades ? grades[j] : NaN, inBand: topIn.has(j) }));
    }
    const topSection = el("section", { "aria-labelledby": "top-heading" },
      el("h2", { id: "top-heading", text: "Top " + rec.top.length + " of " + fmtInt(s.gallery) }),
      el("ol", { class: "cards" + (s.pixelated ? " pixelated" : ""), id: "top-cards", "aria-label": "The top " + rec.top.length + " ranked images" }, ...items));

    const sections = [head, query, curveSection, topSection];
    if (b && b.items && b.items.length) {
      const bandCards = b.items.map(([g, rank, score, grade]) => card(rec, { g, rank, score, grade: grade === null ? NaN : grade, inBand: true }));
      sections.push(el("section", { "aria-labelledby": "band-heading" },
        el("h2", { id: "band-heading", text: "The band: " + (b.items.length < b.size ? "first " + b.items.length + " of " : "") + fmtInt(b.size) + " mined negatives" }),
        el("ol", { class: "cards" + (s.pixelated ? " pixelated" : ""), id: "band-cards", "aria-label": "Band members, best-ranked first" }, ...bandCards)));
    }
    if (rec.fn && rec.fn.items.length) {
      const beyond = rec.fn.items.filter(([, rank]) => rank >= s.top);
      if (beyond.length) {
        const fnCards = beyond.map(([g, rank, grade, score, inBand]) => card(rec, { g, rank, score, grade, inBand: Boolean(inBand) }));
        sections.push(el("section", { "aria-labelledby": "fn-heading" },
          el("h2", { id: "fn-heading", text: "False negatives below the top " + s.top + (beyond.length < rec.fn.count - rec.fn.top ? " (first " + beyond.length + ")" : "") }),
          el("ol", { class: "cards" + (s.pixelated ? " pixelated" : ""), id: "fn-cards", "aria-label": "False negatives ranked below the top " + s.top }, ...fnCards)));
      }
    }
    main.replaceChildren(...sections);
  }

  function legend() {
    const s = state.s, items = [["top", "the top " + s.top + ", shown below"], ["target", "target"]];
    if (s.bands) items.push(["band", "band (mined negatives)"], ["above", "between the target and the first drop (left alone)"], ["excluded", "in the band's ranks, removed (known positive / duplicate)"]);
    if (s.relevance) items.push(["fn", "false negative: graded ≥ " + s.fn_grade]);
    return el("ul", { class: "legend", "aria-label": "Legend" }, ...items.map(([c, t]) => el("li", {}, el("span", { class: "sw " + c, "aria-hidden": "true" }), t)));
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  }

  function scoreCurve(rec, curve) {
    const s = state.s;
    let n = 0, lo = Infinity, hi = -Infinity;
    for (let j = 0; j < curve.length; j++) {
      const v = curve[j];
      if (!Number.isFinite(v)) continue;
      n = j + 1; if (v < lo) lo = v; if (v > hi) hi = v;
    }
    // drawn at the width it is shown at, so its text keeps its size on a narrow window
    const room = $("detail").clientWidth - 40;
    const W = Math.round(Math.max(320, Math.min(980, room > 0 ? room : 900))), H = 300, L = 58, R = 14, T = 42, B = 38;
    const pad = (hi - lo) * 0.06 || 0.01;
    lo -= pad; hi += pad;
    // x: linear, or "symlog" (linear up to LIN ranks, logarithmic after) so the top stays legible
    const LIN = 10, log = state.logX && n - 1 > 3 * LIN;
    const unit = (r) => (!log ? r : r <= LIN ? r / LIN : 1 + Math.log10(r / LIN));
    const span = Math.max(1e-9, unit(Math.max(1, n - 1)));
    const x = (r) => L + (Math.max(0, unit(Math.max(0, r))) / span) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const xr = (r) => Math.max(L, Math.min(W - R, x(r)));
    const b = rec.band, desc = [];
    const root = svg("svg", { class: "curve", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "curve-title curve-desc", preserveAspectRatio: "xMinYMin meet" });
    root.append(svg("title", { id: "curve-title" }, "Scores of the first " + n + " ranked images of query " + queryId(rec.q)));
    const descNode = svg("desc", { id: "curve-desc" });
    root.append(descNode);
    root.append(svg("rect", { class: "top-area", x: L, y: T, width: Math.max(0, xr(Math.min(s.top, n) - 0.5) - L), height: H - T - B }));
    if (b && b.start !== undefined && b.start < n) {
      const x0 = xr(b.start - 0.5), x1 = xr(b.end + 0.5);
      root.append(svg("rect", { class: "band-area", x: x0, y: T, width: Math.max(1, x1 - x0), height: H - T - B, "data-start": b.start, "data-end": b.end }));
    }
    // grid and axes
    const ys = niceStep(hi - lo, 4);
    for (let v = Math.ceil(lo / ys) * ys; v <= hi; v += ys) {
      root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      root.append(svg("text", { class: "tick", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, Math.abs(ys) < 0.01 ? v.toFixed(3) : v.toFixed(2)));
    }
    const xticks = [];
    if (log) {
      for (let r = 0; r <= LIN; r += 5) xticks.push(r);
      for (let m = LIN; m < n; m *= 10) for (const f of [2, 5, 10]) if (m * f < n) xticks.push(m * f);
    } else {
      const xs = niceStep(Math.max(1, n - 1), 8);
      for (let r = 0; r < n; r += xs) xticks.push(r);
    }
    for (const r of xticks) {
      root.append(svg("line", { class: "grid", x1: x(r), x2: x(r), y1: T, y2: H - B }));
      root.append(svg("line", { class: "axis", x1: x(r), x2: x(r), y1: H - B, y2: H - B + 4 }));
      root.append(svg("text", { class: "tick", x: x(r), y: H - B + 16, "text-anchor": "middle" }, fmtInt(r)));
    }
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    root.append(svg("text", { class: "tick", x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "rank (0 = best" + (log ? "; logarithmic after " + LIN : "") + ")"));
    root.append(svg("text", { class: "tick", x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle" }, "score"));
    // the curve
    const pts = [];
    for (let j = 0; j < n; j++) if (Number.isFinite(curve[j])) pts.push(x(j).toFixed(1) + "," + y(curve[j]).toFixed(1));
    root.append(svg("polyline", { class: "line", points: pts.join(" ") }));
    // drops
    if (b && b.start !== undefined) {
      const marks = [[b.start - 0.5, "drop 1", b.dropsize ? b.dropsize[0] : null], [b.end + 0.5, "drop 2", b.dropsize ? b.dropsize[1] : null]];
      marks.forEach(([r, label, size], k) => {
        if (r > n - 0.5) return;
        const g = svg("g", { class: "drop", "data-rank": r + 0.5 });
        g.append(svg("line", { class: "drop-mark", x1: x(r), x2: x(r), y1: T - 18 + 14 * k, y2: H - B }));
        const right = x(r) < (L + W - R) / 2;
        g.append(svg("text", { class: "drop-label", x: x(r) + (right ? 4 : -4), y: T - 22 + 14 * k, "text-anchor": right ? "start" : "end" }, label + (size !== null && size !== undefined ? ": score −" + size.toFixed(4) : "")));
        root.append(g);
      });
      const visible = [b.start - 0.5, b.end + 0.5].filter((r) => r <= n - 0.5).length;
      if (visible < 2) {
        root.append(svg("text", { class: "beyond", x: W - R - 2, y: T - 8, "text-anchor": "end" }, "band at ranks " + fmtInt(b.start) + "–" + fmtInt(b.end) + (visible ? "" : " →") + " (beyond this window)"));
      }
      desc.push("The band of " + b.size + " mined negatives spans ranks " + b.start + " to " + b.end + "; the two drops fall after ranks " + (b.start - 1) + " and " + b.end + ".");
    } else if (b) {
      desc.push(b.size ? "These " + b.size + " negatives were not cut between two drops." : "No pair of drops qualified: the band is empty.");
    }
    // false negatives and the target
    if (rec.fn) {
      let shown = 0;
      for (const [g, rank, grade] of rec.fn.items) {
        if (rank >= n || !Number.isFinite(curve[rank])) continue;
        shown++;
        const dot = svg("circle", { class: "fn-dot", cx: x(rank), cy: y(curve[rank]), r: 4, "data-rank": rank });
        dot.append(svg("title", {}, "false negative at rank " + rank + ": " + imageName(rec, g) + ", grade " + fmtGrade(grade)));
        root.append(dot);
      }
      desc.push(shown + " false negatives lie in this window.");
    }
    if (rec.rank >= 0 && rec.rank < n) {
      root.append(svg("line", { class: "target-mark", x1: x(rec.rank), x2: x(rec.rank), y1: T, y2: H - B }));
      const dot = svg("circle", { class: "target-dot", cx: x(rec.rank), cy: y(curve[rec.rank]), r: 5 });
      dot.append(svg("title", {}, "target at rank " + rec.rank));
      root.append(dot);
      root.append(svg("text", { class: "drop-label", x: x(rec.rank) + 4, y: H - B - 6, fill: "currentColor", style: "fill: var(--target)" }, "target"));
      desc.unshift("The target ranks " + rec.rank + ".");
    } else if (rec.rank >= 0) {
      desc.unshift("The target ranks " + rec.rank + ", beyond this window.");
    }
    descNode.textContent = desc.join(" ");
    return root;
  }

  // ---- start

  function readHash() {
    const m = /(?:^#|&)q=(\d+)/.exec(location.hash);
    return m ? Number(m[1]) : null;
  }

  function boot() {
    const s = state.s;
    if (s.version !== 1) throw new Error("this viewer reads format 1, the data say " + s.version);
    s.pixelated = s.images === "png" && s.image_size && s.image_size < 96;
    $("subtitle").textContent = fmtInt(s.queries) + " queries · gallery of " + fmtInt(s.gallery) + " · top " + s.top + (s.bands ? " · mined bands" : "") + (s.relevance ? " · graded relevance" : "");
    const notes = $("notes");
    for (const [k, v] of Object.entries(s.notes || {})) notes.append(el("div", {}, el("dt", { text: k }), el("dd", { text: v })));
    const sort = $("sort");
    for (const [k, label] of sortKeys()) sort.append(el("option", { value: k, text: label }));
    sort.addEventListener("change", () => { state.sortKey = sort.value; refresh(); });
    const direction = $("direction");
    direction.addEventListener("click", () => {
      state.descending = !state.descending;
      direction.innerHTML = state.descending ? "&darr; desc" : "&uarr; asc";
      direction.setAttribute("aria-label", "Sort direction: " + (state.descending ? "descending" : "ascending"));
      refresh();
    });
    let timer = 0;
    $("search").addEventListener("input", (ev) => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.query = ev.target.value; refresh(); }, 150);
    });
    $("list-prev").addEventListener("click", () => { state.listPage--; renderList(); });
    $("list-next").addEventListener("click", () => { state.listPage++; renderList(); });
    document.addEventListener("keydown", (ev) => {
      if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
      const t = ev.target;
      if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
      if (ev.key === "ArrowRight" || ev.key === "j") { ev.preventDefault(); step(1); }
      else if (ev.key === "ArrowLeft" || ev.key === "k") { ev.preventDefault(); step(-1); }
      else if (ev.key === "/") { ev.preventDefault(); $("search").focus(); }
    });
    let resized = 0, lastWidth = $("detail").clientWidth;
    window.addEventListener("resize", () => {
      clearTimeout(resized);
      resized = setTimeout(() => {
        const width = $("detail").clientWidth;
        if (width === lastWidth) return;
        lastWidth = width;
        const page = state.pages.get(Math.floor(state.current / state.s.page_size));
        if (page) renderQuery(state.current, page);
      }, 150);
    });
    window.addEventListener("hashchange", () => {
      const q = readHash();
      if (q !== null && q !== state.current) select(q, { keepHash: true });
    });
    renderHead();
    rebuildOrder();
    renderList();
    if (!s.queries) {
      $("detail").replaceChildren(el("p", { class: "muted", text: "No queries." }));
      document.body.dataset.state = "ready";
      return;
    }
    const q = readHash();
    select(q !== null && q < s.queries ? q : 0, { keepHash: q !== null });
  }

  function refresh() {
    rebuildOrder();
    const i = state.pos[state.current];
    state.listPage = i >= 0 ? Math.floor(i / ROWS_PER_LIST_PAGE) : 0;
    renderList();
    if (state.current >= 0 && state.pages.size) {
      const page = state.pages.get(Math.floor(state.current / state.s.page_size));
      if (page) renderQuery(state.current, page);
    }
  }
})();
