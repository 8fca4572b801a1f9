"""U-Net hyper-parameters as one frozen dataclass, with the published models as named presets.

Presets follow the original configs: CompVis `v1-inference.yaml` (SD1.x), Stability
`v2-inference(-v).yaml` (SD2.x) and `sd_xl_base.yaml` (SDXL base). Attention heads cannot be read
from the weights (the head split is a reshape, not a tensor), which is why a checkpoint is matched
against these presets rather than rebuilt from shapes alone.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

Prediction = Literal["eps", "v"]


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # SpatialTransformer depth after each ResBlock of a level (0: no attention at that level)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    context_dim: int = 768
    # exactly one of the two: a fixed head count (SD1.x) or a fixed head width (SD2.x, SDXL)
    num_heads: int | None = 8
    head_dim: int | None = None
    # SD2.x/SDXL project into and out of the transformer with Linear, SD1.x with 1x1 Conv2d
    use_linear_in_transformer: bool = False
    # SDXL: width of the vector conditioning `y` (pooled text + size/crop embeddings)
    adm_in_channels: int | None = None
    # what the network predicts; the same weights layout serves both (SD2.1 base is eps, 768-v is v)
    prediction: Prediction = "eps"

    def __post_init__(self):
        assert len(self.transformer_depth) == len(self.channel_mult), "one transformer depth per level"
        assert (self.num_heads is None) != (self.head_dim is None), "set num_heads or head_dim, not both"
        assert self.model_channels % 32 == 0, "GroupNorm(32) needs channels divisible by 32"
        assert self.prediction in ("eps", "v"), f"unknown prediction {self.prediction!r}"

    def heads(self, channels: int) -> tuple[int, int]:
        """(number of heads, width of a head) of the attention at `channels` channels."""
        if self.num_heads is not None:
            heads, dim = self.num_heads, channels // self.num_heads
        else:
            heads, dim = channels // self.head_dim, self.head_dim
        assert heads * dim == channels, f"{channels} channels do not split into {heads} heads of {dim}"
        return heads, dim

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UNetConfig":
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {sorted(unknown)}")
        for name in ("channel_mult", "transformer_depth"):
            if name in fields:
                fields[name] = tuple(fields[name])
        return cls(**fields)


SD15 = UNetConfig()
SD21 = UNetConfig(context_dim=1024, num_heads=None, head_dim=64, use_linear_in_transformer=True)
SD21_V = dataclasses.replace(SD21, prediction="v")
SDXL = UNetConfig(
    channel_mult=(1, 2, 4),
    transformer_depth=(0, 2, 10),
    transformer_depth_middle=10,
    context_dim=2048,
    num_heads=None,
    head_dim=64,
    use_linear_in_transformer=True,
    adm_in_channels=2816,
)

PRESETS: dict[str, UNetConfig] = {"sd15": SD15, "sd21": SD21, "sdxl": SDXL}
