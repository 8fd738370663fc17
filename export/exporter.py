"""Diffusers Stable Diffusion checkpoint → web bundle (ONNX models, op graphs, tokenizer, manifest).

Why optimum-onnx: it is the maintained exporter for diffusers pipelines and knows each component's
inputs, outputs and dynamic axes. We add what the browser needs: verification against PyTorch
with the error written down, the op graphs, sha256 for every file, and an atomic write so an
interrupted export never leaves a half bundle where a bundle is expected.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

from runtime.bundle import FORMAT, FORMAT_VERSION, MODEL_COMPONENTS, OP_GRAPHS, sha256_file

from . import opgraphs

SUPPORTED = "Stable Diffusion 1.x / 2.x pipelines in diffusers format (StableDiffusionPipeline)"
SCHEDULER_NAMES = {
    "PNDMScheduler": "pndm", "EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler",
    "DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpmpp_2m", "LMSDiscreteScheduler": "lms",
}
ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8"}
DEFAULT_TOLERANCE = 1e-3  # max abs error relative to max(1, max |reference|), fp32


class ExportError(Exception):
    """An export that cannot proceed; the message is one line."""


class UnsupportedCheckpoint(ExportError):
    pass


def inspect_checkpoint(src) -> dict:
    """Read only configs (no weights) and refuse anything but an SD pipeline, before heavy work."""
    src = Path(src)
    if not src.exists():
        raise UnsupportedCheckpoint(f"{src} does not exist")
    if src.is_file():
        raise UnsupportedCheckpoint(f"{src} is a single file; this exporter takes a diffusers pipeline folder ({SUPPORTED})")
    index = src / "model_index.json"
    if not index.is_file():
        found = ", ".join(sorted(p.name for p in src.iterdir())[:6]) or "an empty folder"
        raise UnsupportedCheckpoint(f"{src} is not a diffusers pipeline (no model_index.json; found {found}); supported: {SUPPORTED}")
    try:
        info = json.loads(index.read_text())
    except ValueError:
        raise UnsupportedCheckpoint(f"{index} is not valid JSON") from None
    cls = info.get("_class_name", "?")
    if cls not in ("StableDiffusionPipeline",):
        raise UnsupportedCheckpoint(f"{src} holds a {cls}; supported: {SUPPORTED}")
    for part in ("text_encoder", "unet", "vae", "tokenizer", "scheduler"):
        if not (src / part).is_dir():
            raise UnsupportedCheckpoint(f"{src} is a {cls} without its {part}/ folder; cannot export")

    def cfg(part, name="config.json"):
        p = src / part / name
        if not p.is_file():
            raise UnsupportedCheckpoint(f"{p} is missing")
        return json.loads(p.read_text())

    unet, vae, text = cfg("unet"), cfg("vae"), cfg("text_encoder")
    sched = cfg("scheduler", "scheduler_config.json")
    if unet.get("in_channels", 4) != 4 or vae.get("latent_channels", 4) != 4:
        raise UnsupportedCheckpoint(f"{src}: UNet in_channels={unet.get('in_channels')} (inpainting or depth model?); only 4-channel text-to-image SD is supported")
    if unet.get("cross_attention_dim") != text.get("hidden_size"):
        raise UnsupportedCheckpoint(f"{src}: UNet cross_attention_dim {unet.get('cross_attention_dim')} ≠ text encoder hidden size {text.get('hidden_size')}")
    if unet.get("addition_embed_type") or unet.get("class_embed_type"):
        raise UnsupportedCheckpoint(f"{src}: UNet has extra conditioning ({unet.get('addition_embed_type') or unet.get('class_embed_type')}), e.g. SDXL or unCLIP; supported: {SUPPORTED}")
    factor = 2 ** (len(vae.get("block_out_channels", [1, 1, 1, 1])) - 1)
    latent = unet.get("sample_size", 64)
    latent = latent if isinstance(latent, list) else [latent, latent]
    hidden = text["hidden_size"]
    return {
        "source": str(src.resolve()),
        "architecture": {768: "sd1", 1024: "sd2"}.get(hidden, "sd-custom"),
        "prediction_type": sched.get("prediction_type", "epsilon"),
        "latent_channels": 4,
        "latent_size": latent,
        "image_size": [latent[0] * factor, latent[1] * factor],
        "vae_scale_factor": factor,
        "vae_scaling_factor": vae.get("scaling_factor", 0.18215),
        "text_hidden_size": hidden,
        "text_max_length": text.get("max_position_embeddings", 77),
        "scheduler_class": sched.get("_class_name", "PNDMScheduler"),
        "scheduler_config": sched,
    }


def _io(model) -> tuple[list, list]:
    def spec(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": ONNX_DTYPES.get(t.elem_type, str(t.elem_type)),
                "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]}

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def _versions() -> dict:
    out = {}
    for pkg in ("torch", "diffusers", "transformers", "optimum-onnx", "onnx", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


@contextlib.contextmanager
def _stage(progress, name):
    t = time.perf_counter()
    if progress:
        progress(name, "start")
    yield
    if progress:
        progress(name, f"{time.perf_counter() - t:.1f} s")


def _move_model(src_onnx: Path, dst_dir: Path, name: str) -> list[str]:
    """Place an exported model as NAME.onnx (+ NAME.onnx.data when it has external data)."""
    import onnx

    data = [p for p in src_onnx.parent.iterdir() if p.name != src_onnx.name and p.suffix != ".json"]
    if not data:
        shutil.move(str(src_onnx), dst_dir / f"{name}.onnx")
        return [f"{name}.onnx"]
    model = onnx.load(str(src_onnx), load_external_data=True)
    onnx.save_model(model, str(dst_dir / f"{name}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.onnx.data", size_threshold=1024)
    return [f"{name}.onnx", f"{name}.onnx.data"]


def random_feeds(facts: dict, vocab_size: int, seed: int = 0) -> dict:
    """The same random inputs for every comparison (PyTorch vs ONNX, fp32 vs quantized)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = facts["latent_size"]
    n = facts["text_max_length"]
    return {
        "text_encoder": {"input_ids": rng.integers(0, vocab_size, (2, n)).astype(np.int64)},
        "unet": {"sample": rng.standard_normal((2, 4, h, w), dtype=np.float32), "timestep": np.array(500.0, dtype=np.float32),
                 "encoder_hidden_states": rng.standard_normal((2, n, facts["text_hidden_size"]), dtype=np.float32)},
        "vae_decoder": {"latent_sample": rng.standard_normal((1, 4, h, w), dtype=np.float32)},
    }


