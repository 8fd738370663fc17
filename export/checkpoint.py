"""Inspect a checkpoint from its configs or file header alone, and refuse what is not SD 1.x/2.x before heavy work."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SUPPORTED, UnsupportedCheckpoint


def inspect_checkpoint(src) -> dict:
    """Read only configs or a file header (no weights) and refuse anything but SD 1.x/2.x, before heavy work."""
    src = Path(src)
    if not src.exists():
        raise UnsupportedCheckpoint(f"{src} does not exist")
    if src.is_file():  # a single .safetensors/.ckpt: judged from its header (see single_file.py)
        from . import single_file

        return single_file.inspect(src)
    if not src.is_dir():
        raise UnsupportedCheckpoint(f"{src} is neither a folder nor a regular file; supported: {SUPPORTED}")
    index = src / "model_index.json"
    if not index.is_file():
        found = ", ".join(sorted(p.name for p in src.iterdir())[:6]) or "an empty folder"
        raise UnsupportedCheckpoint(
            f"{src} is not a diffusers pipeline (no model_index.json; found {found}); supported: {SUPPORTED}"
        )
    try:
        info = json.loads(index.read_text())
    except ValueError:
        raise UnsupportedCheckpoint(f"{index} is not valid JSON") from None
    cls = info.get("_class_name", "?")
    if cls not in ("StableDiffusionPipeline",):
        raise UnsupportedCheckpoint(f"{src} holds a {cls}; supported: {SUPPORTED}")
    for part in ("text_encoder", "unet", "vae", "tokenizer", "scheduler"):
        if not (src / part).is_dir():
            raise UnsupportedCheckpoint(f"{src} is a {cls} without its {part}/ folder; cannot export")

    def cfg(part, name="config.json"):
        p = src / part / name
        if not p.is_file():
            raise UnsupportedCheckpoint(f"{p} is missing")
        return json.loads(p.read_text())

    unet, vae, text = cfg("unet"), cfg("vae"), cfg("text_encoder")
    sched = cfg("scheduler", "scheduler_config.json")
    if unet.get("in_channels", 4) != 4 or vae.get("latent_channels", 4) != 4:
        raise UnsupportedCheckpoint(
            f"{src}: UNet in_channels={unet.get('in_channels')} (inpainting or depth model?); only 4-channel text-to-image SD is supported"
        )
    if unet.get("cross_attention_dim") != text.get("hidden_size"):
        raise UnsupportedCheckpoint(
            f"{src}: UNet cross_attention_dim {unet.get('cross_attention_dim')} ≠ text encoder hidden size {text.get('hidden_size')}"
        )
    if unet.get("addition_embed_type") or unet.get("class_embed_type"):
        raise UnsupportedCheckpoint(
            f"{src}: UNet has extra conditioning ({unet.get('addition_embed_type') or unet.get('class_embed_type')}), e.g. SDXL or unCLIP; supported: {SUPPORTED}"
        )
    factor = 2 ** (len(vae.get("block_out_channels", [1, 1, 1, 1])) - 1)
    latent = unet.get("sample_size", 64)
    latent = latent if isinstance(latent, list) else [latent, latent]
    hidden = text["hidden_size"]
    return {
        "source": str(src.resolve()),
        "architecture": {768: "sd1", 1024: "sd2"}.get(hidden, "sd-custom"),
        "prediction_type": sched.get("prediction_type", "epsilon"),
        "latent_channels": 4,
        "latent_size": latent,
        "image_size": [latent[0] * factor, latent[1] * factor],
        "vae_scale_factor": factor,
        "vae_scaling_factor": vae.get("scaling_factor", 0.18215),
        "text_hidden_size": hidden,
        "text_max_length": text.get("max_position_embeddings", 77),
        "scheduler_class": sched.get("_class_name", "PNDMScheduler"),
        "scheduler_config": sched,
    }
