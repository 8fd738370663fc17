"""Training stages of the default model, each resumable and bounded by a time budget.

Order (as Stable Diffusion was built): a CLIP trained contrastively → its text encoder frozen; an
AutoencoderKL; latents and text states encoded once; a UNet trained on them with caption dropout.
The judge (an independent classifier for evaluation) is trained on real images only.
Each stage checkpoints to RUN_DIR every few minutes and continues from there when rerun.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import models as M
from . import scenes as S

ROOT = Path(__file__).resolve().parent.parent

RUN_DIR = Path(os.environ.get("DX_RUN_DIR", ROOT / "train" / "runs"))
MODEL_DIR = ROOT / "models" / "default"
TOKENIZER_DIR = ROOT / "export" / "assets" / "clip_tokenizer"
N_TRAIN = int(os.environ.get("DX_N_TRAIN", 40_000))
N_JUDGE = int(os.environ.get("DX_N_JUDGE", 24_000))
CHECKPOINT_EVERY_S = 300

log = logging.getLogger("train")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)


def _dataset_cache(n=N_TRAIN, seed=0, train=True) -> Path:
    return RUN_DIR / f"data_{n}_{seed}_{int(train)}.npz"


def _dataset(n=N_TRAIN, seed=0, train=True):
    cache = _dataset_cache(n, seed, train)
    if cache.exists():
        d = np.load(cache, allow_pickle=False)
        return d["images"], list(d["captions"]), d["objects"], d["backgrounds"]
    images, captions, objs, bgs = S.build_dataset(n, seed=seed, train=train)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, captions=np.array(captions), objects=objs, backgrounds=bgs)
    return images, captions, objs, bgs


class Checkpointed:
    """Holds a stage's state; saves it atomically and restores it so a killed run loses minutes, not hours."""

    def __init__(self, name: str, state: dict):
        self.path = RUN_DIR / f"{name}.pt"
        self.state = state
        self.step = 0
        self.elapsed = 0.0
        if self.path.exists():
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
            for k, obj in state.items():
                obj.load_state_dict(saved[k])
            self.step, self.elapsed = saved["step"], saved["elapsed"]
            log.info("%s: resumed at step %d (%.1f min done)", name, self.step, self.elapsed / 60)
        self._last_save = time.time()

    def save(self):
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**{k: o.state_dict() for k, o in self.state.items()}, "step": self.step, "elapsed": self.elapsed}, tmp)
        tmp.replace(self.path)
        self._last_save = time.time()

    def maybe_save(self):
        if time.time() - self._last_save > CHECKPOINT_EVERY_S:
            self.save()


def _loop(ck: Checkpointed, minutes: float, step_fn, name: str, log_every=50):
    """Run step_fn until the stage's time budget (minutes, counted across resumes) is spent."""
    import contextlib
    import sys

    budget = minutes * 60
    t_last = time.time()
    losses = []
    bar = contextlib.nullcontext()
    if sys.stderr.isatty():  # a progress bar for people; the log file gets the same figures
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn(f"{name}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with bar as progress:
        task = progress.add_task(name, total=budget, completed=ck.elapsed, info="") if progress else None
        while ck.elapsed < budget:
            losses.append(step_fn(ck.step))
            ck.step += 1
            now = time.time()
            ck.elapsed += now - t_last
            t_last = now
            if progress:
                progress.update(task, completed=min(ck.elapsed, budget), info=f"step {ck.step} loss {losses[-1]:.4f}")
            if ck.step % log_every == 0:
                log.info("%s step %d  loss %.4f  %.1f/%.0f min", name, ck.step, float(np.mean(losses)), ck.elapsed / 60, minutes)
                losses = []
            ck.maybe_save()
    ck.save()


def _set_lr(opt, lr: float, step: int, done: float, warmup: int) -> None:
    """Linear warm-up, then a cosine decay to 5% that ends with the stage's time budget (done: 0 → 1),
    so the last minutes of any budget anneal."""
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))


