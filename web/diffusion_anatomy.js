// Diffusion Anatomy frontend extension: marks the pack's nodes so users can tell them apart.
// nodeCreated is the documented per-node hook (no node prototype is patched).
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "DiffusionAnatomy.NodeColours",
  nodeCreated(node) {
    if (!(node.comfyClass ?? node.type)?.startsWith("DiffusionAnatomy")) return;
    node.color = "#2a3d4f";
    node.bgcolor = "#1e2a36";
  },
});
