"""What every anatomy view node returns: its IMAGE, and the same picture shown inside the node.

ComfyUI shows a node's pictures when it returns {"ui": {"images": [...]}} naming files in the temp
folder (as core's PreviewImage does); the web extension (web/anatomy.js) then sizes the node to them."""
from __future__ import annotations

import os
import uuid

import folder_paths
import torch
from PIL import Image

from ..anatomy import draw


def shown(picture: Image.Image | list[Image.Image], *more) -> dict:
    """The node's result: (IMAGE, *more), with `picture` saved to the temp folder and shown in the node.
    A list of pictures (one per image of a batch, all of one size) gives an IMAGE batch and shows each."""
    pictures = picture if isinstance(picture, list) else [picture]
    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    ui = []
    for one in pictures:
        name = f"diffusion_anatomy_{uuid.uuid4().hex[:12]}.png"
        one.save(os.path.join(folder, name), compress_level=1)
        ui.append({"filename": name, "subfolder": "", "type": "temp"})
    image: torch.Tensor = torch.cat([draw.to_image_batch(one) for one in pictures])
    return {"ui": {"images": ui}, "result": (image, *more)}
