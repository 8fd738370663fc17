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
    requests = [
        Request(prompt, seed=seed, guidance=guidance, steps=steps, preview_every=0) for prompt, _, _ in held for seed in seeds
    ]
    top, bg = judge_images(load_judge(), np.stack(images(bundle_dir, requests)).astype(np.uint8))
    want_obj = np.repeat([o[0] for _, o, _ in held], len(seeds))
    want_bg = np.repeat([b for _, _, b in held], len(seeds))
    return {
        "object_accuracy": float((top[:, 0] == want_obj).mean()),
        "background_accuracy": float((bg == want_bg).mean()),
        "prompts": len(held),
        "seeds": list(seeds),
        "guidance": guidance,
        "steps": steps,
    }


@torch.no_grad()
def reconstruction_ceiling(vae, judge, n: int = 1000) -> dict:
    """The judge on the VAE's reconstructions of fresh real single-object scenes: every generated image
    passes through this decoder, so this bounds what any UNet could score."""
    images, _, objs, bgs = S.build_dataset(n, seed=99, train=False)
    single = objs.sum(1) == 1
    top, bg = judge_images(judge, through_vae(vae, images[single]))  # uint8, as generated images are judged
    return {
        "objects": float((top[:, 0] == objs[single].argmax(1)).mean()),
        "background": float((bg == bgs[single]).mean()),
        "scenes": int(single.sum()),
    }


REAL_RENDERS = 16  # real renders per held-out prompt for the judge's own per-prompt accuracy
JUDGE_FAILS_BELOW = 0.9  # a prompt the judge gets right on fewer real renders than this is one it cannot score


def _uint8(rec: torch.Tensor) -> np.ndarray:
    """Decoder output in [-1, 1], NCHW → uint8 NHWC, as generated images are judged."""
    return ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def through_vae(vae, images: np.ndarray) -> np.ndarray:
    """uint8 images → the VAE's reconstructions (encoder mean, decoder), uint8: what the decoder can give back."""
    flat = images.reshape(-1, *images.shape[-3:])
    out = []
    for i in range(0, len(flat), 100):
        x = M.to_tensor(flat[i : i + 100])
        out.append(_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample))
    return np.concatenate(out).reshape(images.shape)


BEST_LATENT_STEPS = 100  # Adam steps per fitted latent (loss 0.0210 at 100, 0.0203 at 200 on 32 held-out renders)


