"""The checkpoint reader on small files: round trip, dtype, prediction evidence, and every refusal.

Family detection on the real key layouts (built by ComfyUI) is in tests/host/test_checkpoint_families.py.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from diffusion_anatomy.checkpoint import (
    CONFIG_METADATA_KEY,
    CheckpointError,
    NotSafetensorsError,
    PickleCheckpointError,
    TruncatedCheckpointError,
    UnknownLayoutError,
    UnsupportedFamilyError,
    detect_checkpoint,
    inspect_checkpoint,
    load_checkpoint,
)
from diffusion_anatomy.checkpoint.reader import SD2_V_PROBE, UNET_PREFIX, resolve_prediction
from diffusion_anatomy.unet import SD15, SD21, SDXL, UNetConfig, UNetModel
from support.checkpoints import fill_random, tiny_file

SMALL_XL = UNetConfig(
    model_channels=32, channel_mult=(1, 2), transformer_depth=(0, 1), transformer_depth_middle=1, context_dim=16,
    num_heads=None, head_dim=16, use_linear_in_transformer=True, adm_in_channels=8,
)


def small_checkpoint(tmp_path, config=SMALL_XL, dtype=torch.float32, metadata=True, extra=None, name="small.safetensors"):
    with torch.device("meta"):
        unet = UNetModel(config).state_dict()
    tensors = {UNET_PREFIX + k: v for k, v in fill_random(unet, seed=3, dtype=dtype).items()}
    tensors |= {
        "first_stage_model.decoder.conv_in.weight": torch.randn(8, 4, 3, 3).to(dtype),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.randn(16).to(dtype),
        "conditioner.embedders.1.model.ln_final.weight": torch.randn(16).to(dtype),
        "alphas_cumprod": torch.linspace(0.99, 0.01, 10),
    } | (extra or {})
    if metadata:  # True: the file's own config; a UNetConfig: that one (to test a wrong one)
        described = config if metadata is True else metadata
        meta = {CONFIG_METADATA_KEY: described.to_json(), "note": "test"}
    else:
        meta = None
    return tiny_file(tmp_path / name, tensors, meta), tensors


def test_round_trip_builds_the_unet_strictly_and_splits_the_rest(tmp_path):
    path, tensors = small_checkpoint(tmp_path)
    ckpt = load_checkpoint(path)
    assert (ckpt.family, ckpt.config, ckpt.prediction_source) == ("sdxl", SMALL_XL, "metadata config")
    assert ckpt.metadata["note"] == "test"
    for name, p in ckpt.unet.state_dict().items():
        assert torch.equal(p, tensors[UNET_PREFIX + name]), name
    assert not any(p.requires_grad for p in ckpt.unet.parameters())
    assert list(ckpt.vae) == ["decoder.conv_in.weight"]
    assert [e.prefix for e in ckpt.text_encoders] == ["conditioner.embedders.0.", "conditioner.embedders.1."]
    assert list(ckpt.text_encoders[1]) == ["model.ln_final.weight"]
    assert torch.equal(ckpt.text_encoders[1]["model.ln_final.weight"], tensors["conditioner.embedders.1.model.ln_final.weight"])
    assert torch.equal(ckpt.tensors("")["alphas_cumprod"], tensors["alphas_cumprod"])
    # the model it built runs
    x = torch.randn(1, 4, 8, 8)
    out = ckpt.unet(x, torch.tensor([500.0]), torch.randn(1, 3, 16), torch.randn(1, 8))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_dtype_is_chosen_at_load_and_applies_to_every_part(tmp_path):
    path, tensors = small_checkpoint(tmp_path, dtype=torch.float16)
    as_stored = load_checkpoint(path)
    upcast = load_checkpoint(path, dtype=torch.float32)
    assert {p.dtype for p in as_stored.unet.parameters()} == {torch.float16}
    assert {p.dtype for p in upcast.unet.parameters()} == {torch.float32}
    key = "input_blocks.0.0.weight"
    assert torch.equal(upcast.unet.state_dict()[key], tensors[UNET_PREFIX + key].float())
    assert upcast.vae["decoder.conv_in.weight"].dtype == torch.float32


def test_metadata_config_must_build_exactly_the_files_tensors(tmp_path):
    wrong = dataclasses.replace(SMALL_XL, transformer_depth=(0, 2))
    path, _ = small_checkpoint(tmp_path, metadata=wrong)
    with pytest.raises(UnsupportedFamilyError, match="does not build this U-Net.*missing"):
        inspect_checkpoint(path)


def test_a_shape_without_a_preset_or_metadata_is_an_unsupported_family(tmp_path):
    path, _ = small_checkpoint(tmp_path, metadata=False)
    with pytest.raises(UnsupportedFamilyError) as e:
        inspect_checkpoint(path)
    assert str(path) in str(e.value) and "model_channels=32" in str(e.value) and "supported: sd15" in str(e.value)


def test_truncated_file(tmp_path):
    path, _ = small_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TruncatedCheckpointError, match=r"small\.safetensors: truncated: the header describes \d+ bytes"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [b"hello, I am a text file that someone named .safetensors", b"abc", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     "],
    ids=["text", "tiny", "bad-json"],
)
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(NotSafetensorsError, match="expected a .safetensors file") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        inspect_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("name, zipped", [("model.ckpt", True), ("disguised.safetensors", True), ("legacy.safetensors", False)])
def test_pickles_are_refused(tmp_path, name, zipped):
    path = tmp_path / name
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(1)}}, path,
               _use_new_zipfile_serialization=zipped)  # zip ("PK..."), or a bare pickle (0x80, protocol byte)
    with pytest.raises(PickleCheckpointError, match="pickle checkpoint.*arbitrary code"):
        load_checkpoint(path)


@pytest.mark.parametrize("protocol", range(6))
def test_plain_pickles_of_every_protocol_renamed_safetensors_are_refused(tmp_path, protocol):
    """Protocol 0 starts with text opcodes ("(dp0"), 1 with EMPTY_DICT: no 0x80 byte to spot; the opcode stream
    is decoded (not executed) instead. The issue's probe saw protocol 0 reported as an absurd header size."""
    import pickle

    path = tmp_path / "renamed.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": {"model.diffusion_model.out.2.weight": [0.0] * 20}}, protocol=protocol))
    with pytest.raises(PickleCheckpointError, match="pickle checkpoint"):
        inspect_checkpoint(path)


