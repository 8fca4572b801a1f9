// Diffusion Anatomy frontend extension: marks the pack's nodes so users can tell them apart.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "DiffusionAnatomy.NodeColours",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("DiffusionAnatomy")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = "#2a3d4f";
      this.bgcolor = "#1e2a36";
      return result;
    };
  },
});
