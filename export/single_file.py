"""One-file Stable Diffusion checkpoints (.safetensors / .ckpt, original CompVis/Stability "ldm" layout).

Why: most SD models are shared as a single file, not as a diffusers folder. diffusers'
`from_single_file` converts them, but it looks up configs on the hub, guesses SD 2.x's prediction
type from a training step count, and on the wrong kind of file fails late (or leaves weights
unloaded without a word). Here we read only the file's table of contents first — the safetensors
JSON header, or a .ckpt opened with `torch.load(weights_only=True, mmap=True)` — refuse anything
that is not SD 1.x / 2.x text-to-image in one line, check every tensor name and shape against the
chosen architecture, then convert fully offline against the config folders in assets/configs/.

`write_ldm_checkpoint` goes the other way (diffusers → ldm file). It exists for tests and fixtures:
no real SD weights reach these machines, so the round trip is proven on random pipelines.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

from .errors import ExportError, UnsupportedCheckpoint

CONFIGS_DIR = Path(__file__).resolve().parent / "assets" / "configs"
# arch → (config folder, what it is)
ARCHS = {
    "sd1": ("sd15", "SD 1.x (512 px, epsilon)"),
    "sd2": ("sd21", "SD 2.x 768-v (768 px, v_prediction)"),
    "sd2-base": ("sd21-base", "SD 2.x base (512 px, epsilon)"),
    "sd-turbo": ("sd-turbo", "SD-Turbo (512 px, epsilon, 1-4 steps)"),
}
FAMILY = {"sd1": "sd1", "sd2": "sd2", "sd2-base": "sd2", "sd-turbo": "sd2"}
ALIASES = {
    "sd15": "sd1",
    "sd1.5": "sd1",
    "sd21": "sd2",
    "sd2-768": "sd2",
    "sd2-v": "sd2",
    "sd21-base": "sd2-base",
    "sdturbo": "sd-turbo",
    "sd_turbo": "sd-turbo",
}
PREDICTION_ALIASES = {
    "epsilon": "epsilon",
    "eps": "epsilon",
    "v_prediction": "v_prediction",
    "v": "v_prediction",
    "v-prediction": "v_prediction",
}
SUPPORTED = (
    "SD 1.x, SD 2.x (768-v or 512-base) and SD-Turbo text-to-image checkpoints (.safetensors/.ckpt in the original ldm layout)"
)
FORMATS = {".safetensors": "safetensors", ".ckpt": "ckpt", ".pt": "ckpt", ".pth": "ckpt"}

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT_PREFIXES = {  # layout → prefix of the text encoder's tensors
    "clip": "cond_stage_model.transformer.",  # SD 1.x: HF CLIPTextModel (text_model.*)
    "openclip": "cond_stage_model.model.",  # SD 2.x: OpenCLIP ViT-H text tower
    "sgm": "conditioner.embedders.0.model.",  # SD 2.x trained with Stability's sgm code (SD-Turbo)
}
TOKEN_EMBEDDING = {
    "clip": "text_model.embeddings.token_embedding.weight",
    "openclip": "token_embedding.weight",
    "sgm": "token_embedding.weight",
}
MAX_HEADER = 100 * 2**20


def _refuse(msg: str):
    return UnsupportedCheckpoint(" ".join(str(msg).split()))


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


# ---------------------------------------------------------------------------------------------
# reading the table of contents: name → (shape, dtype), no weights
# ---------------------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    """The JSON header only: names, dtypes, shapes, and whether the file holds all the bytes it lists."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _refuse(f"{path.name}: not a safetensors file ({size} bytes, too short for a header)")
        n = int.from_bytes(head, "little")
        raw = f.read(min(n, MAX_HEADER, max(size - 8, 0)))
    if n > size - 8 or n > MAX_HEADER:
        if raw[:1] == b"{" and n <= MAX_HEADER:
            raise _refuse(f"{path.name}: truncated safetensors file (its header alone needs {n + 8} bytes, the file has {size})")
        raise _refuse(
            f"{path.name}: not a safetensors file (the first 8 bytes do not give a valid header length; "
            f"starts with {head[:8]!r}); supported: {SUPPORTED}"
        )
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _refuse(f"{path.name}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _refuse(f"{path.name}: not a safetensors file (its header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, info in header.items():
        try:
            shape, dtype, (_, b) = tuple(int(d) for d in info["shape"]), str(info["dtype"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise _refuse(f"{path.name}: not a valid safetensors file (bad header entry for {name!r})") from None
        tensors[name] = (shape, dtype)
        end = max(end, int(b))
    need = 8 + n + end
    if size < need:
        raise _refuse(
            f"{path.name}: truncated safetensors file (holds {_gb(size)} of the {_gb(need)} its header "
            f"lists, {100 * size / need:.0f}%); download it again"
        )
    return tensors, {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _read_ckpt(path: Path) -> tuple[dict, dict]:
    """torch.load with weights_only (no code runs) and mmap (no weights are read): names and shapes."""
    with open(path, "rb") as f:
        magic = f.read(8)
    is_zip = magic[:4] == b"PK\x03\x04"
    if not is_zip and not (magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        what = (
            "a safetensors file (rename it to .safetensors)"
            if magic[:8] and _looks_safetensors(path)
            else f"starts with {magic!r}"
        )
        raise _refuse(f"{path.name}: not a PyTorch checkpoint ({what}); supported: {SUPPORTED}")
    if is_zip:
        try:
            with zipfile.ZipFile(path) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError):
            raise _refuse(
                f"{path.name}: truncated or corrupt .ckpt (its zip archive cannot be read); download it again"
            ) from None
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        need = f"it needs {m.group(1)}" if m else "it holds objects other than tensors"
        raise _refuse(
            f"{path.name}: this .ckpt cannot be opened safely ({need}, which weights_only loading refuses); "
            "use a .safetensors version of the model"
        ) from None
    except Exception as e:  # noqa: BLE001 — any failure to read is one clear refusal
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise _refuse(f"{path.name}: unreadable PyTorch checkpoint ({type(e).__name__}: {first})") from None
    extra = {}
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        for k in ("global_step", "epoch"):
            if isinstance(obj.get(k), int):
                extra[k] = obj[k]
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _refuse(f"{path.name}: holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {
        k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in obj.items()
        if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    return tensors, extra


def _looks_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            return 0 < n < MAX_HEADER and f.read(1) == b"{"
    except OSError:
        return False


def read_contents(path: Path) -> tuple[str, dict, dict]:
    """(format, {name: (shape, dtype)}, extras) without reading weights; refuses non-checkpoints."""
    path = Path(path)
    if not path.exists():
        raise _refuse(f"{path} does not exist")
    if path.is_dir():
        raise _refuse(f"{path} is a folder; a single .safetensors or .ckpt file was expected here")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        hint = " (its content is safetensors: rename it)" if _looks_safetensors(path) else ""
        kind = f"a '{path.suffix}' file" if path.suffix else "a file without a .safetensors or .ckpt extension"
        raise _refuse(f"{path}: {kind} is not a model checkpoint{hint}; supported: {SUPPORTED}")
    tensors, extra = _read_safetensors(path) if fmt == "safetensors" else _read_ckpt(path)
    if not tensors:
        raise _refuse(f"{path.name}: holds no tensors; supported: {SUPPORTED}")
    return fmt, tensors, extra


# ---------------------------------------------------------------------------------------------
# what kind of model is it
# ---------------------------------------------------------------------------------------------


def _examples(keys, n=2) -> str:
    return ", ".join(repr(k) for k in sorted(keys)[:n])


def _refuse_other(name: str, t: dict):
    """Refuse known non-SD-1/2 files by their tensor names (one line: what was found, what is supported)."""
    keys = list(t)

    def has(sub):
        return [k for k in keys if sub in k]

    def out(what):
        return _refuse(f"{name}: {what}; supported: {SUPPORTED}")

    if has("joint_blocks."):
        raise out(f"found an SD3 / SD3.5 model (MMDiT, e.g. {_examples(has('joint_blocks.'), 1)})")
    if has("double_blocks.") or has("single_blocks."):
        raise out("found a FLUX-style transformer (double_blocks/single_blocks)")
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        raise out("found an SDXL model (two text encoders: conditioner.embedders.0 and .1)")
    if any(k.startswith(UNET + "label_emb.") for k in keys):
        raise out("found a UNet with extra (ADM) conditioning, 'model.diffusion_model.label_emb' — SDXL refiner or SD unCLIP")
    if any(k.startswith("control_model.") or "input_hint_block" in k for k in keys):
        raise out("found a ControlNet, not a full text-to-image model")
    lora = [k for k in keys if re.search(r"lora_(up|down|A|B)\b|\.lora_|^lora_(unet|te)|\.hada_|\.lokr_", k)]
    if lora:
        raise out(f"found a LoRA/LyCORIS adapter ({len(lora)} tensors, e.g. {_examples(lora, 1)}), not a full model")
    if any(k in ("emb_params", "clip_l", "clip_g") for k in keys) or has("string_to_param"):
        raise out("found a textual-inversion embedding, not a full model")
    if any(k.startswith(UNET) for k in keys):
        return
    if any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in keys) and "conv_in.weight" in t:
        if any(k.startswith("time_embedding.") for k in keys):
            raise out("found a diffusers-format UNet alone (pass the whole diffusers pipeline folder instead)")
        raise out("found a diffusers-format VAE alone (pass the whole diffusers pipeline folder instead)")
    if any(k.startswith(("encoder.down.", "decoder.up.", VAE)) for k in keys):
        raise out("found a VAE only (no UNet 'model.diffusion_model.*', no text encoder)")
    text = [
        k
        for k in keys
        if re.search(
            r"(^|\.)(text_model|embed_tokens|lm_head|wte|wpe|token_embedding|word_embeddings|self_attn|"
            r"encoder\.layer|transformer\.h|transformer\.resblocks|layers\.\d+\.(attention|self_attn|mlp))(\.|$)",
            k,
        )
    ]
    if text:
        raise out(
            f"found a text/language model ({len(keys)} tensors, e.g. {_examples(text, 1)}), not an image diffusion checkpoint"
        )
    raise out(f"found no Stable Diffusion UNet ('model.diffusion_model.*') among {len(keys)} tensors (e.g. {_examples(keys)})")


def _layout(name: str, t: dict) -> dict:
    """Family facts from names and shapes: text layout and width, UNet width and context, VAE presence."""
    _refuse_other(name, t)
    conv_in = t.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in[0]) != 4:
        raise _refuse(
            f"{name}: has 'model.diffusion_model.*' tensors but no 4-D 'input_blocks.0.0.weight' "
            f"(not an SD UNet); supported: {SUPPORTED}"
        )
    channels = conv_in[0][1]
    if channels != 4:
        kind = {
            9: "an inpainting model",
            8: "an instruct-pix2pix-style (image-conditioned) model",
            5: "a depth-conditioned model",
            7: "an x4 upscaler",
        }.get(channels, "not a plain text-to-image model")
        raise _refuse(
            f"{name}: found {kind} (the UNet takes {channels} input channels, text-to-image takes 4); supported: {SUPPORTED}"
        )
    layout = next((lay for lay, p in TEXT_PREFIXES.items() if p + TOKEN_EMBEDDING[lay] in t), None)
    if layout is None:
        raise _refuse(
            f"{name}: found an SD UNet without a text encoder (no 'cond_stage_model.*' tensors); supported: {SUPPORTED}"
        )
    if VAE + "decoder.conv_in.weight" not in t:
        raise _refuse(f"{name}: found an SD UNet and text encoder but no VAE ('first_stage_model.*'); supported: {SUPPORTED}")
    width = t[TEXT_PREFIXES[layout] + TOKEN_EMBEDDING[layout]][0][-1]
    ctx = sorted({s[-1] for k, (s, _) in t.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")})
    if ctx and ctx != [width]:
        raise _refuse(f"{name}: the UNet attends to {ctx[0]}-d text but the text encoder is {width}-d; supported: {SUPPORTED}")
    family = {768: "sd1", 1024: "sd2"}.get(width)
    dtypes = {}
    for s, d in t.values():
        n = 1
        for x in s:
            n *= x
        dtypes[d] = dtypes.get(d, 0) + n
    dtype = max(dtypes, key=dtypes.get)
    return {
        "family": family,
        "layout": layout,
        "text_width": width,
        "unet_channels": conv_in[0][0],
        "dtype": {"F16": "fp16", "float16": "fp16", "F32": "fp32", "float32": "fp32", "BF16": "bf16", "bfloat16": "bf16"}.get(
            dtype, dtype
        ),
        "ema": sum(k.startswith("model_ema.") for k in t) > 100,
    }


def _norm_arch(arch):
    if arch is None:
        return None
    a = ALIASES.get(str(arch).lower(), str(arch).lower())
    if a not in ARCHS:
        raise _refuse(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return a


def _norm_prediction(p):
    if p is None:
        return None
    v = PREDICTION_ALIASES.get(str(p).lower())
    if v is None:
        raise _refuse(f"unknown prediction_type {p!r}; choose 'epsilon' or 'v_prediction'")
    return v


def _hints(path: Path, meta: dict, extra: dict, layout: str) -> list[tuple[str, str | None, str | None]]:
    """Clues for SD 2.x's variant, strongest first: (basis, arch or None, prediction or None)."""
    out = []
    arch_md = (meta.get("modelspec.architecture") or "").lower()
    title = (meta.get("modelspec.title", "") + " " + meta.get("modelspec.description", "")).lower()
    if "turbo" in arch_md or "turbo" in title:
        out.append(("file metadata names SD-Turbo", "sd-turbo", "epsilon"))
    if arch_md and "768-v" in arch_md:
        out.append((f"file metadata modelspec.architecture={arch_md!r}", "sd2", "v_prediction"))
    elif arch_md.startswith("stable-diffusion-v2") and "512" in arch_md:
        out.append((f"file metadata modelspec.architecture={arch_md!r}", "sd2-base", "epsilon"))
    for k, v in meta.items():
        kl, vl = k.lower(), str(v).lower()
        if kl.endswith(("prediction_type", "parameterization")):
            if vl in ("v", "v_prediction", "v-prediction"):
                out.append((f"file metadata {k}={v!r}", None, "v_prediction"))
            elif vl in ("eps", "epsilon"):
                out.append((f"file metadata {k}={v!r}", None, "epsilon"))
    if meta.get("ss_v_parameterization", "").lower() == "true":
        out.append(("file metadata ss_v_parameterization=True", None, "v_prediction"))
    if extra.get("global_step") == 875000:  # diffusers' own rule for the SD 2.0 512-base checkpoint
        out.append(("global_step 875000 (SD 2.0 512-base, diffusers' rule)", "sd2-base", "epsilon"))
    stem = path.stem.lower()
    if "turbo" in stem:
        out.append((f"file name {path.name!r} says turbo", "sd-turbo", "epsilon"))
    if "768" in stem or re.search(r"(^|[^a-z0-9])v([^a-z0-9]|$)|v[-_]?pred", stem):
        out.append((f"file name {path.name!r} says 768/v", "sd2", "v_prediction"))
    if "512" in stem or "base" in stem:
        out.append((f"file name {path.name!r} says 512/base", "sd2-base", "epsilon"))
    if layout == "sgm":
        out.append(("sgm key layout (conditioner.embedders.0), as SD-Turbo ships", "sd-turbo", "epsilon"))
    return out


def _decide(path, meta, extra, lay, arch, prediction) -> tuple[str, str, str]:
    """(arch, prediction_type, basis). Weights cannot tell eps from v reliably, so say what decided it."""
    fam = lay["family"]
    if arch is not None:
        if FAMILY[arch] != fam:
            raise _refuse(
                f"{path.name}: arch {arch!r} is {ARCHS[arch][1]} but the file is "
                f"{'SD 1.x (768-d CLIP text encoder)' if fam == 'sd1' else 'SD 2.x (1024-d OpenCLIP text encoder)'}"
            )
        cfg_pred = _config_prediction(arch)
        return (
            arch,
            prediction or cfg_pred,
            "arch given" + (", prediction_type given" if prediction else f" ({cfg_pred} from its config)"),
        )
    if fam == "sd1":
        hints = [h for h in _hints(path, meta, extra, lay["layout"]) if h[1] is None and h[2]]
        if prediction:
            return "sd1", prediction, "SD 1.x text encoder (768-d CLIP); prediction_type given"
        if hints:
            return "sd1", hints[0][2], f"SD 1.x text encoder (768-d CLIP); {hints[0][0]}"
        return "sd1", "epsilon", "SD 1.x text encoder (768-d CLIP); epsilon, as every official SD 1.x"
    hints = _hints(path, meta, extra, lay["layout"])
    if prediction:
        turbo = next((h for h in hints if h[1] == "sd-turbo"), None)
        if turbo and prediction == "epsilon":
            return "sd-turbo", prediction, f"prediction_type given; {turbo[0]}"
        return ("sd2" if prediction == "v_prediction" else "sd2-base"), prediction, "prediction_type given"
    if hints:  # the strongest clue decides
        basis, a, p = hints[0]
        return a or ("sd2" if p == "v_prediction" else "sd2-base"), p, basis
    return (
        "sd2",
        "v_prediction",
        (
            "no clue in the file; SD 2.x defaults to 768-v (as diffusers does) — pass "
            "prediction_type='epsilon' (512-base) or arch='sd-turbo' if that is wrong"
        ),
    )


def _config_prediction(arch_or_dir) -> str:
    d = Path(arch_or_dir) if not isinstance(arch_or_dir, str) or arch_or_dir not in ARCHS else CONFIGS_DIR / ARCHS[arch_or_dir][0]
    try:
        return json.loads((d / "scheduler" / "scheduler_config.json").read_text()).get("prediction_type", "epsilon")
    except (OSError, ValueError):
        return "epsilon"


# ---------------------------------------------------------------------------------------------
# diffusers names ↔ ldm names (used both to check shapes before loading and to write fixtures)
# ---------------------------------------------------------------------------------------------

_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
]


def _unet_name(k: str, cfg: dict) -> str:
    L = cfg["layers_per_block"]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    head, _, leaf = k.rpartition(".")
    if head in fixed:
        return f"{fixed[head]}.{leaf}"

    def resnet(rest):
        for a, b in _RESNET:
            if rest.startswith(a + "."):
                return b + rest[len(a) :]
        return rest

    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = 1 + b * (L + 1) + j
        return f"input_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k)
    if m:
        return f"input_blocks.{1 + int(m[1]) * (L + 1) + L}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", k)
    if m:
        return f"middle_block.{2 * int(m[2])}.{resnet(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = b * (L + 1) + j
        return f"output_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k)
    if m:
        b = int(m[1])
        has_attn = "CrossAttn" in cfg["up_block_types"][b]
        return f"output_blocks.{b * (L + 1) + L}.{2 if has_attn else 1}.conv.{m[2]}"
    raise KeyError(f"no ldm name for UNet tensor {k!r}")


def _vae_name(k: str, cfg: dict) -> tuple[str, bool]:
    """(ldm name, is a mid-block attention weight stored as a 1×1 conv in ldm)."""
    n = len(cfg["up_block_types"])
    k2 = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k2)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}", False
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k2)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k2)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3]}", False
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k2)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", k2)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}", False
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", k2)
    if m:
        sub = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
        return f"{m[1]}.mid.attn_1.{sub}.{m[3]}", sub != "norm" and m[3] == "weight"
    return k2, False  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def to_ldm(unet_sd: dict, unet_cfg: dict, vae_sd: dict, vae_cfg: dict, text_sd: dict, layout: str) -> dict:
    """diffusers state dicts → one ldm state dict (works on meta tensors too, for shapes)."""
    import torch

    out = {UNET + _unet_name(k, unet_cfg): v for k, v in unet_sd.items()}
    for k, v in vae_sd.items():
        name, conv = _vae_name(k, vae_cfg)
        out[VAE + name] = v.reshape(*v.shape, 1, 1) if conv and v.ndim == 2 else v
    prefix = TEXT_PREFIXES[layout]
    if layout == "clip":
        out.update({prefix + k: v for k, v in text_sd.items() if not k.endswith("position_ids")})
        return out
    simple = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    qkv = {}
    for k, v in text_sd.items():
        if k in simple:
            out[prefix + simple[k]] = v
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", k)
        if not m:
            continue  # position_ids buffer
        i, rest = m[1], m[2]
        q = re.fullmatch(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
        if q:
            qkv.setdefault((i, q[2]), {})[q[1]] = v
            continue
        for a, b in (
            ("self_attn.out_proj", "attn.out_proj"),
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ):
            if rest.startswith(a + "."):
                rest = b + rest[len(a) :]
                break
        out[f"{prefix}transformer.resblocks.{i}.{rest}"] = v
    for (i, kind), parts in qkv.items():
        out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _meta_models(config_dir: Path):
    """The three models of a config folder on the meta device: shapes without memory or time."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder", local_files_only=True))
    return unet, vae, text


def expected_shapes(config_dir: Path, layout: str) -> dict:
    """ldm name → shape that a checkpoint for this config folder must hold."""
    unet, vae, text = _meta_models(Path(config_dir))
    sd = to_ldm(unet.state_dict(), dict(unet.config), vae.state_dict(), dict(vae.config), text.state_dict(), layout)
    return {k: tuple(v.shape) for k, v in sd.items()}


def _check_shapes(name: str, t: dict, config_dir: Path, layout: str, label: str):
    want = expected_shapes(config_dir, layout)
    missing = [k for k in want if k not in t]
    wrong = []
    for k, s in want.items():
        if k in t and tuple(t[k][0]) != s:
            vae_attn = k.startswith(VAE) and ".mid.attn_1." in k and tuple(t[k][0]) == s[:2]  # linear instead of 1×1 conv
            if not vae_attn:
                wrong.append(k)
    if wrong:
        k = wrong[0]
        raise _refuse(
            f"{name}: does not fit {label}: {len(wrong)} tensors have other shapes, e.g. {k} is "
            f"{list(t[k][0])}, expected {list(want[k])}"
        )
    if missing:
        part = "UNet" if missing[0].startswith(UNET) else "VAE" if missing[0].startswith(VAE) else "text encoder"
        raise _refuse(
            f"{name}: does not fit {label}: {len(missing)} of its {len(want)} tensors are missing "
            f"(first in the {part}: {missing[0]!r})"
        )
    return len(want)


# ---------------------------------------------------------------------------------------------
# the API the exporter calls
# ---------------------------------------------------------------------------------------------


def inspect(path: Path, *, arch: str | None = None, prediction_type: str | None = None, config_dir: Path | None = None) -> dict:
    """What a single-file checkpoint is, from its table of contents only; refuses all but SD 1.x/2.x.

    Returns {"arch", "config_dir", "prediction_type", "format", "found", "basis", "image_size", ...}.
    arch / prediction_type override the guesses (the weights cannot tell epsilon from v-prediction);
    config_dir replaces the shipped config folder (custom or tiny architectures; arch becomes "custom").
    Raises export.errors.UnsupportedCheckpoint with one line."""
    path = Path(path)
    fmt, t, extra = read_contents(path)
    meta = extra if fmt == "safetensors" else {}
    ckpt_extra = extra if fmt == "ckpt" else {}
    lay = _layout(path.name, t)
    arch, prediction = _norm_arch(arch), _norm_prediction(prediction_type)
    if config_dir is not None:
        config_dir = Path(config_dir)
        if not (config_dir / "model_index.json").is_file():
            raise _refuse(f"{config_dir} is not a diffusers config folder (no model_index.json)")
        arch_out, cfg_pred = "custom", _config_prediction(config_dir)
        prediction = prediction or cfg_pred
        basis = f"config folder given ({config_dir.name}); prediction_type " + (
            "given" if prediction_type else "from its scheduler"
        )
        label = f"the config folder {config_dir.name}"
    else:
        if lay["family"] is None:
            raise _refuse(
                f"{path.name}: its text encoder is {lay['text_width']}-d, neither SD 1.x (768) nor SD 2.x (1024); "
                f"supported: {SUPPORTED}"
            )
        arch_out, prediction, basis = _decide(path, meta, ckpt_extra, lay, arch, prediction)
        config_dir = CONFIGS_DIR / ARCHS[arch_out][0]
        label = f"{ARCHS[arch_out][1]} (config {config_dir.name})"
    n = _check_shapes(path.name, t, config_dir, lay["layout"], label)
    unet_cfg = json.loads((config_dir / "unet" / "config.json").read_text())
    vae_cfg = json.loads((config_dir / "vae" / "config.json").read_text())
    sample = unet_cfg.get("sample_size", 64)
    image = (sample if isinstance(sample, int) else sample[0]) * 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
    text_kind = {"clip": "CLIP", "openclip": "OpenCLIP", "sgm": "OpenCLIP (sgm layout)"}[lay["layout"]]
    family = {"sd1": "SD 1.x", "sd2": "SD 2.x", None: "SD-style"}[lay["family"]]
    found = (
        f"{family} checkpoint: UNet {lay['unet_channels']} ch, {lay['text_width']}-d {text_kind} text encoder, "
        f"VAE; {len(t)} tensors ({n} used), {lay['dtype']}, {_gb(path.stat().st_size)}"
        + (", with EMA copies" if lay["ema"] else "")
    )
    return {
        "arch": arch_out,
        "config_dir": config_dir,
        "prediction_type": prediction,
        "format": fmt,
        "found": found,
        "basis": basis,
        "image_size": image,
        "text_layout": lay["layout"],
        "dtype": lay["dtype"],
        "global_step": ckpt_extra.get("global_step"),
    }


def to_pipeline_folder(
    path: Path, dest: Path, *, arch: str | None = None, prediction_type: str | None = None, config_dir: Path | None = None
) -> Path:
    """Convert a single-file checkpoint to a diffusers folder at dest, offline; returns dest.

    Refuses (one line) before loading when inspect() does; after loading, checks that every weight
    of every model came from the file (diffusers leaves unmatched ones uninitialised, silently)."""
    path, dest = Path(path), Path(dest)
    info = inspect(path, arch=arch, prediction_type=prediction_type, config_dir=config_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(f"{dest} already exists and is not empty")
    from diffusers import StableDiffusionPipeline

    try:
        from diffusers.loaders.single_file_utils import SingleFileComponentError
    except ImportError:  # pragma: no cover
        SingleFileComponentError = ValueError  # noqa: N806
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(info["config_dir"]),
            local_files_only=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except (ValueError, KeyError, RuntimeError, OSError, SingleFileComponentError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if "meta tensor" in first:  # a weight the config needs was not in the file; diffusers left it empty
            raise _refuse(
                f"{path.name}: some weights that {info['arch']} needs are not in the file "
                f"(diffusers: {first.split(';')[0]}); it does not match its config"
            ) from None
        raise _refuse(f"{path.name}: diffusers could not load it as {info['arch']}: {first}") from None
    for part in ("unet", "vae", "text_encoder"):
        model = getattr(pipe, part)
        empty = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
        if empty:
            raise _refuse(
                f"{path.name}: {len(empty)} {part} tensors were not in the file (e.g. {empty[0]!r}); it does not match its config"
            )
    if pipe.scheduler.config.get("prediction_type") != info["prediction_type"]:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=info["prediction_type"])
    pipe.save_pretrained(dest, safe_serialization=True)
    return dest


# ---------------------------------------------------------------------------------------------
# diffusers → ldm single file (fixtures and round-trip tests)
# ---------------------------------------------------------------------------------------------


def _ddpm_buffers(sched_cfg: dict) -> dict:
    """The noise-schedule buffers LatentDiffusion saves beside the weights (real files carry them)."""
    import torch

    n, b0, b1 = sched_cfg.get("num_train_timesteps", 1000), sched_cfg.get("beta_start", 0.00085), sched_cfg.get("beta_end", 0.012)
    betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1 - prev) / (1 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - ac),
    }
    return {k: v.float() for k, v in bufs.items()}


def write_ldm_checkpoint(
    pipeline,
    dest: Path,
    *,
    layout: str | None = None,
    extras: bool = True,
    global_step: int | None = None,
    dtype=None,
    metadata: dict | None = None,
) -> Path:
    """Save a diffusers SD pipeline (folder or object) as one ldm-layout .safetensors or .ckpt file.

    layout: "clip" (SD 1.x), "openclip" (SD 2.x) or "sgm" (SD-Turbo style); default by text width.
    extras adds what real files also hold and loaders must ignore: noise-schedule buffers, CLIP's
    position_ids, OpenCLIP's text_projection, logit_scale and an unused last resblock."""
    import torch

    if isinstance(pipeline, (str, Path)):
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline.from_pretrained(str(pipeline), local_files_only=True)
    dest = Path(dest)
    text = pipeline.text_encoder
    width = text.config.hidden_size
    layout = layout or ("clip" if width != 1024 else "openclip")
    sd = to_ldm(
        pipeline.unet.state_dict(),
        dict(pipeline.unet.config),
        pipeline.vae.state_dict(),
        dict(pipeline.vae.config),
        text.state_dict(),
        layout,
    )
    if extras:
        sd.update(_ddpm_buffers(dict(pipeline.scheduler.config)))
        prefix = TEXT_PREFIXES[layout]
        g = torch.Generator().manual_seed(1)
        if layout == "clip":
            sd[prefix + "text_model.embeddings.position_ids"] = torch.arange(text.config.max_position_embeddings)[None]
        else:
            last = text.config.num_hidden_layers
            sd[prefix + "text_projection"] = torch.randn(width, text.config.projection_dim or width, generator=g)
            sd[prefix + "logit_scale"] = torch.tensor(4.6052)
            for k in [k for k in sd if k.startswith(f"{prefix}transformer.resblocks.0.")]:
                sd[k.replace("resblocks.0.", f"resblocks.{last}.")] = torch.randn(sd[k].shape, generator=g)
    sd = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().clone()
        for k, v in sd.items()
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(dest), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    else:
        obj = {"state_dict": sd}
        if global_step is not None:
            obj["global_step"] = global_step
        torch.save(obj, dest)
    return dest


def copy_configs(pipeline_dir: Path, dest: Path) -> Path:
    """A pipeline folder's configs and tokenizer without its weights: a config folder for to_pipeline_folder."""
    pipeline_dir, dest = Path(pipeline_dir), Path(dest)
    for p in pipeline_dir.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".txt"):
            (dest / p.relative_to(pipeline_dir)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest / p.relative_to(pipeline_dir))
    return dest
