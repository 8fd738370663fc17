"""Export a diffusers SD checkpoint (or derive a precision build from a bundle) into a bundle folder, atomically.

Why optimum-onnx: it is the maintained exporter for diffusers pipelines and knows each component's
inputs, outputs and dynamic axes. The other modules add what the browser needs: verification
against PyTorch (verify), the op graphs (opgraphs), the manifest with sha256 for every file
(manifest), quantized builds with their quality report (quantize, quality); this one sequences them
in a hidden work folder renamed into place, so an interrupted export never leaves a half bundle.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from runtime.bundle import MODEL_COMPONENTS

from . import opgraphs
from .attention import export_unet_with_attention
from .checkpoint import inspect_checkpoint
from .clip import export_clip
from .errors import ExportError, UnsupportedCheckpoint
from .manifest import build_manifest, source_fingerprint
from .onnxfiles import CHUNK_BYTES, save_model
from .quality import apply_precision
from .verify import DEFAULT_TOLERANCE, verify

__all__ = ["ExportError", "UnsupportedCheckpoint", "inspect_checkpoint", "source_fingerprint", "export_bundle", "derive_bundle",
           "resolve_precision"]


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


def resolve_precision(precision) -> dict:
    """'fp16' → every component fp16; 'wasm'/'webgpu'/'small' → that target's defaults; or a dict per component.

    The optional components (clip_image, umap_project) are converted only when named: by a target, by
    a dict, or by a storage precision (fp16w, int8w, int8w-all) given for the whole bundle."""
    from .quantize import DEFAULTS, OPTIONAL_COMPONENTS, PRECISIONS, STORAGE_PRECISIONS

    if isinstance(precision, str):
        if precision in DEFAULTS:
            return dict(DEFAULTS[precision])
        precision = {c: precision for c in MODEL_COMPONENTS + (OPTIONAL_COMPONENTS if precision in STORAGE_PRECISIONS else ())}
    unknown = [c for c in precision if c not in MODEL_COMPONENTS + OPTIONAL_COMPONENTS]
    if unknown:
        raise ExportError(f"unknown component {unknown[0]!r} in --precision; choose among {', '.join(MODEL_COMPONENTS + OPTIONAL_COMPONENTS)}")
    out = {c: precision.get(c, "fp32") for c in MODEL_COMPONENTS}
    out.update({c: precision[c] for c in OPTIONAL_COMPONENTS if c in precision})
    for c, p in out.items():
        if p not in PRECISIONS:
            raise ExportError(f"unknown precision {p!r} for {c}; choose one of {', '.join(PRECISIONS)} (or a target: {', '.join(DEFAULTS)})")
    return out


def export_bundle(src, out, *, precision="fp32", tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False,
                  progress=None, name: str | None = None, chunk_bytes: int = CHUNK_BYTES, quality: tuple | None = None,
                  arch: str | None = None, prediction_type: str | None = None, config_dir=None, judge=None,
                  attention: bool | None = None, umap: bool | None = None) -> dict:
    """Export `src` to the bundle folder `out` atomically; returns the manifest.

    src: a diffusers SD folder, a single .safetensors/.ckpt file, or an fp32 bundle (then only the
    precision changes: export once, derive fp16/int8/int4 builds in seconds). quality: (number of
    prompt×seed images, steps) for the PSNR report of a non-fp32 build; default all of them, 10 steps.
    arch / prediction_type / config_dir: for a single file, override what its header suggests.
    judge: for a non-fp32 build, `judge(manifest, bundle_dir) -> dict | None` adds prompt-adherence
    scores of both builds to the quality report (see export.quality).
    attention: export the UNet with per-token cross-attention maps as an extra output (export.attention);
    None: on for explainer models (a checkpoint with an explainer.json model card), off otherwise.
    umap: generate reference trajectories natively and store a fitted UMAP with its projection graph
    (export.umap); None: on for explainer models (for a real SD checkpoint it is hours of CPU)."""
    src, out = Path(src), Path(out)
    precision = resolve_precision(precision)
    if src.is_dir() and (src / "manifest.json").is_file():
        return derive_bundle(src, out, precision=precision, overwrite=overwrite, progress=progress, name=name,
                             chunk_bytes=chunk_bytes, quality=quality, judge=judge)
    single = None
    if src.is_file():
        from . import single_file

        single = single_file.inspect(src, arch=arch, prediction_type=prediction_type, config_dir=config_dir)  # header only
    else:
        facts = inspect_checkpoint(src)
    tmp, parts, lock = _begin(out, overwrite, ("optimum", "quantized", "pipeline"))
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
        att = None
        if attention or (attention is None and (src / "explainer.json").is_file()):
            with _stage(progress, "UNet with cross-attention maps"):
                att = export_unet_with_attention(src, tmp, facts, chunk_bytes)
                files["unet"] = att["files"]
        with _stage(progress, "write op graphs"):
            for op, rel in opgraphs.write_all(tmp).items():
                files[op] = [rel]
            clip = export_clip(src, tmp, facts["text_hidden_size"])  # the default model's CLIP tower; None for SD checkpoints
            if clip:
                files["clip_image"] = clip["files"]
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
            manifest = build_manifest(src, tmp, files, facts, errors, tolerance, name)
            if clip:
                manifest["components"]["clip_image"] = clip  # its own entry: I/O, verification, logit scale
            if att:
                manifest["components"]["unet"].setdefault("verification", {})["attention"] = att["verification"].get("attention")
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if umap or (umap is None and (src / "explainer.json").is_file()):
            with _stage(progress, "UMAP of reference trajectories"):
                from .umap import add_to_manifest, build_umap

                res = build_umap(tmp)
                add_to_manifest(tmp, res)
                manifest = json.loads((tmp / "manifest.json").read_text())
                manifest["umap_report"] = res["report"]
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        final = tmp
        if any(p != "fp32" for p in precision.values()):
            with _stage(progress, "quantize and measure quality"):
                manifest = apply_precision(tmp, quant, files, facts, manifest, precision, chunk_bytes, quality, judge)
                final = quant
        return _finish(final, out, manifest, t_start)
    finally:
        _end(tmp, parts, lock)


def derive_bundle(fp32_bundle, out, *, precision, overwrite: bool = False, progress=None, name: str | None = None,
                  chunk_bytes: int = CHUNK_BYTES, quality: tuple | None = None, judge=None) -> dict:
    """A precision build from an exported fp32 bundle, without re-exporting from PyTorch."""
    from runtime.bundle import Bundle, BundleError

    fp32_bundle, out = Path(fp32_bundle), Path(out)
    try:
        manifest = Bundle.from_dir(fp32_bundle, verify=True).manifest  # never launder a corrupted bundle into fresh hashes
    except BundleError as e:
        raise ExportError(f"{fp32_bundle}: {e}") from None
    not32 = [c for c, v in manifest["components"].items() if v.get("precision", "fp32") != "fp32"]
    if not32:
        raise ExportError(f"{fp32_bundle} holds {', '.join(not32)} in {manifest['components'][not32[0]]['precision']}; derive builds from an fp32 bundle")
    if all(p == "fp32" for p in resolve_precision(precision).values()):
        raise ExportError(f"{fp32_bundle} is already an fp32 bundle; choose another precision (fp16, int8, int4, fp16w, int8w, int8w-all, wasm, webgpu, small)")
    files = {c: list(v["files"]) for c, v in manifest["components"].items()}
    facts = {"latent_size": manifest["model"]["latent_size"], "text_max_length": manifest["model"]["text_max_length"],
             "text_hidden_size": manifest["model"]["text_hidden_size"]}
    if name:
        manifest["name"] = name
    tmp, parts, lock = _begin(out, overwrite, ())
    t_start = time.perf_counter()
    try:
        with _stage(progress, "quantize and measure quality"):
            shutil.rmtree(tmp)
            manifest = apply_precision(fp32_bundle, tmp, files, facts, manifest, resolve_precision(precision), chunk_bytes, quality, judge)
        return _finish(tmp, out, manifest, t_start)
    finally:
        _end(tmp, parts, lock)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _clean_stale(folder: Path) -> None:
    """Remove work folders and locks that exports killed with SIGKILL left behind (their PID is dead)."""
    for p in folder.glob(".*.partial-*"):
        pid = p.name.rsplit(".partial-", 1)[1].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    for lock in folder.glob(".*.export-lock"):
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if not _pid_alive(pid):
            lock.unlink(missing_ok=True)


def _begin(out: Path, overwrite: bool, parts: tuple) -> tuple[Path, list[Path], Path]:
    """Check the target, take its lock and make the hidden work folders beside it (removed on success,
    failure, Ctrl-C or SIGTERM by _end; after a SIGKILL by the next export in that folder)."""
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(f"{out} already exists; pass --overwrite to replace it")
        if not out.is_dir() or out.is_symlink():
            raise ExportError(f"{out} is a file, not a bundle folder; refusing to replace it")
        if not (out / "manifest.json").is_file() and any(out.iterdir()):
            raise ExportError(f"{out} is a folder but not a bundle (no manifest.json); --overwrite only replaces bundles, "
                              "so nothing in it was touched")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(out.parent)
        lock = out.parent / f".{out.name}.export-lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = lock.read_text().strip()
            except OSError:
                owner = "?"
            raise ExportError(f"another export to {out} is running (process {owner}); wait for it or choose another folder") from None
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
        tmp.mkdir()
    except OSError as e:
        raise ExportError(f"cannot write beside {out}: {e.strerror or e}") from None
    return tmp, [out.parent / f".{out.name}.partial-{os.getpid()}-{p}" for p in parts], lock


def _end(tmp: Path, parts, lock: Path) -> None:
    for d in (tmp, *parts):
        shutil.rmtree(d, ignore_errors=True)
    lock.unlink(missing_ok=True)


def _finish(final: Path, out: Path, manifest: dict, t_start: float) -> dict:
    if out.exists():
        shutil.rmtree(out)
    final.rename(out)
    manifest["export_seconds"] = time.perf_counter() - t_start
    return manifest
