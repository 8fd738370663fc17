"""Single-file (ldm layout) checkpoints: exact round trips offline, and one-line refusals before any loading.

No real SD weights exist on these machines, so random pipelines are written in the original ldm layout
(export.single_file.write_ldm_checkpoint) and read back through diffusers' from_single_file. The
shipped SD 1.x / 2.x / Turbo configs are checked with sparse files that hold a real-sized header and
no data: inspect() must decide from the header alone.
"""

import json
import math
import os
import socket
import struct

import pytest

pytest.importorskip("diffusers")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export import single_file as sf  # noqa: E402
from export.exporter import UnsupportedCheckpoint  # noqa: E402

# ------------------------------------------------------------------------------------------- fixtures


def _sd_structure(out_dir):
    """Small widths, but SD's real block layout: 4 levels, 2 layers per block, cross-attention on the
    first three, linear projections (SD 2.x), 4-level VAE — so every ldm index of the real models occurs."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from export.random_pipeline import SD_SCHEDULER, _tokenizer

    torch.manual_seed(1)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu",
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=(2, 4, 8, 8),
        use_linear_projection=True,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        sample_size=64,
    )
    with torch.no_grad():
        unet.conv_out.weight.mul_(20.0)
    sched = {k: v for k, v in SD_SCHEDULER.items() if k != "skip_prk_steps"}
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=_tokenizer("!"),
        unet=unet,
        scheduler=DDIMScheduler.from_config({**sched, "prediction_type": "v_prediction"}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="module")
def pipelines(tiny_pipeline_dir, tmp_path_factory):
    """name → (pipeline folder, config folder): the project's tiny SD and an SD-structured one."""
    root = tmp_path_factory.mktemp("single-file")
    sd_like = _sd_structure(root / "sd-structure")
    return {
        name: (d, sf.copy_configs(d, root / f"{name}-configs"))
        for name, d in (("tiny", tiny_pipeline_dir), ("sd-structure", sd_like))
    }


@pytest.fixture(scope="module")
def tiny_ldm(pipelines, tmp_path_factory):
    """The tiny pipeline as an SD 1.x-layout .safetensors (tensor name → tensor, and the file)."""
    from safetensors.torch import load_file

    f = sf.write_ldm_checkpoint(pipelines["tiny"][0], tmp_path_factory.mktemp("ldm") / "tiny.safetensors")
    return load_file(str(f)), f


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------------------------------- round trips


def _image(pipe, steps=3):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread; two spin-wait for ages on a busy 2-core machine
    try:
        return _generate(pipe, steps)
    finally:
        torch.set_num_threads(threads)


