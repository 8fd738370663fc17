"""The quality report of a non-fp32 build: size and error per component vs fp32, final-image PSNR, and a judge's scores when one is given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runtime.bundle import MODEL_COMPONENTS, sha256_file

from .manifest import io_specs
from .onnxfiles import CHUNK_BYTES
from .verify import random_feeds

QUALITY_PROMPTS = ("a cat on a blue background", "a rocket and a moon at night", "a photo of an astronaut riding a horse")

QUALITY_SEEDS = (0, 1)
# seeds per held-out prompt for the judge's adherence scores (48 prompts × 4 seeds: one point is two images)
ADHERENCE_SEEDS = (0, 1, 2, 3)


def _spec_feeds(specs: list, seed: int = 0) -> dict:
    """Random inputs from a component's input specs (optional components: no PyTorch twin to match)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in spec["shape"]]
        if spec["dtype"] == "float32":
            feeds[spec["name"]] = rng.standard_normal(shape, dtype=np.float32)
        elif spec["dtype"] == "uint8":
            feeds[spec["name"]] = rng.integers(0, 256, shape).astype(np.uint8)
        else:  # indices (an eos position, …): small enough for any axis of size 2
            feeds[spec["name"]] = rng.integers(0, 2, shape).astype(spec["dtype"])
    return feeds


def _call_judge(judge, manifest: dict, bundle_dir: Path, seeds: tuple):
    """judge(manifest, bundle_dir, seeds=…) when the judge takes seeds, else judge(manifest, bundle_dir)."""
    import inspect

    try:
        params = inspect.signature(judge).parameters.values()
    except (TypeError, ValueError):
        params = ()
    if any(p.name == "seeds" or p.kind == p.VAR_KEYWORD for p in params):
        return judge(manifest, bundle_dir, seeds=tuple(seeds))
    return judge(manifest, bundle_dir)


# batch 2 (guidance) and batch 1 at the latent size; the text encoder at the tokenizer's window (its batch varies: CLIP)
FIXED_SIZE = {"unet": None, "vae_decoder": None, "text_encoder": [("input_ids", 1)]}  # None: every size; else (input, axis)


