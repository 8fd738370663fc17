"""`diffusion-explainer`: one entry point for the project's three uses and their helpers.

Heavy imports (torch, onnxruntime, numpy) happen inside the subcommand that needs them, so
`--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from runtime.schedulers import SCHEDULERS
from runtime.trace import Request

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "default"
DEFAULT_BUNDLE = ROOT / "bundles" / "default"


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


class _StageProgress:
    """A rich progress bar over the export's stages, with the current stage and elapsed time."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} stages"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("export", total=total)

    def __call__(self, stage: str, state: str) -> None:
        if state == "start":
            self.progress.update(self.task, description=stage)
        else:
            self.progress.console.print(f"[green]✓[/] {stage} ({state})")
            self.progress.advance(self.task)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()


def scene_judge():
    """The default model's evaluation judge as export's quality report takes it, or None without train/'s extras.

    Why here: export/ never imports train/; the command line hands the judge over."""
    try:
        from train import evaluate
    except ImportError:
        return None

    def judge(manifest: dict, bundle_dir, seeds=(0, 1, 2, 3)) -> dict | None:
        return evaluate.adherence(bundle_dir, seeds=seeds) if evaluate.is_scene_model(manifest.get("about")) else None

    judge.description = "train/evaluate.py: held-out single-object prompts, native onnxruntime"
    return judge


