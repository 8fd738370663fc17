"""Image metrics for evaluation: object location by background subtraction, seed diversity, objects kept inside the
frame, word obedience, judge-feature FID, CLIP score."""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import torch

from . import models as M
from . import scenes as S

THRESHOLD = 60.0  # RGB distance (0..441) from the plain background that makes a pixel "object"
MIN_BLOB = 4  # connected specks smaller than this (night stars, decoder noise) are not object
POSITION_NAMES = list(S.POSITIONS)
SIZE_NAMES = list(S.SIZES)


# ---------------------------------------------------------------- locating objects


def background_distance(image: np.ndarray, bg: int) -> np.ndarray:
    """Per-pixel RGB distance to background `bg`'s plain colour(s): for the two-colour scenes (grass,
    beach) the distance to the segment between top and bottom colour, so a soft horizon is background."""
    x = image[..., :3].astype(np.float32)
    _, _, top, bottom = S.BACKGROUNDS[bg]
    a = np.asarray(top, np.float32)
    if bottom is None:
        return np.linalg.norm(x - a, axis=-1)
    d = np.asarray(bottom, np.float32) - a
    t = np.clip(((x - a) @ d) / float(d @ d), 0.0, 1.0)
    return np.linalg.norm(x - (a + t[..., None] * d), axis=-1)


def object_mask(image: np.ndarray, bg: int, threshold: float = THRESHOLD) -> np.ndarray:
    """bool [H,W]: pixels far from the background's colour(s), specks under MIN_BLOB pixels removed."""
    from scipy import ndimage

    mask = background_distance(image, bg) > threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= MIN_BLOB
        keep[0] = False
        mask = keep[labels]
    return mask


def touches_edge(mask: np.ndarray) -> bool:
    """Whether a located mask reaches the image's outermost row or column: the object runs into the frame's edge
    (is cut off by it). Real renders never do: scenes.render keeps scenes.MARGIN px between every object and the edge."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def nearest_position(x: float, y: float) -> str:
    """A centre (fractions of the image) → the nearest of scenes.POSITIONS."""
    return min(POSITION_NAMES, key=lambda p: (S.POSITIONS[p][0] - x) ** 2 + (S.POSITIONS[p][1] - y) ** 2)


@cache
def calibration(obj: int | None, bg: int) -> tuple[tuple[float, ...], tuple[tuple[float, float], ...]]:
    """Real renders of the object at each of scenes.SIZES, centred on this background (6 seeds; obj=None:
    every object once) → (mean mask area per size, mean offset of the mask's centroid from the sprite's
    centre per size, in fractions of the image). Turns a located area into a size class, and a centroid
    into the sprite's centre (a lopsided emoji such as a balloon on its string has its mass off centre)."""
    objs = range(len(S.OBJECTS)) if obj is None else [obj]
    areas, offsets = [], []
    for size in SIZE_NAMES:
        a, dx, dy = [], [], []
        for o in objs:
            for seed in range(6 if obj is not None else 1):
                mask = object_mask(S.render(S.Scene([o], bg, ["center"], [size], "", seed)), bg)
                a.append(mask.sum())
                if mask.any():  # the jitter (±2 px) averages out over the seeds
                    ys, xs = np.nonzero(mask)
                    dx.append((xs.mean() + 0.5) / S.SIZE - 0.5)
                    dy.append((ys.mean() + 0.5) / S.SIZE - 0.5)
        areas.append(float(np.mean(a)))
        offsets.append((float(np.mean(dx)) if dx else 0.0, float(np.mean(dy)) if dy else 0.0))
    return tuple(areas), tuple(offsets)


def size_areas(obj: int | None, bg: int) -> tuple[float, ...]:
    """Mask area of a real centred render at each of scenes.SIZES (see calibration)."""
    return calibration(obj, bg)[0]


def size_class(area: float, obj: int | None, bg: int) -> str:
    """Located area → small/medium/big: the nearest calibrated area on a log scale."""
    ref = np.log(np.maximum(size_areas(obj, bg), 1.0))
    return SIZE_NAMES[int(np.argmin(np.abs(np.log(max(area, 1.0)) - ref)))]


