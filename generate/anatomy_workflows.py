"""The bundled anatomy workflows: written from the stage lists below, in both formats, and rendered.

    .host/venv/bin/python generate/anatomy_workflows.py            # writes workflows/api/anatomy_*.json and workflows/Anatomy *.json
    .host/venv/bin/python generate/thumbnails.py anatomy_tokens ...  # then their template thumbnails (workflows/README.md)
    .host/venv/bin/python generate/anatomy_workflows.py --render   # also runs each API graph and copies its pictures to docs/anatomy/

Each workflow is a list of stages in the source document's order (titles and notes: generate/stages.py); a stage
becomes a group in the editor with a Note that says, in the document's words, what happens there. The editor version is
made from the API version by generate/ui_workflow.py (nodes carry `_meta.group` and `_meta.note`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).parent), str(REPO / "harness")]  # generate/, harness/
from stages import ANATOMY, Stage  # noqa: E402

EMBEDDED = "DiffusionAnatomy/tiny_shapes_sd1.safetensors"
PROMPT = "a large red circle at the top left on a blue background"
P = "DiffusionAnatomy"



class Graph:
    """An API-format graph built node by node, remembering which stage each node belongs to."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}
        self.stages: list[tuple[str, str, list[str]]] = []  # (title, note, node ids)

    def stage(self, stage: Stage) -> None:
        self.stages.append((stage.title, stage.note, []))

    def add(self, class_type: str, title: str | None = None, **inputs) -> str:
        nid = str(len(self.nodes) + 1)
        group, note, _ = self.stages[-1]
        meta = {**({"title": title} if title else {}), "group": group, "note": note}  # generate/ui_workflow.py makes groups and notes of them
        self.nodes[nid] = {"class_type": class_type, "inputs": inputs, "_meta": meta}
        self.stages[-1][2].append(nid)
        return nid


def base(g: Graph, prompt: str = PROMPT) -> dict:
    g.stage(ANATOMY["model"])
    ckpt = g.add(f"{P}CheckpointLoader", "Load Checkpoint", ckpt_name=EMBEDDED, prediction="auto")
    g.stage(ANATOMY["text"])
    pos = g.add(f"{P}CLIPTextEncode", "Positive prompt", clip=[ckpt, 1], text=prompt)
    neg = g.add(f"{P}CLIPTextEncode", "Negative prompt", clip=[ckpt, 1], text="")
    return {"ckpt": ckpt, "pos": pos, "neg": neg}


def text_to_image(g: Graph, n: dict, sampler_node: list | None = None, steps: int = 20, seed: int = 42, stage: bool = True) -> str:
    if stage:
        g.stage(ANATOMY["sample"])
    latent = g.add(f"{P}EmptyLatent", model=[n["ckpt"], 0], width=64, height=64, batch_size=1)
    sigmas = g.add(f"{P}Scheduler", model=[n["ckpt"], 0], scheduler="karras", steps=steps, denoise=1.0)
    if sampler_node is None:
        sampler_node = [g.add(f"{P}Sampler_dpmpp_2m", "DPM++ 2M"), 0]
    return g.add(f"{P}UNetDenoise", model=n.get("model", [n["ckpt"], 0]), positive=[n["pos"], 0], negative=[n["neg"], 0], latent_image=[latent, 0],
                 sampler=sampler_node, sigmas=[sigmas, 0], cfg=5.0, seed=seed, add_noise=True)


def save(g: Graph, image: list, prefix: str) -> str:
    return g.add("SaveImage", images=image, filename_prefix=prefix)


def tokens(g: Graph, n: dict) -> None:
    g.stage(ANATOMY["tokens"])
    t = g.add(f"{P}Tokens", clip=[n["ckpt"], 1], text="a large (red:1.2) circle at the top left on a blue background", show_padding=False)
    save(g, [t, 0], "anatomy_tokens")


