// attnlab explorer: controls -> POST /api/analyze (debounced, stale requests aborted) -> heatmap, curves,
// next-token bars, continuation, the grid of small multiples. No external code; every view is inline SVG
// (a heatmap's cells are one pixelated image painted on an off-screen canvas), so each exports as a file.
"use strict";

const $ = (id) => document.getElementById(id);
const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
  "#7ad151", "#bddf26", "#fde725"].map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
const state = { info: null, last: null, seq: 0, controller: null, timer: null, renders: 0 };

function colour(v) {
  const x = Math.min(1, Math.max(0, v)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

function scaled(v, mode) {
  if (mode === "linear") return v;
  if (mode === "log") return v <= 0 ? 0 : Math.max(0, (Math.log10(v) + 4) / 4);
  return Math.sqrt(Math.max(0, v));
}

function showTok(t) {
  return t.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/ /g, "␣");
}

function temperature() { return Math.pow(2, parseFloat($("temperature").value)); }

function request() {
  const alphas = [...document.querySelectorAll("#directions input")].map((e) => parseFloat(e.value));
  return {
    text: $("text").value, layer: +$("layer").value, head: +$("head").value,
    normalizer: $("normalizer").value, sink_logit: parseFloat($("sink_logit").value),
    temperature: +temperature().toFixed(4), window: +$("window").value, sinks: +$("sinks").value,
    scope: $("scope").value, steer_layer: +$("steer_layer").value, alphas, grid: $("grid-view").value,
  };
}

function syncOutputs() {
  $("layer-out").textContent = $("layer").value;
  $("head-out").textContent = $("head").value;
  $("sink_logit-out").textContent = (+$("sink_logit").value).toFixed(2);
  $("temperature-out").textContent = temperature().toFixed(2);
  $("window-out").textContent = +$("window").value === 0 ? "off (causal)" : $("window").value;
  $("sinks-out").textContent = $("sinks").value;
  $("steer_layer-out").textContent = $("steer_layer").value;
  const sinkNames = (state.info && state.info.sink_normalizers) || ["sinks"];
  const sinksOn = sinkNames.includes($("normalizer").value), windowOn = +$("window").value > 0;
  $("sink_logit").disabled = !sinksOn;
  $("sink_logit").parentElement.classList.toggle("disabled", !sinksOn);
  $("sinks").disabled = !windowOn;
  $("sinks").parentElement.classList.toggle("disabled", !windowOn);
  document.querySelectorAll("#directions input").forEach((e) => {
    e.parentElement.querySelector("output").textContent = (+e.value).toFixed(2);
  });
  if (state.info) {
    const ex = state.info.explained[+$("steer_layer").value] || [];
    document.querySelectorAll("#directions label").forEach((l, k) => {
      l.textContent = `PC${k + 1} (${(100 * (ex[k] || 0)).toFixed(1)}% var.)`;
    });
  }
}

function schedule(delay) {
  syncOutputs();
  clearTimeout(state.timer);
  state.timer = setTimeout(analyze, delay);
}

async function analyze() {
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const seq = ++state.seq;
  $("status").textContent = "computing…";
  $("status").classList.remove("error");
  const body = JSON.stringify(request());
  try {
    const res = await fetch("api/analyze", {
      method: "POST", headers: { "Content-Type": "application/json" }, body, signal: controller.signal,
    });
    const data = await res.json();
    if (seq !== state.seq) return;
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    state.last = data;
    render(data);
    continuation(seq, controller, body);
    $("status").textContent = `${data.n_tokens} tokens · forward ${data.cached ? "cached" : data.forward_ms.toFixed(0) + " ms"}` +
      ` · update ${data.total_ms.toFixed(0)} ms`;
  } catch (err) {
    if (err.name === "AbortError") return;
    $("status").textContent = err.message;
    $("status").classList.add("error");
  }
}

// The continuation is its own request: decoding is the slow part, so the plots never wait for it.
async function continuation(seq, controller, body) {
  $("continuation").classList.add("pending");
  try {
    const res = await fetch("api/continue", {
      method: "POST", headers: { "Content-Type": "application/json" }, body, signal: controller.signal,
    });
    const data = await res.json();
    if (seq !== state.seq) return;
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    drawContinuation(data);
    $("continuation").classList.remove("pending");
    document.body.dataset.continued = String(state.renders);  // lets a test wait for this render's text
  } catch (err) {
    if (err.name !== "AbortError" && seq === state.seq) $("continuation").textContent = err.message;
  }
}

function render(d) {
  drawHeatmap(d);
  drawGrid(d);
  drawCurves(d);
  drawTopk(d);
  state.renders += 1;
  document.body.dataset.renders = String(state.renders);
}

// --- shared SVG pieces ------------------------------------------------------------------------------
// Every SVG here carries its look in presentation attributes, not in style.css, so that an exported file
// looks the same outside the page.
const TICK = 'font-size="10" fill="#6b7280"', LABEL = 'font-size="12" fill="#374151"';
const FUTURE = [243, 244, 246];
const INVERSE = { linear: (s) => s, sqrt: (s) => s * s, log: (s) => Math.pow(10, 4 * s - 4) };

function maxLabelled() { return (state.info && state.info.max_labelled_tokens) || 48; }

// A token as an axis label: whitespace made visible, long tokens cut (the hover line shows them whole).
function tokLabel(t) { const s = showTok(t); return s.length <= 8 ? s : s.slice(0, 7) + "…"; }

// Paint an (n x n) matrix into a PNG data URL, one pixel per cell; `future(i, j)` cells are grey.
function matrixPNG(rows, mode, future) {
  const n = rows.length, small = document.createElement("canvas");
  small.width = n; small.height = n;
  const sctx = small.getContext("2d"), img = sctx.createImageData(n, n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const o = 4 * (i * n + j), c = future(i, j) ? FUTURE : colour(scaled(rows[i][j], mode));
      img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
    }
  }
  sctx.putImageData(img, 0, 0);
  let h = 2166136261;  // FNV-1a over the pixels: lets a test see that the map changed
  for (let k = 0; k < img.data.length; k++) { h ^= img.data[k]; h = Math.imul(h, 16777619) >>> 0; }
  return { url: small.toDataURL("image/png"), checksum: h.toString(16) };
}

