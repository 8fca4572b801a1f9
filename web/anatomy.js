// Diffusion Anatomy views in the editor: each view node grows to fit the picture it shows, and the
// Denoising Steps Recorder's live strip (sent as a progress preview at every recorded step while the
// sampler runs) resizes its node as it arrives. The pictures themselves are shown by ComfyUI: the
// views return them as ui images, the recorder sends them as previews with metadata (its node id).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "DiffusionAnatomy";
const VIEWS = new Set(["Tokens", "ForwardDiffusion", "DenoisingSteps", "LatentChannels", "PlotSigmas", "DenoisingStepsRecorder",
                       "CrossAttentionView", "UNetLevelsView"].map((n) => PREFIX + n));
const MAX_WIDTH = 1100; // wider pictures are shown scaled down

// What a test (or a curious user in the console) can read: previews received per node id.
const state = (window.DiffusionAnatomy = window.DiffusionAnatomy || { livePreviews: {}, fitted: {} });

function fitNode(node, width, height) {
  if (!node || !width || !height) return;
  const scale = Math.min(1, MAX_WIDTH / width);
  const w = Math.max(node.size[0], Math.round(width * scale) + 20);
  const base = node.computeSize ? node.computeSize([w, 0])[1] : node.size[1];
  const h = Math.round(base + ((w - 20) / width) * height + 20);
  node.setSize([w, Math.max(node.size[1], h)]);
  state.fitted[node.id] = [width, height];
  app.graph.setDirtyCanvas(true, true);
}

function fitToUrl(node, url) {
  const img = new Image();
  img.onload = () => {
    fitNode(node, img.naturalWidth, img.naturalHeight);
    if (url.startsWith("blob:")) URL.revokeObjectURL(url);
  };
  img.src = url;
}

app.registerExtension({
  name: "DiffusionAnatomy.Views",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!VIEWS.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const image = message?.images?.[0];
      if (image) {
        const query = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder ?? "", type: image.type ?? "temp" });
        fitToUrl(this, api.apiURL(`/view?${query}`));
      }
      return result;
    };
  },
  setup() {
    api.addEventListener("b_preview_with_metadata", ({ detail }) => {
      const id = detail?.displayNodeId ?? detail?.nodeId;
      const node = id != null ? app.graph.getNodeById(Number(id)) : null;
      if (!node || node.type !== PREFIX + "DenoisingStepsRecorder") return;
      state.livePreviews[id] = (state.livePreviews[id] || 0) + 1;
      fitToUrl(node, URL.createObjectURL(detail.blob)); // ComfyUI keeps its own URL for the picture it shows
    });
  },
});
