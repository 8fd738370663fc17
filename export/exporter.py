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
from .onnxfiles import CHUNK_BYTES, save_model

SUPPORTED = "Stable Diffusion 1.x / 2.x (incl. SD-Turbo): a diffusers StableDiffusionPipeline folder or a single .safetensors/.ckpt file"
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
    """Read only configs or a file header (no weights) and refuse anything but SD 1.x/2.x, before heavy work."""
    src = Path(src)
    if not src.exists():
        raise UnsupportedCheckpoint(f"{src} does not exist")
    if src.is_file():  # a single .safetensors/.ckpt: judged from its header (see single_file.py)
        from . import single_file

        return single_file.inspect(src)
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


def _move_model(src_onnx: Path, dst_dir: Path, name: str, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Place an exported model as NAME.onnx, its weights in chunks when it is big (see onnxfiles)."""
    import onnx

    data = [p for p in src_onnx.parent.iterdir() if p.name != src_onnx.name and p.suffix != ".json"]
    if not data and src_onnx.stat().st_size <= chunk_bytes:
        shutil.move(str(src_onnx), dst_dir / f"{name}.onnx")
        return [f"{name}.onnx"]
    return save_model(onnx.load(str(src_onnx), load_external_data=True), dst_dir / f"{name}.onnx", chunk_bytes)


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
                  progress=None, name: str | None = None, chunk_bytes: int = CHUNK_BYTES, quality: tuple | None = None,
                  arch: str | None = None, prediction_type: str | None = None, config_dir=None) -> dict:
    """Export `src` to the bundle folder `out` atomically; returns the manifest.

    src: a diffusers SD folder, a single .safetensors/.ckpt file, or an fp32 bundle (then only the
    precision changes: export once, derive fp16/int8/int4 builds in seconds). quality: (number of
    prompt×seed images, steps) for the PSNR report of a non-fp32 build; default all of them, 10 steps.
    arch / prediction_type / config_dir: for a single file, override what its header suggests."""
    src, out = Path(src), Path(out)
    precision = resolve_precision(precision)
    if src.is_dir() and (src / "manifest.json").is_file():
        return derive_bundle(src, out, precision=precision, overwrite=overwrite, progress=progress, name=name,
                             chunk_bytes=chunk_bytes, quality=quality)
    single = None
    if src.is_file():
        from . import single_file

        single = single_file.inspect(src, arch=arch, prediction_type=prediction_type, config_dir=config_dir)  # header only
    else:
        facts = inspect_checkpoint(src)
    tmp, parts = _begin(out, overwrite, ("optimum", "quantized", "pipeline"))
    work, quant, pipeline = parts
    t_start = time.perf_counter()
    try:
        if single:
            with _stage(progress, f"load single file ({single['arch']})"):
                from . import single_file

                source = src
                src = single_file.to_pipeline_folder(src, pipeline, arch=None if config_dir else single["arch"],
                                                     prediction_type=single["prediction_type"], config_dir=config_dir)
                facts = {**inspect_checkpoint(src), "source": str(source.resolve())}
        with _stage(progress, "export ONNX (optimum)"):
            from optimum.exporters.onnx import main_export

            main_export(str(src), output=str(work), task="text-to-image", do_validation=False, device="cpu")
        files = {}
        with _stage(progress, "collect models"):
            for comp in MODEL_COMPONENTS:
                files[comp] = _move_model(work / comp / "model.onnx", tmp, comp, chunk_bytes)
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
                manifest = _apply_precision(tmp, quant, files, facts, manifest, precision, chunk_bytes, quality)
                final = quant
        return _finish(final, out, manifest, t_start)
    finally:
        for d in (tmp, *parts):
            shutil.rmtree(d, ignore_errors=True)


def derive_bundle(fp32_bundle, out, *, precision, overwrite: bool = False, progress=None, name: str | None = None,
                  chunk_bytes: int = CHUNK_BYTES, quality: tuple | None = None) -> dict:
    """A precision build from an exported fp32 bundle, without re-exporting from PyTorch."""
    from runtime.bundle import Bundle, BundleError

    fp32_bundle, out = Path(fp32_bundle), Path(out)
    try:
        manifest = Bundle.from_dir(fp32_bundle, verify=False).manifest
    except BundleError as e:
        raise ExportError(f"{fp32_bundle}: {e}") from None
    not32 = [c for c in MODEL_COMPONENTS if manifest["components"][c].get("precision", "fp32") != "fp32"]
    if not32:
        raise ExportError(f"{fp32_bundle} holds {', '.join(not32)} in {manifest['components'][not32[0]]['precision']}; derive builds from an fp32 bundle")
    if all(p == "fp32" for p in resolve_precision(precision).values()):
        raise ExportError(f"{fp32_bundle} is already an fp32 bundle; choose another precision (fp16, int8, int4, wasm, webgpu)")
    files = {c: list(v["files"]) for c, v in manifest["components"].items()}
    facts = {"latent_size": manifest["model"]["latent_size"], "text_max_length": manifest["model"]["text_max_length"],
             "text_hidden_size": manifest["model"]["text_hidden_size"]}
    if name:
        manifest["name"] = name
    tmp, _ = _begin(out, overwrite, ())
    t_start = time.perf_counter()
    try:
        with _stage(progress, "quantize and measure quality"):
            shutil.rmtree(tmp)
            manifest = _apply_precision(fp32_bundle, tmp, files, facts, manifest, resolve_precision(precision), chunk_bytes, quality)
        return _finish(tmp, out, manifest, t_start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _begin(out: Path, overwrite: bool, parts: tuple) -> tuple[Path, list[Path]]:
    """The hidden work folders beside `out` (removed on success, failure, Ctrl-C or SIGTERM)."""
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a SIGKILLed export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    return tmp, [out.parent / f".{out.name}.partial-{os.getpid()}-{p}" for p in parts]


def _finish(final: Path, out: Path, manifest: dict, t_start: float) -> dict:
    if out.exists():
        shutil.rmtree(out)
    final.rename(out)
    manifest["export_seconds"] = time.perf_counter() - t_start
    return manifest


def source_fingerprint(src) -> str:
    """sha256 over the checkpoint's configs and weights: tells whether a bundle is stale for its source."""
    import hashlib

    src = Path(src)
    h = hashlib.sha256()
    parts = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".txt"))
    for p in parts:
        h.update(str(p.relative_to(src) if p != src else p.name).encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


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
        "source_fingerprint": source_fingerprint(facts.get("source", src)),
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
            **({"guidance": min(20.0, max(0.0, float(about["guidance"])))} if isinstance(about.get("guidance"), (int, float)) else {}),
            "vocabulary": {str(k): [str(v) for v in vs][:200] for k, vs in dict(about.get("vocabulary", {})).items()}}


