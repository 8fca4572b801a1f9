// Diffusion Anatomy views in the editor: each view node grows to show the picture it returns, at a
// bounded size, and makes room for it: nodes the grown node would now cover are moved down (or right),
// in turn making room below them, and a group that held a moved node grows to hold it still. The
// Denoising Steps Recorder's live strip (a progress preview at every recorded step while the sampler
// runs) resizes its node the same way as it arrives. ComfyUI itself shows the pictures: the views
// return them as ui images, the recorder sends them as previews with metadata (its node id).
// Under the Vue node renderer of newer frontends a node is an element whose height follows its content, so
// any node that shows pictures (core's Save Image and Preview Image too) grows by itself when they load:
// there every such node's element is watched after a run until it holds still, and room is made each
// time it grows. Only documented extension APIs are used (app.registerExtension's setup hook, api events,
// the graph's nodes and groups, the DOM the renderer draws): no node prototype is patched, so it works on
// the litegraph canvas and on the Vue node renderer alike.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "DiffusionAnatomy";
const VIEWS = new Set(["Tokens", "ForwardDiffusion", "DenoisingSteps", "LatentChannels", "PlotSigmas", "DenoisingStepsRecorder",
                       "CrossAttentionView", "UNetLevelsView"].map((n) => PREFIX + n));
// The picture is shown at most this large (canvas units); larger ones are scaled down to fit. Bounded, so
// a 12-step strip or a tall U-Net does not turn its node into a wall across the graph.
const MAX_WIDTH = 720;
const MAX_HEIGHT = 640;
const MARGIN = 10; // px around the picture inside the node
const GAP = 16; // px kept between a grown node and the nodes it moved

// What a test (or a curious user in the console) can read, per node id: `previewsWhile`, for each live preview
// received, the node the server was executing when it arrived (the socket keeps the run's order, so this says the
// strip was live during sampling however late the reader looks); `fitted`, the picture sizes.
// `settling`: pictures still loading or being fitted, and nodes whose element is still watched (a test waits
// for 0 before it reads the layout).
const state = (window.DiffusionAnatomy = window.DiffusionAnatomy || { previewsWhile: {}, fitted: {}, settling: 0 });
const QUIET_MS = 1200; // an element unchanged this long, its pictures loaded, has settled
const POLL_MS = 100; // on the canvas: how often a watched node's rectangle is read
const WATCH_MAX_MS = 60000; // stop watching after this long whatever happens (a picture that never loads)

const titleHeight = () => globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
const graphNodes = () => app.graph._nodes ?? app.graph.nodes ?? [];
const graphGroups = () => app.graph._groups ?? app.graph.groups ?? [];
const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));

// A node's rectangle as the user sees it, title bar included, in canvas units: [left, top, right, bottom].
// The Vue node renderer draws a node as an element that may be taller than the size the graph stores
// (its widgets are taller), so there the element's box is read; on the canvas it is pos and size.
const elementOf = (node) => document.querySelector(`[data-node-id="${node.id}"]`);

function rectOf(node) {
  const el = elementOf(node);
  const ds = app.canvas?.ds;
  const canvas = app.canvas?.canvas?.getBoundingClientRect?.();
  if (el && ds && canvas) {
    const r = el.getBoundingClientRect();
    const x = (r.left - canvas.left) / ds.scale - ds.offset[0];
    const y = (r.top - canvas.top) / ds.scale - ds.offset[1];
    return [x, y, x + r.width / ds.scale, y + r.height / ds.scale];
  }
  const t = titleHeight();
  return [node.pos[0], node.pos[1] - t, node.pos[0] + node.size[0], node.pos[1] + node.size[1]];
}

const overlaps = (a, b) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
const inside = (r, box) => r[0] >= box[0] && r[1] >= box[1] && r[2] <= box[2] && r[3] <= box[3];

function groupBox(group) {
  const [x, y, w, h] = group._bounding ?? group.bounding;
  return [x, y, x + w, y + h];
}

// Where every node is and which nodes each group holds, before a node grows.
function snapshot() {
  const rects = new Map(graphNodes().map((n) => [n, rectOf(n)]));
  const members = graphGroups().map((g) => graphNodes().filter((n) => inside(rects.get(n), groupBox(g))));
  return { rects, members };
}

