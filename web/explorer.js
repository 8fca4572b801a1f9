// The Anatomy Explorer: a sidebar tab "Diffusion Anatomy" that replays the runs recorded by Anatomy Explorer
// Capture (nodes/explorer_nodes.py). It only reads the pack's run store over its routes; every picture is
// drawn on canvases from the run's atlases (one tile per step) and float16 arrays, so scrubbing is a redraw.
// Documented frontend APIs only: app.registerExtension (settings), app.extensionManager.registerSidebarTab,
// app.extensionManager.setting, api events.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { TEXT, LANGUAGES } from "./explorer_text.js";

const ROUTE = "/diffusion_anatomy/explorer";
const LANGUAGE_SETTING = "DiffusionAnatomy.Explorer.Language";
const TAB = "diffusion-anatomy";
const PARTS = ["timeline", "words", "guidance", "unet", "compare"];
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]; // anatomy/attention_maps.py

// What the browser tests (and a curious user in the console) read: the panel's state, its canvases by name.
const state = {
  lang: "en", runs: [], run: null, runB: null, step: 0, part: "timeline", word: null, level: "all", sumSteps: false,
  scale: null, unetLevel: null, playing: null, error: null, renders: 0, canvases: {}, message: "",
  busy: 0, // run events being handled and runs being loaded (a test waits for 0 before it picks runs)
};
window.DiffusionAnatomyExplorer = state;
let root = null;

// ------------------------------------------------------------------------------------------ small helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
const t = () => TEXT[state.lang] || TEXT.en;
const url = (run, file) => api.apiURL(`${ROUTE}/runs/${encodeURIComponent(run)}/${encodeURIComponent(file)}`);

const F16 = (() => { // float16 -> float32 table (IEEE 754 half: 1 sign, 5 exponent, 10 fraction bits)
  const table = new Float32Array(65536);
  for (let i = 0; i < 65536; i++) {
    const s = i & 0x8000 ? -1 : 1, e = (i >> 10) & 31, f = i & 1023;
    table[i] = e === 0 ? s * 2 ** -14 * (f / 1024) : e === 31 ? (f ? NaN : s * Infinity) : s * 2 ** (e - 15) * (1 + f / 1024);
  }
  return table;
})();
function halfs(buffer) {
  const raw = new Uint16Array(buffer), out = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = F16[raw[i]];
  return out;
}

function viridis(v) {
  const x = Math.min(Math.max(v, 0), 1) * (VIRIDIS.length - 1);
  const lo = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - lo;
  return VIRIDIS[lo].map((c, k) => Math.round(c * (1 - f) + VIRIDIS[lo + 1][k] * f));
}

function canvas(name, w, ht, display = 160, cls = "") {
  const c = document.createElement("canvas");
  c.width = w; c.height = ht;
  c.className = `da-canvas ${cls}`;
  c.dataset.name = name;
  c.style.width = `${display}px`;
  c.style.height = `${Math.round((display * ht) / w)}px`;
  state.canvases[name] = c;
  return c;
}
function figure(c, caption) { return h("figure", { class: "da-figure" }, c, h("figcaption", {}, caption)); }