# ---------------------------------------------------------------- CLIP
def train_clip(minutes: float = 15.0, batch: int = 128):
    torch.manual_seed(0)
    dev = device()
    images, captions, objs, bgs = _dataset()
    # What a caption can be matched on: its objects and background. Two captions of the same scene
    # ("a kitten on red", "a cat face, red background") are both positives for its image; treating
    # one as a negative (as matching on caption text did) teaches wording, not objects.
    keys = torch.from_numpy((objs.astype(np.int64) << np.arange(objs.shape[1], dtype=np.int64)).sum(1) * 16 + bgs)
    tok = tokenizer()
    text, image = M.text_encoder().to(dev), M.ImageEncoder().to(dev)
    proj = torch.nn.Linear(M.TEXT_HIDDEN, M.TEXT_HIDDEN, bias=False).to(dev)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=dev))
    params = list(text.parameters()) + list(image.parameters()) + list(proj.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05)
    holder = torch.nn.ParameterDict({"logit_scale": logit_scale})
    ck = Checkpointed("clip", {"text": text, "image": image, "proj": proj, "scale": holder, "opt": opt})
    gen = np.random.default_rng(ck.step)

    def step(i):
        idx = gen.integers(0, len(captions), batch)
        ids = tok([captions[j] for j in idx], padding=True, truncation=True, max_length=77, return_tensors="pt").input_ids.to(dev)
        x = M.to_tensor(images[idx]).to(dev)
        t = F.normalize(proj(text(ids).pooler_output), dim=-1)
        v = F.normalize(image(x), dim=-1)
        logits = logit_scale.clamp(max=math.log(100)).exp() * t @ v.T
        k = keys[idx]
        same = (k[:, None] == k[None, :]).float().to(dev)  # multi-positive: soft targets over equal scenes
        target = same / same.sum(1, keepdim=True)
        loss = (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.T.log_softmax(1), 1).mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    _loop(ck, minutes, step, "clip", log_every=25)
    text.save_pretrained(RUN_DIR / "text_encoder")
    log.info(
        "clip: object retrieval on 400 fresh scenes (48 captions each, background given): %.3f",
        clip_object_retrieval(text.eval(), image.eval(), proj, tok, dev),
    )


@torch.no_grad()
def clip_object_retrieval(text, image, proj, tok, dev, n=400) -> float:
    """Does the text encoder know its objects? Pick each image's object among 48 captions (chance 0.021)."""
    import random

    rng, hits = random.Random(5), 0
    scenes = [S.sample_scene(rng, pair_rate=0.0) for _ in range(n)]
    v = F.normalize(image(M.to_tensor(np.stack([S.render(sc) for sc in scenes])).to(dev)), dim=-1)
    for i, sc in enumerate(scenes):
        caps = [f"{S._article(name)} {S.BACKGROUNDS[sc.background][1][0]}" for name in S.OBJECT_NAMES]
        ids = tok(caps, padding=True, return_tensors="pt").input_ids.to(dev)
        hits += int((F.normalize(proj(text(ids).pooler_output), dim=-1) @ v[i]).argmax() == sc.objects[0])
    return hits / n


# ---------------------------------------------------------------- VAE
def train_vae(minutes: float = 30.0, batch: int = 32, crop: int = 32, kl_weight: float = 1e-6, lr: float = 6e-4):
    """Reconstruction (L1 + MSE) with a cosine learning-rate decay to the end of the budget. Why it
    matters: the VAE bounds everything downstream: a judge that names 99.6% of real objects named only
    85% of their reconstructions by the first, undertrained VAE, so no UNet could have done better."""
    torch.manual_seed(1)
    dev = device()
    images, _, _, _ = _dataset()
    vae = M.vae().to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ck = Checkpointed("vae", {"vae": vae, "opt": opt})
    gen = np.random.default_rng(1000 + ck.step)

    def step(i):
        _set_lr(opt, lr, i, min(1.0, ck.elapsed / (minutes * 60)), warmup=100)
        # random crops: 4x cheaper than whole images; the VAE is convolutional, as SD's was trained on crops
        ox, oy = gen.integers(0, S.SIZE - crop + 1, 2)
        x = M.to_tensor(images[gen.integers(0, len(images), batch), oy : oy + crop, ox : ox + crop]).to(dev)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    _loop(ck, minutes, step, "vae", log_every=25)
    vae.save_pretrained(RUN_DIR / "vae")


def finetune_decoder(minutes: float = 30.0, batch: int = 16, lr: float = 3e-4):
    """SD's own fix for soft decodes (sd-vae-ft-mse): fine-tune the decoder alone on the cached latents.
    The encoder is frozen, so the latent space (and any UNet trained on it) is unchanged, and each step
    is cheaper: no encoder, no KL, only the decoder's backward pass."""
    from diffusers import AutoencoderKL

    torch.manual_seed(4)
    dev = device()
    images, _, _, _ = _dataset()
    enc = torch.load(RUN_DIR / "encoded.pt", weights_only=False)
    latents = enc["latents"] / enc["scaling_factor"]
    vae = AutoencoderKL.from_pretrained(RUN_DIR / "vae").to(dev)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ck = Checkpointed("decoder", {"vae": vae, "opt": opt})
    gen = np.random.default_rng(4000 + ck.step)

    def step(i):
        _set_lr(opt, lr, i, min(1.0, ck.elapsed / (minutes * 60)), warmup=50)
        # whole latents, as the pipeline decodes them (crops would teach borders that never occur)
        idx = gen.integers(0, len(images), batch)
        z, x = latents[idx].to(dev), M.to_tensor(images[idx]).to(dev)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    _loop(ck, minutes, step, "decoder", log_every=50)
    vae.save_pretrained(RUN_DIR / "vae_decoder")


