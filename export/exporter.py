"""Export a diffusers SD checkpoint (or derive a precision build from a bundle) into a bundle folder, atomically.

Why optimum-onnx: it is the maintained exporter for diffusers pipelines and knows each component's
inputs, outputs and dynamic axes. The other modules add what the browser needs: verification
against PyTorch (verify), the op graphs (opgraphs), the manifest with sha256 for every file
(manifest), quantized builds with their quality report (quantize, quality); this one sequences them
in a hidden work folder renamed into place, so an interrupted export never leaves a half bundle.

The console gets one line per stage; what the libraries print meanwhile (torch's TracerWarnings,
optimum's and diffusers' notes, progress bars) goes to the bundle's export.log, counted in the
returned report (`export_log`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

__all__ = [
    "ExportError",
    "UnsupportedCheckpoint",
    "inspect_checkpoint",
    "source_fingerprint",
    "export_bundle",
    "derive_bundle",
    "resolve_precision",
    "ExportOptions",
    "LOG_FILE",
]

LOG_FILE = "export.log"  # beside manifest.json: every warning and library message of the export, by stage


@dataclass(kw_only=True)
class ExportOptions:
    """How export_bundle works; every field defaults to the command line's default."""

    precision: Any = "fp32"  # a precision, a target ('small', 'wasm', 'webgpu') or {component: precision}
    tolerance: float = DEFAULT_TOLERANCE  # largest relative error vs PyTorch that verification accepts
    overwrite: bool = False
    progress: Callable[[str, str], None] | None = None  # progress(stage, "start" | "N.N s")
    name: str | None = None
    chunk_bytes: int = CHUNK_BYTES  # largest bundle file: bigger weights go to chunks
    quality: tuple | None = None  # (prompt×seed images, steps) for a non-fp32 build's PSNR; default all, 10 steps
    judge: Callable | None = None  # judge(manifest, bundle_dir) -> dict | None: adherence scores for the quality report
    attention: bool | None = None  # the UNet with cross-attention maps; None: on for models with a model card
    umap: bool | None = None  # reference trajectories + fitted UMAP; None: on for models with a model card
    # a single .safetensors/.ckpt file only: override what its header suggests
    arch: str | None = None
    prediction_type: str | None = None
    config_dir: Any = None