def side_px(area: float, obj: int | None, bg: int) -> float:
    """Located area → the sprite's side in pixels (scenes.SIZES' scale), by the same calibration."""
    ref = size_areas(obj, bg)[1]
    return S.SIZES["medium"] * float(np.sqrt(area / max(ref, 1.0)))


def locate(image: np.ndarray, bg: int, obj: int | None = None) -> dict:
    """One object on background `bg`: centre (fractions), nearest position, mask area, size class, side, and
    whether the mask touches the image's edge (`edge`). position/size/edge are None when nothing stands out."""
    mask = object_mask(image, bg)
    area = int(mask.sum())
    if area == 0:
        return {"x": None, "y": None, "area": 0, "position": None, "size": None, "side": 0.0, "edge": None}
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    size = size_class(area, obj, bg)
    dx, dy = calibration(obj, bg)[1][SIZE_NAMES.index(size)]
    x, y = (xs.mean() + 0.5) / w - dx, (ys.mean() + 0.5) / h - dy
    return {
        "x": float(x),
        "y": float(y),
        "area": area,
        "position": nearest_position(x, y),
        "size": size,
        "side": side_px(area, obj, bg),
        "edge": touches_edge(mask),
    }


def locate_all(images: np.ndarray, bg, obj=None) -> list[dict]:
    """locate over a stack [N,H,W,3]; bg and obj are one value or one per image."""
    n = len(images)
    bgs = bg if np.ndim(bg) else [bg] * n
    objs = obj if isinstance(obj, (list, tuple, np.ndarray)) else [obj] * n
    return [locate(images[i], int(bgs[i]), None if objs[i] is None else int(objs[i])) for i in range(n)]


# ---------------------------------------------------------------- diversity and word obedience


def coverage(found: list[dict]) -> dict:
    """One prompt's seeds → distinct positions and size classes covered, std of the side (px), misses."""
    pos = {f["position"] for f in found if f["position"]}
    sizes = {f["size"] for f in found if f["size"]}
    sides = [f["side"] for f in found if f["area"]]
    return {
        "positions": len(pos),
        "sizes": len(sizes),
        "side_std": float(np.std(sides)) if len(sides) > 1 else 0.0,
        "not_found": sum(1 for f in found if not f["area"]),
    }


def inside_frame(groups: list[list[dict]]) -> dict:
    """Prompts × seeds of located objects → the share of located objects whose mask touches no image edge
    (`inside`; nan when none was located), how many were located and touched, and the lowest share of one prompt."""
    per = [[not f["edge"] for f in g if f["area"]] for g in groups]
    flat = [v for p in per for v in p]
    return {
        "inside": float(np.mean(flat)) if flat else float("nan"),
        "located": len(flat),
        "touching_edge": int(len(flat) - sum(flat)),
        "min_prompt_inside": float(min(np.mean(p) for p in per if p)) if flat else float("nan"),
    }


def position_coverage(groups: list[list[dict]]) -> dict:
    """Prompts × seeds of located objects → mean positions covered of 9, mean size classes of 3, mean side std,
    and inside_frame's share of objects clear of the image's edge."""
    per = [coverage(g) for g in groups]
    frame = inside_frame(groups)
    return {
        "mean_positions": float(np.mean([p["positions"] for p in per])),
        "min_positions": int(min(p["positions"] for p in per)),
        "mean_sizes": float(np.mean([p["sizes"] for p in per])),
        "mean_side_std": float(np.mean([p["side_std"] for p in per])),
        "not_found": int(sum(p["not_found"] for p in per)),
        "prompts": len(per),
        "seeds": len(groups[0]) if groups else 0,
        "inside": frame["inside"],
        "located": frame["located"],
        "touching_edge": frame["touching_edge"],
        "min_prompt_inside": frame["min_prompt_inside"],
    }


def obedience(found: list[dict], asked: list[str], key: str) -> float:
    """Share of images whose located `key` ("position" or "size") is the asked one."""
    return float(np.mean([f[key] == a for f, a in zip(found, asked)]))


def position_prompt(obj: int, bg: int, pos: str) -> str:
    """caption_single's main form with a position word: "a cat at the top left on a red background"."""
    at = " in the center" if pos == "center" else f" at the {pos}"
    return f"{S._article(S.OBJECT_NAMES[obj])}{at} {S.BACKGROUNDS[bg][1][0]}"