# One flat colour behind the objects: the scenes `tune_vae` may recolour and weigh by object pixels (the
# night sky has stars drawn on it; grass and beach have two colours)
_PLAIN_BACKGROUND = np.array([b[3] is None and b[0] != "night" for b in S.BACKGROUNDS])
_BACKGROUND_RGB = np.array([b[2] for b in S.BACKGROUNDS], dtype=np.int16)
_CHANNEL_ORDERS = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]  # every order but RGB


def _object_pixels(image: np.ndarray, bg: int) -> np.ndarray:
    """True where a pixel is not plain background `bg`'s colour (any channel over 12 away): the objects."""
    return np.abs(image.astype(np.int16) - _BACKGROUND_RGB[bg]).max(-1) > 12


def _recolour(
    images: np.ndarray, idx: np.ndarray, bgs: np.ndarray, gen: np.random.Generator, camouflage: float = 0.0
) -> np.ndarray:
    """Scenes in colours the data never pairs: each plain background, with probability ½, a random flat
    colour; each image, with probability ½, its colour channels permuted. camouflage: the share of those
    new backgrounds that take the colour of one of the object's own pixels (± 8 per channel), so the VAE
    learns to keep what is left of an object on its own colour (a doughnut's orange dough on orange)."""
    x = images[idx].copy()
    for k, i in enumerate(idx):
        if gen.random() < 0.5 and _PLAIN_BACKGROUND[bgs[i]]:
            back = (x[k] == _BACKGROUND_RGB[bgs[i]]).all(-1)
            colour = gen.integers(0, 256, 3, dtype=np.uint8)
            if camouflage and gen.random() < camouflage:
                body = _object_pixels(x[k], bgs[i])
                if body.any():
                    own = x[k][body][gen.integers(0, int(body.sum()))].astype(np.int16)
                    colour = np.clip(own + gen.integers(-8, 9, 3), 0, 255).astype(np.uint8)
            x[k][back] = colour
        if gen.random() < 0.5:
            x[k] = x[k][..., _CHANNEL_ORDERS[gen.integers(1, 6) - 1]]
    return x


def _object_mask(images: np.ndarray, idx: np.ndarray, bgs: np.ndarray) -> torch.Tensor:
    """1 where a pixel is not its plain background's colour (any channel over 12 away: the objects), 0
    elsewhere and on the other backgrounds, whose object pixels cannot be told apart this way."""
    m = np.zeros((len(idx), 1, S.SIZE, S.SIZE), dtype=np.float32)
    for k, i in enumerate(idx):
        if _PLAIN_BACKGROUND[bgs[i]]:
            m[k, 0] = _object_pixels(images[i], bgs[i])
    return torch.from_numpy(m)


