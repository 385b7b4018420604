// attnlab explorer: controls -> POST /api/analyze (debounced, stale requests aborted) -> heatmap, curves,
// next-token bars, continuation. No external code; everything draws on a canvas or in inline SVG.
"use strict";

const $ = (id) => document.getElementById(id);
const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
  "#7ad151", "#bddf26", "#fde725"].map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
const METRIC_LABELS = {
  norm: "residual norm ‖x‖", uniformity: "uniformity ratio", entropy: "attention entropy (nats)",
  sink_mass: "sink mass (token 0)",
};
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
    scope: $("scope").value, steer_layer: +$("steer_layer").value, alphas,
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
  drawCurves(d);
  drawTopk(d);
  state.renders += 1;
  document.body.dataset.renders = String(state.renders);
}

// --- heatmap ---------------------------------------------------------------------------------------
const HM = { left: 46, top: 8, right: 58, bottom: 40 };

function drawHeatmap(d) {
  const canvas = $("heatmap"), dpr = window.devicePixelRatio || 1;
  const W = 560, H = 540;
  canvas.width = W * dpr; canvas.height = H * dpr;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const T = d.n_tokens, mode = $("gamma").value;
  const small = document.createElement("canvas");
  small.width = T; small.height = T;
  const sctx = small.getContext("2d"), img = sctx.createImageData(T, T);
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      const o = 4 * (i * T + j);
      const c = j > i ? [243, 244, 246] : colour(scaled(d.pattern[i][j], mode));
      img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
    }
  }
  sctx.putImageData(img, 0, 0);
  let h = 2166136261;  // FNV-1a over the pixels: lets a test see that the map changed
  for (let k = 0; k < img.data.length; k++) { h ^= img.data[k]; h = Math.imul(h, 16777619) >>> 0; }
  canvas.dataset.checksum = h.toString(16);
  const side = Math.min(W - HM.left - HM.right, H - HM.top - HM.bottom);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, HM.left, HM.top, side, side);
  ctx.strokeStyle = "#9ca3af"; ctx.strokeRect(HM.left - 0.5, HM.top - 0.5, side + 1, side + 1);
  // Ticks every `step` tokens, labelled with positions.
  ctx.fillStyle = "#6b7280"; ctx.font = "10px system-ui, sans-serif";
  const step = T <= 16 ? 2 : T <= 40 ? 5 : T <= 80 ? 10 : T <= 160 ? 20 : 40, cell = side / T;
  for (let p = 0; p < T; p += step) {
    const c = (p + 0.5) * cell;
    ctx.textAlign = "center"; ctx.fillText(String(p), HM.left + c, HM.top + side + 13);
    ctx.textAlign = "right"; ctx.fillText(String(p), HM.left - 5, HM.top + c + 3);
  }
  ctx.fillStyle = "#374151"; ctx.font = "12px system-ui, sans-serif"; ctx.textAlign = "center";
  ctx.fillText("key position (attended to)", HM.left + side / 2, HM.top + side + 32);
  ctx.save(); ctx.translate(13, HM.top + side / 2); ctx.rotate(-Math.PI / 2);
  ctx.fillText("query position", 0, 0); ctx.restore();
  // Colour bar.
  const bx = HM.left + side + 14, bh = side;
  for (let y = 0; y < bh; y++) {
    const c = colour(1 - y / bh); ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
    ctx.fillRect(bx, HM.top + y, 12, 1);
  }
  ctx.fillStyle = "#6b7280"; ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "left";
  const inv = { linear: (s) => s, sqrt: (s) => s * s, log: (s) => Math.pow(10, 4 * s - 4) }[mode];
  for (const s of [0, 0.25, 0.5, 0.75, 1]) {
    const v = inv(s), label = v === 0 ? "0" : v < 0.01 ? v.toExponential(0) : v.toFixed(2);
    ctx.fillText(label, bx + 16, HM.top + (1 - s) * bh + 3);
  }
  const sc = $("scope").value === "layer" ? " (override on this layer only)" : "";
  $("heat-title").textContent = `Attention · layer ${d.layer}, head ${d.head} · ${$("normalizer").value}${sc}`;
  canvas.dataset.side = String(side);
}

