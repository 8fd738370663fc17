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
from .options import GUIDANCES, OPTIONS, SCHEDULERS, WORD_GUIDANCE, add_arguments  # noqa: F401 - re-exported
from .stages import RUN_DIR

JUDGE = Path(__file__).resolve().parent.parent / "models" / "judge.pt"
DEFAULT_CLIP = JUDGE.parent / "default" / "clip_image"


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


DIVERSITY_GUIDANCE = 3.0  # seeds should move and resize an object whose prompt names no position or size
QUICK = {"guidances": (1.0, 3.0, 7.5), "seeds": 2, "steps": 10, "diversity_seeds": 4, "diversity_prompts": 4,
         "word_prompts": 3, "word_seeds": 2, "singles": 6, "pairs": 2}


def _settings(args) -> dict:
    """args (the CLI's namespace or this module's own parser) → every setting, --quick applied."""
    o = {k: getattr(args, k, None) for k in OPTIONS}
    o = {k: (OPTIONS[k] if v is None else v) for k, v in o.items()}
    o.update(model=args.model, seeds=args.seeds, steps=args.steps, scheduler=getattr(args, "scheduler", None), out=args.out,
             singles=None, pairs=None)
    if o["quick"]:
        o.update(QUICK)
    o["guidances"] = tuple(float(g) for g in o["guidances"])
    over = dict(kv.split("=") for kv in o["guidance_seeds"].split(",") if kv) if isinstance(o["guidance_seeds"], str) else o["guidance_seeds"]
    o["seeds_for"] = {g: int(over.get(f"{g:g}", o["seeds"])) for g in o["guidances"]}
    return o


def _clip(pipe, model_dir):
    """The model's own CLIP (its clip_image tower and its text encoder), or (None, why not)."""
    from . import metrics as X

    have = X.text_fingerprint(Path(model_dir) / "text_encoder")
    for folder in (Path(model_dir) / "clip_image", DEFAULT_CLIP):  # the model's own, else the default's if it fits this encoder
        if (folder / "config.json").is_file():
            want = json.loads((folder / "config.json").read_text()).get("text_encoder_sha256")
            if not want or want == have:
                return X.Clip.load(model_dir, folder, pipe.text_encoder, pipe.tokenizer), None
    return None, (f"no clip_image tower trained against this text encoder (neither {Path(model_dir) / 'clip_image'} "
                  f"nor {DEFAULT_CLIP} matches its text_encoder_sha256); train one (diffusion-explainer train clip_image)")


def _per_prompt(top, bg, held, idx):
    """Single-object prompts: seeds with both the object and the background right, per prompt."""
    return [int(sum(top[i, s, 0] == held[i][1][0] and bg[i, s] == held[i][2] for s in range(top.shape[1]))) for i in idx]


