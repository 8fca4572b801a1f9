"""Example Picture: a picture of the embedded model's world, drawn by the pack, for image-to-image.

The picture comes from `embedded/data.py` (one coloured shape on a plain background, 64x64, drawn
from its caption), so a bundled workflow that starts from a picture runs in any ComfyUI as soon as
the pack is installed: nothing has to be copied into ComfyUI's input folder first.
"""
from __future__ import annotations

from ..embedded import data
from .common import CATEGORY, PREFIX, SUFFIX

# The picture image_to_image starts from: "a large green square at the bottom right on a white background".
DEFAULTS = {"shape": "square", "colour": "green", "size": "large", "position": "bottom right", "background": "white"}


class ExamplePicture:
    DESCRIPTION = ("A 64x64 picture of the kind the embedded model was trained on: one shape in one colour on a plain "
                   "background, drawn exactly from the words you pick (embedded/data.py). Use it as the starting "
                   "picture of image-to-image (VAE Encode, then U-Net Denoise with denoise below 1); its caption "
                   "is the prompt that describes it.")
    CATEGORY = f"{CATEGORY}/image"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "caption")
    OUTPUT_TOOLTIPS = ("The picture, 64x64 RGB (ComfyUI IMAGE, values 0..1).",
                       "What the picture shows, in the words of the embedded model's captions.")
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        colours = list(data.COLOURS)
        return {"required": {
            "shape": (list(data.SHAPES), {"default": DEFAULTS["shape"], "tooltip": "The shape drawn."}),
            "colour": (colours, {"default": DEFAULTS["colour"], "tooltip": "The shape's colour."}),
            "size": (list(data.SIZES), {"default": DEFAULTS["size"], "tooltip": "small: 7 px from the centre to the edge; large: 13 px."}),
            "position": (list(data.POSITIONS), {"default": DEFAULTS["position"], "tooltip": "Where the shape's centre sits (the middle of a quadrant, or the centre)."}),
            "background": (colours, {"default": DEFAULTS["background"], "tooltip": "The background's colour; must differ from the shape's."}),
        }}

    def draw(self, shape, colour, size, position, background):
        choices = {"shape": (shape, data.SHAPES), "colour": (colour, data.COLOURS), "size": (size, data.SIZES),
                   "position": (position, data.POSITIONS), "background": (background, data.COLOURS)}
        for name, (value, known) in choices.items():
            if value not in known:
                raise ValueError(f"Example Picture: {name}={value!r} is not one of {', '.join(known)}")
        if colour == background:
            raise ValueError(f"Example Picture: colour and background are both {colour!r}; the shape would be invisible")
        caption = data.Caption(shape, colour, size, position, background, data.POSITIONS[position])
        image = (data.render(caption) + 1.0) / 2.0  # [3, H, W] in [-1, 1] -> [0, 1]
        return (image.permute(1, 2, 0)[None].contiguous(), caption.text)


NODE_CLASS_MAPPINGS = {f"{PREFIX}ExamplePicture": ExamplePicture}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}ExamplePicture": f"Example Picture{SUFFIX}"}