function moveBy(node, rects, dx, dy) {
  node.pos = [node.pos[0] + dx, node.pos[1] + dy]; // the setter, not an in-place edit: the Vue renderer follows it
  const r = rects.get(node);
  rects.set(node, [r[0] + dx, r[1] + dy, r[2] + dx, r[3] + dy]);
}

// Move the nodes that `grown` now covers (and did not cover `before` it grew) out of its way, then those
// the moved ones cover, and so on; grow each group around the members it had before. It starts from
// where the nodes are now (an earlier pass, or another node's, may have moved them), so it can run again
// each time the node grows; a pair that overlapped before anything grew is the user's, and is left.
function makeRoom(grown, before) {
  const nodes = graphNodes();
  if (!nodes.includes(grown)) return; // another workflow is open now (or the node was deleted)
  const rects = new Map(nodes.map((n) => [n, rectOf(n)]));
  const was = before.rects;
  const overlappedBefore = (a, b) => was.has(a) && was.has(b) && overlaps(was.get(a), was.get(b));
  const queue = [grown];
  for (let guard = 0; queue.length && guard < 10 * nodes.length; guard++) {
    const mover = queue.shift();
    const r = rects.get(mover);
    for (const other of nodes) {
      if (other === mover || overlappedBefore(mover, other)) continue;
      const o = rects.get(other);
      if (!overlaps(r, o)) continue;
      // below the mover's top: push down; beside it (it grew to the right into the other): push right
      if (o[1] >= r[1]) moveBy(other, rects, 0, r[3] + GAP - o[1]);
      else moveBy(other, rects, r[2] + GAP - o[0], 0);
      queue.push(other);
    }
  }
  // then any pair that overlaps now and did not before (a cascade the queue missed): the lower one goes down
  for (let moved = true, guard = 0; moved && guard < nodes.length; guard++) {
    moved = false;
    for (const a of nodes) for (const b of nodes) {
      if (a === b || overlappedBefore(a, b)) continue;
      const ra = rects.get(a), rb = rects.get(b);
      if (!overlaps(ra, rb) || rb[1] < ra[1] || (rb[1] === ra[1] && rb[0] < ra[0])) continue;
      moveBy(b, rects, 0, ra[3] + GAP - rb[1]);
      moved = true;
    }
  }
  const members = before.members;
  graphGroups().forEach((group, i) => {
    const box = groupBox(group);
    const need = members[i].filter((n) => rects.has(n)).map((n) => rects.get(n)).reduce((b, r) => [b[0], b[1], Math.max(b[2], r[2] + MARGIN), Math.max(b[3], r[3] + MARGIN)], box);
    if (need[2] > box[2] || need[3] > box[3]) {
      const size = [need[2] - need[0], need[3] - need[1]];
      if (group._bounding) [group._bounding[2], group._bounding[3]] = size;
      else group.size = size;
    }
  });
}

// Size the node to show a width x height picture at the bounded scale, then make room for it (`before`: the
// layout when the picture arrived; under the Vue renderer the node may have grown by itself since).
async function fitNode(node, width, height, before) {
  if (!node || !width || !height) return;
  const scale = Math.min(1, MAX_WIDTH / width, MAX_HEIGHT / height);
  const w = Math.max(node.size[0], Math.round(width * scale) + 2 * MARGIN);
  const widgets = node.computeSize ? node.computeSize([w, 0])[1] : node.size[1];
  node.setSize([w, Math.round(widgets + height * scale + 2 * MARGIN)]);
  app.graph.setDirtyCanvas(true, true);
  await nextFrame(); // the Vue renderer lays the node out again before its box is read
  makeRoom(node, before);
  // under the Vue renderer the element may grow a little more (its picture loads): once it holds still
  // for a frame (at most ~1 s), make room again from where the first pass left the nodes
  for (let i = 0, last = rectOf(node).map(Math.round).join(); i < 30; i++) {
    await nextFrame();
    const now = rectOf(node).map(Math.round).join();
    if (now === last) break;
    last = now;
  }
  makeRoom(node, before);
  state.fitted[node.id] = [width, height, scale];
  app.graph.setDirtyCanvas(true, true);
  watchGrowth(node, before); // its picture may load and grow the node later still
}