def verify(src: Path, bundle_dir: Path, files: dict, facts: dict, seed: int = 0) -> dict:
    """Run each exported component in onnxruntime and in PyTorch on the same random inputs."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    results = {}

    def compare(name, feeds, torch_out):
        sess = ort.InferenceSession(str(bundle_dir / files[name][0]), providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)[0]
        ref = torch_out.detach().float().numpy()
        err = float(np.abs(got - ref).max())
        scale = max(1.0, float(np.abs(ref).max()))
        results[name] = {"max_abs_error": err, "max_abs_reference": float(np.abs(ref).max()), "relative": err / scale}

    t = torch.from_numpy
    with torch.no_grad():
        text = CLIPTextModel.from_pretrained(src / "text_encoder").eval()
        feeds = random_feeds(facts, text.config.vocab_size, seed)
        f = feeds["text_encoder"]
        compare("text_encoder", f, text(t(f["input_ids"])).last_hidden_state)
        del text
        unet = UNet2DConditionModel.from_pretrained(src / "unet").eval()
        f = feeds["unet"]
        compare("unet", f, unet(t(f["sample"]), torch.tensor(500.0), encoder_hidden_states=t(f["encoder_hidden_states"])).sample)
        del unet
        vae = AutoencoderKL.from_pretrained(src / "vae").eval()
        f = feeds["vae_decoder"]
        compare("vae_decoder", f, vae.decode(t(f["latent_sample"])).sample)
    return results


def resolve_precision(precision) -> dict:
    """'fp16' → every component fp16; 'wasm'/'webgpu' → that target's defaults; or a dict per component."""
    from .quantize import DEFAULTS, PRECISIONS

    if isinstance(precision, str):
        if precision in DEFAULTS:
            return dict(DEFAULTS[precision])
        precision = {c: precision for c in MODEL_COMPONENTS}
    out = {c: precision.get(c, "fp32") for c in MODEL_COMPONENTS}
    for c, p in out.items():
        if p not in PRECISIONS:
            raise ExportError(f"unknown precision {p!r} for {c}; choose one of {', '.join(PRECISIONS)} (or a target: {', '.join(DEFAULTS)})")
    return out