def test_a_tensor_whose_shape_disagrees_with_its_bytes_is_named(tmp_path):
    path = tmp_path / "liar.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(NotSafetensorsError, match=r"tensor 'w' claims shape \[1000000, 1000000\] F32 \(4000000000000 bytes\)"):
        inspect_checkpoint(path)


def test_a_safetensors_header_size_with_low_byte_0x80_is_not_taken_for_a_pickle(tmp_path):
    """The first byte of a safetensors file is the low byte of its header size: 0x80 for one file in
    256, the byte a pickle starts with. (The embedded model's first trained file was such a one.)"""
    from safetensors.torch import save_file

    from diffusion_anatomy.checkpoint.files import read_header

    path = tmp_path / "model.safetensors"
    for pad in range(256):
        save_file({"w": torch.zeros(2, 3)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    shapes, metadata = read_header(path)
    assert shapes == {"w": (2, 3)} and len(metadata["pad"]) == pad


@pytest.mark.parametrize(
    "tensors, guess",
    [
        ({"conv_in.weight": torch.zeros(4, 4, 3, 3), "down_blocks.0.attentions.0.proj_in.weight": torch.zeros(1)}, "diffusers"),
        ({"input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3), "out.2.weight": torch.zeros(1)}, "bare U-Net"),
        ({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3)}, "standalone VAE"),
        ({"text_model.embeddings.token_embedding.weight": torch.zeros(10, 4),
          "text_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(8, 4)}, "standalone text encoder"),
        # names alone, with shapes no VAE has (the probe of random tensors was called a VAE)
        ({"encoder.conv_in.weight": torch.zeros(7), "decoder.conv_out.weight": torch.zeros(2, 2)}, "not a checkpoint: no U-Net, CLIP or VAE"),
        ({"a": torch.zeros(3), "b": torch.zeros(2, 2)}, "not a checkpoint: no U-Net, CLIP or VAE tensors"),
    ],
    ids=["diffusers", "bare", "vae", "text", "vae-names-only", "random"],
)
def test_unknown_layouts(tmp_path, tensors, guess):
    path = tiny_file(tmp_path / "other.safetensors", tensors)
    with pytest.raises(UnknownLayoutError, match=f"{guess}.*model.diffusion_model"):
        inspect_checkpoint(path)


def test_unet_prefix_with_garbage_inside_is_an_unknown_layout(tmp_path):
    path = tiny_file(tmp_path / "odd.safetensors", {UNET_PREFIX + "foo.weight": torch.zeros(2)})
    with pytest.raises(UnknownLayoutError, match="not an LDM U-Net"):
        inspect_checkpoint(path)


def prefixed_shapes(config):
    with torch.device("meta"):
        return {UNET_PREFIX + k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}


@pytest.mark.parametrize("family, preset", [("sd15", SD15), ("sd21", SD21), ("sdxl", SDXL)])
def test_presets_are_recognised_from_shapes(family, preset):
    info = detect_checkpoint(prefixed_shapes(preset), {})
    assert (info.family, info.config, info.prediction_source) == (family, preset, "default")


def test_inpainting_unet_is_refused_with_a_reason():
    shapes = prefixed_shapes(dataclasses.replace(SD15, in_channels=9))
    with pytest.raises(UnsupportedFamilyError, match="in_channels=9 is an inpainting"):
        detect_checkpoint(shapes, {}, "inpaint.safetensors")


def test_prediction_evidence_in_order():
    shapes = prefixed_shapes(SD21)
    v_config = json.dumps(dataclasses.asdict(dataclasses.replace(SD21, prediction="v")))
    assert resolve_prediction("sd21", shapes, {}, "v") == ("v", "caller hint")
    assert resolve_prediction("sd21", shapes, {CONFIG_METADATA_KEY: v_config}, "eps") == ("eps", "caller hint")
    assert resolve_prediction("sd21", shapes, {CONFIG_METADATA_KEY: v_config}) == ("v", "metadata config")
    assert resolve_prediction("sd21", shapes, {"modelspec.prediction_type": "v"})[0] == "v"
    assert resolve_prediction("sdxl", {"v_pred": ()}, {}) == ("v", "v_pred key")
    assert resolve_prediction("sdxl", {}, {}) == ("eps", "default")
    with pytest.raises(ValueError, match="expected 'eps' or 'v'"):
        resolve_prediction("sd15", {}, {}, "x0")


@pytest.mark.parametrize("spread, expected", [(0.3, "v"), (0.01, "eps")])
def test_sd2_weight_test_reads_one_bias(spread, expected):
    """ComfyUI's rule: std(norm1.bias of the last transformer) > 0.09 means a v-prediction SD2."""
    bias = spread * torch.randn(1280, generator=torch.Generator().manual_seed(0))
    reads = []

    def read_tensor(name):
        reads.append(name)
        return bias

    prediction, source = resolve_prediction("sd21", prefixed_shapes(SD21), {}, None, read_tensor)
    assert prediction == expected and "weights test" in source
    assert reads == [UNET_PREFIX + SD2_V_PROBE]
    assert resolve_prediction("sd15", prefixed_shapes(SD15), {}, None, read_tensor)[0] == "eps"
    assert len(reads) == 1  # SD1.x is never probed
