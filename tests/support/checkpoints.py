"""Random checkpoints in the original LDM single-file layout, built from ComfyUI's own modules.

- `sd15_random_checkpoint(host, seed)`: a full-size SD1.5 `.safetensors` (U-Net, VAE, CLIP-L text
  model, DDPM schedule buffers) with seeded random weights, at `<repo>/.cache/fixtures/sd15_random_<seed>.safetensors`.
  Stored in fp16 (2.1 GB instead of 4.3 GB); tests upcast to fp32 on load, and both models under
  test read the same upcast values, so parity is unaffected.
- `sd15_small_checkpoint(host, seed)`: the same layout with a two-level U-Net (`sd15_small_config`, 0.63 GB),
  which core's and the pack's loaders both read as SD1.5, for tests where the U-Net's depth is not under test.
- `cached_random_checkpoint(link, meta, seed, dtype)`: how such big files are kept. The file is
  written once into a cache shared by every clone (`$DA_FIXTURE_CACHE`, default `<host dir>/fixtures`,
  beside the host install that outlives a fresh clone), named by a hash of its recipe (every key's
  name, shape and dtype, the real tensors' bytes, seed, metadata, the code that draws and writes), and the
  repository's `.cache/fixtures/` holds a symlink to it under the name the tests use. A changed recipe
  (another ComfyUI's shapes, a new value rule) is a new name, never a stale file; concurrent runs
  (pytest-xdist workers, other clones) wait on a lock instead of writing it twice.
- `sd15_keys` / `sd21_keys` / `sdxl_keys`: name -> meta tensor (key layout and shapes only) of the
  real checkpoints of each family, from ComfyUI's models built on the meta device.
- `comfy_unet(host, config)`: ComfyUI's `UNetModel` for one of our `UNetConfig`s.
- `fill_random(meta_state_dict, seed)`: seeded values for every tensor, each from its own generator
  keyed by (seed, crc32(name)), so a tensor's values do not depend on which other keys exist.

Memory: nothing is materialised on a real device until it is filled, and the file is written one
tensor at a time (the safetensors layout is a JSON header followed by raw bytes), so generating
the 2.1 GB file peaks at the largest single tensor (~150 MB for CLIP's token embedding in fp32).
"""
from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / ".cache" / "fixtures"

_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


# --------------------------------------------------------------------------- ComfyUI's models

def comfy_unet_kwargs(config) -> dict:
    """Our UNetConfig -> the keyword arguments of ComfyUI's `openaimodel.UNetModel` (as its model_detection builds them)."""
    levels = len(config.channel_mult)
    kwargs = dict(
        image_size=32,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        model_channels=config.model_channels,
        num_res_blocks=[config.num_res_blocks] * levels,
        channel_mult=list(config.channel_mult),
        # ComfyUI lists depths per ResBlock: encoder in order, decoder popped from the end
        transformer_depth=[d for d in config.transformer_depth for _ in range(config.num_res_blocks)],
        transformer_depth_output=[d for d in config.transformer_depth for _ in range(config.num_res_blocks + 1)],
        transformer_depth_middle=config.transformer_depth_middle,
        context_dim=config.context_dim,
        use_linear_in_transformer=config.use_linear_in_transformer,
        num_heads=config.num_heads if config.num_heads is not None else -1,
        num_head_channels=config.head_dim if config.head_dim is not None else -1,
        use_spatial_transformer=True,
        legacy=False,
        adm_in_channels=config.adm_in_channels,
        use_temporal_attention=False,
        use_temporal_resblock=False,
    )
    if config.adm_in_channels is not None:
        kwargs["num_classes"] = "sequential"
    return kwargs


def comfy_unet(host, config, device: str = "meta") -> torch.nn.Module:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device(device):
        return UNetModel(**comfy_unet_kwargs(config), device=device).eval()