def forward(g: Graph, n: dict, x0: str) -> None:
    g.stage(ANATOMY["forward"])
    f = g.add(f"{P}ForwardDiffusion", model=[n["ckpt"], 0], vae=[n["ckpt"], 2], seed=7, count=6, timesteps="0, 100, 250, 500, 750, 999",
              chosen_t=500, steps=10, latent=[x0, 0])
    save(g, [f, 0], "anatomy_forward")
    g.stage(ANATOMY["reverse_from_t"])
    sampler = g.add(f"{P}SamplerSelect", "Euler", sampler="euler")
    back = g.add(f"{P}UNetDenoise", model=[n["ckpt"], 0], positive=[n["pos"], 0], negative=[n["neg"], 0], latent_image=[f, 1],
                 sampler=[sampler, 0], sigmas=[f, 2], cfg=5.0, seed=0, add_noise=False)
    dec = g.add(f"{P}VAEDecode", samples=[back, 0], vae=[n["ckpt"], 2], tiled=False, tile_size=512)
    save(g, [dec, 0], "anatomy_reverse_from_t")


def steps_view(g: Graph, n: dict) -> str:
    g.stage(ANATOMY["steps"])
    sampler = g.add(f"{P}Sampler_dpmpp_2m", "DPM++ 2M")
    rec = g.add(f"{P}DenoisingStepsRecorder", sampler=[sampler, 0], every=2, live_preview=True, vae=[n["ckpt"], 2])
    out = text_to_image(g, n, [rec, 0], stage=False)
    view = g.add(f"{P}DenoisingSteps", steps=[rec, 1], vae=[n["ckpt"], 2], samples=[out, 0], show_noise=True, max_columns=10)
    save(g, [view, 0], "anatomy_denoising_steps")
    return out


def latent_view(g: Graph, n: dict, out: str) -> None:
    g.stage(ANATOMY["latent"])
    v = g.add(f"{P}LatentChannels", samples=[out, 0], model=[n["ckpt"], 0], vae=[n["ckpt"], 2])
    save(g, [v, 0], "anatomy_latent_channels")
    dec = g.add(f"{P}VAEDecode", samples=[out, 0], vae=[n["ckpt"], 2], tiled=False, tile_size=512)
    save(g, [dec, 0], "anatomy_picture")


def captures(g: Graph, n: dict) -> None:
    """Route the MODEL through the cross-attention and U-Net levels captures; sampling then uses n["model"]."""
    g.stage(ANATOMY["capture"])
    attn = g.add(f"{P}CrossAttentionCapture", model=[n["ckpt"], 0])
    levels = g.add(f"{P}UNetLevelsCapture", model=[attn, 0], step=10)
    n.update(model=[levels, 0], attention=attn, levels=levels)


def inside_views(g: Graph, n: dict, out: str) -> None:
    g.stage(ANATOMY["inside"])
    dec = g.add(f"{P}VAEDecode", samples=[out, 0], vae=[n["ckpt"], 2], tiled=False, tile_size=512)
    levels = g.add(f"{P}UNetLevelsView", levels=[n["levels"], 1], image=[dec, 0], mode="pca_rgb")
    save(g, [levels, 0], "anatomy_unet_levels")
    words = g.add(f"{P}CrossAttentionView", attention_maps=[n["attention"], 1], image=[dec, 0], clip=[n["ckpt"], 1], text=PROMPT, words="")
    save(g, [words, 0], "anatomy_cross_attention")


