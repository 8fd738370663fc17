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

def apply_precision(fp32_dir: Path, out_dir: Path, files: dict, facts: dict, manifest: dict, precision: dict,
                    chunk_bytes: int = CHUNK_BYTES, quality: tuple | None = None, judge=None) -> dict:
    """Quantize components into out_dir and write the quality report: size and error per component
    vs fp32 on the verification inputs, and the final image's PSNR vs the fp32 bundle.

    judge: optional `judge(manifest, bundle_dir) -> dict | None`, the caller's prompt-adherence score
    (the command line passes the default model's evaluation judge; export never imports train/)."""
    import math

    import numpy as np
    import onnxruntime as ort

    from runtime.native import images
    from runtime.pipeline import Request

    from .quantize import quantize

    shutil.copytree(fp32_dir, out_dir, ignore=shutil.ignore_patterns(*[f for c in MODEL_COMPONENTS for f in files[c]]))
    vocab = len(json.loads((fp32_dir / "tokenizer" / "vocab.json").read_text(encoding="utf-8")))
    feeds = random_feeds(facts, vocab)
    report = {"components": {}, "image": {}}
    new_files = dict(files)
    for comp in MODEL_COMPONENTS:
        new_files[comp] = quantize(fp32_dir / files[comp][0], out_dir / files[comp][0], precision[comp], chunk_bytes)

        def run(d, rels):
            return ort.InferenceSession(str(d / rels[0]), providers=["CPUExecutionProvider"]).run(None, feeds[comp])[0]

        ref, got = run(fp32_dir, files[comp]), run(out_dir, new_files[comp])
        size = lambda d, rels: sum((d / r).stat().st_size for r in rels)  # noqa: E731
        report["components"][comp] = {
            "precision": precision[comp], "bytes": size(out_dir, new_files[comp]), "bytes_fp32": size(fp32_dir, files[comp]),
            "max_abs_error_vs_fp32": float(np.abs(got.astype(np.float32) - ref).max()), "max_abs_fp32": float(np.abs(ref).max()),
        }

    new_manifest = json.loads(json.dumps(manifest))
    for comp in MODEL_COMPONENTS:
        new_manifest["components"][comp]["files"] = new_files[comp]
        new_manifest["components"][comp]["precision"] = precision[comp]
        from_onnx = io_specs(__import__("onnx").load(str(out_dir / new_files[comp][0]), load_external_data=False))
        new_manifest["components"][comp]["inputs"], new_manifest["components"][comp]["outputs"] = from_onnx
    for comp in MODEL_COMPONENTS:
        for rel in files[comp]:
            new_manifest["files"].pop(rel, None)
        for rel in new_files[comp]:
            new_manifest["files"][rel] = {"bytes": (out_dir / rel).stat().st_size, "sha256": sha256_file(out_dir / rel)}
    (out_dir / "manifest.json").write_text(json.dumps(new_manifest, indent=1))

    runs = [(p, s) for p in QUALITY_PROMPTS for s in QUALITY_SEEDS]
    n_images, steps = quality or (len(runs), 10)
    runs = runs[: max(1, n_images)]

    requests = [Request(p, seed=s, steps=steps, preview_every=0) for p, s in runs]
    psnrs = []
    for a, b in zip(images(fp32_dir, requests), images(out_dir, requests)):
        mse = float(np.mean((a.astype(np.float64) - b) ** 2))
        psnrs.append(99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse))
    report["image"] = {"psnr_db_vs_fp32": {"min": min(psnrs), "mean": sum(psnrs) / len(psnrs)},
                       "runs": [{"prompt": p, "seed": s} for p, s in runs], "steps": steps}
    if judge is not None:
        fp32_score, this_score = judge(manifest, fp32_dir), judge(new_manifest, out_dir)
        if fp32_score and this_score:
            report["adherence"] = {"fp32": fp32_score, "this build": this_score, "judge": getattr(judge, "description", "")}
    new_manifest["quality"] = report
    (out_dir / "manifest.json").write_text(json.dumps(new_manifest, indent=1))
    return new_manifest
