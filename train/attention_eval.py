"""How well the UNet's cross-attention maps (a bundle's attention_probs) locate the object a word names: mean IoU on held-out prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import scenes as S

OBJECT_DISTANCE = 60.0  # RGB distance from every background colour beyond which a pixel is the object's
DAAM_TAU = 0.4  # DAAM's fixed threshold on the max-normalised map, reported beside Otsu's


def token_positions(tokenizer, prompt: str, phrase: str) -> list[int]:
    """Positions of `phrase`'s tokens in `prompt`'s encoding (its first occurrence), e.g. both tokens of 'alarm clock'."""
    ids = tokenizer.encode(prompt).ids
    want = tokenizer.encode(phrase).ids
    want = want[1 : want.index(tokenizer.eos_id, 1)]  # without bos / eos / padding
    for i in range(len(ids) - len(want) + 1):
        if ids[i : i + len(want)] == want:
            return list(range(i, i + len(want)))
    raise ValueError(f"{phrase!r} is not in the tokens of {prompt!r}")


def object_mask(image: np.ndarray, bg: int) -> np.ndarray:
    """Pixels of a generated image (uint8 H×W×3) that differ from the plain background colour(s) of
    BACKGROUNDS[bg] (two for the grass and beach scenes: sky and ground) by more than OBJECT_DISTANCE."""
    _, _, top, bottom = S.BACKGROUNDS[bg]
    px = image[..., :3].astype(np.float32)
    d = np.min([np.linalg.norm(px - np.array(c, np.float32), axis=-1) for c in (top, bottom) if c is not None], axis=0)
    return d > OBJECT_DISTANCE


def upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel centres, like torch's align_corners=False) from the latent grid to the image."""
    h, w = m.shape
    H, W = size

    def axis(n_in, n_out):
        x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, x - lo

    r0, r1, fr = axis(h, H)
    c0, c1, fc = axis(w, W)
    top = m[r0][:, c0] * (1 - fc) + m[r0][:, c1] * fc
    bot = m[r1][:, c0] * (1 - fc) + m[r1][:, c1] * fc
    return top * (1 - fr[:, None]) + bot * fr[:, None]


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of the values."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _ious(heat: np.ndarray, target: np.ndarray) -> dict:
    """IoU of the thresholded map with the target: Otsu (the reported one) and DAAM's τ on max-normalised."""
    norm = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    return {"otsu": iou(norm > otsu(norm), target), "daam_tau": iou(norm > DAAM_TAU, target)}


def evaluate_attention(
    bundle_dir, seeds=(0, 1), steps: int = 25, guidance: float | None = None, prompts: int | None = None, log=print
) -> dict:
    """mIoU over held-out single-object prompts × seeds of the object word's map (summed over steps and
    over the phrase's tokens) vs the object's pixels, and of the background word's map vs the rest."""
    from runtime.bundle import Bundle
    from runtime.native import NativeBackend, to_numpy
    from runtime.pipeline import Pipeline, Request, run_sync

    bundle = Bundle.from_dir(bundle_dir, verify=False)
    if guidance is None:
        guidance = float(bundle.manifest.get("about", {}).get("guidance", 7.5))
    held = [h for h in S.held_out_prompts() if len(h[1]) == 1][:prompts]
    rows = []

    async def go():
        pipe = Pipeline(bundle, NativeBackend(bundle_dir))
        await pipe.load()
        for prompt, (obj,), bg in held:
            obj_pos = token_positions(pipe.tokenizer, prompt, S.OBJECT_NAMES[obj])
            bg_pos = token_positions(pipe.tokenizer, prompt, S.BACKGROUND_NAMES[bg])
            for seed in seeds:
                trace = await pipe.generate(Request(prompt, seed=seed, guidance=guidance, steps=steps, preview_every=0))
                if trace.steps[0].attention is None:
                    raise ValueError(f"{bundle_dir}: the UNet has no attention_probs output; export it with the attention option")
                total = sum(to_numpy(s.attention).astype(np.float64) for s in trace.steps)  # [L, h, w], DAAM's sum over time
                image = to_numpy(trace.image)[..., :3]
                size = image.shape[:2]
                mask = object_mask(image, bg)
                obj_heat = upsample(total[obj_pos].sum(0), size)
                bg_heat = upsample(total[bg_pos].sum(0), size)
                rows.append(
                    {
                        "prompt": prompt,
                        "seed": seed,
                        "object_fraction": float(mask.mean()),
                        "object": _ious(obj_heat, mask),
                        "background_word": _ious(bg_heat, ~mask),
                        "background_word_vs_object": _ious(bg_heat, mask),
                    }
                )
            log(f"{prompt}: object IoU {np.mean([r['object']['otsu'] for r in rows[-len(seeds) :]]):.3f}")

    t = time.perf_counter()
    run_sync(go())

    def mean(key, how="otsu"):
        return float(np.mean([r[key][how] for r in rows]))

    return {
        "miou_object": mean("object"),
        "miou_background_word": mean("background_word"),
        "miou_background_word_vs_object": mean("background_word_vs_object"),
        "daam_tau": {k: mean(k, "daam_tau") for k in ("object", "background_word", "background_word_vs_object")},
        "threshold": "Otsu on the min–max-normalised map (daam_tau: fixed 0.4, DAAM's choice)",
        "object_pixels": f"RGB distance > {OBJECT_DISTANCE} from every background colour of the prompt's background",
        "maps": "attention_probs summed over all steps and over the word's tokens, bilinear to image size; conditional branch",
        "prompts": len(held),
        "seeds": list(seeds),
        "steps": steps,
        "guidance": guidance,
        "mean_object_fraction": float(np.mean([r["object_fraction"] for r in rows])),
        "seconds": time.perf_counter() - t,
        "rows": rows,
    }


def unet_cost(plain_dir, attention_dir, repeats: int = 40, threads: int | None = None) -> dict:
    """Median native time of one UNet step (batch 2, the page's shape) without and with the maps output."""
    import onnxruntime as ort

    from runtime.bundle import Bundle

    def session(d):
        b = Bundle.from_dir(d, verify=False)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        return ort.InferenceSession(str(Path(d) / b.component("unet")["files"][0]), opts, providers=["CPUExecutionProvider"]), b

    (plain, b), (attn, _) = session(plain_dir), session(attention_dir)
    m = b.manifest["model"]
    rng = np.random.default_rng(0)
    h, w = m["latent_size"]
    feeds = {
        "sample": rng.standard_normal((2, 4, h, w), dtype=np.float32),
        "timestep": np.array(500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, m["text_max_length"], m["text_hidden_size"]), dtype=np.float32),
    }
    times = {"without": [], "with": []}
    for s in (plain, attn):
        s.run(None, feeds)  # warm-up
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        for key, s in (("without", plain), ("with", attn)):
            t = time.perf_counter()
            s.run(None, feeds)
            times[key].append((time.perf_counter() - t) * 1000)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"median_ms": med, "ratio": med["with"] / med["without"], "repeats": repeats, "threads": threads or "default"}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bundle")
    ap.add_argument("--plain", help="the same bundle without maps: also time a UNet step with vs without")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--out", help="write the result as JSON here")
    a = ap.parse_args()
    res = evaluate_attention(a.bundle, seeds=tuple(range(a.seeds)), steps=a.steps, prompts=a.prompts)
    if a.plain:
        res["unet_cost"] = unet_cost(a.plain, a.bundle)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))