def best_latents(vae, images: np.ndarray, steps: int = BEST_LATENT_STEPS, lr: float = 0.05) -> np.ndarray:
    """uint8 images → what the decoder draws from the latent that reconstructs each best (Adam on the latent,
    from the encoder's mean; the decoder frozen). Why: where the VAE gives a prompt's renders back wrong, this
    tells whose failure it is: if the decoder draws them from some latent, the encoder's (and a UNet's, which
    learns the encoder's latents); if from none, the decoder's."""
    x = M.to_tensor(images.reshape(-1, *images.shape[-3:]))
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean.clone()
    trainable = [p.requires_grad for p in vae.parameters()]
    vae.requires_grad_(False)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():  # callers may be inside no_grad (judge_on_real_renders is)
        for _ in range(steps):
            d = vae.decode(z).sample - x
            loss = (d.abs() + d**2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p, t in zip(vae.parameters(), trainable):
        p.requires_grad_(t)
    with torch.no_grad():
        return _uint8(vae.decode(z).sample).reshape(images.shape)


@torch.no_grad()
def judge_on_real_renders(
    judge, held, n: int = REAL_RENDERS, seed: int = 505, threshold: float = JUDGE_FAILS_BELOW, vae=None, best=False
) -> dict:
    """The judge on n real renders of every held-out prompt (placed and sized as the data generator draws captions
    without position words): per prompt, the share it gets right (single: object top-1 and background; pair: both
    objects as its top 2). A prompt right on under `threshold` is one where the judge itself fails, not the model.
    With `vae`, on the VAE's reconstructions of those renders: a prompt right there on under half is one the
    decoder cannot give back, so no UNet can (round 7: the doughnut on orange comes back with green icing).
    With `best` too, on what the decoder draws from the latents that reconstruct them best (`best_latents`)."""
    from . import metrics as X

    imgs = X.real_scenes(held, n, seed=seed)
    if vae is not None and best:
        imgs = best_latents(vae, imgs)
    elif vae is not None:
        imgs = through_vae(vae, imgs)
    top, bg = judge_images(judge, imgs)
    top, bg = top.reshape(len(held), n, -1), bg.reshape(len(held), n)
    per = []
    for i, (prompt, objs, b) in enumerate(held):
        obj = top[:, :, 0][i] == objs[0] if len(objs) == 1 else np.array([set(t[:2]) == set(objs) for t in top[i]])
        back = bg[i] == b
        per.append(
            {
                "prompt": prompt,
                "pair": len(objs) == 2,
                "right": float((obj & back).mean()),
                "objects": float(obj.mean()),
                "background": float(back.mean()),
            }
        )
    single = [p for p in per if not p["pair"]]
    pairs = [p for p in per if p["pair"]]
    return {
        "renders": n,
        "seed": seed,
        "threshold": threshold,
        "per_prompt": per,
        "single_right": float(np.mean([p["right"] for p in single])) if single else float("nan"),
        "pairs_right": float(np.mean([p["right"] for p in pairs])) if pairs else float("nan"),
        "failing": [p["prompt"] for p in per if p["right"] < threshold],
    }


DIVERSITY_GUIDANCE = 3.0  # seeds should move and resize an object whose prompt names no position or size
QUICK = {
    "guidances": (1.0, 3.0, 7.5),
    "seeds": 2,
    "guidance_seeds": "",
    "steps": 10,
    "diversity_seeds": 4,
    "diversity_prompts": 4,
    "word_prompts": 3,
    "word_seeds": 2,
    "singles": 6,
    "pairs": 2,
}


def _settings(args) -> dict:
    """args (the CLI's namespace or this module's own parser) → every setting, --quick applied."""
    o = {k: getattr(args, k, None) for k in OPTIONS}
    o = {k: (OPTIONS[k] if v is None else v) for k, v in o.items()}
    o.update(
        model=args.model,
        seeds=args.seeds,
        steps=args.steps,
        scheduler=getattr(args, "scheduler", None),
        out=args.out,
        singles=None,
        pairs=None,
    )
    if o["quick"]:
        o.update(QUICK)
    o["guidances"] = tuple(float(g) for g in o["guidances"])
    over = (
        dict(kv.split("=") for kv in o["guidance_seeds"].split(",") if kv)
        if isinstance(o["guidance_seeds"], str)
        else o["guidance_seeds"]
    )
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
    return None, (
        f"no clip_image tower trained against this text encoder (neither {Path(model_dir) / 'clip_image'} "
        f"nor {DEFAULT_CLIP} matches its text_encoder_sha256); train one (diffusion-explainer train clip_image)"
    )


def _span(interval) -> str:
    return f"{interval[0]:.3f}–{interval[1]:.3f}"


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
        shuffled = [
            prompts[(i + len(prompts) // 2) % len(prompts)] for i in range(len(prompts))
        ]  # every image with another prompt
        real_dist["clip_real_shuffled"] = X.clip_score(clip, real_a, shuffled)
    judge_real = judge_on_real_renders(judge, held)
    real_rate = {p["prompt"]: p["right"] for p in judge_real["per_prompt"]}
    judge_vae = judge_on_real_renders(judge, held, vae=pipe.vae)
    vae_rate = {p["prompt"]: p["right"] for p in judge_vae["per_prompt"]}
    # single prompts the VAE gives back on under half, where the judge itself names real renders
    lost = [h for h in held if len(h[1]) == 1 and 2 * vae_rate[h[0]] < 1 and real_rate[h[0]] >= JUDGE_FAILS_BELOW]
    judge_best = judge_on_real_renders(judge, lost, vae=pipe.vae, best=True) if lost else None
    best_rate = {p["prompt"]: p["right"] for p in (judge_best or {}).get("per_prompt", [])}
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
            extra = (
                generate(pipe, [prompts[i] for i in div_idx], g, list(range(n, o["diversity_seeds"])), steps)
                if o["diversity_seeds"] > n
                else images[div_idx, :0]
            )
            div_images = np.concatenate([images[div_idx, : o["diversity_seeds"]], extra], axis=1)
        if g not in o["guidances"]:
            timing[f"guidance {g:g} (diversity only)"] = time.time() - t
            continue
        grids[g] = images
        top, bg = judge_images(judge, images)
        top, bg = top.reshape(len(prompts), n, -1), bg.reshape(len(prompts), n)
        back = np.mean([bg[i, s] == held[i][2] for i in single for s in range(n)])
        pair_bg = np.mean([bg[i, s] == held[i][2] for i in pairs for s in range(n)]) if pairs else float("nan")
        obj_rates = [np.mean([top[i, s, 0] == held[i][1][0] for s in range(n)]) for i in single]
        pair_rates = [np.mean([set(top[i, s, :2]) == set(held[i][1]) for s in range(n)]) for i in pairs]
        obj = np.mean(obj_rates)  # every prompt has n seeds: the mean of the per-prompt rates is the image mean
        pair = np.mean(pair_rates) if pairs else float("nan")
        hits = _per_prompt(top, bg, held, single)
        below = [(prompts[i], h) for i, h in zip(single, hits) if 2 * h < n]
        judge_fails = [p for p, _ in below if real_rate[p] < JUDGE_FAILS_BELOW]
        vae_fails = [p for p, _ in below if 2 * vae_rate[p] < 1]
        f = X.features(judge, images)
        fid = X.fid(f, fa[:, :n].reshape(-1, fa.shape[-1]))
        cs = X.clip_score(clip, images, prompts) if clip else float("nan")
        rows.append(
            {
                "guidance": g,
                "seeds": n,
                "object_accuracy": float(obj),
                "background_accuracy": float(back),
                "pair_both_objects": float(pair),
                "pair_background": float(pair_bg),
                "object_accuracy_interval": X.prompt_interval(obj_rates),
                "pair_both_objects_interval": X.prompt_interval(pair_rates) if pairs else None,
                "single_min_hits": int(min(hits)),
                "single_prompts_below_half": below,
                "single_hits": hits,
                "below_half_judge_fails_on_real": judge_fails,
                "below_half_vae_fails": vae_fails,
                "fid": fid,
                "fid_real_vs_real": real_dist["fid_real_vs_real"][n],
                "clip_score": cs,
                "seconds": time.time() - t,
            }
        )
        timing[f"guidance {g:g}"] = time.time() - t
        print(
            f"guidance {g:5.1f}: object {obj:.3f}  background {back:.3f}  pairs {pair:.3f}  min {min(hits)}/{n}  "
            f"FID {fid:.2f}  CLIP {cs:.2f}  ({time.time() - t:.0f} s)",
            flush=True,
        )

    # seed diversity: where the object lands over diversity_seeds seeds of prompts without position or size words
    t = time.time()
    div_held = [held[i] for i in div_idx]

    def groups(imgs):
        return [X.locate_all(imgs[k], h[2], h[1][0]) for k, h in enumerate(div_held)]

    nd = div_images.shape[1]
    diversity = {
        "guidance": DIVERSITY_GUIDANCE,
        "model": X.position_coverage(groups(div_images)),
        "real_current": X.position_coverage(groups(X.real_scenes(div_held, nd, seed=303))),
        # rounds 3-5 trained on objects 2 px inside; rounds 1 and 2 on objects clamped flush to the edge
        "real_round5": X.position_coverage(groups(X.real_scenes(div_held, nd, seed=303, edge_margin=2))),
        "real_round2": X.position_coverage(groups(X.real_scenes(div_held, nd, seed=303, edge_margin=0))),
        "real_round1": X.position_coverage(groups(X.real_scenes(div_held, nd, seed=303, old=True, edge_margin=0))),
        "margin_px": getattr(S, "MARGIN", 0),
    }
    print(
        f"seed diversity at guidance {DIVERSITY_GUIDANCE:g}: {diversity['model']['mean_positions']:.2f} of 9 positions "
        f"(real data: {diversity['real_current']['mean_positions']:.2f}), {diversity['model']['mean_sizes']:.2f} of 3 sizes, "
        f"{diversity['model']['inside']:.3f} inside the frame (real data: {diversity['real_current']['inside']:.3f})",
        flush=True,
    )
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
        frame, real_frame = X.inside_frame([located]), X.inside_frame([real_loc])
        words[key] = {
            "model": X.obedience(located, asked, key),
            "real": X.obedience(real_loc, asked, key),
            "inside": frame["inside"],
            "touching_edge": frame["touching_edge"],
            "real_inside": real_frame["inside"],
            "not_found": sum(1 for f in located if not f["area"]),
            "prompts": [p for p, *_ in items],
            "per_prompt": [
                X.obedience(
                    located[k * o["word_seeds"] : (k + 1) * o["word_seeds"]],
                    asked[k * o["word_seeds"] : (k + 1) * o["word_seeds"]],
                    key,
                )
                for k in range(len(items))
            ],
        }
        print(
            f"{key} words at guidance {o['word_guidance']:g}: {words[key]['model']:.3f} obeyed (real scenes: {words[key]['real']:.3f})",
            flush=True,
        )
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
        "| single prompts: fewest seeds right | prompts under half | of them, judge fails on real renders "
        "| of them, the VAE cannot give them back | FID (judge features) | CLIP score |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['guidance']:g} | {r['seeds']} | {r['object_accuracy']:.3f} | {r['background_accuracy']:.3f} "
            f"| {r['pair_both_objects']:.3f} | {r['pair_background']:.3f} | {r['single_min_hits']}/{r['seeds']} "
            f"| {len(r['single_prompts_below_half'])} | {len(r['below_half_judge_fails_on_real'])} "
            f"| {len(r['below_half_vae_fails'])} | {r['fid']:.2f} | {r['clip_score']:.2f} |"
        )
    table += ["", "A single-object seed is right when the judge names both its object (top-1) and its background."]
    table.append(
        "95% intervals (bootstrap over prompts, since a prompt's seeds tend to fail together): "
        + "; ".join(
            f"guidance {r['guidance']:g}: objects {_span(r['object_accuracy_interval'])}"
            + (f", pairs both named {_span(r['pair_both_objects_interval'])}" if r["pair_both_objects_interval"] else "")
            for r in rows
        )
        + "."
    )
    for r in rows:
        lst = (
            ", ".join(
                f"{p} ({h}/{r['seeds']}; judge on real renders {real_rate[p]:.2f}, on their VAE reconstructions "
                f"{vae_rate[p]:.2f}" + (f", from the decoder's best latents {best_rate[p]:.2f})" if p in best_rate else ")")
                for p, h in r["single_prompts_below_half"]
            )
            or "none"
        )
        table.append(f"Under half the seeds right at guidance {r['guidance']:g}: {lst}.")
    jr = judge_real
    fails = [p for p in jr["per_prompt"] if p["right"] < JUDGE_FAILS_BELOW]
    table += [
        "",
        f"The judge itself on {jr['renders']} real renders of every held-out prompt (placed and sized as the "
        f"data generator draws captions without position words): right on {jr['single_right']:.3f} of the single-object "
        f"renders (object and background), {jr['pairs_right']:.3f} of the pairs' (both objects). Prompts it gets right "
        f"on under {JUDGE_FAILS_BELOW:.0%} of their real renders (where a low score measures the judge, not the model): "
        + (
            ", ".join(
                f"{p['prompt']} ({p['right']:.2f}: object {p['objects']:.2f}, background {p['background']:.2f})" for p in fails
            )
            or "none"
        )
        + ".",
    ]
    if judge_best:
        table += [
            "",
            "Where the VAE gives a prompt's real renders back wrong, whose failure is it? The judge on what the decoder "
            "draws from the latent that reconstructs each render best "
            f"({BEST_LATENT_STEPS} Adam steps on the latent from the encoder's mean, the decoder frozen): "
            + ", ".join(
                f"{p['prompt']} {best_rate[p['prompt']]:.2f} (through the encoder {vae_rate[p['prompt']]:.2f})"
                for p in judge_best["per_prompt"]
            )
            + ". A prompt drawn there is one the decoder can draw: the encoder's latents (which a UNet learns) miss it.",
        ]
    rr = ", ".join(f"{v:.2f} (N = {n * len(held)})" for n, v in sorted(real_dist["fid_real_vs_real"].items()))
    table += [
        "",
        f"Real data beside it: FID of real held-out scenes vs a second, disjoint real set of the same size: {rr} "
        f"(generated sets are compared with the first real set at the same N: {len(held)} prompts × the row's seeds). "
        + (
            f"CLIP score (the model's own text encoder + clip_image tower; 100 × mean cosine) of real scenes with their "
            f"prompts: {real_dist['clip_real']:.2f}; with another prompt's: {real_dist['clip_real_shuffled']:.2f}."
            if clip
            else f"No CLIP score: {clip_note}."
        ),
    ]
    table += [
        "",
        f"Seed diversity: {len(div_held)} held-out single-object prompts without a position or size word, {nd} seeds each, "
        f"guidance {DIVERSITY_GUIDANCE:g}; the object located by background subtraction (centroid → nearest of the 9 "
        "positions; mask area → size class, calibrated on real renders). Inside the frame: the share of located "
        "objects whose mask touches no image edge (an object cut off by the frame touches it; the current generator "
        f"keeps every object {diversity['margin_px']} px inside, that of rounds 3 to 5 2 px, those of rounds 1 and 2 clamped it "
        "flush to the edge).",
        "",
        "| images | positions covered (mean of 9) | fewest | inside the frame | size classes (mean of 3) | side std (px) "
        "| no object found |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, key in (
        ("model", "model"),
        (f"real scenes, current generator (uniform over 9, {diversity['margin_px']} px margin)", "real_current"),
        ("real scenes, rounds 3–5 generator (uniform over 9, 2 px margin)", "real_round5"),
        ("real scenes, round-2 generator (uniform over 9, flush to the edge)", "real_round2"),
        ("real scenes, round-1 generator (70% centred, flush to the edge)", "real_round1"),
    ):
        d = diversity[key]
        table.append(
            f"| {name} | {d['mean_positions']:.2f} | {d['min_positions']} | {d['inside']:.3f} ({d['touching_edge']} of {d['located']} touch) "
            f"| {d['mean_sizes']:.2f} | {d['mean_side_std']:.1f} | {d['not_found']} |"
        )
    table += [
        "",
        f"Position and size words on held-out (object, background) pairs, guidance {o['word_guidance']:g}, "
        f"{o['word_seeds']} seeds each: share of images whose located object is at the asked position / of the asked size.",
        "",
        "| words | prompts | model | real scenes (locator ceiling) | inside the frame: model | real scenes | no object found |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, w in words.items():
        table.append(
            f"| {key} | {len(w['prompts'])} | {w['model']:.3f} | {w['real']:.3f} | {w['inside']:.3f} | {w['real_inside']:.3f} "
            f"| {w['not_found']} |"
        )
    table.append("")
    if real:
        table.append(
            f"The judge itself on 2,000 fresh real scenes: objects {real['objects']:.3f}, background {real['background']:.3f}."
        )
    table += [
        f"The judge on the VAE's reconstructions of {ceiling['scenes']} fresh real single-object scenes "
        f"(a ceiling for any UNet): objects {ceiling['objects']:.3f}, background {ceiling['background']:.3f}.",
        "",
        "Run time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items()) + ".",
    ]
    (out / "table.md").write_text("\n".join(table) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "prompts": prompts,
                "seeds": o["seeds_for"],
                "steps": steps,
                "scheduler": scheduler,
                "quick": o["quick"],
                "judge_on_real": real,
                "judge_on_real_renders": judge_real,
                "judge_on_vae_reconstructions": ceiling,
                "judge_on_vae_reconstructions_of_renders": judge_vae,
                "judge_on_best_latents_of_renders": judge_best,
                "real_distribution": real_dist,
                "clip_note": clip_note,
                "diversity": {**diversity, "prompts": [p for p, _, _ in div_held], "seeds": nd},
                "words": words,
                "word_guidance": o["word_guidance"],
                "timing_seconds": timing,
            },
            indent=1,
            default=str,
        )
    )
    _grid(grids, prompts, out / "grid.png")
    _grid({"position words": word_grids["position"]}, [p for p, *_ in wp["position"]], out / "grid_words.png", n_seeds=8)
    _grid({f"guidance {DIVERSITY_GUIDANCE:g}": div_images}, [p for p, _, _ in div_held], out / "grid_diversity.png", n_seeds=16)
    print("\n".join(table))
    print(f"wrote {out}/table.md, results.json, grid.png, grid_words.png, grid_diversity.png")
    return 0


GRID_LABEL_W, GRID_PAD, GRID_HEAD = 250, 4, 18  # _grid's layout (grid_tiles reads it back)


def _grid(grids, prompts, path, n_prompts=16, n_seeds=3):
    """Rows: the first prompts; columns: each grid (guidance scale) × up to n_seeds of its seeds."""
    g0 = next(iter(grids.values()))
    h, w = g0.shape[2:4]
    label_w, pad, head = GRID_LABEL_W, GRID_PAD, GRID_HEAD
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


def grid_tiles(path, n_prompts: int, n_seeds: int, size: int = S.SIZE) -> np.ndarray | None:
    """The images of a one-column-group grid that _grid wrote (grid_diversity.png, grid_words.png), read back
    exactly (PNG is lossless) → uint8 [n_prompts, n_seeds, H, W, 3]; None when the file's size says another layout."""
    im = np.asarray(Image.open(path).convert("RGB"))
    width = GRID_LABEL_W + max(n_seeds * (size + 2), 80) + GRID_PAD
    if im.shape[:2] != (GRID_HEAD + n_prompts * (size + 2), width):
        return None
    return np.stack(
        [
            np.stack(
                [
                    im[
                        GRID_HEAD + r * (size + 2) : GRID_HEAD + r * (size + 2) + size,
                        GRID_LABEL_W + k * (size + 2) : GRID_LABEL_W + k * (size + 2) + size,
                    ]
                    for k in range(n_seeds)
                ]
            )
            for r in range(n_prompts)
        ]
    )


def frame_from_grids(folder) -> dict:
    """The inside-the-frame figure for an evaluation folder written before it existed (rounds 1 and 2), measured
    on the images its grids hold: grid_diversity.png (every diversity prompt × 16 seeds, all of them) and
    grid_words.png (the position-word prompts × up to 8 seeds). {} for what a folder does not allow."""
    from . import metrics as X

    folder = Path(folder)
    res = json.loads((folder / "results.json").read_text())
    held = {p: (o, b) for p, o, b in S.held_out_prompts()}
    out = {}
    div = res.get("diversity") or {}
    if (folder / "grid_diversity.png").is_file() and div.get("prompts") and div.get("seeds", 0) <= 16:
        tiles = grid_tiles(folder / "grid_diversity.png", min(16, len(div["prompts"])), div["seeds"])
        if tiles is not None and len(div["prompts"]) <= 16:
            out["diversity"] = X.inside_frame([X.locate_all(t, held[p][1], held[p][0][0]) for p, t in zip(div["prompts"], tiles)])
    pos = (res.get("words") or {}).get("position")
    if pos and (folder / "grid_words.png").is_file() and len(pos["prompts"]) <= 16:
        n = min(8, int(res.get("word_seeds") or 8))
        tiles = grid_tiles(folder / "grid_words.png", len(pos["prompts"]), n)
        items = {p: (o, b) for p, o, b, _ in X.word_prompts(len(pos["prompts"]))["position"]}  # deterministic
        found = [
            X.locate_all(t, items[p][1], items[p][0])
            for p, t in zip(pos["prompts"], tiles if tiles is not None else [])
            if p in items
        ]
        if found and len(found) == len(pos["prompts"]):
            out["position words"] = X.inside_frame(found)
    return out


# ---------------------------------------------------------------- evaluation/README.md: the shipped round first, history below


def _rounds(root: Path) -> list[tuple[int, Path]]:
    import re

    return sorted(
        (int(m.group(1)), d)
        for d in root.iterdir()
        if d.is_dir() and (m := re.fullmatch(r"round(\d+)", d.name)) and (d / "results.json").is_file()
    )


def _figures(folder: Path, later_real: dict | None = None) -> dict:
    """One round's results.json → {figure: (text, number, format)}, in the order the comparison lists them.
    Figures a round did not measure are absent; the inside-the-frame figure of older rounds comes from their grids (†),
    and that of their generator's real scenes from a later evaluation's diversity["real_roundN"] (later_real, ‡)."""
    res = json.loads((folder / "results.json").read_text())
    f = {}

    def put(name, value, fmt="{:.3f}", extra=""):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return
        f[name] = (fmt.format(value) + extra, float(value), fmt)

    for r in res["rows"]:
        g, n = f"{r['guidance']:g}", r.get("seeds", len(res.get("seeds") or []) or None)
        put(f"seeds per prompt, guidance {g}", n, "{}")
        put(f"object accuracy, guidance {g}", r["object_accuracy"])
        put(f"background accuracy, guidance {g}", r["background_accuracy"])
        put(f"pairs: both objects named, guidance {g}", r["pair_both_objects"])
        put(f"pairs: background, guidance {g}", r["pair_background"])
        if "single_min_hits" in r:
            put(f"single prompts: fewest seeds right, guidance {g}", r["single_min_hits"], "{}", f"/{n}")
            below = r["single_prompts_below_half"]
            fails = r.get("below_half_judge_fails_on_real")
            vae = r.get("below_half_vae_fails")
            why = [f"{len(fails)} where the judge fails on real renders"] if fails is not None else []
            why += [f"{len(vae)} the VAE cannot give back"] if vae is not None else []
            put(
                f"prompts under half their seeds, guidance {g}", len(below), "{}", f" ({', '.join(why)})" if why and below else ""
            )
        if "fid" in r:
            put(f"FID (judge features), guidance {g}", r["fid"], "{:.2f}", f" (real vs real {r['fid_real_vs_real']:.2f})")
        put(f"CLIP score, guidance {g}", r.get("clip_score"), "{:.2f}")
    rd = res.get("real_distribution") or {}
    put("CLIP score of real scenes (reference)", rd.get("clip_real"), "{:.2f}")
    div = res.get("diversity") or {}
    m = div.get("model") or {}
    if div.get("prompts"):
        f["seed diversity: prompts × seeds"] = (f"{len(div['prompts'])} × {div['seeds']}", None, "")
    put("seed diversity: positions covered (mean of 9)", m.get("mean_positions"), "{:.2f}")
    put("seed diversity: fewest positions of one prompt", m.get("min_positions"), "{}")
    grids = frame_from_grids(folder) if "inside" not in m else {}
    inside = m.get("inside", (grids.get("diversity") or {}).get("inside"))
    put("inside the frame: located objects touching no edge, seed-diversity images", inside, extra="" if "inside" in m else " †")
    real_inside, mark = (div.get("real_current") or {}).get("inside"), ""
    if real_inside is None and later_real and (later_real.get(f"real_{folder.name}") or {}).get("inside") is not None:
        real_inside, mark = later_real[f"real_{folder.name}"]["inside"], " ‡"
    put("inside the frame, real scenes of the round's training generator", real_inside, extra=mark)
    put("seed diversity: size classes (mean of 3)", m.get("mean_sizes"), "{:.2f}")
    put("seed diversity: side std (px)", m.get("mean_side_std"), "{:.1f}")
    put("seed diversity: no object found", m.get("not_found"), "{}")
    for key, w in (res.get("words") or {}).items():
        put(f"{key} words obeyed", w["model"])
        ins = w.get("inside", (grids.get("position words") or {}).get("inside") if key == "position" else None)
        put(f"inside the frame, {key}-word prompts", ins, extra="" if "inside" in w else " †")
    jr = res.get("judge_on_real_renders")
    if jr:
        put("judge on real renders of the held-out prompts: single right", jr["single_right"])
        put("judge on real renders: pairs both named", jr["pairs_right"])
        put(
            f"prompts the judge gets right on under {jr['threshold']:.0%} of real renders",
            len(jr["failing"]),
            "{}",
            f" ({', '.join(jr['failing'])})" if jr["failing"] else "",
        )
    c = res.get("judge_on_vae_reconstructions") or {}
    put("judge on the VAE's reconstructions (ceiling): objects", c.get("objects"))
    jv = res.get("judge_on_vae_reconstructions_of_renders")
    if jv:
        low = [p["prompt"] for p in jv["per_prompt"] if not p["pair"] and 2 * p["right"] < 1]
        put("judge on the VAE's reconstructions of those renders: single right", jv["single_right"])
        put("held-out prompts the VAE gives back on under half", len(low), "{}", f" ({', '.join(low)})" if low else "")
    jb = res.get("judge_on_best_latents_of_renders")
    if jb:
        drawn = [f"{p['prompt']} {p['right']:.2f}" for p in jb["per_prompt"]]
        put("of those, the judge on the decoder's drawings from their best latents", len(drawn), "{}", f" ({', '.join(drawn)})")
    put("steps", res.get("steps"), "{}")
    t = (res.get("timing_seconds") or {}).get("total")
    put("evaluation run time (min)", t / 60 if t else None, "{:.1f}")
    return f


def write_index(root="evaluation", shipped: str | None = None) -> Path:
    """evaluation/README.md: the shipped round's table and grids first, then every figure of every round side by
    side, then the earlier (and any newer, unshipped) rounds' tables as history. shipped: a folder name such as
    "round3" (default: the highest round). Numbers are only copied from each round's results.json and table.md,
    or measured on its grids (†)."""
    root = Path(root)
    rounds = _rounds(root)
    if not rounds:
        raise SystemExit(f"no round*/results.json under {root}")
    names = [d.name for _, d in rounds]
    ship = shipped or names[-1]
    if ship not in names:
        raise SystemExit(f"{root / ship}/results.json not found (rounds: {', '.join(names)})")
    ship_n = dict((d.name, n) for n, d in rounds)[ship]
    newest = json.loads((rounds[-1][1] / "results.json").read_text()).get("diversity")
    figs = {d.name: _figures(d, newest) for _, d in rounds}
    quick = {d.name for _, d in rounds if json.loads((d / "results.json").read_text()).get("quick")}
    prev = [d.name for n, d in rounds if n < ship_n]
    lines = [
        "# Evaluation of the default model",
        "",
        f"The page ships **{ship}** (`models/default`). Each round's folder holds what `diffusion-explainer evaluate "
        f"--out evaluation/roundN` wrote: `table.md`, `results.json` and the grids. This page is written by "
        f"`python -m train.evaluate index --shipped {ship}` from those files; do not edit it by hand.",
        "",
        f"## Shipped: {ship}",
        "",
        f"[table.md]({ship}/table.md) · [results.json]({ship}/results.json) · grids: "
        + " · ".join(
            f"[{g}]({ship}/{g})" for g in ("grid.png", "grid_diversity.png", "grid_words.png") if (root / ship / g).is_file()
        ),
        "",
        (root / ship / "table.md").read_text().strip(),
        "",
    ]
    if (root / ship / "grid.png").is_file():
        lines += [f"![held-out prompts, {ship}]({ship}/grid.png)", ""]
    cols = names
    lines += [
        "## Every figure, round by round" + (f" ({ship} against {prev[-1]})" if prev else ""),
        "",
        "| figure | "
        + " | ".join((f"**{c}** (shipped)" if c == ship else c) + (" (--quick)" if c in quick else "") for c in cols)
        + (f" | {ship} − {prev[-1]} |" if prev else " |"),
        "|---|" + "---:|" * len(cols) + ("---:|" if prev else ""),
    ]
    keys = list(dict.fromkeys(k for c in [ship] + cols for k in figs[c]))
    by_guidance = [k for k in keys if ", guidance " in k]
    first = {k: i for i, k in enumerate(by_guidance)}  # each figure's place within a guidance's rows
    kind = {k: min(first[j] for j in by_guidance if j.split(", guidance ")[0] == k.split(", guidance ")[0]) for k in by_guidance}
    order = sorted(by_guidance, key=lambda k: (float(k.rsplit(" ", 1)[1]), kind[k])) + [k for k in keys if k not in first]
    for k in order:
        cells = [figs[c][k][0] if k in figs[c] else "—" for c in cols]
        row = f"| {k} | " + " | ".join(f"**{v}**" if c == ship and v != "—" else v for c, v in zip(cols, cells)) + " |"
        if prev:
            a, b = figs[prev[-1]].get(k), figs[ship].get(k)
            same = (
                a is not None
                and b is not None
                and b[1] is not None
                and a[1] is not None
                and not any(w in k for w in ("seeds per prompt", "fewest seeds", "steps"))
            )
            if same:
                whole = b[2] == "{}"
                row += (
                    " "
                    + ("{:+d}" if whole else b[2].replace("{:", "{:+")).format(int(b[1] - a[1]) if whole else b[1] - a[1])
                    + " |"
                )
            else:
                row += " |"
        lines.append(row)
    lines += [
        "",
        "Seeds differ between rounds (see the seeds rows): a figure over more seeds is the firmer one. "
        "† measured on the images the round's grid holds (grid_diversity.png: every diversity prompt × 16 seeds; "
        "grid_words.png: the position-word prompts × 8 seeds), with the same locator, since the figure is newer than "
        "the round's evaluation. ‡ real scenes of that round's training generator, measured by the newest evaluation "
        "(its seed-diversity table: rounds 1 and 2 trained on objects clamped flush to the edge).",
        "",
        "## History",
        "",
    ]
    for n, d in sorted(rounds, reverse=True):
        if d.name == ship:
            continue
        note = " (newer, not shipped)" if n > ship_n else ""
        lines += [
            f"### {d.name}{note}",
            "",
            f"[table.md]({d.name}/table.md) · [results.json]({d.name}/results.json) · grids: "
            + " · ".join(
                f"[{g}]({d.name}/{g})" for g in ("grid.png", "grid_diversity.png", "grid_words.png") if (d / g).is_file()
            ),
            "",
            (d / "table.md").read_text().strip(),
            "",
        ]
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and (p / "table.md").is_file()):
            about = (sub / "README.md").read_text().strip() if (sub / "README.md").is_file() else ""
            lines += [f"Also in {d.name}: [{sub.name}/]({d.name}/{sub.name}/table.md)" + (f" — {about}" if about else ""), ""]
    others = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name not in names and (d / "table.md").is_file()]
    if others:
        lines += ["## Other evaluations", ""]
        for d in others:
            about = (d / "README.md").read_text().strip() if (d / "README.md").is_file() else ""
            lines.append(f"- [{d.name}/]({d.name}/table.md)" + (f": {about}" if about else ""))
        lines.append("")
    path = root / "README.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _parser():
    import argparse

    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return ap


def _index_main(argv) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m train.evaluate index", description=write_index.__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent / "evaluation"))
    ap.add_argument("--shipped", help="the round the page ships, e.g. round3 (default: the highest round)")
    a = ap.parse_args(argv)
    print(f"wrote {write_index(a.root, a.shipped)}")
    return 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["index"]:
        raise SystemExit(_index_main(sys.argv[2:]))
    raise SystemExit(main(_parser().parse_args()))