def _adherence(fp32_dir: Path, out_dir: Path, manifest: dict, precision: dict) -> dict:
    """For the project's own scene model: the evaluation judge's scores for both builds' images, so a
    smaller build shows what it costs in prompt adherence, not only in PSNR. Other models: nothing."""
    if all(p == "fp32" for p in precision.values()):
        return {}
    try:
        from train import evaluate
    except ImportError:  # an installed exporter without the training code
        return {}
    if not evaluate.is_scene_model(manifest.get("about")):
        return {}
    return {"adherence": {"fp32": evaluate.adherence(fp32_dir), "this build": evaluate.adherence(out_dir),
                          "judge": "train/evaluate.py: held-out single-object prompts, native onnxruntime"}}


QUALITY_PROMPTS = ("a cat on a blue background", "a rocket and a moon at night", "a photo of an astronaut riding a horse")
QUALITY_SEEDS = (0, 1)


def _apply_precision(fp32_dir: Path, out_dir: Path, files: dict, facts: dict, manifest: dict, precision: dict,
                     chunk_bytes: int = CHUNK_BYTES, quality: tuple | None = None) -> dict:
    """Quantize components into out_dir and write the quality report: size and error per component
    vs fp32 on the verification inputs, and the final image's PSNR vs the fp32 bundle."""
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
        from_onnx = _io(__import__("onnx").load(str(out_dir / new_files[comp][0]), load_external_data=False))
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
    report.update(_adherence(fp32_dir, out_dir, manifest, precision))
    new_manifest["quality"] = report
    (out_dir / "manifest.json").write_text(json.dumps(new_manifest, indent=1))
    return new_manifest