function cells(url, x, y, w) {
  return `<image href="${url}" x="${x}" y="${y}" width="${w}" height="${w}" preserveAspectRatio="none" image-rendering="pixelated"/>`;
}

// --- heatmap (inline SVG: the cells are one pixelated image, the axes are text) -------------------------
const HM_W = 560, HM_H = 540;

function drawHeatmap(d) {
  const T = d.n_tokens, mode = $("gamma").value, labelled = T <= maxLabelled();
  const m = labelled ? { l: 74, t: 8, r: 58, b: 80 } : { l: 46, t: 8, r: 58, b: 40 };
  const side = Math.min(HM_W - m.l - m.r, HM_H - m.t - m.b), cell = side / T;
  const png = matrixPNG(d.pattern, mode, (i, j) => j > i);
  let s = cells(png.url, m.l, m.t, side);
  s += `<rect x="${m.l - 0.5}" y="${m.t - 0.5}" width="${side + 1}" height="${side + 1}" fill="none" stroke="#9ca3af"/>`;
  if (labelled) {
    // Short passages: every row and column named by its token.
    const fs = Math.max(6, Math.min(10, cell - 1)).toFixed(1);
    d.tokens.forEach((t, p) => {
      const c = (m.t + (p + 0.5) * cell).toFixed(1), cx = (m.l + (p + 0.5) * cell).toFixed(1), lab = esc(tokLabel(t));
      s += `<text class="tok-y" x="${m.l - 4}" y="${c}" text-anchor="end" dominant-baseline="central" font-size="${fs}" fill="#374151">${lab}</text>`;
      s += `<text class="tok-x" transform="translate(${cx},${m.t + side + 4}) rotate(-90)" text-anchor="end" dominant-baseline="central" font-size="${fs}" fill="#374151">${lab}</text>`;
    });
  } else {
    // Long passages: positions every `step` tokens.
    const step = T <= 80 ? 10 : T <= 160 ? 20 : 40;
    for (let p = 0; p < T; p += step) {
      const c = (p + 0.5) * cell;
      s += `<text x="${m.l + c}" y="${m.t + side + 13}" text-anchor="middle" ${TICK}>${p}</text>`;
      s += `<text x="${m.l - 5}" y="${m.t + c + 3}" text-anchor="end" ${TICK}>${p}</text>`;
    }
  }
  // Axis titles just past the widest label (estimated: about 0.62 em a character).
  const what = labelled ? "token" : "position";
  const lw = labelled ? Math.max(...d.tokens.map((t) => tokLabel(t).length)) * 0.62 * Math.min(10, Math.max(6, cell - 1)) : 14;
  s += `<text x="${m.l + side / 2}" y="${Math.min(HM_H - 6, m.t + side + lw + 24)}" text-anchor="middle" ${LABEL}>key ${what} (attended to)</text>`;
  s += `<text transform="translate(${Math.max(12, m.l - lw - 16)},${m.t + side / 2}) rotate(-90)" text-anchor="middle" ${LABEL}>query ${what}</text>`;
  // Colour bar: the gradient runs over the scaled value, labelled with the weight it stands for.
  const bx = m.l + side + 14;
  s += `<defs><linearGradient id="hm-bar" x1="0" y1="1" x2="0" y2="0">` +
    VIRIDIS.map((c, k) => `<stop offset="${k / (VIRIDIS.length - 1)}" stop-color="rgb(${c.join(",")})"/>`).join("") +
    `</linearGradient></defs><rect x="${bx}" y="${m.t}" width="12" height="${side}" fill="url(#hm-bar)"/>`;
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    const w = INVERSE[mode](v), label = w === 0 ? "0" : w < 0.01 ? w.toExponential(0) : w.toFixed(2);
    s += `<text x="${bx + 16}" y="${m.t + (1 - v) * side + 3}" ${TICK}>${label}</text>`;
  }
  const svg = $("heatmap");
  svg.innerHTML = s;
  svg.dataset.checksum = png.checksum;
  svg.dataset.side = String(side); svg.dataset.left = String(m.l); svg.dataset.top = String(m.t);
  svg.dataset.nTokens = String(T);
  svg.dataset.labelled = String(labelled);
  const sc = $("scope").value === "layer" ? " (override on this layer only)" : "";
  $("heat-title").textContent = `Attention · layer ${d.layer}, head ${d.head} · ${$("normalizer").value}${sc}`;
}

