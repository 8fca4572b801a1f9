"""The pack's VAE (nodes/bridge.py `ComfyVAE`) is built by core's own `comfy.sd.VAE` constructor, then holds the pack's
module: so every field core's decode/encode read is there, whatever a later ComfyUI adds to its constructor.

The check reads core's source, not a list of ours: the `self.<field>` reads of `VAE.decode`, `encode`, `decode_tiled`,
`encode_tiled` and of every VAE method they call, found with `ast`; each must be an attribute of the pack's object.
A hand-set copy of core's fields (what the bridge did before) passes on 0.3.75 and fails here on the first new one.
"""
from __future__ import annotations

import ast
import copy
import inspect
import textwrap

import pytest
import torch

pytestmark = pytest.mark.host

ENTRY_POINTS = ("decode", "encode", "decode_tiled", "encode_tiled")


def fields_read(cls, entry_points=ENTRY_POINTS) -> set[str]:
    """Data attributes `self.x` read by the entry points and by the methods of `cls` they call, transitively."""
    fields, seen, todo = set(), set(), list(entry_points)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, name))))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                if callable(getattr(cls, node.attr, None)):
                    todo.append(node.attr)
                elif not isinstance(node.ctx, ast.Store):
                    fields.add(node.attr)
    return fields


def missing_fields(vae, cls) -> list[str]:
    return sorted(f for f in fields_read(cls) if not hasattr(vae, f))


@pytest.fixture(scope="module")
def pack_vae(comfy):
    from diffusion_anatomy.nodes.bridge import ComfyAutoencoder, ComfyVAE
    from diffusion_anatomy.vae.config import VAEConfig

    torch.manual_seed(0)
    return ComfyVAE(ComfyAutoencoder(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)))


def test_every_field_core_decode_and_encode_read_is_on_the_pack_vae(comfy, pack_vae):
    fields = fields_read(comfy.sd.VAE)
    # the walk reaches the fields of the memory estimate, the crop and the post-processing (it reads what it claims)
    assert {"memory_used_decode", "memory_used_encode", "crop_input", "process_output", "patcher", "vae_dtype"} <= fields
    assert missing_fields(pack_vae, comfy.sd.VAE) == []
    # and it names one that is absent
    stripped = copy.copy(pack_vae)
    del stripped.crop_input
    assert missing_fields(stripped, comfy.sd.VAE) == ["crop_input"]


def test_core_builds_the_wrapper_and_the_pack_module_does_the_work(comfy, pack_vae):
    from diffusion_anatomy.nodes.bridge import ComfyAutoencoder

    module = pack_vae.first_stage_model
    assert isinstance(module, ComfyAutoencoder) and pack_vae.patcher.model is module
    assert all(p.device.type != "meta" for p in module.parameters())
    # core's constructor set the memory estimate (a lambda defined in comfy.sd.VAE.__init__), not the bridge
    assert pack_vae.memory_used_decode.__qualname__.startswith("VAE.__init__")
    assert pack_vae.model_size() == sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert (pack_vae.downscale_ratio, pack_vae.latent_channels) == (2, 4)  # ch_mult (1, 2): one halving
    pixels = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    latent = pack_vae.encode(pixels)  # core's encode, unchanged
    assert latent.shape == (1, 4, 16, 16)
    image = pack_vae.decode(latent)  # the pack's decode guard, then core's decode
    assert image.shape == (1, 32, 32, 3) and 0 <= image.min() and image.max() <= 1
    with torch.no_grad():
        direct = module.decode(latent)
    torch.testing.assert_close(image.movedim(-1, 1), torch.clamp((direct + 1) / 2, 0, 1), rtol=0, atol=1e-6)