def _generate(pipe, steps):
    out = pipe(
        "a red circle",
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    return out.images[0]


@pytest.mark.parametrize(
    "name,layout,ext",
    [
        ("tiny", "clip", ".safetensors"),
        ("tiny", "clip", ".ckpt"),
        ("sd-structure", "openclip", ".safetensors"),
        ("sd-structure", "openclip", ".ckpt"),
        ("sd-structure", "sgm", ".safetensors"),
    ],
)
def test_round_trip_is_exact(pipelines, tmp_path, no_network, name, layout, ext):
    from diffusers import StableDiffusionPipeline

    src, cfg = pipelines[name]
    orig = StableDiffusionPipeline.from_pretrained(src, local_files_only=True)
    f = sf.write_ldm_checkpoint(orig, tmp_path / f"model{ext}", layout=layout, global_step=1000)
    info = sf.inspect(f, config_dir=cfg)
    assert info["format"] == ext[1:] and info["arch"] == "custom" and info["text_layout"] == layout
    assert info["prediction_type"] == orig.scheduler.config.prediction_type
    out = sf.to_pipeline_folder(f, tmp_path / "pipeline", config_dir=cfg)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    back = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(orig, part).state_dict(), getattr(back, part).state_dict()
        assert a.keys() == b.keys(), part
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, f"{part}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert dict(back.scheduler.config) == dict(orig.scheduler.config)
    assert back.tokenizer.pad_token == orig.tokenizer.pad_token
    assert np.array_equal(_image(orig), _image(back))


def test_fp16_file_gives_fp32_pipeline_and_prediction_override(pipelines, tmp_path, no_network):
    from diffusers import StableDiffusionPipeline

    src, cfg = pipelines["tiny"]
    orig = StableDiffusionPipeline.from_pretrained(src, local_files_only=True)
    f = sf.write_ldm_checkpoint(orig, tmp_path / "half.safetensors", dtype=torch.float16)
    assert sf.inspect(f, config_dir=cfg)["dtype"] == "fp16"
    out = sf.to_pipeline_folder(f, tmp_path / "p", config_dir=cfg, prediction_type="v")
    back = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert back.scheduler.config.prediction_type == "v_prediction"
    w, w16 = orig.unet.conv_in.weight, back.unet.conv_in.weight
    assert w16.dtype == torch.float32 and torch.equal(w16, w.half().float())


@pytest.mark.parametrize(
    "drop,match",
    [
        ("first_stage_model.decoder.conv_out.bias", "some weights that custom needs are not in the file"),
        (
            "cond_stage_model.transformer.text_model.final_layer_norm.bias",
            "1 text_encoder tensors were not in the file (e.g. 'text_model.final_layer_norm.bias')",
        ),
    ],
)
def test_unfilled_weights_are_caught_after_loading(pipelines, tiny_ldm, tmp_path, monkeypatch, drop, match):
    """diffusers leaves tensors missing from the file uninitialised (meta), at times without a word; we refuse."""
    from safetensors.torch import save_file

    sd = dict(tiny_ldm[0])
    del sd[drop]
    save_file(sd, str(tmp_path / "holey.safetensors"))
    _refusal(
        tmp_path / "holey.safetensors", "does not fit the config folder tiny-configs: 1 of its", config_dir=pipelines["tiny"][1]
    )
    monkeypatch.setattr(sf, "_check_shapes", lambda *a, **k: 0)  # pretend the header check missed it
    with pytest.raises(UnsupportedCheckpoint) as e:
        sf.to_pipeline_folder(tmp_path / "holey.safetensors", tmp_path / "p", config_dir=pipelines["tiny"][1])
    assert match in _one_line(e)


# ------------------------------------------------------------------------------------------- real architectures, header only


def _sparse_safetensors(path, shapes: dict, dtype="F16", metadata=None):
    """A safetensors file with a real header and holes for data: inspect() must never read the data."""
    size = {"F16": 2, "F32": 4}[dtype]
    header, off = {}, 0
    for k, s in shapes.items():
        n = math.prod(s) * size
        header[k] = {"dtype": dtype, "shape": list(s), "data_offsets": [off, off + n]}
        off += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
    os.truncate(path, 8 + len(raw) + off)
    return path


def _real_shapes(config, layout, extras=True):
    shapes = sf.expected_shapes(sf.CONFIGS_DIR / config, layout)
    if extras:  # what real files also hold
        shapes.update({k: (1000,) for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev")})
        if layout == "clip":
            shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = (1, 77)
        else:
            p = sf.TEXT_PREFIXES[layout]
            shapes[p + "text_projection"] = (1024, 1024)
            shapes[p + "transformer.resblocks.23.ln_1.weight"] = (1024,)
    return shapes


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    sd1, sd2, sgm = _real_shapes("sd15", "clip"), _real_shapes("sd21", "openclip"), _real_shapes("sd-turbo", "sgm")
    return {
        "v1-5-pruned-emaonly.safetensors": _sparse_safetensors(root / "v1-5-pruned-emaonly.safetensors", sd1),
        "v2-1_768-ema-pruned.safetensors": _sparse_safetensors(root / "v2-1_768-ema-pruned.safetensors", sd2),
        "v2-1_512-ema-pruned.safetensors": _sparse_safetensors(root / "v2-1_512-ema-pruned.safetensors", sd2),
        "sd_turbo.safetensors": _sparse_safetensors(root / "sd_turbo.safetensors", sgm),
        "model.safetensors": _sparse_safetensors(root / "model.safetensors", sd2),
        "tagged.safetensors": _sparse_safetensors(
            root / "tagged.safetensors", sd2, metadata={"modelspec.architecture": "stable-diffusion-v2-512"}
        ),
        "renamed-turbo.safetensors": _sparse_safetensors(root / "my-model.safetensors", sgm),
    }


@pytest.mark.parametrize(
    "name,kw,arch,prediction,basis",
    [
        ("v1-5-pruned-emaonly.safetensors", {}, "sd1", "epsilon", "SD 1.x text encoder"),
        ("v1-5-pruned-emaonly.safetensors", {"prediction_type": "v"}, "sd1", "v_prediction", "prediction_type given"),
        ("v2-1_768-ema-pruned.safetensors", {}, "sd2", "v_prediction", "768/v"),
        ("v2-1_512-ema-pruned.safetensors", {}, "sd2-base", "epsilon", "512/base"),
        ("sd_turbo.safetensors", {}, "sd-turbo", "epsilon", "turbo"),
        ("model.safetensors", {}, "sd2", "v_prediction", "no clue"),
        ("model.safetensors", {"prediction_type": "epsilon"}, "sd2-base", "epsilon", "prediction_type given"),
        ("model.safetensors", {"arch": "sd-turbo"}, "sd-turbo", "epsilon", "arch given"),
        ("tagged.safetensors", {}, "sd2-base", "epsilon", "modelspec.architecture"),
        ("renamed-turbo.safetensors", {}, "sd-turbo", "epsilon", "sgm key layout"),
    ],
)
def test_inspect_real_architectures_from_header(real_files, name, kw, arch, prediction, basis):
    info = sf.inspect(real_files[name], **kw)
    assert (info["arch"], info["prediction_type"]) == (arch, prediction), info
    assert basis in info["basis"]
    assert info["config_dir"] == sf.CONFIGS_DIR / sf.ARCHS[arch][0] and info["format"] == "safetensors"
    assert info["image_size"] == {"sd1": 512, "sd2": 768, "sd2-base": 512, "sd-turbo": 512}[arch]
    assert info["dtype"] == "fp16" and "\n" not in info["found"]


def test_ckpt_global_step_rule_and_shipped_configs():
    lay = {"family": "sd2", "layout": "openclip"}
    assert sf._decide(sf.Path("x.ckpt"), {}, {"global_step": 875000}, lay, None, None)[:2] == ("sd2-base", "epsilon")
    assert sf._decide(sf.Path("x.ckpt"), {}, {"global_step": 140000}, lay, None, None)[:2] == ("sd2", "v_prediction")
    for arch, (folder, _) in sf.ARCHS.items():
        d = sf.CONFIGS_DIR / folder
        sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
        text = json.loads((d / "text_encoder" / "config.json").read_text())
        unet = json.loads((d / "unet" / "config.json").read_text())
        assert unet["cross_attention_dim"] == text["hidden_size"] == (768 if arch == "sd1" else 1024)
        assert sched["prediction_type"] == ("v_prediction" if arch == "sd2" else "epsilon")
        assert (sched.get("timestep_spacing") == "trailing") == (arch == "sd-turbo")
        tok = json.loads((d / "tokenizer" / "special_tokens_map.json").read_text())
        assert tok["pad_token"] == ("<|endoftext|>" if arch == "sd1" else "!")


# ------------------------------------------------------------------------------------------- refusals


def _save(path, tensors: dict):
    from safetensors.torch import save_file

    save_file({k: torch.zeros(s) for k, s in tensors.items()}, str(path))
    return path


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def _refusal(path, match, **kw):
    with pytest.raises(UnsupportedCheckpoint) as e:
        sf.inspect(path, **kw)
    msg = _one_line(e)
    assert match in msg, msg
    return msg


UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


class LightningLikeCallback:
    """An arbitrary pickled object, as PyTorch Lightning checkpoints carry; weights_only loading refuses it."""


@pytest.mark.parametrize(
    "label,tensors,match",
    [
        (
            "sdxl",
            {
                UNET_IN: (320, 4, 3, 3),
                "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
                "conditioner.embedders.1.model.positional_embedding": (77, 1280),
                "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
            },
            "found an SDXL model",
        ),
        (
            "sdxl-refiner",
            {
                UNET_IN: (384, 4, 3, 3),
                "conditioner.embedders.0.model.token_embedding.weight": (49408, 1280),
                "model.diffusion_model.label_emb.0.0.weight": (1536, 2560),
            },
            "SDXL refiner or SD unCLIP",
        ),
        (
            "sd3",
            {
                "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
                "model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2),
            },
            "found an SD3 / SD3.5 model",
        ),
        ("flux", {"double_blocks.0.img_attn.norm.key_norm.scale": (128,)}, "FLUX"),
        (
            "text-gpt2",
            {"transformer.wte.weight": (50257, 768), "transformer.h.0.attn.c_attn.weight": (768, 2304)},
            "found a text/language model",
        ),
        (
            "text-clip",
            {
                "text_model.embeddings.token_embedding.weight": (49408, 768),
                "text_model.encoder.layers.0.mlp.fc1.weight": (3072, 768),
            },
            "found a text/language model",
        ),
        ("lora", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "LoRA"),
        ("controlnet", {"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}, "ControlNet"),
        (
            "diffusers-unet",
            {
                "conv_in.weight": (320, 4, 3, 3),
                "time_embedding.linear_1.weight": (1280, 320),
                "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3),
            },
            "diffusers-format UNet alone",
        ),
        (
            "vae-only",
            {"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3), "decoder.up.0.block.0.conv1.weight": (128, 128, 3, 3)},
            "found a VAE only",
        ),
        ("unet-only", {UNET_IN: (320, 4, 3, 3), "model.diffusion_model.out.2.weight": (4, 320, 3, 3)}, "without a text encoder"),
        ("other", {"weight": (3, 3)}, "found no Stable Diffusion UNet"),
    ],
)
def test_refuses_other_models_by_name(tmp_path, label, tensors, match):
    msg = _refusal(_save(tmp_path / f"{label}.safetensors", tensors), match)
    assert "supported: SD 1.x, SD 2.x" in msg


def test_refuses_inpainting_and_mismatches(tiny_ldm, pipelines, tmp_path, real_files):
    sd, _ = tiny_ldm
    bad = {k: tuple(v.shape) for k, v in sd.items()}
    bad[UNET_IN] = (32, 9, 3, 3)
    _refusal(_save(tmp_path / "inpaint.safetensors", bad), "found an inpainting model (the UNet takes 9 input channels")
    no_vae = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("first_stage_model.")}
    _refusal(_save(tmp_path / "novae.safetensors", no_vae), "no VAE")
    # the tiny model is neither SD 1.x nor 2.x without its own config folder
    _refusal(tiny_ldm[1], "its text encoder is 32-d, neither SD 1.x (768) nor SD 2.x (1024)")
    # a config folder for another architecture
    _refusal(tiny_ldm[1], "does not fit the config folder sd-structure-configs", config_dir=pipelines["sd-structure"][1])
    # an explicit arch that contradicts the weights
    _refusal(real_files["v1-5-pruned-emaonly.safetensors"], "arch 'sd2' is SD 2.x 768-v", arch="sd2")
    _refusal(real_files["model.safetensors"], "unknown arch 'sdxl'", arch="sdxl")
    _refusal(real_files["model.safetensors"], "unknown prediction_type 'x0'", prediction_type="x0")


def test_refuses_broken_files(tiny_ldm, tmp_path):
    _, good = tiny_ldm
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _refusal(tmp_path / "cut.safetensors", "truncated safetensors file (holds")
    (tmp_path / "cut-header.safetensors").write_bytes(data[:100])
    _refusal(tmp_path / "cut-header.safetensors", "truncated safetensors file (its header alone needs")
    rng = np.random.default_rng(0)
    (tmp_path / "noise.safetensors").write_bytes(rng.bytes(4096))
    _refusal(tmp_path / "noise.safetensors", "not a safetensors file")
    (tmp_path / "noise.ckpt").write_bytes(rng.bytes(4096))
    _refusal(tmp_path / "noise.ckpt", "not a PyTorch checkpoint")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _refusal(tmp_path / "empty.safetensors", "too short for a header")
    (tmp_path / "notes.txt").write_text("a photo of an astronaut riding a horse\n")
    _refusal(tmp_path / "notes.txt", "a '.txt' file is not a model checkpoint")
    _refusal(tmp_path / "missing.safetensors", "does not exist")
    _refusal(tmp_path, "is a folder")


def test_refuses_broken_and_unsafe_ckpt(tiny_ldm, tmp_path):
    sd, _ = tiny_ldm
    torch.save({"state_dict": sd, "global_step": 5}, tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) * 2 // 3])
    _refusal(tmp_path / "cut.ckpt", "truncated or corrupt .ckpt")

    torch.save({"state_dict": sd, "callbacks": LightningLikeCallback()}, tmp_path / "unsafe.ckpt")
    _refusal(tmp_path / "unsafe.ckpt", "cannot be opened safely")
    torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
    _refusal(tmp_path / "tensor.ckpt", "holds a Tensor, not a state dict")


def test_inspect_reads_no_weights(real_files):
    """The sparse files hold no data at all: a header-only inspect of a 2.6 GB SD 2.x file is fast."""
    import time

    f = real_files["v2-1_768-ema-pruned.safetensors"]
    assert f.stat().st_size > 2e9 and f.stat().st_blocks * 512 < 5e7  # really sparse
    t = time.perf_counter()
    sf.inspect(f)
    assert time.perf_counter() - t < 10