function hover(ev) {
  const d = state.last, svg = $("heatmap"); if (!d || !svg.dataset.side) return;
  const r = svg.getBoundingClientRect(), side = +svg.dataset.side, T = d.n_tokens;
  const x = ev.clientX - r.left - +svg.dataset.left, y = ev.clientY - r.top - +svg.dataset.top;
  const j = Math.floor(x / side * T), i = Math.floor(y / side * T);
  if (i < 0 || j < 0 || i >= T || j >= T) { $("hover").textContent = "Hover the map: query → key weight."; return; }
  const w = j > i ? "future (masked)" : d.pattern[i][j].toFixed(4);
  $("hover").textContent = `query ${i} “${showTok(d.tokens[i])}” → key ${j} “${showTok(d.tokens[j])}”: ${w}`;
}

// --- small multiples: every head of the layer, or every layer of the head --------------------------------
const GRID_W = 460, GRID_GAP = 6, GRID_CAPTION = 14;

function drawGrid(d) {
  const svg = $("grid"), g = d.grid;
  if (!g) { svg.innerHTML = ""; return; }
  const n = g.maps.length, T = d.n_tokens, k = g.side, mode = $("gamma").value;
  const cols = Math.ceil(Math.sqrt(n)), rows = Math.ceil(n / cols);
  const cs = Math.min(150, Math.floor((GRID_W - (cols - 1) * GRID_GAP) / cols));
  const H = rows * (cs + GRID_CAPTION + GRID_GAP);
  const chosen = g.kind === "heads" ? d.head : d.layer, name = g.kind === "heads" ? "head" : "layer";
  // A thumbnail cell averages a block of queries and keys (as torch's adaptive pooling cuts them); it is
  // grey only when every key in the block lies in the future of every query in it.
  const lo = (a) => Math.floor(a * T / k), hi = (a) => Math.ceil((a + 1) * T / k) - 1;
  let s = "";
  g.maps.forEach((map, idx) => {
    const x = (idx % cols) * (cs + GRID_GAP), y = Math.floor(idx / cols) * (cs + GRID_CAPTION + GRID_GAP);
    const png = matrixPNG(map, mode, (i, j) => lo(j) > hi(i)), sel = idx === chosen;
    s += `<g class="cell${sel ? " chosen" : ""}" data-index="${idx}"><title>${name} ${idx}: click to show it</title>` +
      `<text x="${x + cs / 2}" y="${y + 10}" text-anchor="middle" font-size="10" fill="${sel ? "#b45309" : "#374151"}"` +
      `${sel ? ' font-weight="700"' : ""}>${name} ${idx}</text>` + cells(png.url, x, y + GRID_CAPTION, cs) +
      `<rect x="${x + 0.5}" y="${y + GRID_CAPTION + 0.5}" width="${cs - 1}" height="${cs - 1}" fill="none" ` +
      `stroke="${sel ? "#f59e0b" : "#d1d5db"}" stroke-width="${sel ? 3 : 1}"/></g>`;
  });
  svg.setAttribute("viewBox", `0 0 ${GRID_W} ${H}`);
  svg.setAttribute("width", String(GRID_W)); svg.setAttribute("height", String(H));
  svg.innerHTML = s;
  svg.dataset.kind = g.kind;
  $("grid-title").textContent = g.kind === "heads" ? `All heads · layer ${d.layer}` : `All layers · head ${d.head}`;
}