def _prefixed(prefix: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def _comfy_vae_keys() -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        return _prefixed("first_stage_model.", AutoencoderKL(ddconfig=ddconfig, embed_dim=4).state_dict())


def _schedule_buffers() -> dict[str, torch.Tensor]:
    """The DDPM buffers LDM's `LatentDiffusion` saves (scaled-linear betas 0.00085..0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - alphas_cumprod),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
    }
    return {k: v.float() for k, v in buffers.items()}


def sd15_keys(host, unet_config=None) -> dict[str, torch.Tensor]:
    """Every tensor of an SD1.5 single-file checkpoint, as meta tensors (the schedule buffers are real);
    `unet_config` (default: the SD15 preset) replaces the U-Net's shape."""
    import comfy.clip_model
    import comfy.ops
    from diffusion_anatomy.unet import SD15

    with open(host.dir / "comfy" / "sd1_clip_config.json") as f:
        clip_config = json.load(f)
    with torch.device("meta"):
        clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "meta", comfy.ops.disable_weight_init)
    text_model = {k: v for k, v in clip.state_dict().items() if k.startswith("text_model.")}
    keys = _prefixed("model.diffusion_model.", comfy_unet(host, unet_config or SD15).state_dict())
    keys |= _comfy_vae_keys()
    keys |= _prefixed("cond_stage_model.transformer.", text_model)
    # saved by transformers' CLIPTextModel and present in the released SD1.5 files
    keys["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.empty(1, 77, dtype=torch.int64, device="meta")
    keys |= _schedule_buffers()
    return keys


def sd21_keys(host) -> dict[str, torch.Tensor]:
    """SD2.1 layout: our SD21 preset as ComfyUI builds it, the VAE, and OpenCLIP-H keys as ComfyUI saves them."""
    import comfy.supported_models
    import comfy.text_encoders.sd2_clip
    from diffusion_anatomy.unet import SD21

    with torch.device("meta"):
        clip = comfy.text_encoders.sd2_clip.SD2ClipModel(device="meta")
    clip_sd = comfy.supported_models.SD20(comfy_unet_kwargs(SD21)).process_clip_state_dict_for_saving(clip.state_dict())
    keys = _prefixed("model.diffusion_model.", comfy_unet(host, SD21).state_dict())
    return keys | _comfy_vae_keys() | clip_sd


def sdxl_keys(host) -> dict[str, torch.Tensor]:
    """SDXL base layout: U-Net, VAE, CLIP-L (`conditioner.embedders.0.`) and OpenCLIP-bigG (`.1.`)."""
    import comfy.sdxl_clip
    import comfy.supported_models
    from diffusion_anatomy.unet import SDXL

    with torch.device("meta"):
        clip = comfy.sdxl_clip.SDXLClipModel(device="meta")
    clip_sd = comfy.supported_models.SDXL(comfy_unet_kwargs(SDXL)).process_clip_state_dict_for_saving(clip.state_dict())
    keys = _prefixed("model.diffusion_model.", comfy_unet(host, SDXL).state_dict())
    return keys | _comfy_vae_keys() | clip_sd


# --------------------------------------------------------------------------- seeded values

def random_tensor(name: str, like: torch.Tensor, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded values for one tensor, scaled so that activations keep unit size through the network.

    Weights (2-D and more): U(-a, a) with a = sqrt(3 / fan_in), i.e. variance 1/fan_in.
    1-D weights (norm scales): 1 + U(-0.1, 0.1); biases: U(-0.1, 0.1) (non-zero so a dropped or
    swapped bias shows in a parity test).
    """
    if name.endswith("position_ids"):
        return torch.arange(like.shape[-1], dtype=torch.int64).expand(like.shape).contiguous()
    if not like.dtype.is_floating_point:
        raise ValueError(f"no rule for {name} of dtype {like.dtype}")
    gen = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
    u = torch.rand(like.shape, generator=gen, dtype=torch.float32) * 2 - 1
    if like.ndim >= 2:
        u *= math.sqrt(3 / math.prod(like.shape[1:]))
    elif name.endswith("weight"):
        u = 1 + 0.1 * u
    else:
        u *= 0.1
    return u.to(dtype)


def fill_random(meta: Mapping[str, torch.Tensor], seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Real seeded tensors for every meta tensor (real tensors are kept as they are, cast to `dtype`)."""
    out = {}
    for name, t in meta.items():
        if t.device.type == "meta":
            out[name] = random_tensor(name, t, seed, dtype)
        else:
            out[name] = t.to(dtype) if t.dtype.is_floating_point else t
    return out


# --------------------------------------------------------------------------- writing

def write_safetensors(
    path: Path,
    specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    tensor: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a .safetensors file one tensor at a time; `tensor(name)` is called once per name, in order.

    Format (https://github.com/huggingface/safetensors): u64 little-endian header size, a JSON header
    {name: {dtype, shape, data_offsets}} padded with spaces to 8 bytes, then the raw little-endian data.
    Atomic: written to a temporary name beside `path`, then renamed.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (shape, dtype) in specs.items():
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, (shape, dtype) in specs.items():
                t = tensor(name)
                assert tuple(t.shape) == tuple(shape) and t.dtype == dtype, name
                f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # reshape: 0-d tensors too
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_random_checkpoint(
    path: Path, meta: Mapping[str, torch.Tensor], seed: int, dtype: torch.dtype, metadata: Mapping[str, str] | None = None
) -> Path:
    def spec(t):
        return tuple(t.shape), (dtype if t.dtype.is_floating_point else t.dtype)

    real = {k: v for k, v in meta.items() if v.device.type != "meta"}

    def tensor(name):
        if name in real:
            return real[name].to(spec(real[name])[1])
        return random_tensor(name, meta[name], seed, spec(meta[name])[1])

    write_safetensors(path, {k: spec(v) for k, v in meta.items()}, tensor, metadata)
    return path


def fixture_cache() -> Path:
    """Where big generated fixtures are kept between runs and clones (see the module docstring)."""
    import hostenv

    return Path(os.environ.get("DA_FIXTURE_CACHE", hostenv.host_dir() / "fixtures")).resolve()


def recipe_key(meta: Mapping[str, torch.Tensor], seed: int, dtype: torch.dtype, metadata: Mapping[str, str] | None = None) -> str:
    """A hash of everything that decides a random checkpoint's bytes (what `write_random_checkpoint` reads)."""
    h = hashlib.sha256()
    h.update(inspect.getsource(random_tensor).encode())
    h.update(inspect.getsource(write_random_checkpoint).encode())
    h.update(f"{seed} {dtype} {json.dumps(dict(metadata or {}), sort_keys=True)}".encode())
    for name, t in meta.items():  # order matters: it is the file's order
        h.update(f"{name} {tuple(t.shape)} {t.dtype}".encode())
        if t.device.type != "meta":
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cached_random_checkpoint(link: Path, meta: Mapping[str, torch.Tensor], seed: int, dtype: torch.dtype,
                             metadata: Mapping[str, str] | None = None) -> Path:
    """`link` (in the repo's .cache) -> the shared cache's file for this recipe, written on first use."""
    cache = fixture_cache()
    target = cache / f"{link.stem}-{recipe_key(meta, seed, dtype, metadata)}{link.suffix}"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f".{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be writing it: wait, then find it written
            if not target.is_file():
                write_random_checkpoint(target, meta, seed, dtype, metadata)
    if not (link.is_symlink() and link.resolve() == target):
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)  # atomic: a reader sees the old file or the new one
    return link


def sd15_random_checkpoint(host, seed: int = 0) -> Path:
    """The full-size random SD1.5 checkpoint (fp16), from the shared cache (generated on first use)."""
    return cached_random_checkpoint(FIXTURES / f"sd15_random_{seed}.safetensors", sd15_keys(host), seed, torch.float16)


def sd15_small_config():
    """SD1.5's U-Net cut to two levels of one ResBlock each: every block kind (ResBlock, SpatialTransformer with
    self- and cross-attention, Downsample, middle block, skip concat, Upsample) at SD1.5's widths 320 and 640, 8 heads,
    context 768. Those widths are what core's `supported_models.SD15.matches` requires (model_channels 320, context
    768), so core's CheckpointLoaderSimple reads it as SD1.5 too; the depths are read from the shapes by both loaders."""
    import dataclasses

    from diffusion_anatomy.unet import SD15

    return dataclasses.replace(SD15, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1))


def sd15_small_checkpoint(host, seed: int = 0) -> Path:
    """A small SD1.5-layout checkpoint (fp16, 0.63 GB): the U-Net of `sd15_small_config`, SD1.5's full VAE and CLIP-L
    (core builds those at fixed shapes), the schedule buffers. The pack reads the U-Net's shape from the file's
    `diffusion_anatomy.config` metadata (it matches no preset), core from the tensors' shapes."""
    from diffusion_anatomy.checkpoint.detect import CONFIG_METADATA_KEY, FAMILY_METADATA_KEY

    config = sd15_small_config()
    metadata = {CONFIG_METADATA_KEY: config.to_json(), FAMILY_METADATA_KEY: "sd15"}
    return cached_random_checkpoint(FIXTURES / f"sd15_small_{seed}.safetensors", sd15_keys(host, config), seed,
                                    torch.float16, metadata)


def tiny_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """A small .safetensors file from real tensors (for reader tests)."""
    specs = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    write_safetensors(path, specs, lambda k: tensors[k], metadata)
    return path


def names(keys: Iterable[str], prefix: str) -> set[str]:
    return {k[len(prefix):] for k in keys if k.startswith(prefix)}


def sd15_lora(name: str, seed: int = 0, scale: float = 0.5, nan: bool = False) -> Path:
    """A small LoRA (rank 4) for the SD1.5 U-Net's attention projections, in kohya's key format.

    `lora_unet_<module path with _>.lora_down/.lora_up/.alpha` for every q/k/v/out projection of
    the first transformer block: the keys core's LoraLoader maps onto `diffusion_model.*`. With
    `nan=True` its weights are NaN (a broken file, for error-handling tests).
    """
    path = FIXTURES / "loras" / f"{name}.safetensors"
    if path.is_file():
        return path
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    block = "input_blocks_1_1_transformer_blocks_0"
    for attn, proj, dim_in in [("attn1", "to_q", 320), ("attn1", "to_k", 320), ("attn1", "to_v", 320),
                               ("attn2", "to_q", 320), ("attn2", "to_k", 768), ("attn2", "to_v", 768),
                               ("attn1", "to_out_0", 320), ("attn2", "to_out_0", 320)]:
        key = f"lora_unet_{block}_{attn}_{proj}"
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, dim_in, generator=gen) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(320, 4, generator=gen) * scale
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
        if nan:
            tensors[f"{key}.lora_up.weight"].fill_(float("nan"))
    return tiny_file(path, tensors)