def cross_attention() -> Graph:
    """Cross-attention per word on its own: one prompt feeds both the text encoder and the view, so their words agree."""
    g = Graph()
    g.stage(ANATOMY["model"])
    ckpt = g.add(f"{P}CheckpointLoader", "Load Checkpoint", ckpt_name=EMBEDDED, prediction="auto")
    g.stage(ANATOMY["text"])
    prompt = g.add("PrimitiveStringMultiline", "Prompt (one text for the encoder and the view)", value=PROMPT)
    pos = g.add(f"{P}CLIPTextEncode", "Positive prompt", clip=[ckpt, 1], text=[prompt, 0])
    neg = g.add(f"{P}CLIPTextEncode", "Negative prompt", clip=[ckpt, 1], text="")
    g.stage(ANATOMY["capture_attention"])
    attn = g.add(f"{P}CrossAttentionCapture", model=[ckpt, 0])
    out = text_to_image(g, {"ckpt": ckpt, "pos": pos, "neg": neg, "model": [attn, 0]})
    g.stage(ANATOMY["attention"])
    dec = g.add(f"{P}VAEDecode", samples=[out, 0], vae=[ckpt, 2], tiled=False, tile_size=512)
    words = g.add(f"{P}CrossAttentionView", attention_maps=[attn, 1], image=[dec, 0], clip=[ckpt, 1], text=[prompt, 0], words="")
    save(g, [words, 0], "anatomy_cross_attention")
    return g


def unet_levels() -> Graph:
    """The U-Net's levels on their own: the feature maps at step 10 of 20, laid out as the U."""
    g = Graph(); n = base(g)
    g.stage(ANATOMY["capture_levels"])
    capture = g.add(f"{P}UNetLevelsCapture", model=[n["ckpt"], 0], step=10)
    out = text_to_image(g, {**n, "model": [capture, 0]})
    g.stage(ANATOMY["levels"])
    dec = g.add(f"{P}VAEDecode", samples=[out, 0], vae=[n["ckpt"], 2], tiled=False, tile_size=512)
    view = g.add(f"{P}UNetLevelsView", levels=[capture, 1], image=[dec, 0], mode="pca_rgb")
    save(g, [view, 0], "anatomy_unet_levels")
    return g


def explorer_prompts(g: Graph, ckpt: str, prompt: str, label: str) -> tuple[str, str, str]:
    """The prompt (one text node: it feeds the text encoder and the capture, so their tokens agree) and its encodings."""
    text = g.add("PrimitiveStringMultiline", f"Prompt {label}".strip(), value=prompt)
    pos = g.add(f"{P}CLIPTextEncode", f"Positive prompt {label}".strip(), clip=[ckpt, 1], text=[text, 0])
    neg = g.add(f"{P}CLIPTextEncode", f"Negative prompt {label}".strip(), clip=[ckpt, 1], text="")
    return text, pos, neg


def explorer_record(g: Graph, ckpt: str, prompts: tuple[str, str, str], label: str, seed: int = 42) -> str:
    """One recorded run: the capture hooks the MODEL, the sampler runs it, the picture is decoded and saved."""
    text, pos, neg = prompts
    cap = g.add(f"{P}ExplorerCapture", f"Anatomy Explorer Capture {label}".strip(), model=[ckpt, 0], clip=[ckpt, 1], text=[text, 0],
                pictures="vae", levels_every=1, keep_runs=16, label=label, vae=[ckpt, 2])
    out = text_to_image(g, {"ckpt": ckpt, "pos": pos, "neg": neg, "model": [cap, 0]}, seed=seed, stage=False)
    dec = g.add(f"{P}VAEDecode", samples=[out, 0], vae=[ckpt, 2], tiled=False, tile_size=512)
    save(g, [dec, 0], f"anatomy_explorer{'_' + label.lower() if label else ''}")
    return out


def model_stage(g: Graph) -> str:
    g.stage(ANATOMY["model"])
    return g.add(f"{P}CheckpointLoader", "Load Checkpoint", ckpt_name=EMBEDDED, prediction="auto")


def explorer() -> Graph:
    g = Graph()
    ckpt = model_stage(g)
    g.stage(ANATOMY["text"])
    prompts = explorer_prompts(g, ckpt, PROMPT, "")
    g.stage(ANATOMY["explorer"])
    explorer_record(g, ckpt, prompts, "")
    return g