async function getJSON(path) {
  const r = await fetch(api.apiURL(path), { cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}
async function getBuffer(run, file) {
  const r = await fetch(url(run, file));
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `${r.status}`);
  return r.arrayBuffer();
}
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${src}`));
    img.src = src;
  });
}

// ------------------------------------------------------------------------------------------ runs

async function loadRun(id) {
  const index = await getJSON(`${ROUTE}/runs/${encodeURIComponent(id)}/index.json`);
  const run = { id, index, images: {}, latents: null, attention: null, levels: {} };
  if (!index.recorded_steps || !index.files) return run;
  const files = index.files;
  const jobs = [];
  for (const kind of index.pictures?.kinds || []) jobs.push(loadImage(url(id, files[kind])).then((img) => (run.images[kind] = img)));
  if (files.latents) jobs.push(getBuffer(id, files.latents).then((b) => (run.latents = halfs(b))));
  if (files.attention) jobs.push(getBuffer(id, files.attention).then((b) => (run.attention = halfs(b))));
  for (const s of index.unet?.steps || []) jobs.push(loadImage(url(id, s.file)).then((img) => (run.levels[s.i] = img)));
  await Promise.all(jobs);
  return run;
}

async function refreshRuns() {
  try {
    const { runs } = await getJSON(`${ROUTE}/runs`);
    state.runs = runs;
    state.error = null;
  } catch (e) {
    state.error = String(e.message || e);
  }
  render();
}

const picking = { A: 0, B: 0 }; // the newest pick per side: a slower earlier load must not overwrite a later pick

async function select(id, which = "A") {
  const pick = ++picking[which];
  state.message = t().loading;
  state.busy++;
  render();
  try {
    const run = await loadRun(id);
    if (pick !== picking[which]) return; // picked again meanwhile (the panel's first load, a quick second click)
    if (which === "A") {
      state.run = run;
      state.step = Math.max(0, (run.index.recorded_steps || 1) - 1);
      state.scale = run.index.cfg ?? 1;
      state.word = null;
    } else state.runB = run;
    state.message = "";
  } catch (e) {
    if (pick !== picking[which]) return;
    state.message = `${t().deleted} (${e.message || e})`;
    if (which === "A") state.run = null; else state.runB = null;
  } finally {
    state.busy--;
  }
  render();
}

// ------------------------------------------------------------------------------------------ drawing

function drawTile(c, run, kind, k) {
  const img = run.images[kind], p = run.index.pictures;
  if (!img) return;
  const [th, tw] = p.tile, col = k % p.columns, row = Math.floor(k / p.columns);
  const ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.drawImage(img, col * tw, row * th, tw, th, 0, 0, c.width, c.height);
}

function latent(run, k, kind) { // one latent [C, h, w] of step k as a Float32Array view
  const [, kinds, C, hh, ww] = run.index.latents.shape;
  const n = C * hh * ww, at = (k * kinds + run.index.latents.kinds.indexOf(kind)) * n;
  return run.latents.subarray(at, at + n);
}

function drawLatent(c, run, values) { // through the run's linear latent-to-RGB map, at latent size
  const [, , C, hh, ww] = run.index.latents.shape, { matrix, offset } = run.index.rgb;
  const ctx = c.getContext("2d"), img = ctx.createImageData(ww, hh), n = hh * ww;
  for (let p = 0; p < n; p++) {
    for (let k = 0; k < 3; k++) {
      let v = offset[k];
      for (let ch = 0; ch < C; ch++) v += matrix[ch][k] * values[ch * n + p];
      img.data[p * 4 + k] = Math.round(Math.min(Math.max(v, 0), 1) * 255);
    }
    img.data[p * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function wordMap(run, token, k, level, sum) { // [h*w] attention of one token, at step k or summed over steps
  const [steps, levels, tokens, hh, ww] = run.index.attention.shape, n = hh * ww, out = new Float32Array(n);
  const ls = level === "all" ? [...Array(levels).keys()] : [run.index.attention.levels.indexOf(level)];
  for (const s of sum ? [...Array(steps).keys()] : [k]) {
    for (const l of ls) {
      const at = ((s * levels + l) * tokens + token) * n;
      for (let p = 0; p < n; p++) out[p] += run.attention[at + p];
    }
  }
  return out;
}

function drawHeat(c, values, hh, ww) { // min-max normalised, viridis (as Cross-Attention per Word)
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const ctx = c.getContext("2d"), img = ctx.createImageData(ww, hh);
  for (let p = 0; p < values.length; p++) {
    const rgb = viridis(hi > lo ? (values[p] - lo) / (hi - lo) : 0);
    img.data.set([...rgb, 255], p * 4);
  }
  ctx.putImageData(img, 0, 0);
}

function sigmaChart(index, k) {
  const W = 300, H = 90, pad = 6, sig = index.sigmas.filter((s) => s > 0);
  const logs = sig.map(Math.log), lo = Math.min(...logs), hi = Math.max(...logs), n = index.sigmas.length - 1;
  const x = (i) => pad + ((W - 2 * pad) * i) / Math.max(n, 1), y = (s) => H - pad - ((H - 2 * pad) * (Math.log(s) - lo)) / (hi - lo || 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "da-chart");
  const pts = sig.map((s, i) => `${x(i).toFixed(1)},${y(s).toFixed(1)}`).join(" ");
  const sk = index.sigmas[k] > 0 ? index.sigmas[k] : sig[sig.length - 1];
  svg.innerHTML = `<polyline points="${pts}" fill="none" stroke="#8ab4f8" stroke-width="1.5"/>` +
    `<circle class="da-current" cx="${x(k).toFixed(1)}" cy="${y(sk).toFixed(1)}" r="4" fill="#fbbc04"/>` +
    `<text x="${W - pad}" y="12" text-anchor="end" fill="#aaa" font-size="10">log sigma</text>`;
  return svg;
}

function lineChart(series, k, cls) { // series: [{values, colour}] on one y scale
  const W = 300, H = 90, pad = 6, n = Math.max(...series.map((s) => s.values.length));
  const all = series.flatMap((s) => s.values), hi = Math.max(...all, 1e-12);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", `da-chart ${cls}`);
  const x = (i) => pad + ((W - 2 * pad) * i) / Math.max(n - 1, 1), y = (v) => H - pad - ((H - 2 * pad) * v) / hi;
  svg.innerHTML = series.map((s) => `<polyline points="${s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}" fill="none" stroke="${s.colour}" stroke-width="1.5"/>`).join("") +
    `<line x1="${x(k)}" x2="${x(k)}" y1="0" y2="${H}" stroke="#fbbc04"/>`;
  return svg;
}

// ------------------------------------------------------------------------------------------ the parts

function timelinePart(run, k) {
  const [th, tw] = run.index.pictures.tile, kinds = ["x_t", "x0", "noise"];
  const canvases = kinds.map((kind) => canvas(`timeline.${kind}`, tw, th, 118));
  let chart = sigmaChart(run.index, k);
  state.onStep = (step) => { // scrubbing redraws in place
    kinds.forEach((kind, j) => drawTile(canvases[j], run, kind, step));
    const next = sigmaChart(run.index, step);
    chart.replaceWith(next);
    chart = next;
  };
  kinds.forEach((kind, j) => drawTile(canvases[j], run, kind, k));
  return [h("div", { class: "da-row" }, canvases.map((c, j) => figure(c, [t().xt, t().x0, t().noise][j]))),
    h("div", { class: "da-sub" }, t().schedule), chart];
}

function tokenStrip(run, onPick, diff = null) {
  const items = run.index.tokens.items;
  return h("div", { class: "da-tokens" }, items.map((tok, i) => h("button", {
    class: `da-token da-${tok.kind}${state.word === i && onPick ? " da-selected" : ""}${diff?.has(tok.text.toLowerCase()) ? " da-diff" : ""}`,
    "data-index": i, title: `${t().weight} ${tok.weight}`, onclick: onPick ? () => onPick(i) : null,
  }, tok.text, tok.weight !== 1 && tok.kind === "word" ? h("sub", {}, tok.weight) : null)),
  h("span", { class: "da-padding" }, t().padding(run.index.tokens.padding)));
}

function wordsPart(run, k) {
  if (!run.attention) return [h("p", { class: "da-note" }, `${t().noMaps}: ${run.index.attention_note || ""}`)];
  const [, , tokens, hh, ww] = run.index.attention.shape;
  const levelSelect = h("select", { class: "da-level", onchange: (e) => { state.level = e.target.value; render(); } },
    [h("option", { value: "all" }, t().allLevels), ...run.index.attention.levels.map((l) => h("option", { value: l }, t().levels[l]))]);
  levelSelect.value = state.level;
  const sum = h("input", { type: "checkbox", class: "da-sum", onchange: (e) => { state.sumSteps = e.target.checked; render(); } });
  sum.checked = state.sumSteps;
  const out = [tokenStrip(run, (i) => { state.word = i; render(); }),
    h("div", { class: "da-controls" }, h("label", {}, `${t().level} `, levelSelect), h("label", {}, sum, ` ${t().sumSteps}`))];
  if (state.word === null) return [...out, h("p", { class: "da-note" }, t().pickWord)];
  const [th, tw] = run.index.pictures.tile;
  const over = canvas("words.overlay", tw, th, 150);
  const heat = canvas("words.heat", ww, hh, 96, "da-pixelated");
  const draw = (step) => {
    drawTile(over, run, "x0", step);
    drawHeat(heat, wordMap(run, state.word, step, state.level, state.sumSteps), hh, ww);
    const ctx = over.getContext("2d");
    ctx.globalAlpha = 0.6;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(heat, 0, 0, tw, th);
    ctx.globalAlpha = 1;
  };
  draw(k);
  state.onStep = draw;
  const ranking = h("ol", { class: "da-ranking" });
  over.addEventListener("mousemove", (e) => {
    const k = state.step;
    const r = over.getBoundingClientRect();
    const px = Math.min(ww - 1, Math.floor(((e.clientX - r.left) / r.width) * ww)), py = Math.min(hh - 1, Math.floor(((e.clientY - r.top) / r.height) * hh));
    const at = py * ww + px, vals = [];
    for (let i = 0; i < tokens; i++) vals.push([i, wordMap(run, i, k, state.level, state.sumSteps)[at]]);
    const total = vals.reduce((a, [, v]) => a + v, 0) || 1;
    vals.sort((a, b) => b[1] - a[1]);
    ranking.replaceChildren(...vals.slice(0, 6).map(([i, v]) => h("li", {}, `${run.index.tokens.items[i].text}  ${((100 * v) / total).toFixed(1)}%`)));
    state.hover = vals.map(([i, v]) => [run.index.tokens.items[i].text, v]);
  });
  return [...out, h("div", { class: "da-row" }, figure(over, `“${run.index.tokens.items[state.word].text}” — ${t().heatOver}`), figure(heat, t().heatOnly)),
    h("div", { class: "da-sub" }, t().wordsHere), ranking];
}

function guidancePart(run, k) {
  if (!run.index.guidance) return [h("p", { class: "da-note" }, t().noGuidance)];
  const [, , , hh, ww] = run.index.latents.shape, [th, tw] = run.index.pictures.tile;
  const kinds = ["cond", "uncond", "x0"], canvases = kinds.map((kind) => canvas(`guidance.${kind}`, tw, th, 76));
  const tiles = canvases.map((c, j) => figure(c, [t().cond, t().uncond, t().guided][j]));
  const cfg = run.index.cfg, s = state.scale ?? cfg;
  const whatIf = canvas("guidance.whatif", ww, hh, 118, "da-pixelated");
  const linear = canvas("guidance.guided_linear", ww, hh, 118, "da-pixelated");
  const draw = (step) => {
    kinds.forEach((kind, j) => drawTile(canvases[j], run, kind, step));
    const cond = latent(run, step, "cond"), uncond = latent(run, step, "uncond"), mix = new Float32Array(cond.length);
    for (let i = 0; i < mix.length; i++) mix[i] = uncond[i] + s * (cond[i] - uncond[i]);
    drawLatent(whatIf, run, mix);
    drawLatent(linear, run, latent(run, step, "x0"));
  };
  draw(k);
  state.onStep = draw;
  const slider = h("input", { type: "range", class: "da-scale", min: 0, max: Math.max(20, 2 * cfg), step: 0.1, value: s,
    oninput: (e) => { state.scale = Number(e.target.value); render(); } });
  return [h("div", { class: "da-row" }, tiles),
    h("div", { class: "da-controls" }, h("label", {}, `${t().scale} `, slider, ` ${s.toFixed(1)}`), h("span", { class: "da-note" }, t().runUsed(cfg))),
    h("div", { class: "da-row" }, figure(whatIf, t().whatIf(s.toFixed(1))), figure(linear, t().guidedLinear)),
    h("p", { class: "da-note" }, run.index.rgb.source)];
}

function unetPart(run, k) {
  const u = run.index.unet;
  if (!u) return [h("p", { class: "da-note" }, t().noLevels)];
  const kept = u.steps.filter((s) => s.i <= k).pop() || u.steps[0];
  const img = run.levels[kept.i], [th, tw] = u.tile;
  const sides = [...new Set(u.names.map((n) => u.shapes[n][1]))].sort((a, b) => b - a);
  const box = (name, row, col) => {
    const c = canvas(`unet.${name}`, tw, th, 44, "da-pixelated");
    const ctx = c.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, 0, row * th, tw, th, 0, 0, tw, th);
    return h("button", { class: `da-level-box${state.unetLevel === name ? " da-selected" : ""}`, "data-level": name,
      style: { gridColumn: col + 1, gridRow: sides.indexOf(u.shapes[name][1]) + (name === "middle" ? 2 : 1) },
      onclick: () => { state.unetLevel = name; render(); } }, c, h("span", {}, name), h("span", { class: "da-shape" }, u.shapes[name].join("×")));
  };
  const grid = h("div", { class: "da-u", style: { gridTemplateColumns: `repeat(${u.names.length}, 46px)` } }, u.names.map((n, i) => box(n, i, i)));
  const out = [h("div", { class: "da-sub" }, t().keptAt(kept.i)), h("div", { class: "da-u-scroll" }, grid)];
  if (state.unetLevel && kept.levels[state.unetLevel]) {
    const row = u.names.indexOf(state.unetLevel), info = kept.levels[state.unetLevel];
    out.push(h("div", { class: "da-sub" }, `${state.unetLevel}: ${t().strongest}`), h("div", { class: "da-row" }, info.channels.map((ch, j) => {
      const c = canvas(`unet.channel${j}`, tw, th, 70, "da-pixelated");
      const ctx = c.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(img, (j + 1) * tw, row * th, tw, th, 0, 0, tw, th);
      return figure(c, `${t().channel} ${ch} (${info.strength[j].toFixed(2)})`);
    })));
  }
  return out;
}

function pca2(vectors) { // 2-D coordinates of vectors along their two main directions (Gram matrix, power iteration)
  const m = vectors.length, d = vectors[0].length, mean = new Float64Array(d);
  for (const v of vectors) for (let i = 0; i < d; i++) mean[i] += v[i] / m;
  const X = vectors.map((v) => Float64Array.from(v, (x, i) => x - mean[i]));
  const G = X.map((a) => X.map((b) => { let s = 0; for (let i = 0; i < d; i++) s += a[i] * b[i]; return s; }));
  const coords = vectors.map(() => [0, 0]);
  for (let comp = 0; comp < 2; comp++) {
    let u = Array.from({ length: m }, (_, i) => 1 + ((i * 7919) % 13) / 13), lambda = 0;
    for (let it = 0; it < 200; it++) {
      const w = G.map((row) => row.reduce((s, g, j) => s + g * u[j], 0));
      lambda = Math.hypot(...w);
      if (!lambda) break;
      u = w.map((x) => x / lambda);
    }
    u.forEach((x, i) => (coords[i][comp] = x * Math.sqrt(lambda)));
    for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) G[i][j] -= lambda * u[i] * u[j];
  }
  return coords;
}

function comparePart(run, k) {
  const others = state.runs.filter((r) => r.id !== run.id && r.status !== "running");
  const pick = h("select", { class: "da-run-b", onchange: (e) => e.target.value && select(e.target.value, "B") },
    [h("option", { value: "" }, "—"), ...others.map((r) => h("option", { value: r.id }, runTitle(r)))]);
  if (state.runB) pick.value = state.runB.id;
  const out = [h("label", {}, `${t().runB} `, pick)];
  const b = state.runB;
  if (!b || !b.latents) return [...out, h("p", { class: "da-note" }, t().pickB)];
  const n = Math.min(run.index.recorded_steps, b.index.recorded_steps), kk = Math.min(k, n - 1);
  const words = (r) => new Set(r.index.tokens.items.filter((x) => x.kind === "word").map((x) => x.text.toLowerCase()));
  const wa = words(run), wb = words(b), diff = new Set([...wa, ...wb].filter((w) => !(wa.has(w) && wb.has(w))));
  const tile = (r, name) => {
    const [th, tw] = r.index.pictures.tile, c = canvas(name, tw, th, 118);
    drawTile(c, r, "x0", kk);
    return c;
  };
  const dist = [], traj = [];
  for (let s = 0; s < n; s++) {
    const xa = latent(run, s, "x0"), xb = latent(b, s, "x0");
    let acc = 0;
    for (let i = 0; i < xa.length; i++) acc += (xa[i] - xb[i]) ** 2;
    dist.push(Math.sqrt(acc / xa.length));
  }
  for (const r of [run, b]) for (let s = 0; s < n; s++) traj.push(latent(r, s, "x0"));
  state.compare = { distance: dist, diff: [...diff] };
  const coords = pca2(traj), W = 300, H = 200, pad = 10;
  const xs = coords.map((c) => c[0]), ys = coords.map((c) => c[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const X = (v) => pad + ((W - 2 * pad) * (v - x0)) / (x1 - x0 || 1), Y = (v) => H - pad - ((H - 2 * pad) * (v - y0)) / (y1 - y0 || 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "da-chart da-trajectory");
  svg.innerHTML = [["#8ab4f8", 0], ["#f28b82", n]].map(([colour, off]) =>
    `<polyline points="${coords.slice(off, off + n).map((c) => `${X(c[0]).toFixed(1)},${Y(c[1]).toFixed(1)}`).join(" ")}" fill="none" stroke="${colour}"/>` +
    `<circle cx="${X(coords[off + kk][0]).toFixed(1)}" cy="${Y(coords[off + kk][1]).toFixed(1)}" r="4" fill="${colour}"/>`).join("");
  return [...out,
    n !== run.index.recorded_steps || n !== b.index.recorded_steps ? h("p", { class: "da-note" }, t().sameSteps) : null,
    h("div", { class: "da-sub" }, "A"), tokenStrip(run, null, diff), h("div", { class: "da-sub" }, "B"), tokenStrip(b, null, diff),
    h("div", { class: "da-row" }, figure(tile(run, "compare.a"), `A: ${runTitle(run.index)}`), figure(tile(b, "compare.b"), `B: ${runTitle(b.index)}`)),
    h("div", { class: "da-sub" }, t().distance), lineChart([{ values: dist, colour: "#fbbc04" }], kk, "da-distance"),
    h("div", { class: "da-sub" }, t().trajectory), svg];
}

// ------------------------------------------------------------------------------------------ the panel

function runTitle(r) {
  const label = r.label ? `${r.label}: ` : "";
  return `${label}${r.prompt?.slice(0, 40) || "?"} · ${r.sampler} · seed ${r.seed}`;
}

function setStep(k) {
  const n = state.run?.index.recorded_steps || 1;
  state.step = Math.min(Math.max(k, 0), n - 1);
  if (!state.onStep || !root) { render(); return; }
  // the part redraws its pictures in place; only the slider and its label change besides
  const rec = state.run.index.recorded[state.step], slider = root.querySelector(".da-step");
  if (slider && Number(slider.value) !== state.step) slider.value = state.step;
  root.querySelector(".da-step-label").textContent = stepLabel(rec, state.run.index);
  state.onStep(state.step);
  state.renders++;
}

function stepLabel(rec, idx) { return `${t().stepOf(rec.i + 1, idx.steps)} · ${t().sigma} ${rec.sigma.toPrecision(3)}`; }

function play() {
  if (state.playing) { clearInterval(state.playing); state.playing = null; render(); return; }
  const n = state.run?.index.recorded_steps || 1;
  if (state.step >= n - 1) state.step = 0;
  state.playing = setInterval(() => {
    if (state.step >= n - 1) { clearInterval(state.playing); state.playing = null; render(); return; }
    setStep(state.step + 1);
  }, 150);
  render();
}

function header() {
  const lang = h("select", { class: "da-lang", onchange: (e) => setLanguage(e.target.value) },
    Object.entries(LANGUAGES).map(([k, name]) => h("option", { value: k }, name)));
  lang.value = state.lang;
  const list = h("select", { class: "da-runs", onchange: (e) => select(e.target.value) },
    state.runs.map((r) => h("option", { value: r.id }, `${r.status === "complete" ? "" : `[${t()[r.status] || r.status}] `}${runTitle(r)}`)));
  if (state.run) list.value = state.run.id;
  return h("div", { class: "da-header" }, h("h3", {}, t().title), h("label", {}, `${t().language} `, lang),
    h("div", {}, h("label", {}, `${t().runs} `, list), h("button", { class: "da-refresh", onclick: refreshRuns }, t().refresh)));
}

function render() {
  if (!root) return;
  state.canvases = {};
  state.onStep = null; // set again by a part that can redraw a new step in place
  const body = [header()];
  if (state.error) body.push(h("p", { class: "da-error" }, state.error));
  if (state.message) body.push(h("p", { class: "da-note da-message" }, state.message));
  if (!state.runs.length) body.push(h("p", { class: "da-note da-empty" }, t().noRuns));
  const run = state.run;
  if (run) {
    const idx = run.index, n = idx.recorded_steps || 0;
    body.push(h("p", { class: "da-meta" }, `${idx.model} · ${idx.sampler} · seed ${idx.seed} · CFG ${idx.cfg ?? "?"} · ${idx.size.width}×${idx.size.height}` +
      (idx.size.batch > 1 ? ` · batch ${idx.size.batch} (picture 1 shown)` : "") + ` · ${t()[idx.status] || idx.status}` +
      (idx.message ? ` (${idx.message})` : "") + (idx.bytes ? ` · ${t().bytes(idx.bytes)}` : "") + (idx.pictures ? ` · ${t().pictures(idx.pictures.source)}` : "")));
    if (n) {
      const k = state.step, rec = idx.recorded[k];
      const slider = h("input", { type: "range", class: "da-step", min: 0, max: n - 1, step: 1, value: k, oninput: (e) => setStep(Number(e.target.value)) });
      body.push(h("div", { class: "da-controls" },
        h("button", { class: "da-back", title: t().back, onclick: () => setStep(state.step - 1) }, "◀"),
        h("button", { class: "da-play", title: state.playing ? t().pause : t().play, onclick: play }, state.playing ? "⏸" : "▶"),
        h("button", { class: "da-forward", title: t().forward, onclick: () => setStep(state.step + 1) }, "▶|"),
        slider, h("span", { class: "da-step-label" }, stepLabel(rec, idx))));
      body.push(h("div", { class: "da-tabs" }, PARTS.map((p) => h("button", { class: `da-tab${state.part === p ? " da-selected" : ""}`, "data-part": p,
        onclick: () => { state.part = p; render(); } }, t().parts[p]))));
      body.push(h("p", { class: "da-explain" }, t().explain[state.part]));
      const part = { timeline: timelinePart, words: wordsPart, guidance: guidancePart, unet: unetPart, compare: comparePart }[state.part];
      try {
        body.push(h("div", { class: `da-part da-part-${state.part}` }, part(run, k)));
      } catch (e) {
        body.push(h("p", { class: "da-error" }, String(e.message || e)));
      }
    }
  }
  root.replaceChildren(...body);
  state.renders++;
}

function setLanguage(lang) {
  state.lang = TEXT[lang] ? lang : "en";
  app.extensionManager?.setting?.set(LANGUAGE_SETTING, state.lang);
  render();
}

const STYLE = `
.da-explorer { padding: 8px; font-size: 13px; line-height: 1.4; overflow-y: auto; height: 100%; box-sizing: border-box; outline: none;
  font-family: system-ui, "Noto Sans", "Loma", "Garuda", "Norasi", sans-serif; }
.da-explorer h3 { margin: 0 0 6px; font-size: 15px; }
.da-explorer select, .da-explorer button { font: inherit; margin: 2px; }
.da-explorer .da-runs { max-width: 100%; }
.da-row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
.da-figure { margin: 0; text-align: center; font-size: 11px; }
.da-canvas { display: block; border: 1px solid #555; image-rendering: pixelated; }
.da-controls { display: flex; flex-wrap: wrap; align-items: center; gap: 4px; margin: 6px 0; }
.da-step { flex: 1; min-width: 120px; }
.da-tabs { display: flex; flex-wrap: wrap; gap: 2px; margin: 6px 0; }
.da-tab.da-selected, .da-token.da-selected, .da-level-box.da-selected { outline: 2px solid #fbbc04; }
.da-explain { color: #bbb; font-size: 12px; margin: 4px 0 8px; }
.da-note { color: #aaa; font-size: 12px; } .da-error { color: #f28b82; }
.da-sub { font-weight: 600; margin: 8px 0 2px; font-size: 12px; }
.da-chart { width: 100%; max-width: 320px; background: #1c1c1c; border: 1px solid #444; display: block; }
.da-tokens { display: flex; flex-wrap: wrap; gap: 2px; align-items: center; }
.da-token { padding: 1px 5px; border-radius: 3px; border: 1px solid #555; background: #2b2b2b; color: inherit; cursor: pointer; }
.da-token.da-bos, .da-token.da-eos { background: #24402a; } .da-token.da-diff { background: #6b4a00; border-color: #fbbc04; }
.da-padding { color: #888; font-size: 11px; margin-left: 4px; }
.da-u-scroll { overflow-x: auto; } .da-u { display: grid; gap: 2px; }
.da-level-box { display: flex; flex-direction: column; align-items: center; padding: 1px; font-size: 9px; background: #222; border: 1px solid #444; color: inherit; }
.da-shape { color: #888; } .da-ranking { margin: 2px 0; padding-left: 20px; font-size: 12px; }
`;

app.registerExtension({
  name: "DiffusionAnatomy.Explorer",
  settings: [{
    id: LANGUAGE_SETTING, category: ["Diffusion Anatomy", "Explorer", "Language"], name: "Anatomy Explorer language / ภาษา",
    type: "combo", options: Object.entries(LANGUAGES).map(([value, text]) => ({ value, text })), defaultValue: "en",
    tooltip: "The language of the Diffusion Anatomy panel.",
  }],
  setup() {
    document.head.append(h("style", {}, STYLE));
    state.lang = app.extensionManager?.setting?.get(LANGUAGE_SETTING) || "en";
    app.extensionManager.registerSidebarTab({
      id: TAB, icon: "pi pi-eye", title: "Diffusion Anatomy", tooltip: "Diffusion Anatomy: explore recorded runs", type: "custom",
      render: (el) => {
        root = h("div", { class: "da-explorer", tabindex: 0, onkeydown: (e) => {
          if (["SELECT", "INPUT"].includes(e.target.tagName) || !state.run) return; // those move by themselves
          if (e.key === "ArrowLeft") { setStep(state.step - 1); e.preventDefault(); }
          if (e.key === "ArrowRight") { setStep(state.step + 1); e.preventDefault(); }
        } });
        el.append(root);
        refreshRuns().then(() => { if (!state.run && !picking.A && state.runs.length) select(state.runs[0].id); }); // unless one was picked
      },
      destroy: () => { root = null; },
    });
    api.addEventListener("diffusion_anatomy.explorer", async ({ detail }) => {
      state.live = detail;
      if (detail.status === "running" && detail.step > 0 && state.runs[0]?.id === detail.run) {
        state.message = `${t().running}: ${t().stepOf(detail.step, detail.steps)}`;
        render();
        return;
      }
      state.busy++;
      try {
        await refreshRuns();
        if (detail.status !== "running") { // the run just queued is the one to look at
          state.message = "";
          await select(detail.run);
        }
      } finally {
        state.busy--;
      }
    });
  },
});