function hover(ev) {
  const d = state.last; if (!d) return;
  const r = $("heatmap").getBoundingClientRect(), side = +$("heatmap").dataset.side;
  const x = ev.clientX - r.left - HM.left, y = ev.clientY - r.top - HM.top, T = d.n_tokens;
  const j = Math.floor(x / side * T), i = Math.floor(y / side * T);
  if (i < 0 || j < 0 || i >= T || j >= T) { $("hover").textContent = "Hover the map: query → key weight."; return; }
  const w = j > i ? "future (masked)" : d.pattern[i][j].toFixed(4);
  $("hover").textContent = `query ${i} “${showTok(d.tokens[i])}” → key ${j} “${showTok(d.tokens[j])}”: ${w}`;
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

function drawCurves(d) {
  const box = $("curves");
  box.textContent = "";
  const L = d.metrics.norm.length, W = 330, H = 190, m = { l: 44, r: 10, t: 22, b: 34 };
  for (const name of Object.keys(METRIC_LABELS)) {
    const now = d.metrics[name], base = d.baseline_metrics ? d.baseline_metrics[name] : null;
    const vals = [...now, ...(base || [])].filter((v) => v !== null);
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (name !== "norm") lo = Math.min(lo, 0);
    if (name === "uniformity" || name === "sink_mass") hi = Math.max(hi, name === "sink_mass" ? 0.1 : 1);
    const yt = niceTicks(lo, hi, 4);
    if (yt.length) { lo = Math.min(lo, yt[0]); hi = Math.max(hi, yt[yt.length - 1]); }
    if (hi - lo < 1e-12) hi = lo + 1;
    const X = (l) => m.l + (L === 1 ? 0.5 : l / (L - 1)) * (W - m.l - m.r);
    const Y = (v) => H - m.b - (v - lo) / (hi - lo) * (H - m.t - m.b);
    const path = (arr) => arr.map((v, l) => (v === null ? "" : `${l && arr[l - 1] !== null ? "L" : "M"}${X(l).toFixed(1)},${Y(v).toFixed(1)}`)).join("");
    let s = `<svg viewBox="0 0 ${W} ${H}" id="metric-${name}" data-values='${JSON.stringify(now)}'>`;
    const sel = now[d.layer];
    s += `<text class="title" x="2" y="13">${METRIC_LABELS[name]} <tspan class="value" fill="#2563eb">${fmt(sel)}</tspan><tspan fill="#6b7280" font-weight="400"> at layer ${d.layer}</tspan></text>`;
    for (const v of yt) s += `<line class="grid" x1="${m.l}" x2="${W - m.r}" y1="${Y(v)}" y2="${Y(v)}"/><text class="tick" x="${m.l - 5}" y="${Y(v) + 3}" text-anchor="end">${fmt(v)}</text>`;
    const xstep = L <= 12 ? 1 : L <= 32 ? 5 : 10;
    for (let l = 0; l < L; l += xstep) s += `<text class="tick" x="${X(l)}" y="${H - m.b + 13}" text-anchor="middle">${l}</text>`;
    s += `<line class="axis" x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}"/><line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}"/>`;
    s += `<text class="tick" x="${(m.l + W - m.r) / 2}" y="${H - 4}" text-anchor="middle">layer</text>`;
    s += `<line class="sel" x1="${X(d.layer)}" x2="${X(d.layer)}" y1="${m.t}" y2="${H - m.b}"/>`;
    if (base) s += `<path class="base" d="${path(base)}"/>`;
    s += `<path class="now" d="${path(now)}"/>`;
    if (sel !== null) s += `<circle cx="${X(d.layer)}" cy="${Y(sel)}" r="3.5" fill="#2563eb"/>`;
    box.insertAdjacentHTML("beforeend", s + "</svg>");
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
  $("gamma").addEventListener("change", () => { if (state.last) drawHeatmap(state.last); });
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