def export_bundle(src, out, *, precision="fp32", tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False,
                  progress=None, name: str | None = None) -> dict:
    """Export `src` to the bundle folder `out` atomically; returns the manifest."""
    src, out = Path(src), Path(out)
    facts = inspect_checkpoint(src)
    precision = resolve_precision(precision)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    work = out.parent / f".{out.name}.partial-{os.getpid()}-optimum"
    quant = out.parent / f".{out.name}.partial-{os.getpid()}-quantized"
    tmp.mkdir()
    t_start = time.perf_counter()
    try:
        with _stage(progress, "export ONNX (optimum)"):
            from optimum.exporters.onnx import main_export

            main_export(str(src), output=str(work), task="text-to-image", do_validation=False, device="cpu")
        files = {}
        with _stage(progress, "collect models"):
            for comp in MODEL_COMPONENTS:
                files[comp] = _move_model(work / comp / "model.onnx", tmp, comp)
            shutil.rmtree(work)
        with _stage(progress, "write op graphs"):
            for op, rel in opgraphs.write_all(tmp).items():
                files[op] = [rel]
        with _stage(progress, "verify against PyTorch"):
            errors = verify(src, tmp, files, facts)
            bad = {k: v for k, v in errors.items() if v["relative"] > tolerance}
            if bad:
                k, v = next(iter(bad.items()))
                raise ExportError(f"{k} differs from PyTorch by {v['max_abs_error']:.3g} (reference max {v['max_abs_reference']:.3g}), above tolerance {tolerance}; the export is not trustworthy")
        with _stage(progress, "tokenizer, scheduler, manifest"):
            (tmp / "tokenizer").mkdir()
            for f in ("vocab.json", "merges.txt"):
                shutil.copy(src / "tokenizer" / f, tmp / "tokenizer" / f)
            manifest = _manifest(src, tmp, files, facts, errors, tolerance, name)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        final = tmp
        if any(p != "fp32" for p in precision.values()):
            with _stage(progress, "quantize and measure quality"):
                manifest = _apply_precision(tmp, quant, files, facts, manifest, precision)
                final = quant
        if out.exists():
            shutil.rmtree(out)
        final.rename(out)
        manifest["export_seconds"] = time.perf_counter() - t_start
        return manifest
    finally:
        for d in (tmp, work, quant):
            shutil.rmtree(d, ignore_errors=True)