def size_prompt(obj: int, bg: int, size: str) -> str:
    """caption_single's main form with a size word: "a small cat on a red background" (medium is never said)."""
    words = ([size] if size != "medium" else []) + [S.OBJECT_NAMES[obj]]
    return f"{S._article(' '.join(words))} {S.BACKGROUNDS[bg][1][0]}"


def word_prompts(n: int = 24) -> dict:
    """Held-out (object, background) pairs with position words (n prompts, positions in turn) and size
    words (n prompts, small and big in turn): {"position": [(prompt, obj, bg, pos)], "size": [...]}."""
    held = [(o[0], bg) for _, o, bg in S.held_out_prompts() if len(o) == 1]
    pos = [
        (position_prompt(o, bg, POSITION_NAMES[k % 9]), o, bg, POSITION_NAMES[k % 9])
        for k, (o, bg) in enumerate(held[::2] + held[1::2])
    ][:n]
    sz = [
        (size_prompt(o, bg, ("small", "big")[k % 2]), o, bg, ("small", "big")[k % 2])
        for k, (o, bg) in enumerate(held[1::2] + held[::2])
    ][:n]
    return {"position": pos, "size": sz}


# ---------------------------------------------------------------- real scenes (ceilings)


def _unspecified_rng_scene(rng: random.Random, pair: bool) -> S.Scene:
    """A scene from the data generator itself: a pair, or a single object whose caption has no position word."""
    while True:
        sc = S.sample_scene(rng, train=False)
        if pair and len(sc.objects) == 2:
            return sc
        if not pair and len(sc.objects) == 1 and not sc.said_position:
            return sc


@contextmanager
def margin(px: int | None):
    """Render with scenes.MARGIN set to px (None: as it is): px=0 is the round-1 and round-2 generators, which
    clamped an object flush to the image's edge (so a big one at a corner touched it) instead of 2 px inside."""
    old = getattr(S, "MARGIN", 0)
    if px is not None:
        S.MARGIN = px
    try:
        yield
    finally:
        S.MARGIN = old


def real_scenes(held: list, n: int, seed: int = 0, old: bool = False, edge_margin: int | None = None) -> np.ndarray:
    """n real renders per held-out prompt (prompt, objects, background), placed as the data generator places
    captions without position words → uint8 [P, n, 64, 64, 3]. old=True: round 1's generator (unspecified
    positions centred 2 times in 3, else any of the nine). edge_margin: see margin() (0 for the generators of
    rounds 1 and 2)."""
    rng = random.Random(seed)
    out = np.empty((len(held), n, S.SIZE, S.SIZE, 3), np.uint8)
    with margin(edge_margin):
        for i, (_, objs, bg) in enumerate(held):
            for k in range(n):
                sc = _unspecified_rng_scene(rng, len(objs) == 2)
                sc.objects, sc.background = list(objs), bg
                if old and len(objs) == 1:
                    sc.positions = [rng.choice(["center", "center", sc.positions[0]])]
                out[i, k] = S.render(sc)
    return out


def real_word_scenes(items: list, key: str, n: int, seed: int = 0, edge_margin: int | None = None) -> np.ndarray:
    """Real renders of word prompts (prompt, obj, bg, asked): the asked position (or size), the other drawn uniformly."""
    rng = random.Random(seed)
    out = np.empty((len(items), n, S.SIZE, S.SIZE, 3), np.uint8)
    with margin(edge_margin):
        for i, (_, obj, bg, asked) in enumerate(items):
            for k in range(n):
                pos = asked if key == "position" else rng.choice(POSITION_NAMES)
                size = asked if key == "size" else rng.choice(SIZE_NAMES)
                out[i, k] = S.render(S.Scene([obj], bg, [pos], [size], "", rng.getrandbits(32)))
    return out


# ---------------------------------------------------------------- distribution: judge features, FID