function pickFromGrid(ev) {
  const cell = ev.target.closest && ev.target.closest("g.cell");
  if (!cell || !state.last || !state.last.grid) return;
  $(state.last.grid.kind === "heads" ? "head" : "layer").value = cell.dataset.index;
  schedule(0);
}

// --- per-layer curves (inline SVG) ----------------------------------------------------------------
function niceTicks(lo, hi, n) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (hi - lo < 1e-12) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toPrecision(6));
  return out;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
}

const CURVE_W = 330, CURVE_H = 190;

// A curve's name and how to read it: the metric catalogue's entry that /api/info sends (the report's words,
// its title already composed there).
function metricEntry(name) {
  const e = (state.info && state.info.metrics && state.info.metrics[name]) || {};
  return { title: e.title || name, reading: e.reading || "" };
}

// A catalogue label can be longer than a card is wide: drop "at layer N" first (the orange line marks the
// layer), then squeeze the glyphs, so the value never runs off the card.
function fitTitle(t, width) {
  if (!t || t.getComputedTextLength() <= width) return;
  const at = t.querySelector(".at");
  if (at) at.remove();
  if (t.getComputedTextLength() > width) {
    t.setAttribute("textLength", String(width));
    t.setAttribute("lengthAdjust", "spacingAndGlyphs");
  }
}