def main(args) -> int:
    from diffusers import StableDiffusionPipeline

    from . import metrics as X

    o = _settings(args)
    t_all = time.time()
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(o["model"])
    pipe.set_progress_bar_config(disable=True)
    if o["scheduler"]:
        import diffusers

        pipe.scheduler = getattr(diffusers, SCHEDULERS[o["scheduler"]]).from_config(pipe.scheduler.config)
    scheduler = type(pipe.scheduler).__name__
    judge = load_judge()
    clip, clip_note = _clip(pipe, o["model"])
    held = S.held_out_prompts()
    if o["singles"] is not None:  # --quick: a few of each kind
        held = [h for h in held if len(h[1]) == 1][: o["singles"]] + [h for h in held if len(h[1]) == 2][: o["pairs"]]
    prompts = [p for p, _, _ in held]
    single = [i for i, (_, objs, _) in enumerate(held) if len(objs) == 1]
    pairs = [i for i, (_, objs, _) in enumerate(held) if len(objs) == 2]
    steps = o["steps"]
    out = Path(o["out"])
    out.mkdir(parents=True, exist_ok=True)
    rows, grids, timing = [], {}, {}

    t = time.time()
    ceiling = reconstruction_ceiling(pipe.vae, judge, 200 if o["quick"] else 1000)
    real = json.loads((RUN_DIR / "judge_accuracy.json").read_text()) if (RUN_DIR / "judge_accuracy.json").exists() else None
    # real held-out scenes, placed as the data generator places captions without position words: two disjoint sets
    n_real = max(o["seeds_for"].values())
    real_a, real_b = X.real_scenes(held, n_real, seed=101), X.real_scenes(held, n_real, seed=202)
    fa, fb = X.features(judge, real_a).reshape(len(held), n_real, -1), X.features(judge, real_b).reshape(len(held), n_real, -1)
    real_dist = {"fid_real_vs_real": {}, "clip_real": None, "clip_real_shuffled": None}
    for n in sorted(set(o["seeds_for"].values())):
        real_dist["fid_real_vs_real"][n] = X.fid(fa[:, :n].reshape(-1, fa.shape[-1]), fb[:, :n].reshape(-1, fb.shape[-1]))
    if clip:
        real_dist["clip_real"] = X.clip_score(clip, real_a, prompts)
        shuffled = [prompts[(i + len(prompts) // 2) % len(prompts)] for i in range(len(prompts))]  # every image with another prompt
        real_dist["clip_real_shuffled"] = X.clip_score(clip, real_a, shuffled)
    timing["ceilings"] = time.time() - t

    div_idx = single[:: max(1, len(single) // o["diversity_prompts"])][: o["diversity_prompts"]]
    div_images = None
    guidances = list(o["guidances"]) + ([DIVERSITY_GUIDANCE] if DIVERSITY_GUIDANCE not in o["guidances"] else [])
    for g in guidances:
        t = time.time()
        n = o["seeds_for"].get(g, o["seeds"])
        seeds = list(range(n))
        images = generate(pipe, prompts, g, seeds, steps)
        if g == DIVERSITY_GUIDANCE:  # more seeds of the single-object prompts, for seed diversity
            extra = generate(pipe, [prompts[i] for i in div_idx], g, list(range(n, o["diversity_seeds"])), steps) \
                if o["diversity_seeds"] > n else images[div_idx, :0]
            div_images = np.concatenate([images[div_idx, : o["diversity_seeds"]], extra], axis=1)
        if g not in o["guidances"]:
            timing[f"guidance {g:g} (diversity only)"] = time.time() - t
            continue
        grids[g] = images
        top, bg = judge_images(judge, images)
        top, bg = top.reshape(len(prompts), n, -1), bg.reshape(len(prompts), n)
        obj = np.mean([top[i, s, 0] == held[i][1][0] for i in single for s in range(n)])
        back = np.mean([bg[i, s] == held[i][2] for i in single for s in range(n)])
        pair = np.mean([set(top[i, s, :2]) == set(held[i][1]) for i in pairs for s in range(n)]) if pairs else float("nan")
        pair_bg = np.mean([bg[i, s] == held[i][2] for i in pairs for s in range(n)]) if pairs else float("nan")
        hits = _per_prompt(top, bg, held, single)
        below = [(prompts[i], h) for i, h in zip(single, hits) if 2 * h < n]
        f = X.features(judge, images)
        fid = X.fid(f, fa[:, :n].reshape(-1, fa.shape[-1]))
        cs = X.clip_score(clip, images, prompts) if clip else float("nan")
        rows.append({"guidance": g, "seeds": n, "object_accuracy": float(obj), "background_accuracy": float(back),
                     "pair_both_objects": float(pair), "pair_background": float(pair_bg),
                     "single_min_hits": int(min(hits)), "single_prompts_below_half": below, "single_hits": hits,
                     "fid": fid, "fid_real_vs_real": real_dist["fid_real_vs_real"][n], "clip_score": cs,
                     "seconds": time.time() - t})
        timing[f"guidance {g:g}"] = time.time() - t
        print(f"guidance {g:5.1f}: object {obj:.3f}  background {back:.3f}  pairs {pair:.3f}  min {min(hits)}/{n}  "
              f"FID {fid:.2f}  CLIP {cs:.2f}  ({time.time() - t:.0f} s)", flush=True)

    # seed diversity: where the object lands over diversity_seeds seeds of prompts without position or size words
    t = time.time()
    div_held = [held[i] for i in div_idx]
    def groups(imgs):
        return [X.locate_all(imgs[k], h[2], h[1][0]) for k, h in enumerate(div_held)]
    nd = div_images.shape[1]
    diversity = {"guidance": DIVERSITY_GUIDANCE, "model": X.position_coverage(groups(div_images)),
                 "real_current": X.position_coverage(groups(X.real_scenes(div_held, nd, seed=303))),
                 "real_round1": X.position_coverage(groups(X.real_scenes(div_held, nd, seed=303, old=True)))}
    print(f"seed diversity at guidance {DIVERSITY_GUIDANCE:g}: {diversity['model']['mean_positions']:.2f} of 9 positions "
          f"(real data: {diversity['real_current']['mean_positions']:.2f}), {diversity['model']['mean_sizes']:.2f} of 3 sizes", flush=True)
    timing["diversity (locate, real)"] = time.time() - t

    # position and size words on held-out (object, background) pairs
    t = time.time()
    wp = X.word_prompts(o["word_prompts"])
    words, word_grids = {}, {}
    for key, items in wp.items():
        imgs = generate(pipe, [p for p, *_ in items], o["word_guidance"], list(range(o["word_seeds"])), steps)
        word_grids[key] = imgs
        asked = [a for *_, a in items for _ in range(o["word_seeds"])]
        located = [f for (_, ob, b, _), im in zip(items, imgs) for f in X.locate_all(im, b, ob)]
        real_imgs = X.real_word_scenes(items, key, o["word_seeds"], seed=404)
        real_loc = [f for (_, ob, b, _), im in zip(items, real_imgs) for f in X.locate_all(im, b, ob)]
        words[key] = {"model": X.obedience(located, asked, key), "real": X.obedience(real_loc, asked, key),
                      "not_found": sum(1 for f in located if not f["area"]), "prompts": [p for p, *_ in items],
                      "per_prompt": [X.obedience(located[k * o["word_seeds"]:(k + 1) * o["word_seeds"]],
                                                 asked[k * o["word_seeds"]:(k + 1) * o["word_seeds"]], key) for k in range(len(items))]}
        print(f"{key} words at guidance {o['word_guidance']:g}: {words[key]['model']:.3f} obeyed (real scenes: {words[key]['real']:.3f})", flush=True)
    timing["words"] = time.time() - t
    timing["total"] = time.time() - t_all

    n_single = len(single)
    table = [
        f"Held-out prompts: {n_single} single-object (each object on a background never paired with it in training) "
        f"and {len(pairs)} object pairs never shown together; seeds per prompt as in the table; {steps} steps, {scheduler}"
        f"{'' if o['scheduler'] else ' (the model’s own)'}. "
        f"Chance: object {1 / len(S.OBJECTS):.3f}, background {1 / len(S.BACKGROUNDS):.3f}.",
        "",
        "| guidance | seeds | object accuracy | background accuracy | pairs: both objects | pairs: background "
        "| single prompts: fewest seeds right | prompts under half | FID (judge features) | CLIP score |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(f"| {r['guidance']:g} | {r['seeds']} | {r['object_accuracy']:.3f} | {r['background_accuracy']:.3f} "
                     f"| {r['pair_both_objects']:.3f} | {r['pair_background']:.3f} | {r['single_min_hits']}/{r['seeds']} "
                     f"| {len(r['single_prompts_below_half'])} | {r['fid']:.2f} | {r['clip_score']:.2f} |")
    table += ["", "A single-object seed is right when the judge names both its object (top-1) and its background."]
    for r in rows:
        if r["guidance"] in (3.0, 7.5):
            lst = ", ".join(f"{p} ({h}/{r['seeds']})" for p, h in r["single_prompts_below_half"]) or "none"
            table.append(f"Under half the seeds right at guidance {r['guidance']:g}: {lst}.")
    rr = ", ".join(f"{v:.2f} (N = {n * len(held)})" for n, v in sorted(real_dist["fid_real_vs_real"].items()))
    table += ["", f"Real data beside it: FID of real held-out scenes vs a second, disjoint real set of the same size: {rr} "
              f"(generated sets are compared with the first real set at the same N: {len(held)} prompts × the row's seeds). "
              + (f"CLIP score (the model's own text encoder + clip_image tower; 100 × mean cosine) of real scenes with their "
                 f"prompts: {real_dist['clip_real']:.2f}; with another prompt's: {real_dist['clip_real_shuffled']:.2f}."
                 if clip else f"No CLIP score: {clip_note}.")]
    table += ["", f"Seed diversity: {len(div_held)} held-out single-object prompts without a position or size word, {nd} seeds each, "
              f"guidance {DIVERSITY_GUIDANCE:g}; the object located by background subtraction (centroid → nearest of the 9 "
              "positions; mask area → size class, calibrated on real renders).", "",
              "| images | positions covered (mean of 9) | fewest | size classes (mean of 3) | side std (px) | no object found |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, key in (("model", "model"), ("real scenes, current generator (uniform over 9)", "real_current"),
                      ("real scenes, round-1 generator (70% centred)", "real_round1")):
        d = diversity[key]
        table.append(f"| {name} | {d['mean_positions']:.2f} | {d['min_positions']} | {d['mean_sizes']:.2f} | {d['mean_side_std']:.1f} | {d['not_found']} |")
    table += ["", f"Position and size words on held-out (object, background) pairs, guidance {o['word_guidance']:g}, "
              f"{o['word_seeds']} seeds each: share of images whose located object is at the asked position / of the asked size.", "",
              "| words | prompts | model | real scenes (locator ceiling) | no object found |", "|---|---:|---:|---:|---:|"]
    for key, w in words.items():
        table.append(f"| {key} | {len(w['prompts'])} | {w['model']:.3f} | {w['real']:.3f} | {w['not_found']} |")
    if real:
        table += ["", f"The judge itself on 2,000 fresh real scenes: objects {real['objects']:.3f}, background {real['background']:.3f}."]
    table += ["" if not real else None, f"The judge on the VAE's reconstructions of {ceiling['scenes']} fresh real single-object scenes "
              f"(a ceiling for any UNet): objects {ceiling['objects']:.3f}, background {ceiling['background']:.3f}.",
              "", "Run time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items()) + "."]
    table = [line for line in table if line is not None]
    (out / "table.md").write_text("\n".join(table) + "\n")
    (out / "results.json").write_text(json.dumps({
        "rows": rows, "prompts": prompts, "seeds": o["seeds_for"], "steps": steps, "scheduler": scheduler, "quick": o["quick"],
        "judge_on_real": real, "judge_on_vae_reconstructions": ceiling, "real_distribution": real_dist, "clip_note": clip_note,
        "diversity": {**diversity, "prompts": [p for p, _, _ in div_held], "seeds": nd}, "words": words,
        "word_guidance": o["word_guidance"], "timing_seconds": timing}, indent=1, default=str))
    _grid(grids, prompts, out / "grid.png")
    _grid({f"position words": word_grids["position"]}, [p for p, *_ in wp["position"]], out / "grid_words.png", n_seeds=8)
    _grid({f"guidance {DIVERSITY_GUIDANCE:g}": div_images}, [p for p, _, _ in div_held], out / "grid_diversity.png", n_seeds=16)
    print("\n".join(table))
    print(f"wrote {out}/table.md, results.json, grid.png, grid_words.png, grid_diversity.png")
    return 0


def _grid(grids, prompts, path, n_prompts=16, n_seeds=3):
    """Rows: the first prompts; columns: each grid (guidance scale) × up to n_seeds of its seeds."""
    g0 = next(iter(grids.values()))
    h, w = g0.shape[2:4]
    label_w, pad, head = 250, 4, 18
    widths = [max(min(n_seeds, imgs.shape[1]), 1) * (w + 2) for imgs in grids.values()]
    widths = [max(wd, 80) for wd in widths]  # room for the heading
    n = min(n_prompts, len(prompts))
    canvas = Image.new("RGB", (label_w + sum(widths) + pad * len(grids), head + n * (h + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    x0 = label_w
    for (g, imgs), wd in zip(grids.items(), widths):
        draw.text((x0, 2), g if isinstance(g, str) else f"guidance {g:g}", fill="black")
        for r in range(min(n, len(imgs))):
            for s in range(min(n_seeds, imgs.shape[1])):
                canvas.paste(Image.fromarray(imgs[r, s]), (x0 + s * (w + 2), head + r * (h + 2)))
        x0 += wd + pad
    for r in range(n):
        draw.text((4, head + r * (h + 2) + h // 2 - 6), prompts[r][:40], fill="black")
    canvas.save(path)

def _parser():
    import argparse

    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return ap


if __name__ == "__main__":
    raise SystemExit(main(_parser().parse_args()))