def _manifest(src, tmp, files, facts, errors, tolerance, name) -> dict:
    import onnx

    tok_cfg = json.loads((src / "tokenizer" / "tokenizer_config.json").read_text()) if (src / "tokenizer" / "tokenizer_config.json").exists() else {}
    vocab = json.loads((src / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    pad = tok_cfg.get("pad_token") or "<|endoftext|>"
    pad = pad.get("content", "<|endoftext|>") if isinstance(pad, dict) else pad  # SD 2.x pads with "!"
    components = {}
    for comp, rels in files.items():
        model = onnx.load(str(tmp / rels[0]), load_external_data=False)
        inputs, outputs = _io(model)
        entry = {"files": rels, "precision": "fp32", "inputs": inputs, "outputs": outputs}
        if comp in errors:
            entry["verification"] = {**errors[comp], "tolerance": tolerance, "against": "PyTorch (diffusers/transformers) on random inputs"}
        if comp == "lincomb":
            entry["terms"] = opgraphs.LINCOMB_TERMS
        components[comp] = entry
    all_files = [r for rels in files.values() for r in rels] + ["tokenizer/vocab.json", "tokenizer/merges.txt"]
    table = {r: {"bytes": (tmp / r).stat().st_size, "sha256": sha256_file(tmp / r)} for r in all_files}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or src.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {k: facts[k] for k in ("source", "architecture", "prediction_type", "image_size", "latent_size",
                                        "latent_channels", "vae_scaling_factor", "vae_scale_factor", "text_hidden_size", "text_max_length")},
        "components": components,
        "files": table,
        "tokenizer": {
            "files": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt"},
            "max_length": tok_cfg.get("model_max_length", 77) if tok_cfg.get("model_max_length", 77) < 10_000 else 77,
            "bos_id": vocab["<|startoftext|>"], "eos_id": vocab["<|endoftext|>"],
            "pad_token": pad, "pad_id": vocab[pad],
        },
        "scheduler": {"config": facts["scheduler_config"], "default": SCHEDULER_NAMES.get(facts["scheduler_class"], "euler")},
        "about": _about(src),
        "tools": _versions(),
    }


def _about(src: Path) -> dict:
    """Optional model card for the page (explainer.json beside model_index.json): what the model knows."""
    path = src / "explainer.json"
    if not path.is_file():
        return {}
    about = json.loads(path.read_text(encoding="utf-8"))
    return {"description": str(about.get("description", ""))[:2000],
            "examples": [str(e)[:300] for e in about.get("examples", [])][:24],
            "vocabulary": {str(k): [str(v) for v in vs][:200] for k, vs in dict(about.get("vocabulary", {})).items()}}


QUALITY_PROMPTS = ("a cat on a blue background", "a rocket and a moon at night", "a photo of an astronaut riding a horse")
QUALITY_SEEDS = (0, 1)


def _apply_precision(fp32_dir: Path, out_dir: Path, files: dict, facts: dict, manifest: dict, precision: dict) -> dict:
    """Quantize components into out_dir and write the quality report: size and error per component
    vs fp32 on the verification inputs, and the final image's PSNR vs the fp32 bundle."""
    import math

    import numpy as np
    import onnxruntime as ort

    from runtime.bundle import Bundle
    from runtime.native import NativeBackend, to_numpy
    from runtime.pipeline import Pipeline, Request, run_sync

    from .quantize import quantize

    shutil.copytree(fp32_dir, out_dir, ignore=shutil.ignore_patterns(*[f for c in MODEL_COMPONENTS for f in files[c]]))
    vocab = len(json.loads((fp32_dir / "tokenizer" / "vocab.json").read_text(encoding="utf-8")))
    feeds = random_feeds(facts, vocab)
    report = {"components": {}, "image": {}}
    new_files = dict(files)
    for comp in MODEL_COMPONENTS:
        new_files[comp] = quantize(fp32_dir / files[comp][0], out_dir / files[comp][0], precision[comp])

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
        from_onnx = _io(__import__("onnx").load(str(out_dir / new_files[comp][0]), load_external_data=False))
        new_manifest["components"][comp]["inputs"], new_manifest["components"][comp]["outputs"] = from_onnx
    for comp in MODEL_COMPONENTS:
        for rel in files[comp]:
            new_manifest["files"].pop(rel, None)
        for rel in new_files[comp]:
            new_manifest["files"][rel] = {"bytes": (out_dir / rel).stat().st_size, "sha256": sha256_file(out_dir / rel)}
    (out_dir / "manifest.json").write_text(json.dumps(new_manifest, indent=1))

    async def images(d):
        pipe = Pipeline(Bundle.from_dir(d, verify=False), NativeBackend(d))
        await pipe.load()
        out = []
        for p in QUALITY_PROMPTS:
            for s in QUALITY_SEEDS:
                tr = await pipe.generate(Request(p, seed=s, steps=10, preview_every=0))
                out.append(to_numpy(tr.image)[..., :3].astype(np.float64))
        return out

    psnrs = []
    for a, b in zip(run_sync(images(fp32_dir)), run_sync(images(out_dir))):
        mse = float(np.mean((a - b) ** 2))
        psnrs.append(99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse))
    report["image"] = {"psnr_db_vs_fp32": {"min": min(psnrs), "mean": sum(psnrs) / len(psnrs)},
                       "prompts": list(QUALITY_PROMPTS), "seeds": list(QUALITY_SEEDS), "steps": 10}
    new_manifest["quality"] = report
    (out_dir / "manifest.json").write_text(json.dumps(new_manifest, indent=1))
    return new_manifest