def apply_precision(
    fp32_dir: Path,
    out_dir: Path,
    files: dict,
    facts: dict,
    manifest: dict,
    precision: dict,
    chunk_bytes: int = CHUNK_BYTES,
    quality: tuple | None = None,
    judge=None,
    judge_seeds: tuple = ADHERENCE_SEEDS,
) -> dict:
    """Quantize components into out_dir and write the quality report: size and error per component
    vs fp32 on the verification inputs, and the final image's PSNR vs the fp32 bundle.

    precision: per component; the optional components the bundle carries (clip_image, umap_project)
    are converted when it names them (their check: max abs error vs fp32 on random inputs), else copied.
    judge: optional `judge(manifest, bundle_dir[, seeds=…]) -> dict | None`, the caller's prompt-adherence
    score, asked for `judge_seeds` when it takes seeds (the command line passes the default model's
    evaluation judge; export never imports train/)."""
    import math

    import numpy as np
    import onnxruntime as ort

    from runtime.native import images
    from runtime.pipeline import Request

    from .freeze import freeze_file
    from .quantize import quantize

    optional = [c for c in precision if c not in MODEL_COMPONENTS and c in manifest["components"]]
    files = {**files, **{c: list(manifest["components"][c]["files"]) for c in optional}}
    converted = [*MODEL_COMPONENTS, *optional]
    # not the converted models, nor serve's X.gz copies of the fp32 files (rewritten by serve on demand)
    shutil.copytree(fp32_dir, out_dir, ignore=shutil.ignore_patterns("*.gz", *[f for c in converted for f in files[c]]))
    vocab = len(json.loads((fp32_dir / "tokenizer" / "vocab.json").read_text(encoding="utf-8")))
    feeds = random_feeds(facts, vocab)
    feeds.update({c: _spec_feeds(manifest["components"][c]["inputs"]) for c in optional})
    report = {"components": {}, "image": {}}
    new_files = dict(files)
    fixed = {}
    for comp in converted:
        new_files[comp] = quantize(fp32_dir / files[comp][0], out_dir / files[comp][0], precision[comp], chunk_bytes)
        if comp in FIXED_SIZE:  # the runtime calls it at one size only; its shape arithmetic folded (export/freeze.py)
            new_files[comp], fixed[comp] = freeze_file(out_dir, new_files[comp], feeds[comp], chunk_bytes, FIXED_SIZE[comp])

        def run(d, rels, feeds=feeds[comp]):
            sess = ort.InferenceSession(str(d / rels[0]), providers=["CPUExecutionProvider"])
            return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))

        refs, gots = run(fp32_dir, files[comp]), run(out_dir, new_files[comp])
        errs = {k: float(np.abs(gots[k].astype(np.float32) - v).max()) for k, v in refs.items() if v.dtype.kind == "f"}
        first = next(iter(refs))
        ref, got = refs[first], gots[first]
        size = lambda d, rels: sum((d / r).stat().st_size for r in rels)  # noqa: E731
        report["components"][comp] = {
            "precision": precision[comp],
            "bytes": size(out_dir, new_files[comp]),
            "bytes_fp32": size(fp32_dir, files[comp]),
            "max_abs_error_vs_fp32": float(np.abs(got.astype(np.float32) - ref).max()),
            "max_abs_fp32": float(np.abs(ref).max()),
            **({"outputs_max_abs_error_vs_fp32": errs} if len(errs) > 1 else {}),
            **fixed.get(comp, {}),
        }

    new_manifest = json.loads(json.dumps(manifest))
    for comp in converted:
        new_manifest["components"][comp]["files"] = new_files[comp]
        new_manifest["components"][comp]["precision"] = precision[comp]
        from_onnx = io_specs(__import__("onnx").load(str(out_dir / new_files[comp][0]), load_external_data=False))
        new_manifest["components"][comp]["inputs"], new_manifest["components"][comp]["outputs"] = from_onnx
    for comp in converted:
        for rel in files[comp]:
            new_manifest["files"].pop(rel, None)
        for rel in new_files[comp]:
            new_manifest["files"][rel] = {"bytes": (out_dir / rel).stat().st_size, "sha256": sha256_file(out_dir / rel)}
    report["bundle_bytes"] = {
        "this build": sum(f["bytes"] for f in new_manifest["files"].values()),
        "fp32": sum(f["bytes"] for f in manifest["files"].values()),
    }
    (out_dir / "manifest.json").write_text(json.dumps(new_manifest, indent=1))

    runs = [(p, s) for p in QUALITY_PROMPTS for s in QUALITY_SEEDS]
    n_images, steps = quality or (len(runs), 10)
    runs = runs[: max(1, n_images)]

    requests = [Request(p, seed=s, steps=steps, preview_every=0) for p, s in runs]
    psnrs = []
    for a, b in zip(images(fp32_dir, requests), images(out_dir, requests)):
        mse = float(np.mean((a.astype(np.float64) - b) ** 2))
        psnrs.append(99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse))
    report["image"] = {
        "psnr_db_vs_fp32": {"min": min(psnrs), "mean": sum(psnrs) / len(psnrs)},
        # per run, so a low minimum names its prompt (a trajectory that int8 errors tip elsewhere)
        "runs": [{"prompt": p, "seed": s, "psnr_db": round(v, 2)} for (p, s), v in zip(runs, psnrs)],
        "steps": steps,
    }
    if judge is not None:
        fp32_score, this_score = (
            _call_judge(judge, manifest, fp32_dir, judge_seeds),
            _call_judge(judge, new_manifest, out_dir, judge_seeds),
        )
        if fp32_score and this_score:
            report["adherence"] = {
                "fp32": fp32_score,
                "this build": this_score,
                "judge": getattr(judge, "description", ""),
                "points_vs_fp32": {
                    k: round(100 * (this_score[f"{k}_accuracy"] - fp32_score[f"{k}_accuracy"]), 2)
                    for k in ("object", "background")
                    if f"{k}_accuracy" in this_score and f"{k}_accuracy" in fp32_score
                },
            }
    new_manifest["quality"] = report
    (out_dir / "manifest.json").write_text(json.dumps(new_manifest, indent=1))
    return new_manifest
