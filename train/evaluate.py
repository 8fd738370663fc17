"""Measure the default model with an independent judge on prompts training never saw.

Why a judge: "does the image show a cat on a green background?" is answered by a classifier trained
only on real dataset images (never on generated ones, never shared with the generator). The prompts
are object × background combinations and object pairs held out of training, so a high score means
the model composes words, not that it remembers pictures.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import models as M
from . import scenes as S
from .stages import RUN_DIR

GUIDANCES = (0.0, 1.0, 3.0, 7.5, 12.0)
# runtime.schedulers' names → diffusers' classes (the judge scores diffusers' own sampling); a test keeps them in step
SCHEDULERS = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
              "euler": "EulerDiscreteScheduler", "lms": "LMSDiscreteScheduler"}
JUDGE = Path(__file__).resolve().parent.parent / "models" / "judge.pt"


def load_judge():
    judge = M.Judge(len(S.OBJECTS), len(S.BACKGROUNDS))
    path = JUDGE if JUDGE.exists() else RUN_DIR / "judge_final.pt"
    judge.load_state_dict(torch.load(path, map_location="cpu"))
    return judge.eval()


@torch.no_grad()
def generate(pipe, prompts, guidance, seeds, steps, batch=96):
    """All prompts × seeds at one guidance scale → uint8 [len(prompts), len(seeds), H, W, 3]."""
    out = []
    todo = [(p, s) for p in prompts for s in seeds]
    for i in range(0, len(todo), batch):
        chunk = todo[i : i + batch]
        gens = [torch.Generator().manual_seed(s) for _, s in chunk]
        if guidance == 0.0:  # our scale 0 = unconditional: diffusers on the empty prompt at scale 1
            texts, g = ["" for _ in chunk], 1.0
        else:
            texts, g = [p for p, _ in chunk], guidance
        imgs = pipe(texts, guidance_scale=g, num_inference_steps=steps, generator=gens, output_type="np").images
        out.append((imgs * 255).round().astype(np.uint8))
    return np.concatenate(out).reshape(len(prompts), len(seeds), *out[0].shape[1:])


@torch.no_grad()
def judge_images(judge, images):
    lo, lb = judge(M.to_tensor(images.reshape(-1, *images.shape[-3:])))
    return torch.argsort(lo, 1, descending=True).numpy(), lb.argmax(1).numpy()


def is_scene_model(about: dict | None) -> bool:
    """Whether a bundle's model was trained on this project's scenes (so the judge can score it)."""
    vocab = (about or {}).get("vocabulary") or {}
    return vocab.get("objects") == S.OBJECT_NAMES


def adherence(bundle_dir, seeds=(0, 1), guidance: float = 7.5, steps: int = 25) -> dict:
    """The judge's scores for a bundle's own images (native onnxruntime, its default scheduler) on
    the held-out single-object prompts: how a quantized build's prompt adherence compares with fp32's."""
    from runtime.native import images
    from runtime.pipeline import Request

    held = [h for h in S.held_out_prompts() if len(h[1]) == 1]
    requests = [Request(prompt, seed=seed, guidance=guidance, steps=steps, preview_every=0) for prompt, _, _ in held for seed in seeds]
    top, bg = judge_images(load_judge(), np.stack(images(bundle_dir, requests)).astype(np.uint8))
    want_obj = np.repeat([o[0] for _, o, _ in held], len(seeds))
    want_bg = np.repeat([b for _, _, b in held], len(seeds))
    return {"object_accuracy": float((top[:, 0] == want_obj).mean()), "background_accuracy": float((bg == want_bg).mean()),
            "prompts": len(held), "seeds": list(seeds), "guidance": guidance, "steps": steps}


@torch.no_grad()
def reconstruction_ceiling(vae, judge, n: int = 1000) -> dict:
    """The judge on the VAE's reconstructions of fresh real single-object scenes: every generated image
    passes through this decoder, so this bounds what any UNet could score."""
    images, _, objs, bgs = S.build_dataset(n, seed=99, train=False)
    single = objs.sum(1) == 1
    x = M.to_tensor(images[single])
    rec = torch.cat([vae.decode(vae.encode(x[i : i + 100]).latent_dist.mean).sample.clamp(-1, 1) for i in range(0, len(x), 100)])
    lo, lb = judge(rec)
    return {"objects": float((lo.argmax(1).numpy() == objs[single].argmax(1)).mean()),
            "background": float((lb.argmax(1).numpy() == bgs[single]).mean()), "scenes": int(single.sum())}


def main(args) -> int:
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler:
        import diffusers

        pipe.scheduler = getattr(diffusers, SCHEDULERS[args.scheduler]).from_config(pipe.scheduler.config)
    scheduler = type(pipe.scheduler).__name__
    judge = load_judge()
    held = S.held_out_prompts()
    prompts = [p for p, _, _ in held]
    seeds = list(range(args.seeds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, grids = [], {}
    ceiling = reconstruction_ceiling(pipe.vae, judge)
    real = json.loads((RUN_DIR / "judge_accuracy.json").read_text()) if (RUN_DIR / "judge_accuracy.json").exists() else None
    for g in GUIDANCES:
        t = time.time()
        images = generate(pipe, prompts, g, seeds, args.steps)
        grids[g] = images
        top, bg = judge_images(judge, images)
        top, bg = top.reshape(len(prompts), len(seeds), -1), bg.reshape(len(prompts), len(seeds))
        single = [i for i, (_, objs, _) in enumerate(held) if len(objs) == 1]
        pairs = [i for i, (_, objs, _) in enumerate(held) if len(objs) == 2]
        obj = np.mean([top[i, s, 0] == held[i][1][0] for i in single for s in range(len(seeds))])
        back = np.mean([bg[i, s] == held[i][2] for i in single for s in range(len(seeds))])
        pair = np.mean([set(top[i, s, :2]) == set(held[i][1]) for i in pairs for s in range(len(seeds))]) if pairs else float("nan")
        pair_bg = np.mean([bg[i, s] == held[i][2] for i in pairs for s in range(len(seeds))]) if pairs else float("nan")
        rows.append({"guidance": g, "object_accuracy": float(obj), "background_accuracy": float(back),
                     "pair_both_objects": float(pair), "pair_background": float(pair_bg), "seconds": time.time() - t})
        print(f"guidance {g:5.1f}: object {obj:.3f}  background {back:.3f}  pairs {pair:.3f}  ({time.time() - t:.0f} s)", flush=True)
    n_single = sum(len(o) == 1 for _, o, _ in held)
    table = [
        f"Held-out prompts: {n_single} single-object (each object on a background never paired with it in training) "
        f"and {len(held) - n_single} object pairs never shown together; {len(seeds)} seeds each; {args.steps} steps, {scheduler}"
        f"{'' if args.scheduler else ' (the model’s own)'}. "
        f"Chance: object {1 / len(S.OBJECTS):.3f}, background {1 / len(S.BACKGROUNDS):.3f}.",
        "",
        "| guidance | object accuracy | background accuracy | pairs: both objects | pairs: background |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(f"| {r['guidance']:g} | {r['object_accuracy']:.3f} | {r['background_accuracy']:.3f} | {r['pair_both_objects']:.3f} | {r['pair_background']:.3f} |")
    if real:
        table += ["", f"The judge itself on 2,000 fresh real scenes: objects {real['objects']:.3f}, background {real['background']:.3f}."]
    table += [f"The judge on the VAE's reconstructions of {ceiling['scenes']} fresh real single-object scenes "
              f"(a ceiling for any UNet): objects {ceiling['objects']:.3f}, background {ceiling['background']:.3f}."]
    (out / "table.md").write_text("\n".join(table) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "prompts": prompts, "seeds": seeds, "steps": args.steps, "scheduler": scheduler, "judge_on_real": real, "judge_on_vae_reconstructions": ceiling}, indent=1))
    _grid(grids, prompts, out / "grid.png")
    print("\n".join(table))
    print(f"wrote {out}/table.md, results.json, grid.png")
    return 0


def _grid(grids, prompts, path, n_prompts=16, n_seeds=3):
    """Rows: the first held-out prompts; columns: guidance scales × seeds."""
    g0 = next(iter(grids.values()))
    h, w = g0.shape[2:4]
    label_w, pad, head = 250, 4, 18
    cols = len(grids) * n_seeds
    n = min(n_prompts, len(prompts))
    canvas = Image.new("RGB", (label_w + cols * (w + 2) + pad * len(grids), head + n * (h + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for gi, (g, imgs) in enumerate(grids.items()):
        x0 = label_w + gi * (n_seeds * (w + 2) + pad)
        draw.text((x0, 2), f"guidance {g:g}", fill="black")
        for r in range(n):
            for s in range(n_seeds):
                canvas.paste(Image.fromarray(imgs[r, s]), (x0 + s * (w + 2), head + r * (h + 2)))
    for r in range(n):
        draw.text((4, head + r * (h + 2) + h // 2 - 6), prompts[r][:40], fill="black")
    canvas.save(path)