def explorer_compare() -> Graph:
    g = Graph()
    ckpt = model_stage(g)
    g.stage(ANATOMY["explorer_a"])
    explorer_record(g, ckpt, explorer_prompts(g, ckpt, PROMPT, "A"), "A")
    g.stage(ANATOMY["explorer_b"])
    explorer_record(g, ckpt, explorer_prompts(g, ckpt, PROMPT.replace("circle", "square"), "B"), "B")
    return g


def sigma_view(g: Graph, n: dict) -> None:
    g.stage(ANATOMY["sigmas"])
    ids = [g.add(f"{P}Scheduler", model=[n["ckpt"], 0], scheduler=s, steps=20, denoise=1.0) for s in ("karras", "normal", "exponential")]
    plot = g.add(f"{P}PlotSigmas", sigmas=[ids[0], 0], sigmas_2=[ids[1], 0], sigmas_3=[ids[2], 0], width=640, height=360,
                 log_sigma=True, labels="karras, normal, exponential")
    save(g, [plot, 0], "anatomy_sigmas")


def build() -> dict[str, Graph]:
    graphs = {}

    g = Graph(); n = base(g); tokens(g, n); graphs["anatomy_tokens"] = g
    g = Graph(); n = base(g); out = text_to_image(g, n); forward(g, n, out); graphs["anatomy_forward_diffusion"] = g
    g = Graph(); n = base(g); steps_view(g, n); graphs["anatomy_denoising_steps"] = g
    g = Graph(); n = base(g); out = text_to_image(g, n); latent_view(g, n, out); graphs["anatomy_latent_channels"] = g
    g = Graph(); n = base(g); sigma_view(g, n); graphs["anatomy_sigma_plot"] = g
    graphs["anatomy_cross_attention"] = cross_attention()
    graphs["anatomy_unet_levels"] = unet_levels()
    graphs["anatomy_explorer"] = explorer()
    graphs["anatomy_explorer_compare"] = explorer_compare()
    # the tour, in the document's order: CLIP reads the text; the U-Net inside (its levels, cross-attention);
    # the diffusion process, reverse (step by step: it makes the picture) and forward; the latent and the
    # VAE decoder; the samplers' schedules
    g = Graph(); n = base(g); tokens(g, n)
    captures(g, n)
    out = steps_view(g, n)
    inside_views(g, n, out)
    forward(g, n, out)
    latent_view(g, n, out)
    sigma_view(g, n)
    graphs["anatomy_tour"] = g
    return graphs


def main() -> None:
    from comfy_server import ComfyServer

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--render", action="store_true", help="run each API graph and copy its saved pictures to docs/anatomy/")
    args = ap.parse_args()
    from ui_workflow import lay_out, measure, title_of, to_ui

    graphs = build()
    server = ComfyServer.start(Path(tempfile.mkdtemp()))
    try:
        info = server.get("/object_info")
        for name, g in graphs.items():
            api = REPO / "workflows/api" / f"{name}.json"
            api.write_text(json.dumps(g.nodes, indent=1) + "\n")
            ui = lay_out(to_ui(g.nodes, info), g.nodes, measure(to_ui(g.nodes, info), server.url))
            (REPO / "workflows" / f"{title_of(api)}.json").write_text(json.dumps(ui, indent=1) + "\n")
            print(f"wrote workflows/{title_of(api)}.json and workflows/api/{name}.json")
        if args.render:
            docs = REPO / "docs/anatomy"
            docs.mkdir(parents=True, exist_ok=True)
            for name, g in graphs.items():
                if name == "anatomy_tour":
                    continue  # the tour shows the same views
                for f in server.saved_files(server.run(g.nodes)):
                    if f.name.startswith("anatomy_picture"):
                        continue  # the plain picture, not a view
                    target = docs / (f.name.rsplit("_", 2)[0].removeprefix("anatomy_") + ".png")
                    shutil.copy(f, target)
                    print(f"rendered {target.relative_to(REPO)}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