def tune_vae(
    minutes: float = 25.0,
    batch: int = 16,
    lr: float = 5e-5,
    object_weight: float = 8.0,
    anchor: float = 1.0,
    camouflage: float = 0.0,
):
    """Fine-tune the VAE, encoder and decoder, on whole scenes without moving the latent space the UNet
    was trained on. Why: the VAE, trained on 32-px crops with every pixel weighing the same, gave some
    held-out objects back wrong on their own colour (the doughnut's chocolate icing on orange came back
    green), so no UNet could draw them. Each batch is half training scenes and half recoloured ones
    (`_recolour`, `camouflage` its share of backgrounds in the object's own colours); object pixels weigh
    `object_weight` times a background pixel (objects are 14% of a plain scene's pixels); the encoder's
    latent means on the unrecoloured half are held to those of the encoder that made encoded.pt
    (`encoded_with`; `anchor` × their MSE), so the UNet's latents still decode.
    Starts from RUN_DIR/vae_tuned when there is one (each run continues the last one's result, with a
    learning-rate decay of its own), else from RUN_DIR/vae; writes RUN_DIR/vae_tuned, which `package` ships."""
    from diffusers import AutoencoderKL

    torch.manual_seed(6)
    dev = device()
    images, _, _, bgs = _dataset()
    bgs = np.asarray(bgs)
    reference = AutoencoderKL.from_pretrained(encoded_with()).to(dev).eval().requires_grad_(False)
    sf = reference.config.scaling_factor
    start = RUN_DIR / "vae_tuned" if (RUN_DIR / "vae_tuned").is_dir() else RUN_DIR / "vae"
    vae = AutoencoderKL.from_pretrained(start).to(dev).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ck = Checkpointed("vae_tune", {"vae": vae, "opt": opt})
    gen = np.random.default_rng(8 + ck.step)
    half = batch // 2

    def step(i):
        _set_lr(opt, lr, i, min(1.0, ck.elapsed / (minutes * 60)), warmup=1)
        idx = gen.integers(0, len(images), batch)
        plain = M.to_tensor(images[idx[:half]]).to(dev)
        x = torch.cat([plain, M.to_tensor(_recolour(images, idx[half:], bgs, gen, camouflage)).to(dev)])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        w = 1.0 + (object_weight - 1.0) * _object_mask(images, idx, bgs).to(dev)
        w = w / w.mean()
        with torch.no_grad():
            want = reference.encode(plain).latent_dist.mean
        drift = F.mse_loss(post.mean[:half] * sf, want * sf)
        loss = (w * ((rec - x).abs() + (rec - x) ** 2)).mean() + anchor * drift + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    _loop(ck, minutes, step, "vae_tune", log_every=100)
    vae.eval().save_pretrained(RUN_DIR / "vae_tuned")
    ck.path.unlink()  # done: a later run starts afresh from vae_tuned (a killed one resumes from its checkpoint)