def prompt_interval(rates, n_boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% interval of a mean over prompts, the prompts resampled (bootstrap). Why not a binomial one over
    images: a prompt's seeds succeed or fail together (the doughnut fails on all 8), so 384 images hold far
    fewer than 384 independent draws, and a binomial interval would claim more certainty than there is."""
    r = np.asarray(rates, dtype=np.float64)
    means = r[np.random.default_rng(seed).integers(0, len(r), (n_boot, len(r)))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


@torch.no_grad()
def features(judge: M.Judge, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """The judge's penultimate features (after global pooling, before its two heads): float64 [N,128]."""
    flat = images.reshape(-1, *images.shape[-3:])
    return np.concatenate(
        [
            judge.features(M.to_tensor(np.ascontiguousarray(flat[i : i + batch]))).double().numpy()
            for i in range(0, len(flat), batch)
        ]
    )


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N,d]:
    |μa−μb|² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½ (eigen-based, symmetric, no complex parts)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root @ cb @ root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


# ---------------------------------------------------------------- CLIP score with the model's own CLIP


def text_fingerprint(text_dir: Path) -> str:
    """sha256 of a text encoder's weights (as train/clip_image.py records it in clip_image/config.json)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(text_dir).glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


class Clip:
    """The model's own CLIP: its text encoder and tokenizer, the clip_image tower and text projection."""

    def __init__(self, text_encoder, tokenizer, tower, proj, cfg):
        self.text, self.tok, self.tower, self.proj, self.cfg = text_encoder.eval(), tokenizer, tower.eval(), proj.eval(), cfg

    @classmethod
    def load(cls, model_dir, clip_dir=None, text_encoder=None, tokenizer=None) -> Clip:
        """From a diffusers folder (text_encoder/, tokenizer/) and a clip_image folder (default: model_dir/clip_image)."""
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, CLIPTokenizer

        model_dir = Path(model_dir)
        folder = Path(clip_dir) if clip_dir else model_dir / "clip_image"
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if cfg.get("architecture") != "ImageEncoder":
            raise ValueError(f"{folder}: unknown clip_image architecture {cfg.get('architecture')!r}")
        weights = load_file(str(folder / cfg.get("weights", "model.safetensors")))
        tower = M.ImageEncoder(cfg["embed_dim"])
        if list(cfg.get("channels", [3, 32, 64, 128, 256])) != [3, 32, 64, 128, 256]:
            raise ValueError(f"{folder}: channels {cfg['channels']} differ from train.models.ImageEncoder's")
        tower.load_state_dict({k[len("image.") :]: v.float() for k, v in weights.items() if k.startswith("image.")})
        proj = torch.nn.Linear(cfg["text_hidden_size"], cfg["embed_dim"], bias=False)
        proj.load_state_dict({"weight": weights["proj.weight"].float()})
        text = text_encoder if text_encoder is not None else CLIPTextModel.from_pretrained(model_dir / "text_encoder")
        tok = tokenizer if tokenizer is not None else CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
        return cls(text, tok, tower, proj, cfg)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised proj(last_hidden_state at the first eos token) per prompt: [P, d]."""
        ids = self.tok(list(prompts), padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
        states = self.text(ids).last_hidden_state.float()
        eos = (ids == self.tok.eos_token_id).int().argmax(1)
        pooled = states[torch.arange(len(ids)), eos]
        return torch.nn.functional.normalize(self.proj(pooled), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray, batch: int = 256) -> torch.Tensor:
        """Normalised tower(pixels) per image: [N, d]."""
        flat = images.reshape(-1, *images.shape[-3:])[..., :3]
        v = torch.cat([self.tower(M.to_tensor(np.ascontiguousarray(flat[i : i + batch]))) for i in range(0, len(flat), batch)])
        return torch.nn.functional.normalize(v, dim=-1)


def clip_score(clip: Clip, images: np.ndarray, prompts: list[str]) -> float:
    """100 × mean cosine(image, its prompt); images [P, n, H, W, 3] (n seeds of prompt p) or [N, H, W, 3] with N prompts."""
    p = len(prompts)
    per = images.reshape(p, -1, *images.shape[-3:]) if images.ndim == 5 or len(images) != p else images[:, None]
    n = per.shape[1]
    v = clip.image_embeddings(per).reshape(p, n, -1)
    t = clip.text_embeddings(prompts)
    return float(100 * (v * t[:, None, :]).sum(-1).mean())