function drawCurves(d) {
  const box = $("curves");
  box.textContent = "";
  const names = state.info && state.info.metrics ? Object.keys(state.info.metrics) : Object.keys(d.metrics);
  const L = d.metrics[names[0]].length, W = CURVE_W, H = CURVE_H, m = { l: 44, r: 10, t: 22, b: 34 };
  for (const name of names) {
    const now = d.metrics[name], base = d.baseline_metrics ? d.baseline_metrics[name] : null;
    const vals = [...now, ...(base || [])].filter((v) => v !== null);
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (name !== "resid_norm") lo = Math.min(lo, 0);
    if (name === "uniformity" || name === "first_token_layer") {
      hi = Math.max(hi, name === "first_token_layer" ? 0.1 : 1);
    }
    const yt = niceTicks(lo, hi, 4);
    if (yt.length) { lo = Math.min(lo, yt[0]); hi = Math.max(hi, yt[yt.length - 1]); }
    if (hi - lo < 1e-12) hi = lo + 1;
    const X = (l) => m.l + (L === 1 ? 0.5 : l / (L - 1)) * (W - m.l - m.r);
    const Y = (v) => H - m.b - (v - lo) / (hi - lo) * (H - m.t - m.b);
    const path = (arr) => arr.map((v, l) => (v === null ? "" : `${l && arr[l - 1] !== null ? "L" : "M"}${X(l).toFixed(1)},${Y(v).toFixed(1)}`)).join("");
    const entry = metricEntry(name);
    let s = `<svg viewBox="0 0 ${W} ${H}" id="metric-${name}" data-values='${JSON.stringify(now)}' font-family="system-ui, sans-serif">`;
    if (entry.reading) s += `<title>${esc(entry.reading)}</title>`;
    const sel = now[d.layer];
    // The one curve about a single token names it.
    const label = esc(entry.title) + (name === "first_token_layer" ? ` “${esc(tokLabel(d.tokens[0]))}”` : "");
    s += `<text class="title" x="2" y="13" font-size="12" font-weight="600" fill="#374151">${label} <tspan class="value" fill="#2563eb">${fmt(sel)}</tspan><tspan class="at" fill="#6b7280" font-weight="400"> at layer ${d.layer}</tspan></text>`;
    for (const v of yt) s += `<line x1="${m.l}" x2="${W - m.r}" y1="${Y(v)}" y2="${Y(v)}" stroke="#eef0f3"/><text x="${m.l - 5}" y="${Y(v) + 3}" text-anchor="end" ${TICK}>${fmt(v)}</text>`;
    const xstep = L <= 12 ? 1 : L <= 32 ? 5 : 10;
    for (let l = 0; l < L; l += xstep) s += `<text x="${X(l)}" y="${H - m.b + 13}" text-anchor="middle" ${TICK}>${l}</text>`;
    s += `<line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}" stroke="#9ca3af"/><line x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}" stroke="#9ca3af"/>`;
    s += `<text x="${(m.l + W - m.r) / 2}" y="${H - 4}" text-anchor="middle" ${TICK}>layer</text>`;
    s += `<line x1="${X(d.layer)}" x2="${X(d.layer)}" y1="${m.t}" y2="${H - m.b}" stroke="#f59e0b" stroke-width="1.5"/>`;
    if (base) s += `<path class="base" d="${path(base)}" fill="none" stroke="#9ca3af" stroke-width="1.5" stroke-dasharray="4 3"/>`;
    s += `<path class="now" d="${path(now)}" fill="none" stroke="#2563eb" stroke-width="2"/>`;
    if (sel !== null) s += `<circle cx="${X(d.layer)}" cy="${Y(sel)}" r="3.5" fill="#2563eb"/>`;
    box.insertAdjacentHTML("beforeend", s + "</svg>");
    fitTitle(box.lastElementChild.querySelector("text.title"), W - 4);
  }
}