class _Stages:
    """An export's stages: one progress call per stage for the console, and everything the libraries
    print or warn meanwhile captured into the export log under the stage's name."""

    def __init__(self, progress):
        self.progress = progress
        self.log: list[str] = []
        self.warnings = 0
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        if self.progress:
            self.progress(name, "start")
        caught: list = []
        text: list = []
        try:
            with _captured_output() as text, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")  # each warning once per place, as Python shows them
                yield
        except (ExportError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # an unexpected failure: what the libraries said is the best clue, so show it
            sys.stderr.write(self._record(name, caught, text, failed=True))
            raise
        finally:
            self.seconds[name] = round(time.perf_counter() - t, 2)
        self._record(name, caught, text)
        if self.progress:
            noted = f", {len(caught)} warning(s) in {LOG_FILE}" if caught else ""
            self.progress(name, f"{self.seconds[name]:.1f} s{noted}")

    def _record(self, name: str, caught: list, text: list, failed: bool = False) -> str:
        lines = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
        self.warnings += len(lines)
        body = "".join(text).strip()
        entry = (
            f"== {name}{' (failed)' if failed else ''}: {len(lines)} warning(s)\n"
            + "".join(f"{x}\n" for x in lines)
            + (body + "\n" if body else "")
        )
        self.log.append(entry)
        return entry

    def write(self, folder: Path) -> dict:
        """The export log into the bundle folder; returns its summary for the report."""
        (folder / LOG_FILE).write_text("".join(self.log), encoding="utf-8")
        return {"file": LOG_FILE, "warnings": self.warnings, "stage_seconds": dict(self.seconds)}


class _StderrSink(io.TextIOBase):
    """sys.stderr during a stage. A library that keeps a reference to it (a logging handler made
    during the stage) writes to the real stderr once the stage is over."""

    def __init__(self, real):
        self.real, self.parts = real, None

    def write(self, s: str) -> int:
        (self.parts.append(s) if self.parts is not None else self.real.write(s))
        return len(s)

    def flush(self) -> None:
        if self.parts is None:
            self.real.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _captured_output():
    """Python's sys.stderr and the process's file descriptor 2 (onnxruntime's and torch's C++ messages)
    into a list of text chunks, restored afterwards."""
    parts: list[str] = []
    sink = _StderrSink(sys.stderr)
    sink.parts = parts
    with contextlib.suppress(Exception):
        sys.__stderr__.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as fd_log:
        os.dup2(fd_log.fileno(), 2)
        try:
            with contextlib.redirect_stderr(sink):
                yield parts
        finally:
            with contextlib.suppress(Exception):
                sys.__stderr__.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.parts = None
            fd_log.seek(0)
            parts.append(fd_log.read().decode("utf-8", "replace"))


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
        raise ExportError(
            f"unknown component {unknown[0]!r} in --precision; choose among {', '.join(MODEL_COMPONENTS + OPTIONAL_COMPONENTS)}"
        )
    out = {c: precision.get(c, "fp32") for c in MODEL_COMPONENTS}
    out.update({c: precision[c] for c in OPTIONAL_COMPONENTS if c in precision})
    for c, p in out.items():
        if p not in PRECISIONS:
            raise ExportError(
                f"unknown precision {p!r} for {c}; choose one of {', '.join(PRECISIONS)} (or a target: {', '.join(DEFAULTS)})"
            )
    return out


def export_bundle(src, out, options: ExportOptions | None = None, **fields) -> dict:
    """Export `src` to the bundle folder `out` atomically; returns the manifest (with the export's
    report: export_seconds, export_log). `fields` are ExportOptions' (they override `options`).

    src: a diffusers SD folder, a single .safetensors/.ckpt file, or an fp32 bundle (then only the
    precision changes: export once, derive fp16/int8/int4 builds in seconds).
    attention: export the UNet with per-token cross-attention maps as an extra output (export.attention).
    umap: generate reference trajectories natively and store a fitted UMAP with its projection graph
    (export.umap; for a real SD checkpoint it is hours of CPU)."""
    opts = dataclasses.replace(options, **fields) if options else ExportOptions(**fields)
    src, out = Path(src), Path(out)
    precision = resolve_precision(opts.precision)
    if src.is_dir() and (src / "manifest.json").is_file():
        return derive_bundle(
            src,
            out,
            precision=precision,
            overwrite=opts.overwrite,
            progress=opts.progress,
            name=opts.name,
            chunk_bytes=opts.chunk_bytes,
            quality=opts.quality,
            judge=opts.judge,
        )
    # 0. Refuse what cannot be exported, from configs or the file's header alone, before any heavy work
    single = _inspect_single_file(src, opts) if src.is_file() else None
    facts = None if single else inspect_checkpoint(src)
    tmp, parts, lock = _begin(out, opts.overwrite, ("optimum", "quantized", "pipeline"))
    work, quant, pipeline_dir = parts
    stage, t_start = _Stages(opts.progress), time.perf_counter()
    try:
        # 1. A single file becomes a diffusers folder (read offline with the shipped configs)
        if single:
            with stage(f"load single file ({single['arch']})"):
                src, facts = _single_file_to_folder(src, pipeline_dir, single, opts)
        has_card = (src / "explainer.json").is_file()  # an explainer model: attention maps and UMAP by default
        # 2. The three models through optimum, then the UNet again with its attention maps
        files = _export_models(src, work, tmp, opts.chunk_bytes, stage)
        attention = None
        if opts.attention or (opts.attention is None and has_card):
            with stage("UNet with cross-attention maps"):
                attention = export_unet_with_attention(src, tmp, facts, opts.chunk_bytes)
                files["unet"] = attention["files"]
        # 3. The small op graphs (guidance, scheduler update, x0, RGBA) and the CLIP image tower if any
        with stage("write op graphs"):
            clip = _write_op_graphs(src, tmp, facts, files)
        # 4. Every model against PyTorch on random inputs
        with stage("verify against PyTorch"):
            errors = _verify(src, tmp, files, facts, opts.tolerance)
        # 5. The manifest, in memory: tokenizer, scheduler, components, file table, model card
        with stage("tokenizer, scheduler, manifest"):
            manifest = _build_manifest(src, tmp, files, facts, errors, opts, clip, attention)
        # 6. Reference trajectories and their UMAP (needs the bundle's models, run natively)
        if opts.umap or (opts.umap is None and has_card):
            with stage("UMAP of reference trajectories"):
                _add_umap(tmp, manifest)
        _write_manifest(tmp, manifest)
        # 7. Another precision: derived from the fp32 build just written, with its quality report
        final = tmp
        if any(p != "fp32" for p in precision.values()):
            with stage("quantize and measure quality"):
                manifest = apply_precision(
                    tmp, quant, files, facts, manifest, precision, opts.chunk_bytes, opts.quality, opts.judge
                )
                final = quant
        return _finish(final, out, manifest, t_start, stage)
    finally:
        _end(tmp, parts, lock)


def _inspect_single_file(src: Path, opts: ExportOptions) -> dict:
    from . import single_file

    return single_file.inspect(
        src, arch=opts.arch, prediction_type=opts.prediction_type, config_dir=opts.config_dir
    )  # header only


def _single_file_to_folder(src: Path, folder: Path, single: dict, opts: ExportOptions) -> tuple[Path, dict]:
    """Stage 1: the single file as a diffusers pipeline folder, and that folder's facts (source: the file)."""
    from . import single_file

    pipeline = single_file.to_pipeline_folder(
        src,
        folder,
        arch=None if opts.config_dir else single["arch"],
        prediction_type=single["prediction_type"],
        config_dir=opts.config_dir,
    )
    return pipeline, {**inspect_checkpoint(pipeline), "source": str(src.resolve())}


def _export_models(src: Path, work: Path, tmp: Path, chunk_bytes: int, stage: _Stages) -> dict:
    """Stage 2: text encoder, UNet and VAE decoder through optimum, moved into the bundle (chunked when big)."""
    with stage("export ONNX (optimum)"):
        from optimum.exporters.onnx import main_export

        main_export(str(src), output=str(work), task="text-to-image", do_validation=False, device="cpu")
    with stage("collect models"):
        files = {comp: _move_model(work / comp / "model.onnx", tmp, comp, chunk_bytes) for comp in MODEL_COMPONENTS}
        shutil.rmtree(work)
    return files


def _write_op_graphs(src: Path, tmp: Path, facts: dict, files: dict) -> dict | None:
    """Stage 3: the op graphs' files join `files`; returns the CLIP tower's manifest entry (None for SD checkpoints)."""
    for op, rel in opgraphs.write_all(tmp).items():
        files[op] = [rel]
    clip = export_clip(src, tmp, facts["text_hidden_size"])
    if clip:
        files["clip_image"] = clip["files"]
    return clip


def _verify(src: Path, tmp: Path, files: dict, facts: dict, tolerance: float) -> dict:
    """Stage 4: each model's error vs PyTorch; above the tolerance the export is refused."""
    errors = verify(src, tmp, files, facts)
    bad = {k: v for k, v in errors.items() if v["relative"] > tolerance}
    if bad:
        k, v = next(iter(bad.items()))
        raise ExportError(
            f"{k} differs from PyTorch by {v['max_abs_error']:.3g} (reference max {v['max_abs_reference']:.3g}), "
            f"above tolerance {tolerance}; the export is not trustworthy"
        )
    return errors


def _build_manifest(src: Path, tmp: Path, files: dict, facts: dict, errors: dict, opts: ExportOptions, clip, attention) -> dict:
    """Stage 5: the tokenizer's files copied, and the manifest (not yet written)."""
    (tmp / "tokenizer").mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(src / "tokenizer" / f, tmp / "tokenizer" / f)
    manifest = build_manifest(src, tmp, files, facts, errors, opts.tolerance, opts.name)
    if clip:
        manifest["components"]["clip_image"] = clip  # its own entry: I/O, verification, logit scale
    if attention:
        manifest["components"]["unet"].setdefault("verification", {})["attention"] = attention["verification"].get("attention")
    return manifest


def _add_umap(tmp: Path, manifest: dict) -> None:
    """Stage 6: UMAP bases and projection graph written into the bundle, their entries into the manifest."""
    from .umap import build_umap, merge_into_manifest

    result = build_umap(tmp, manifest=manifest)
    merge_into_manifest(manifest, result)
    manifest["umap_report"] = result["report"]


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def derive_bundle(
    fp32_bundle,
    out,
    *,
    precision,
    overwrite: bool = False,
    progress=None,
    name: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    quality: tuple | None = None,
    judge=None,
) -> dict:
    """A precision build from an exported fp32 bundle, without re-exporting from PyTorch."""
    from runtime.bundle import Bundle, BundleError

    fp32_bundle, out = Path(fp32_bundle), Path(out)
    try:
        manifest = Bundle.from_dir(fp32_bundle, verify=True).manifest  # never launder a corrupted bundle into fresh hashes
    except BundleError as e:
        raise ExportError(f"{fp32_bundle}: {e}") from None
    not32 = [c for c, v in manifest["components"].items() if v.get("precision", "fp32") != "fp32"]
    if not32:
        raise ExportError(
            f"{fp32_bundle} holds {', '.join(not32)} in {manifest['components'][not32[0]]['precision']}; derive builds from an fp32 bundle"
        )
    if all(p == "fp32" for p in resolve_precision(precision).values()):
        raise ExportError(
            f"{fp32_bundle} is already an fp32 bundle; choose another precision (fp16, int8, int4, int8c, fp16w, int8w, int8w-all, wasm, webgpu, small)"
        )
    files = {c: list(v["files"]) for c, v in manifest["components"].items()}
    facts = {
        "latent_size": manifest["model"]["latent_size"],
        "text_max_length": manifest["model"]["text_max_length"],
        "text_hidden_size": manifest["model"]["text_hidden_size"],
    }
    if name:
        manifest["name"] = name
    tmp, parts, lock = _begin(out, overwrite, ())
    stage, t_start = _Stages(progress), time.perf_counter()
    try:
        with stage("quantize and measure quality"):
            shutil.rmtree(tmp)
            manifest = apply_precision(
                fp32_bundle, tmp, files, facts, manifest, resolve_precision(precision), chunk_bytes, quality, judge
            )
        return _finish(tmp, out, manifest, t_start, stage)
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
            raise ExportError(
                f"{out} is a folder but not a bundle (no manifest.json); --overwrite only replaces bundles, "
                "so nothing in it was touched"
            )
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
            raise ExportError(
                f"another export to {out} is running (process {owner}); wait for it or choose another folder"
            ) from None
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


def _finish(final: Path, out: Path, manifest: dict, t_start: float, stage: _Stages) -> dict:
    """The export log beside the manifest, then the finished folder renamed into place; returns the report."""
    manifest["export_log"] = stage.write(final)
    if out.exists():
        shutil.rmtree(out)
    final.rename(out)
    manifest["export_seconds"] = time.perf_counter() - t_start
    return manifest
