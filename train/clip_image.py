"""Stage `clip_image`: CLIP's image tower, retrained against the frozen text encoder of the packaged model.

Why: the explainer's CLIP view shows how well an image matches a prompt, and that needs the image tower
and text projection the text encoder was trained with; the original ones were not kept. The text
encoder stays exactly as shipped (frozen, its pooled outputs computed once), so only the image side
learns to meet it, with train_clip's multi-positive contrastive loss.
Result: models/default/clip_image/ (model.safetensors: the tower + projection in float16, config.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import models as M
from .stages import MODEL_DIR, RUN_DIR, Checkpointed, _dataset, _loop, _set_lr, clip_object_retrieval, device, tokenizer

log = logging.getLogger("train")

OUT_DIR = MODEL_DIR / "clip_image"
WEIGHTS = "model.safetensors"


def text_fingerprint(text_dir: Path) -> str:
    """sha256 of the text encoder's weights: the tower is only valid for the encoder it was trained against."""
    h = hashlib.sha256()
    for p in sorted(Path(text_dir).glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


@torch.no_grad()
def _pooled_states(text, tok, captions: list[str], dev, cache: Path, chunk: int = 512) -> torch.Tensor:
    """pooler_output of the frozen encoder for every caption, computed once per distinct caption (and cached)."""
    if cache.exists():
        return torch.load(cache, weights_only=True)
    uniq, inverse = np.unique(np.asarray(captions), return_inverse=True)
    out = []
    for i in range(0, len(uniq), chunk):
        ids = tok(list(uniq[i : i + chunk]), padding=True, truncation=True, max_length=77, return_tensors="pt").input_ids
        out.append(text(ids.to(dev)).pooler_output.float().cpu())
    pooled = torch.cat(out)[torch.from_numpy(inverse.reshape(-1))]
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(pooled, cache)
    log.info("clip_image: pooled text states of %d captions (%d distinct)", len(captions), len(uniq))
    return pooled


def _soften(x: torch.Tensor, gen: torch.Generator, rate: float = 0.5) -> torch.Tensor:
    """A Gaussian blur (σ up to 1.2 px) and a little noise on a share of the images, so the tower also
    scores the slightly soft pictures the VAE decodes. No colour jitter: backgrounds are named by colour."""
    n, c, h, w = x.shape
    on = (torch.rand(n, generator=gen) < rate).float()
    sigma = (0.3 + 0.9 * torch.rand(n, generator=gen)).clamp(min=0.01)
    k = torch.exp(-0.5 * (torch.arange(-3, 4).float()[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
    y = F.pad(x, (3, 3, 3, 3), mode="replicate").reshape(1, n * c, h + 6, w + 6)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c).reshape(n, c, h, w)
    y = y + 0.04 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(y.shape, generator=gen)
    on = on.view(n, 1, 1, 1)
    return (on * y.clamp(-1, 1) + (1 - on) * x).contiguous()


def train_clip_image(
    minutes: float = 12.0, batch: int = 128, lr: float = 1e-3, text_dir: Path = MODEL_DIR / "text_encoder", out: Path = OUT_DIR
):
    from transformers import CLIPTextModel

    torch.manual_seed(6)
    dev = device()
    images, captions, objs, bgs = _dataset()
    # positives as in train_clip: every caption of the same objects and background
    keys = torch.from_numpy((objs.astype(np.int64) << np.arange(objs.shape[1], dtype=np.int64)).sum(1) * 16 + bgs)
    tok = tokenizer()
    text = CLIPTextModel.from_pretrained(text_dir).to(dev).eval().requires_grad_(False)
    fp = text_fingerprint(text_dir)
    pooled = _pooled_states(text, tok, captions, dev, RUN_DIR / f"clip_image_text_{fp[:12]}.pt")

    image = M.ImageEncoder().to(dev)
    proj = torch.nn.Linear(M.TEXT_HIDDEN, M.TEXT_HIDDEN, bias=False).to(dev)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=dev))
    opt = torch.optim.AdamW(list(image.parameters()) + list(proj.parameters()) + [logit_scale], lr=lr, weight_decay=0.05)
    holder = torch.nn.ParameterDict({"logit_scale": logit_scale})
    # named after the text encoder: a run folder left from another encoder is never resumed against this one
    name = f"clip_image_{fp[:12]}"
    ck = Checkpointed(name, {"image": image, "proj": proj, "scale": holder, "opt": opt})
    before_path = RUN_DIR / f"{name}_before.json"
    if not before_path.exists():  # the untrained tower (seeded): what retrieval is worth by chance
        before = clip_object_retrieval(text, image.eval(), proj, tok, dev)
        before_path.write_text(json.dumps({"object_retrieval": before}))
        log.info("clip_image: object retrieval before training (random tower): %.3f", before)
    before = json.loads(before_path.read_text())["object_retrieval"]
    gen = np.random.default_rng(6000 + ck.step)
    tgen = torch.Generator().manual_seed(6000 + ck.step)

    def step(i):
        _set_lr(opt, lr, i, min(1.0, ck.elapsed / (minutes * 60)), warmup=50)
        idx = gen.integers(0, len(captions), batch)
        x = _soften(M.to_tensor(images[idx]), tgen).to(dev)
        t = F.normalize(proj(pooled[idx].to(dev)), dim=-1)
        v = F.normalize(image(x), dim=-1)
        logits = logit_scale.clamp(max=math.log(100)).exp() * t @ v.T
        k = keys[idx]
        same = (k[:, None] == k[None, :]).float().to(dev)
        target = same / same.sum(1, keepdim=True)
        loss = (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.T.log_softmax(1), 1).mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    image.train()
    _loop(ck, minutes, step, "clip_image", log_every=25)
    image.eval()
    after = clip_object_retrieval(text, image, proj, tok, dev)
    log.info(
        "clip_image: object retrieval on 400 fresh scenes (48 captions each, background given): %.3f before, %.3f after",
        before,
        after,
    )
    save(
        out,
        image,
        proj,
        float(logit_scale.detach().clamp(max=math.log(100)).exp()),
        fp,
        {
            "object_retrieval_before": before,
            "object_retrieval_after": after,
            "steps": ck.step,
            "batch": batch,
            "minutes": round(ck.elapsed / 60, 2),
            "dataset": len(captions),
        },
    )
    return after


def save(out: Path, image: torch.nn.Module, proj: torch.nn.Linear, logit_scale: float, text_sha256: str, training: dict) -> None:
    """Write the tower and projection (float16: half the bytes, the error is far below what the view shows)
    and config.json into `out`, atomically."""
    from safetensors.torch import save_file

    tensors = {f"image.{k}": v.detach().half().cpu().contiguous() for k, v in image.state_dict().items()}
    tensors["proj.weight"] = proj.weight.detach().half().cpu().contiguous()
    cfg = {
        "architecture": "ImageEncoder",  # train/models.py: a small CNN, CLIP's image tower shrunk
        "module": "train.models.ImageEncoder",
        "channels": [3, 32, 64, 128, 256],
        "embed_dim": int(proj.weight.shape[0]),
        "text_hidden_size": int(proj.weight.shape[1]),
        "projection": "proj: Linear(text_hidden_size, embed_dim, bias=False) on the text encoder's pooled output "
        "(last_hidden_state at the first eos token)",
        "similarity": "cosine(normalize(image_tower(pixels)), normalize(proj(pooled_text)))",
        "logit_scale": logit_scale,
        "image_size": M.IMAGE_SIZE,
        "input": "RGB, NCHW float32",
        "pixel_normalization": {"formula": "uint8 / 127.5 - 1", "scale": 1 / 127.5, "offset": -1.0},
        "weights": WEIGHTS,
        "weights_dtype": "float16",
        "text_encoder_sha256": text_sha256,
        "training": training,
    }
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / WEIGHTS).chmod(0o644)  # safetensors writes 0600
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("clip_image: saved %s (%.2f MB)", out, (out / WEIGHTS).stat().st_size / 1e6)