// --- export: any view as a standalone SVG file, built here (nothing leaves the machine) -------------------
function exportSVG(parts, title, filename) {
  const gap = 12, top = 24;
  let x = 0, h = 0, body = "";
  for (const el of parts) {
    const vb = el.viewBox.baseVal, c = el.cloneNode(true);
    c.removeAttribute("id"); c.removeAttribute("class");
    c.setAttribute("x", String(x)); c.setAttribute("y", String(top));
    c.setAttribute("width", String(vb.width)); c.setAttribute("height", String(vb.height));
    body += new XMLSerializer().serializeToString(c);
    x += vb.width + gap; h = Math.max(h, vb.height);
  }
  const W = Math.max(x - gap, 1), H = top + h;
  const text = `<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" ` +
    `width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="system-ui, sans-serif">` +
    `<rect width="${W}" height="${H}" fill="#ffffff"/><text x="2" y="15" font-size="13" font-weight="600" ` +
    `fill="#1f2430">${esc(title)}</text>${body}</svg>\n`;
  const url = URL.createObjectURL(new Blob([text], { type: "image/svg+xml" }));
  const a = document.createElement("a");
  a.href = url; a.download = filename;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function exportView(which) {
  const d = state.last; if (!d) return;
  const model = state.info ? state.info.model : "model";
  if (which === "heatmap") {
    exportSVG([$("heatmap")], `${model} · ${$("heat-title").textContent}`, `attention-layer${d.layer}-head${d.head}.svg`);
  } else if (which === "grid" && d.grid) {
    const tag = d.grid.kind === "heads" ? `layer${d.layer}-heads` : `head${d.head}-layers`;
    exportSVG([$("grid")], `${model} · ${$("grid-title").textContent}`, `attention-${tag}.svg`);
  } else if (which === "curves") {
    exportSVG([...$("curves").querySelectorAll("svg")], `${model} · per-layer curves (blue: now, grey dashed: unmodified)`, "curves.svg");
  }
}

// --- next token and continuation -------------------------------------------------------------------
function esc(t) { const e = document.createElement("span"); e.textContent = t; return e.innerHTML; }

function drawTopk(d) {
  const max = Math.max(...d.top.map((t) => Math.max(t.prob, t.baseline_prob || 0)), 1e-9);
  $("topk").innerHTML = d.top.map((t) => {
    const tick = t.baseline_prob === undefined ? "" : `<div class="tick" data-left="${(100 * t.baseline_prob / max).toFixed(1)}"></div>`;
    return `<div class="row"><span class="tok" title="id ${t.id}">${esc(showTok(t.token))}</span>` +
      `<div class="track"><div class="bar" data-width="${(100 * t.prob / max).toFixed(1)}"></div>${tick}</div>` +
      `<span class="pct">${(100 * t.prob).toFixed(1)}%</span></div>`;
  }).join("");
  // The page's CSP forbids inline style attributes; geometry set through the CSSOM is allowed.
  $("topk").querySelectorAll("[data-width]").forEach((e) => { e.style.width = `${e.dataset.width}%`; });
  $("topk").querySelectorAll("[data-left]").forEach((e) => { e.style.left = `${e.dataset.left}%`; });
}

// Newlines as ⏎, so a continuation of blank lines is visible and the box stays one or two lines high.
function showText(t) { return esc(t.replace(/\n/g, "⏎")); }

function drawContinuation(d) {
  let h = `<div class="line"><span class="who">${d.baseline_continuation === null ? "model" : "with override / steering"}</span>${showText(d.continuation)}</div>`;
  if (d.baseline_continuation !== null) h += `<div class="line"><span class="who">unmodified model</span>${showText(d.baseline_continuation)}</div>`;
  $("continuation").innerHTML = h;
}

// --- set-up ---------------------------------------------------------------------------------------
async function init() {
  const info = await (await fetch("api/info")).json();
  state.info = info;
  $("model-info").textContent = `${info.model} · ${info.n_layers} layers · ${info.n_heads} heads · d=${info.d_model} · ≤ ${info.limits.max_tokens} tokens`;
  $("text").value = info.default_text;
  $("text").maxLength = info.limits.max_chars;
  for (const id of ["layer", "steer_layer"]) { $(id).max = info.n_layers - 1; $(id).value = info.default_layer; }
  $("head").max = info.n_heads - 1;
  $("window").max = info.limits.max_tokens;
  $("sinks").max = info.limits.max_sinks;
  $("normalizer").innerHTML = info.normalizers.map((n) => `<option value="${n}">${n}</option>`).join("");
  const [alo, ahi] = info.limits.alpha;
  let dirs = "";
  for (let k = 0; k < info.n_directions; k++) {
    dirs += `<div class="control"><label for="pc${k}">PC${k + 1}</label><output></output>` +
      `<input type="range" id="pc${k}" min="${Math.max(alo, -2)}" max="${Math.min(ahi, 2)}" step="0.05" value="0"></div>`;
  }
  $("directions").innerHTML = dirs;
  document.querySelectorAll("input[type=range], select").forEach((e) => {
    if (e.id !== "gamma") e.addEventListener("input", () => schedule(120));
  });
  $("gamma").addEventListener("change", () => { if (state.last) { drawHeatmap(state.last); drawGrid(state.last); } });
  $("grid").addEventListener("click", pickFromGrid);
  for (const v of ["heatmap", "grid", "curves"]) $(`export-${v}`).addEventListener("click", () => exportView(v));
  $("text").addEventListener("input", () => schedule(400));
  $("heatmap").addEventListener("mousemove", hover);
  $("reset").addEventListener("click", () => {
    $("normalizer").value = "softmax"; $("scope").value = "all";
    for (const [id, v] of [["sink_logit", 0], ["temperature", 0], ["window", 0], ["sinks", 0]]) $(id).value = v;
    document.querySelectorAll("#directions input").forEach((e) => { e.value = 0; });
    schedule(0);
  });
  schedule(0);
}

init().catch((err) => { $("status").textContent = `cannot reach the server: ${err.message}`; $("status").classList.add("error"); });