const watching = new Map(); // node id -> stop(): one watch per node, a new run's replaces the last

// Make room (from the layout `before` the node grew) each time the node changes size, until it has held still
// for QUIET_MS with every picture in it loaded. Under the Vue renderer its element is watched (its pictures load
// and grow it later); on the canvas the frontend may still resize the node for its images after a fit (1.32's
// image sizing, a late load), and nothing there reports it, so its rectangle is read every POLL_MS.
function watchGrowth(node, before) {
  const el = elementOf(node);
  if (el && typeof ResizeObserver === "undefined") return;
  watching.get(node.id)?.();
  state.settling++;
  let quiet, poll, observer, stopped = false;
  const started = performance.now();
  const images = () => (el ? [...el.querySelectorAll("img")] : [...(node.imgs ?? [])]);
  const loaded = () => images().every((img) => img.complete);
  const stop = () => {
    if (stopped) return;
    stopped = true;
    clearTimeout(quiet);
    clearInterval(poll);
    observer?.disconnect();
    watching.delete(node.id);
    state.settling--;
  };
  const later = () => {
    clearTimeout(quiet);
    quiet = setTimeout(() => (loaded() || performance.now() - started > WATCH_MAX_MS ? stop() : later()), QUIET_MS);
  };
  const grew = () => {
    fitting = fitting.then(() => {
      if (stopped) return;
      if (!graphNodes().includes(node)) return stop(); // its workflow was closed or replaced
      makeRoom(node, before);
      app.graph.setDirtyCanvas(true, true);
    }).catch((e) => console.error("DiffusionAnatomy: making room", e));
    later();
  };
  if (el) {
    observer = new ResizeObserver(grew);
    observer.observe(el);
  } else {
    let last = rectOf(node).map(Math.round).join();
    poll = setInterval(() => {
      const now = rectOf(node).map(Math.round).join();
      if (now !== last) (last = now), grew();
    }, POLL_MS);
  }
  watching.set(node.id, stop);
  later();
}

let fitting = Promise.resolve(); // one fit at a time: each reads where the previous one left the nodes

function fitToUrl(node, url) {
  const before = snapshot(); // now, as the picture arrives: the renderer has not drawn it yet
  state.settling++; // until the picture is loaded and the node fitted (fits queue up while previews stream in)
  const settled = () => state.settling--;
  const img = new Image();
  img.onload = () => {
    fitting = fitting.then(() => fitNode(node, img.naturalWidth, img.naturalHeight, before))
      .catch((e) => console.error("DiffusionAnatomy: fitting a view", e)).finally(settled);
    if (url.startsWith("blob:")) URL.revokeObjectURL(url);
  };
  img.onerror = () => {
    settled();
    if (url.startsWith("blob:")) URL.revokeObjectURL(url);
  };
  img.src = url;
}

const nodeOf = (id) => (id != null ? app.graph.getNodeById(Number(id)) : null);

app.registerExtension({
  name: "DiffusionAnatomy.Views",
  setup() {
    // "executed": a node's ui output arrived (the views' pictures)
    api.addEventListener("executed", ({ detail }) => {
      const node = nodeOf(detail?.display_node ?? detail?.node);
      const image = detail?.output?.images?.[0];
      if (!node || !image) return;
      // any other node that shows pictures (Save Image, Preview Image...) may grow as they load (not yet drawn
      // now, so the layout now is the one before it grew)
      if (!VIEWS.has(node.type)) {
        watchGrowth(node, snapshot());
        return;
      }
      const query = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder ?? "", type: image.type ?? "temp" });
      fitToUrl(node, api.apiURL(`/view?${query}`));
    });
    api.addEventListener("executing", ({ detail }) => {
      state.executing = detail?.node ?? detail ?? null; // a node id, or null once the prompt is done
    });
    api.addEventListener("b_preview_with_metadata", ({ detail }) => {
      const id = detail?.displayNodeId ?? detail?.nodeId;
      const node = nodeOf(id);
      if (!node || node.type !== PREFIX + "DenoisingStepsRecorder") return;
      ((state.previewsWhile ??= {})[id] ??= []).push(state.executing ?? null);
      fitToUrl(node, URL.createObjectURL(detail.blob)); // ComfyUI keeps its own URL for the picture it shows
    });
  },
});