def cmd_export(a) -> int:
    from export.exporter import ExportError, export_bundle

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally` on kill
    try:
        precision = dict(p.split("=") for p in a.precision.split(",")) if "=" in a.precision else a.precision
        src = Path(a.checkpoint)
        attention = a.attention or (a.attention is None and (src / "explainer.json").is_file())
        umap = a.umap or (a.umap is None and (src / "explainer.json").is_file())
        stages = (
            1 if (src / "manifest.json").is_file() else 5 + (a.precision != "fp32") + src.is_file() + bool(attention) + bool(umap)
        )
        with _StageProgress(total=stages) as progress:
            m = export_bundle(
                a.checkpoint,
                a.out,
                precision=precision,
                overwrite=a.overwrite,
                progress=progress,
                name=a.name,
                chunk_bytes=int(a.chunk_mb * 2**20),
                arch=a.arch,
                prediction_type=a.prediction_type,
                config_dir=a.config,
                judge=scene_judge(),
                attention=a.attention,
                umap=a.umap,
            )
    except ExportError as e:
        return _fail(str(e))
    except OSError as e:  # a read-only or full disk, a vanished folder: one line, the work folder is gone
        return _fail(f"export to {a.out} failed: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}")
    size = sum(f["bytes"] for f in m["files"].values())
    print(f"bundle written to {a.out} ({size / 1e6:.1f} MB, {m['export_seconds']:.1f} s)")
    if m.get("export_log", {}).get("warnings"):
        print(
            f"  {m['export_log']['warnings']} warnings from the exporting libraries (torch's tracer and others): "
            f"{Path(a.out) / m['export_log']['file']}"
        )
    over = [(rel, f["bytes"]) for rel, f in m["files"].items() if f["bytes"] > a.chunk_mb * 2**20]
    for rel, n in over:  # chunks split between tensors: one tensor bigger than a chunk stays whole
        print(
            f"  note: {rel} is {n / 2**20:.1f} MiB, over --chunk-mb {a.chunk_mb:g}: it holds one tensor that is bigger than a chunk"
        )
    for comp in ("text_encoder", "unet", "vae_decoder"):
        v = m["components"][comp].get("verification")
        if v:
            print(f"  {comp:13s} max abs error vs PyTorch {v['max_abs_error']:.2e}")
    if "umap_report" in m:
        from export.umap import format_report

        print(format_report(m["umap_report"]))
    if "quality" in m:
        for comp, q in m["quality"]["components"].items():
            print(
                f"  {comp:13s} {q['precision']}: {q['bytes'] / 1e6:.1f} MB (fp32 {q['bytes_fp32'] / 1e6:.1f} MB), "
                f"max abs error vs fp32 {q['max_abs_error_vs_fp32']:.2e}"
            )
        psnr = m["quality"]["image"]["psnr_db_vs_fp32"]
        print(f"  final image PSNR vs fp32 bundle: min {psnr['min']:.1f} dB, mean {psnr['mean']:.1f} dB")
        adh = m["quality"].get("adherence")
        if adh:
            f, b = adh["fp32"], adh["this build"]
            print(
                f"  judge at guidance {b['guidance']:g} ({b['prompts']} held-out prompts × {len(b['seeds'])} seeds): "
                f"object {b['object_accuracy']:.3f} (fp32 {f['object_accuracy']:.3f}), "
                f"background {b['background_accuracy']:.3f} (fp32 {f['background_accuracy']:.3f})"
            )
    return 0


def cmd_prove_scale(a) -> int:
    from export.scale_proof import run

    run(a.arch, Path(a.work), a.chunk_mb)
    return 0


def _write_png(path: Path, tensor) -> None:
    from runtime.png import encode_png

    h, w, _ = tensor.shape
    path.write_bytes(encode_png(bytes(tensor.data), w, h))


def max_threads() -> int:
    import os

    return 2 * (os.cpu_count() or 1)


def check_outputs(out: Path, trace: Path | None) -> str | None:
    """Why the outputs cannot be written, checked before the model runs (nothing partial is left), or None."""
    import os

    if out.is_dir():
        return f"--out {out} is a folder; give a file name such as {out / 'image.png'}"
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        return f"--out {out}: the folder {parent} does not exist"
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        return f"--out {out}: cannot write there (permission denied)"
    if trace is not None and trace.suffix == ".dxtrace":  # one file (runtime/tracefile.py)
        if trace.is_dir():
            return f"--trace {trace} is a folder; a name ending in .dxtrace is written as one file"
        tparent = trace.parent if str(trace.parent) else Path(".")
        if not tparent.is_dir():
            return f"--trace {trace}: the folder {tparent} does not exist"
        if not os.access(tparent, os.W_OK) or (trace.exists() and not os.access(trace, os.W_OK)):
            return f"--trace {trace}: cannot write there (permission denied)"
    elif trace is not None:
        if trace.exists() and not trace.is_dir():
            return f"--trace {trace} is an existing file; give a folder (it will be created) or a name ending in .dxtrace"
        if trace.is_dir() and any(trace.iterdir()) and not (trace / "trace.json").is_file():
            return f"--trace {trace} is a folder with other files in it; give a new or empty folder"
        tparent = trace.parent if str(trace.parent) else Path(".")
        if not trace.exists() and not tparent.is_dir():
            return f"--trace {trace}: the folder {tparent} does not exist"
        if not os.access(trace if trace.exists() else tparent, os.W_OK):
            return f"--trace {trace}: cannot write there (permission denied)"
    return None


def cmd_generate(a) -> int:
    from runtime.bundle import Bundle, BundleError
    from runtime.native import NativeBackend
    from runtime.pipeline import Pipeline, Request, run_sync

    if a.threads is not None and not 1 <= a.threads <= max_threads():
        return _fail(
            f"--threads must be a whole number from 1 to {max_threads()} (twice this machine's {max_threads() // 2} CPUs)"
        )
    problem = check_outputs(Path(a.out), Path(a.trace) if a.trace else None)
    if problem:
        return _fail(problem)
    try:
        bundle = Bundle.from_dir(a.bundle)
    except BundleError as e:
        return _fail(str(e))
    req = Request(
        prompt=a.prompt,
        negative_prompt=a.negative_prompt,
        seed=a.seed,
        guidance=a.guidance,
        steps=a.steps,
        scheduler=a.scheduler or "",
        preview_every=(1 if a.preview_every is None else a.preview_every) if a.trace else 0,
    )
    try:
        req.validate(bundle.manifest["scheduler"]["default"])
    except ValueError as e:
        return _fail(str(e))
    pipe = Pipeline(bundle, NativeBackend(a.bundle, threads=a.threads))

    async def main():
        await pipe.load()
        return await pipe.generate(req)

    try:
        trace = run_sync(main())
    except BundleError as e:
        return _fail(str(e))
    out = Path(a.out)
    try:
        _write_png(out, trace.image)
    except OSError as e:
        return _fail(f"cannot write {out}: {e.strerror or e}")
    if trace.tokens.dropped_words:
        print(
            f"note: the prompt is longer than CLIP's 77 tokens; dropped: {' '.join(trace.tokens.dropped_words)}", file=sys.stderr
        )
    t = trace.timings_ms
    print(
        f"{out}  ({len(trace.steps)} steps, {t['total']:.0f} ms total, {t.get('unet', 0) / max(1, len(trace.steps)):.1f} ms per UNet step)"
    )
    if a.trace and Path(a.trace).suffix == ".dxtrace":
        from runtime import tracefile

        try:
            sizes = tracefile.write(
                trace,
                Path(a.trace),
                bundle=tracefile.bundle_facts(bundle.manifest, has_clip=pipe.has_clip()),
                request_info=Request.describe(bundle.manifest["scheduler"]["default"], bundle.manifest.get("about")),
                producer=f"diffusion-explainer generate ({trace.backend or 'onnxruntime'})",
            )
        except OSError as e:
            return _fail(f"cannot write the trace to {a.trace}: {e.strerror or e}")
        print(
            f"trace written to {a.trace} ({sizes['file'] / 1e6:.2f} MB: tensors as float16, step previews ≤ {tracefile.PREVIEW_MAX} px)"
        )
    elif a.trace:
        try:
            write_trace(trace, Path(a.trace))
        except OSError as e:
            return _fail(f"cannot write the trace to {a.trace}: {e.strerror or e}")
        print(f"trace written to {a.trace}")
    return 0


def write_trace(trace, folder: Path) -> None:
    """The Trace as files, in the page's message shape (runtime/trace.py): trace.json holds the plan,
    the steps and the run's results with camelCase keys; each tensor is a file (raw little-endian
    values, images also as PNG) referenced as {file, dtype, shape}."""
    from runtime.trace import RUN_DONE_FIELDS, step_message, to_message

    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1 << 30))

    def tensor(prefix):
        def write(t):
            name = f"{prefix}_{next(counter):03d}"
            if t.dtype == "uint8" and len(t.shape) == 3 and t.shape[2] == 4:
                _write_png(folder / f"{name}.png", t)
                return {"file": f"{name}.png", "dtype": t.dtype, "shape": list(t.shape)}
            (folder / f"{name}.{t.dtype}").write_bytes(t.data.tobytes())
            return {"file": f"{name}.{t.dtype}", "dtype": t.dtype, "shape": list(t.shape)}

        return write

    doc = to_message(trace.plan, tensor("plan"))
    doc["steps"] = [step_message(s, tensor(f"step{s.index:03d}")) for s in trace.steps]
    doc.update(to_message(trace, tensor("run"), only=RUN_DONE_FIELDS))
    (folder / "trace.json").write_text(json.dumps(doc, indent=1))


def cmd_serve(a) -> int:
    from .serve import serve

    return serve(bundle=Path(a.bundle) if a.bundle else None, host=a.host, port=a.port, rebuild=a.rebuild)


def cmd_build_site(a) -> int:
    from .site import SiteError, build_site, site_bytes

    try:
        out = build_site(Path(a.out), bundle=Path(a.bundle) if a.bundle else None, rebuild=a.rebuild)
    except SiteError as e:
        return _fail(str(e))
    b = site_bytes(out)
    print(
        f"wrote {out}: a first visit downloads {b['gzip_bytes'] / 1e6:.1f} MB gzip ({b['plain_bytes'] / 1e6:.1f} MB decoded); "
        "publish the folder as it is on any static host (see README: Publish the page as a static site)"
    )
    return 0


def cmd_train(a) -> int:
    import logging

    from train import stages

    stages.RUN_DIR.mkdir(parents=True, exist_ok=True)
    if a.continue_from:
        stages.continue_from(Path(a.continue_from))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(stages.RUN_DIR / "train.log")],
    )
    from train.clip_image import train_clip_image

    table = {**stages.STAGES, "clip_image": train_clip_image}
    unknown = [s for s in a.stages if s not in table]
    if unknown:
        return _fail(f"unknown stage {unknown[0]!r}; choose from {', '.join(table)}")
    for flag, share in (("--pair-share", a.pair_share), ("--hard-share", a.hard_share)):
        if share is not None and not 0 <= share <= 1:
            return _fail(f"{flag} must be between 0 and 1, not {share}")
    if a.object_weight is not None and not 1 <= a.object_weight <= 100:
        return _fail(f"--object-weight must be between 1 and 100, not {a.object_weight}")
    unet = {k: v for k, v in (("pair_share", a.pair_share), ("hard_share", a.hard_share)) if v is not None}
    options = {"unet": unet} if unet else {}
    if a.camouflage is not None and not 0 <= a.camouflage <= 1:
        return _fail(f"--camouflage must be between 0 and 1, not {a.camouflage}")
    vae_tune = {k: v for k, v in (("object_weight", a.object_weight), ("camouflage", a.camouflage)) if v is not None}
    if vae_tune:
        options["vae_tune"] = vae_tune
    stages.run(a.stages or stages.MODEL_STAGES, {k: float(v) for k, v in (m.split("=") for m in a.minutes)}, table, options)
    return 0


def cmd_evaluate(a) -> int:
    import json

    from train import evaluate

    rc = 0 if a.attention_only else evaluate.main(a)
    if a.attention:
        from train.attention_eval import evaluate_attention

        res = evaluate_attention(
            a.attention,
            seeds=tuple(range(min(a.seeds, 2) if a.quick else a.seeds)),
            steps=10 if a.quick else a.steps,
            prompts=6 if a.quick else None,
        )
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "attention.json").write_text(json.dumps(res, indent=1))
        print(
            f"attention maps ({res['prompts']} held-out prompts × {len(res['seeds'])} seeds, guidance {res['guidance']:g}): "
            f"mIoU object word {res['miou_object']:.3f}, background word {res['miou_background_word']:.3f} "
            f"(DAAM's fixed τ=0.4: {res['daam_tau']['object']:.3f} / {res['daam_tau']['background_word']:.3f})"
        )
    return rc


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="diffusion-explainer", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("serve", help="build the page if needed and serve it with a bundle on 127.0.0.1")
    p.add_argument(
        "--bundle", help=f"bundle folder (default: {DEFAULT_BUNDLE.relative_to(ROOT)}, exported from models/default on first use)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--rebuild", action="store_true", help="rebuild the web app even if a build exists")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser(
        "build-site", help="write the page and a bundle as a folder any static host can serve (no special headers)"
    )
    p.add_argument("out", help="the folder to write (new, empty, or a site built here before)")
    p.add_argument(
        "--bundle", help=f"bundle folder (default: {DEFAULT_BUNDLE.relative_to(ROOT)}, exported from models/default on first use)"
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the web app even if a build exists")
    p.set_defaults(fn=cmd_build_site)

    p = sub.add_parser("export", help="export a diffusers SD checkpoint to a web bundle")
    p.add_argument(
        "checkpoint",
        help="a diffusers SD folder, a single .safetensors/.ckpt file, or an fp32 bundle (to derive another precision from it)",
    )
    p.add_argument("out")
    p.add_argument("--name")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--precision",
        default="fp32",
        help="fp32 | fp16 | int8 | int4 for every component, a target's defaults (wasm, webgpu), "
        "or per component: unet=fp16,text_encoder=int8,vae_decoder=fp32",
    )
    p.add_argument(
        "--chunk-mb", type=float, default=512, help="largest bundle file in MiB: bigger weights go to chunks (default 512)"
    )
    p.add_argument(
        "--arch", help="single file only: sd1, sd2 (768-v), sd2-base or sd-turbo, when the file's name and header do not say"
    )
    p.add_argument("--prediction-type", help="single file only: epsilon or v_prediction (the weights cannot tell)")
    p.add_argument("--config", help="single file only: a diffusers folder whose configs describe a custom architecture")
    p.add_argument(
        "--attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the UNet with per-token cross-attention maps for the page's attention view "
        "(default: on for models with an explainer.json model card, such as the default model)",
    )
    p.add_argument(
        "--umap",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="generate reference trajectories and store a fitted UMAP for the page's umap view "
        "(default: on for models with an explainer.json model card; minutes for the default model)",
    )
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser(
        "prove-scale",
        help="export SD 1.5's real architecture (random weights) to fp32 and fp16 bundles "
        "and run one native UNet step on each (minutes, ~15 GB disk)",
    )
    p.add_argument("--arch", default="sd15")
    p.add_argument("--work", default="bundles/scale-proof")
    p.add_argument("--chunk-mb", type=int, default=512)
    p.set_defaults(fn=cmd_prove_scale)

    p = sub.add_parser("generate", help="generate an image natively (onnxruntime) from a bundle")
    p.add_argument("prompt")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    limits = Request.describe()["limits"]
    p.add_argument("--negative-prompt", default=Request.default("negative_prompt"))
    p.add_argument(
        "--seed",
        type=int,
        default=Request.default("seed"),
        help=f"initial noise seed, {limits['seed']['min']}–{limits['seed']['max']} (default %(default)s)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=Request.default("guidance"),
        help=f"classifier-free guidance scale, {limits['guidance']['min']:g}–{limits['guidance']['max']:g} (default %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=Request.default("steps"),
        help=f"denoising steps, {limits['steps']['min']}–{limits['steps']['max']} (default %(default)s)",
    )
    p.add_argument("--scheduler", choices=list(SCHEDULERS), help="default: the bundle's own")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="out.png")
    p.add_argument(
        "--trace",
        metavar="DIR|FILE.dxtrace",
        help="also write the per-step trace: FILE.dxtrace is one file the page can replay (and runtime.tracefile.load reads); "
        "any other name is a folder of raw tensors",
    )
    p.add_argument(
        "--preview-every",
        type=int,
        metavar="N",
        help="with --trace: decode x̂₀ at every N-th step and the last (default 1: every step; 0: none); each previewed "
        "step costs one VAE decode, so a big model's trace is quicker with e.g. 5",
    )
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("train", help="train the default model (resumable stages)")
    p.add_argument(
        "stages",
        nargs="*",
        help="default: clip vae encode decoder unet package; the evaluation's judge: judge; the CLIP view's image tower: "
        "clip_image; the VAE tuned without moving its latent space: vae_tune (then package)",
    )
    p.add_argument("--minutes", action="append", default=[], help="STAGE=MINUTES, e.g. unet=85")
    p.add_argument(
        "--pair-share",
        type=float,
        metavar="SHARE",
        help="unet: the share of each batch drawn from two-object scenes (default: the training data's own, 31%%)",
    )
    p.add_argument(
        "--hard-share",
        type=float,
        metavar="SHARE",
        help="unet: the share of each batch's single-object scenes drawn from those where the object is "
        "camouflaged on its background (default: the data's own)",
    )
    p.add_argument(
        "--object-weight",
        type=float,
        metavar="W",
        help="vae_tune: how much an object pixel weighs against a background pixel in the reconstruction loss (default 8)",
    )
    p.add_argument(
        "--camouflage",
        type=float,
        metavar="SHARE",
        help="vae_tune: the share of the recoloured backgrounds that take a colour of the object's own (default 0)",
    )
    p.add_argument(
        "--continue-from",
        metavar="MODEL_DIR",
        help="seed train/runs from a packaged model (e.g. models/default) and train its UNet further: "
        "run with the stages encode unet package",
    )
    p.set_defaults(fn=cmd_train)

    from train.options import add_arguments as add_evaluate_arguments  # (no torch: a light import)

    p = sub.add_parser("evaluate", help="judge the default model on held-out prompts (and seeds, words, pairs, FID, CLIP score)")
    add_evaluate_arguments(p)
    p.set_defaults(fn=cmd_evaluate)

    from bench.main import add_parser as add_bench_parser

    from .serve import build_web, start_background

    add_bench_parser(sub, serve=(build_web, start_background))
    return ap


if __name__ == "__main__":
    sys.exit(main())