# ---------------------------------------------------------------- judge
def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per image: blur, resampling, colour and noise, so the judge names what a person would see in a
    soft or over-saturated picture. It still only ever sees real scenes, never generated ones."""
    n, c, h, w = x.shape
    r = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(shape or (n,), generator=gen)
    # Gaussian blur, σ from 0 to 1.6 px (separable, one kernel per image)
    sigma = r(0.01, 1.6) * (torch.rand(n, generator=gen) < 0.7)
    k = torch.exp(-0.5 * (torch.arange(-3, 4).float()[None] / sigma.clamp(min=0.01)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x)
    y = F.pad(x, (3, 3, 3, 3), mode="replicate").reshape(1, n * c, h + 6, w + 6)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c).reshape(n, c, h, w)
    # lost detail: down to 24–48 px and back up, for a third of the images
    if torch.rand(1, generator=gen).item() < 0.33:
        s = int(r(24, 48, 1).item())
        y = F.interpolate(F.interpolate(y, size=(s, s), mode="bilinear", antialias=True), size=(h, w), mode="bilinear")
    # colour: saturation, contrast, brightness
    gray = y.mean(1, keepdim=True)
    y = gray + r(0.6, 1.8).view(n, 1, 1, 1).to(x) * (y - gray)
    m = y.mean((1, 2, 3), keepdim=True)
    y = m + r(0.7, 1.3).view(n, 1, 1, 1).to(x) * (y - m) + r(-0.1, 0.1).view(n, 1, 1, 1).to(x)
    y = y + r(0, 0.12).view(n, 1, 1, 1).to(x) * torch.randn(y.shape, generator=gen).to(x)
    return y.clamp(-1, 1)


def train_judge(minutes: float = 36.0, batch: int = 64):
    torch.manual_seed(2)
    dev = device()
    images, _, objs, bgs = _dataset(N_JUDGE, seed=7, train=False)  # all combinations: it is a judge
    judge = M.Judge(len(S.OBJECTS), len(S.BACKGROUNDS)).to(dev)
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    ck = Checkpointed("judge", {"judge": judge, "opt": opt})
    gen = np.random.default_rng(2000 + ck.step)
    tgen = torch.Generator().manual_seed(ck.step)

    def step(i):
        idx = gen.integers(0, len(images), batch)
        x = _augment(M.to_tensor(images[idx]), tgen).to(dev)
        lo, lb = judge(x)
        loss = F.binary_cross_entropy_with_logits(lo, torch.from_numpy(objs[idx]).to(dev)) * 10 + F.cross_entropy(
            lb, torch.from_numpy(bgs[idx]).to(dev)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    judge.train()
    _loop(ck, minutes, step, "judge")
    judge.eval()
    # accuracy on fresh real images (a sanity check of the judge itself)
    vi, _, vo, vb = S.build_dataset(2000, seed=99, train=False)
    with torch.no_grad():
        lo, lb = judge(M.to_tensor(vi).to(dev))
    k = vo.sum(1).astype(int)
    top = torch.argsort(lo, 1, descending=True).cpu().numpy()
    obj_ok = np.mean([set(top[i, : k[i]]) == set(np.nonzero(vo[i])[0]) for i in range(len(vi))])
    bg_ok = float((lb.argmax(1).cpu().numpy() == vb).mean())
    log.info("judge on 2000 fresh real images: objects %.3f, background %.3f", obj_ok, bg_ok)
    torch.save(judge.state_dict(), RUN_DIR / "judge_final.pt")
    (RUN_DIR / "judge_accuracy.json").write_text(json.dumps({"objects": obj_ok, "background": bg_ok}))


# ---------------------------------------------------------------- encode once
LATENT_VAE = "vae_latents"  # the VAE encoded.pt's latents came from, kept as it was


@torch.no_grad()
def encode():
    """Latents and text states once, before UNet training (both encoders are frozen from here on). The
    latents are the shipped encoder's (`shipped_vae_dir`: a tuned VAE when there is one), so the UNet learns
    the latent space its decoder was tuned for. That VAE is kept as it was in RUN_DIR/LATENT_VAE, which
    encoded.pt names, so each later `vae_tune` holds its encoder to the one these latents came from."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    out = RUN_DIR / "encoded.pt"
    if out.exists():
        return
    dev = device()
    images, captions, _, _ = _dataset()
    maker = shipped_vae_dir()
    vae = AutoencoderKL.from_pretrained(maker).to(dev).eval()
    vae.save_pretrained(RUN_DIR / LATENT_VAE)  # frozen: a later vae_tune rewrites vae_tuned, not this
    text = CLIPTextModel.from_pretrained(RUN_DIR / "text_encoder").to(dev).eval()
    tok = tokenizer()
    lat = []
    for i in range(0, len(images), 256):
        lat.append(vae.encode(M.to_tensor(images[i : i + 256]).to(dev)).latent_dist.mean.cpu())
    lat = torch.cat(lat)
    scaling = 1.0 / lat.flatten().std().item()  # as SD chose 0.18215: unit variance latents
    if (RUN_DIR / "unet_init").is_dir():  # continuing a packaged model: keep the factor its UNet learned with
        scaling = vae.config.scaling_factor
    states = []
    for i in range(0, len(captions), 512):
        ids = tok(captions[i : i + 512], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        states.append(text(ids.to(dev)).last_hidden_state.half().cpu())
    empty = text(tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(dev)).last_hidden_state.cpu()
    torch.save(
        {"latents": lat * scaling, "scaling_factor": scaling, "states": torch.cat(states), "empty": empty, "vae": LATENT_VAE},
        out,
    )
    log.info("encoded %d latents with %s, scaling factor %.5f", len(lat), maker.name, scaling)


def encoded_with() -> Path:
    """The VAE whose encoder made encoded.pt (files from before round 9 do not say: runs/vae made them)."""
    path = RUN_DIR / "encoded.pt"
    name = torch.load(path, weights_only=False, mmap=True).get("vae", "vae") if path.exists() else "vae"
    return RUN_DIR / name


# ---------------------------------------------------------------- UNet
def batch_groups(objects, backgrounds, batch, pair_share=None, hard_share=None, hard_above=0.3):
    """Each batch's make-up: (index arrays of the two-object scenes, the camouflaged single objects, the
    other single objects; how many of each a batch draws). A share left None keeps the data's own."""
    is_pair = objects.sum(1) == 2
    single = np.nonzero(~is_pair)[0]
    hard = np.array([S.camouflage(int(objects[i].argmax()), int(backgrounds[i])) > hard_above for i in single], bool)
    n_pairs = round(batch * (is_pair.mean() if pair_share is None else pair_share))
    n_hard = round((batch - n_pairs) * (hard.mean() if hard_share is None else hard_share))
    return [np.nonzero(is_pair)[0], single[hard], single[~hard]], [n_pairs, n_hard, batch - n_pairs - n_hard]


def train_unet(
    minutes: float = 88.0,
    batch: int = 32,
    lr: float | None = None,
    dropout: float = 0.1,
    min_snr: float = 5.0,
    pair_share: float | None = None,
    hard_share: float | None = None,
    hard_above: float = 0.3,
):
    """Epsilon prediction on SD's schedule, with two choices that make a fixed CPU budget go further:
    Min-SNR-γ loss weights (Hang et al. 2023: the easy low-noise steps stop dominating the gradient)
    and a cosine learning-rate decay to the end of the time budget (the last minutes anneal).
    pair_share: the share of each batch drawn from two-object scenes (None: as the training data has them,
    31% once the held-out pairs are left out); round 5 raised it because pairs had stopped rising.
    hard_share: the share of the single-object part of each batch drawn from scenes where the object is
    camouflaged on its background (scenes.camouflage > hard_above); round 7 tried 0.35 against the held-out
    misses on their own colour, and lost 3 points of objects (train/README.md)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(3)
    dev = device()
    enc = torch.load(RUN_DIR / "encoded.pt", weights_only=False)
    latents, states, empty = enc["latents"], enc["states"], enc["empty"].to(dev)
    unet = M.unet().to(dev)
    continuing = (RUN_DIR / "unet_init").is_dir()
    lr = lr or (3e-4 if continuing else 6e-4)  # a trained UNet continues at half the peak rate: refine, don't restart
    if continuing and not (RUN_DIR / "unet.pt").exists():  # continue a packaged model
        from diffusers import UNet2DConditionModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(RUN_DIR / "unet_init").state_dict())
        log.info("unet: starting from %s", RUN_DIR / "unet_init")
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    ck = Checkpointed("unet", {"unet": unet, "ema": ema, "opt": opt})
    noise_sched = DDPMScheduler(
        **{k: v for k, v in M.SCHEDULER_CONFIG.items() if k not in ("skip_prk_steps", "set_alpha_to_one")}
    )
    alphas = noise_sched.alphas_cumprod.to(dev)
    gen = torch.Generator().manual_seed(3000 + ck.step)
    groups, counts = [np.arange(len(latents))], [batch]  # one group: batches as the data has them
    if pair_share is not None or hard_share is not None:
        cache = _dataset_cache()  # only the label arrays: the cache's images are half a gigabyte
        if cache.exists():
            with np.load(cache) as d:
                objects, backgrounds = d["objects"], d["backgrounds"]
        else:
            objects, backgrounds = _dataset()[2:]
        assert len(objects) == len(latents), "encoded.pt and the scene cache disagree"
        groups, counts = batch_groups(objects, backgrounds, batch, pair_share, hard_share, hard_above)
        log.info(
            "unet: each batch of %d: %d of the %d two-object scenes, %d of the %d camouflaged single objects, %d of the other %d",
            batch,
            *(x for g, k in zip(groups, counts) for x in (k, len(g))),
        )
    groups = [torch.from_numpy(g) for g in groups]

    def sample():
        return torch.cat([g[torch.randint(0, len(g), (k,), generator=gen)] for g, k in zip(groups, counts) if k])

    def step(i):
        _set_lr(opt, lr, i, min(1.0, ck.elapsed / (minutes * 60)), warmup=200)
        idx = sample()
        x0 = latents[idx].to(dev)
        cond = states[idx].float().to(dev)
        drop = torch.rand(batch, generator=gen) < dropout
        cond[drop.to(dev)] = empty
        t = torch.randint(0, 1000, (batch,), generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        snr = a / (1 - a)
        weight = torch.clamp(snr, max=min_snr) / snr
        loss = (weight * (unet(xt, t, encoder_hidden_states=cond).sample - noise).pow(2)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + i) / (10 + i))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        return loss.item()

    unet.train()
    _loop(ck, minutes, step, "unet")
    ema.save_pretrained(RUN_DIR / "unet_ema")


# ---------------------------------------------------------------- package
def shipped_vae_dir() -> Path:
    """The most refined VAE there is: tuned (tune_vae), else its decoder fine-tuned, else as trained."""
    return next(RUN_DIR / d for d in ("vae_tuned", "vae_decoder", "vae") if (RUN_DIR / d).exists())


def package(out: Path = MODEL_DIR):
    """Assemble a diffusers StableDiffusionPipeline folder that from_pretrained loads offline."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    enc = torch.load(RUN_DIR / "encoded.pt", weights_only=False)
    vae = AutoencoderKL.from_pretrained(shipped_vae_dir())
    vae.register_to_config(scaling_factor=enc["scaling_factor"])
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel.from_pretrained(RUN_DIR / "text_encoder"),
        tokenizer=tokenizer(),
        unet=UNet2DConditionModel.from_pretrained(RUN_DIR / "unet_ema"),
        scheduler=getattr(diffusers, M.SCHEDULER_CLASS).from_config(M.SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "explainer.json").write_text(json.dumps(about(), indent=1))
    import shutil

    # the CLIP image tower belongs to the text encoder it was trained against: keep it while that is unchanged
    old_tower, old_text = out / "clip_image", out / "text_encoder" / "model.safetensors"
    if (
        old_tower.is_dir()
        and old_text.exists()
        and old_text.read_bytes() == (tmp / "text_encoder" / "model.safetensors").read_bytes()
    ):
        shutil.copytree(old_tower, tmp / "clip_image")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("saved pipeline to %s", out)


def about(evaluation: Path | None = None) -> dict:
    """The model card the page shows: what this tiny model was trained to draw, and the facts about it
    that the page's sentences quote (web/src/text/). Every fact names where it comes from: this
    module's own defaults, the scene generator, train/README.md's record of the committed run, the
    CLIP image tower's config, or an evaluation's results.json. `evaluation` (or DX_CARD_EVALUATION)
    points at the results the guidance facts quote: evaluation/round9/results.json until a later
    round replaces it; re-point it and rerun `package` (or this function) to update the card."""
    import inspect

    def default(fn, name):  # a stage's default argument: what `train` runs with no --minutes given
        return inspect.signature(fn).parameters[name].default

    card = {
        "description": "A tiny Stable Diffusion trained by this project on 64×64 emoji scenes: "
        f"{len(S.OBJECTS)} objects on {len(S.BACKGROUNDS)} backgrounds, one or two objects, with positions and sizes.",
        "examples": [
            "a cat on a blue background",
            "a small rocket at the top left at night",
            "a big sunflower on the grass",
            "a pizza and a banana on a yellow background",
            "a penguin on the beach",
            "a red car on a pink background",
            "a rainbow in the night sky",
            "a guitar on the left and a cactus on the right on white",
        ],
        # measured (facts.guidance.evaluation below): this small model names its objects best near
        # guidance 3, not at SD's usual 7.5; the page starts at this value
        "guidance": 3.0,
        "vocabulary": {
            "objects": S.OBJECT_NAMES,
            "backgrounds": [b[1][0] for b in S.BACKGROUNDS],
            "positions": list(S.POSITIONS),
            "sizes": ["small", "big"],
            "words": S.caption_words(),
        },
    }
    # ---- facts the page's text quotes (export/manifest.py passes "facts" on as about.facts) ----
    readme = "train/README.md"
    unet_blocks = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")  # train/models.py unet()
    facts: dict = {
        "trained_by": "this project",
        "training_minutes": 170,
        "source_training_minutes": readme + " (the committed run, 2026-11-25)",
        "data": {
            "kind": "captioned emoji scenes",
            "images": N_TRAIN,
            "image_size": [S.SIZE, S.SIZE],
            "objects": len(S.OBJECTS),
            "backgrounds": len(S.BACKGROUNDS),
            "emoji": "Twemoji (CC-BY 4.0), via the npm package emoji-datasource-twitter",
            "source": "train/scenes.py; train/stages.py N_TRAIN",
        },
        "text_encoder": {
            "class": "CLIPTextModel",
            "layers": 4,
            "hidden_size": M.TEXT_HIDDEN,
            "vocab_size": 49408,
            "max_length": 77,
            "causal": True,  # CLIP's text transformer masks attention to later tokens (Radford et al. 2021)
            "trained_on": "this project's captioned emoji scenes",
            "pairs": N_TRAIN,
            "objective": "contrastive (CLIP), scene-level positives",
            "minutes": 15,
            "steps": 1225,
            "batch": default(train_clip, "batch"),
            "object_retrieval": 0.76,  # right object among 48 captions, fresh scenes
            "frozen_after": True,
            "source": readme + " (CLIP stage); train/stages.py train_clip",
        },
        "sizes": {
            "image": [M.IMAGE_SIZE, M.IMAGE_SIZE],
            "latent": [M.LATENT_CHANNELS, M.LATENT_SIZE, M.LATENT_SIZE],
            "source": "train/models.py",
        },
        "unet": {
            "caption_dropout": default(train_unet, "dropout"),  # share of examples with the empty caption (CFG)
            "prediction": M.SCHEDULER_CONFIG["prediction_type"],
            "cross_attention_resolutions": [
                M.LATENT_SIZE // 2**i for i, b in enumerate(unet_blocks) if b.startswith("CrossAttn")
            ],
            "source": "train/stages.py train_unet (dropout); train/models.py unet()",
        },
        "scheduler": {
            "ships": "DDIM",
            "timestep_spacing": M.SCHEDULER_CONFIG["timestep_spacing"],
            "set_alpha_to_one": M.SCHEDULER_CONFIG["set_alpha_to_one"],
            "why": "with earlier weights of this model PNDM diverged at guidance 7.5 (object accuracy 0.05 on 4 seeds) while DDIM, "
            "DPM-Solver++ 2M and Euler ancestral held (DDIM 0.68)",
            "source": "README.md ('Scheduler matters at high guidance'); evaluation/pndm/",
        },
        "attention": {
            "miou_object": 0.39,
            "miou_background_word": 0.53,
            "daam_coco": [0.59, 0.65],
            "source": "README.md ('How well the attention maps locate things')",
        },
    }
    tower = MODEL_DIR / "clip_image" / "config.json"
    if tower.is_file():  # trained after `package` (train/clip_image.py) against the frozen text encoder
        t = json.loads(tower.read_text()).get("training", {})
        facts["clip_image"] = {
            "trained": "afterwards, against the frozen text encoder",
            "knows": "only emoji scenes",
            "minutes": round(float(t.get("minutes", 0)), 1),
            "steps": t.get("steps"),
            "batch": t.get("batch"),
            "object_retrieval": t.get("object_retrieval_after"),
            "source": "models/default/clip_image/config.json; train/clip_image.py",
        }
    path = Path(evaluation or os.environ.get("DX_CARD_EVALUATION") or ROOT / "evaluation" / "round9" / "results.json")
    if path.is_file():
        ev = json.loads(path.read_text())
        keys = ("object_accuracy", "background_accuracy", "pair_both_objects")
        rows = [
            {"scale": r["guidance"], "seeds": r.get("seeds"), **{k: round(float(r[k]), 3) for k in keys if k in r}}
            for r in ev.get("rows", [])
            if r.get("guidance", 0) > 0
        ]
        facts["guidance"] = {
            "default": card["guidance"],
            "sd_default": 7.5,
            "caption_dropout": facts["unet"]["caption_dropout"],
            "evaluation": {
                "prompts": len(ev.get("prompts", [])),
                "steps": ev.get("steps"),
                "scheduler": ev.get("scheduler"),
                "rows": rows,
                "source": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            },
        }
        real = ev.get("real_distribution") or {}
        if "clip_real" in real:  # CLIP score = 100 × mean cosine, real scenes with their own / another prompt
            facts["clip_cosine"] = {
                "real_own_prompt": round(real["clip_real"] / 100, 2),
                "real_other_prompt": round(real.get("clip_real_shuffled", 0) / 100, 2),
                "source": facts["guidance"]["evaluation"]["source"] + " real_distribution",
            }
    card["facts"] = facts
    return card


STAGES = {
    "clip": train_clip,
    "vae": train_vae,
    "encode": encode,
    "decoder": finetune_decoder,
    "vae_tune": tune_vae,
    "unet": train_unet,
    "package": package,
    "judge": train_judge,
}
# what `train` runs with no stage named: the model. The judge is evaluation's instrument, trained on its own
# (`train judge`), so the model's budget (3 hours, 90 minutes a stage) is the model's alone.
MODEL_STAGES = ("clip", "vae", "encode", "decoder", "unet", "package")


def continue_from(model_dir: Path) -> None:
    """Seed an empty run folder from a packaged model, so UNet training can go on elsewhere (e.g. on a
    GPU): the frozen text encoder and VAE are reused as they are, the UNet starts from its weights."""
    import shutil

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for part in ("text_encoder", "vae"):
        if not (RUN_DIR / part).exists():
            shutil.copytree(model_dir / part, RUN_DIR / part)
    if not (RUN_DIR / "unet.pt").exists() and not (RUN_DIR / "unet_init").exists():
        shutil.copytree(model_dir / "unet", RUN_DIR / "unet_init")


def run(stages=MODEL_STAGES, minutes: dict | None = None, table: dict | None = None, options: dict | None = None):
    """Run the named stages in order; table: name → function (default STAGES; the command line adds
    stages that live in their own modules, e.g. clip_image, which import this one); options: stage →
    further keyword arguments (e.g. {"unet": {"pair_share": 0.6}})."""
    table = table or STAGES
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in stages:
        t = time.time()
        kw = {"minutes": minutes[name]} if minutes and name in minutes else {}
        kw.update((options or {}).get(name, {}))
        log.info("stage %s starting", name)
        table[name](**kw)
        log.info("stage %s done in %.1f min", name, (time.time() - t) / 60)
