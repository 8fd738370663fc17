"""Proof that the exporter handles Stable Diffusion at full size: SD 1.5's real architecture, random weights.

No SD weights can reach this machine, so the proof is structural: the public SD 1.5 configs
(export/assets/configs/sd15) with random weights → fp32 bundle (UNet > 2 GB: external data in chunks)
→ fp16 bundle derived from it → one native UNet step on each. Each stage runs in its own process so
its peak memory can be reported; each is skipped when its output exists (resumable).
Not a CI test: it takes many minutes and ~15 GB of disk.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "assets" / "configs"


def build_random_pipeline(arch: str, out: Path, seed: int = 0) -> Path:
    """A diffusers folder with `arch`'s public configs and random weights."""
    import shutil

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    src = CONFIGS / arch
    if not (src / "model_index.json").is_file():
        raise SystemExit(f"no configs for {arch!r} in {CONFIGS}; have: {', '.join(sorted(p.name for p in CONFIGS.iterdir()))}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src / "unet")).save_pretrained(tmp / "unet")
    AutoencoderKL.from_config(AutoencoderKL.load_config(src / "vae")).save_pretrained(tmp / "vae")
    CLIPTextModel(CLIPTextConfig.from_pretrained(src / "text_encoder")).save_pretrained(tmp / "text_encoder")
    for part in ("scheduler", "tokenizer"):  # (the tokenizer's vocab and merges are links to clip_tokenizer/)
        shutil.copytree(src / part, tmp / part)
    shutil.copy(src / "model_index.json", tmp / "model_index.json")
    write_random_card(tmp, arch)
    tmp.rename(out)
    return out


def write_random_card(folder: Path, arch: str) -> Path:
    """The model card (explainer.json, read by export/manifest.py's _about) of a random-weight build:
    `random_weights: true`, so the bundle's manifest, the page and trace files say its weights are random."""
    path = Path(folder) / "explainer.json"
    card = {
        "description": f"{arch}'s architecture at full size with random weights (built by prove-scale): not a trained model, "
        "so its images are noise by design.",
        "examples": [],
        "random_weights": True,
    }
    path.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    return path


def unet_step(bundle: Path, threads: int = 2) -> dict:
    """One UNet evaluation (batch 2, as classifier-free guidance runs it) through the runtime's native backend."""
    import numpy as np

    from runtime.bundle import Bundle
    from runtime.native import NativeBackend
    from runtime.pipeline import run_sync

    b = Bundle.from_dir(bundle, verify=False)
    h, w = b.model["latent_size"]
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, h, w), dtype=np.float32),
        "timestep": np.array(500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal(
            (2, b.model["text_max_length"], b.model["text_hidden_size"]), dtype=np.float32
        ),
    }
    backend = NativeBackend(bundle, threads=threads)
    t = time.perf_counter()
    run_sync(backend.load("unet", b.component("unet")["files"]))
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    out = backend.sessions["unet"].run(None, feeds)[0].astype(np.float32)
    np.save(bundle.parent / f"{bundle.name}-unet-step.npy", out)
    return {
        "session_seconds": load_s,
        "step_seconds": time.perf_counter() - t,
        "shape": list(out.shape),
        "finite": bool(np.isfinite(out).all()),
        "max_abs": float(np.abs(out).max()),
    }


def _stage(name: str, args: list[str]) -> dict:
    """Run one stage in a child process; its own peak RSS comes back with its result."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "export.scale_proof", "--stage", name, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "seconds": time.perf_counter() - t}


def _child(name: str, args: list[str]) -> None:
    from .exporter import export_bundle

    out: dict = {}
    if name == "build":
        build_random_pipeline(args[0], Path(args[1]))
    elif name in ("export", "derive"):
        m = export_bundle(args[0], args[1], precision=args[2], chunk_bytes=int(args[3]), quality=(1, 2), overwrite=True)
        out = {
            "verification": {c: m["components"][c].get("verification") for c in ("text_encoder", "unet", "vae_decoder")},
            "quality": m.get("quality"),
        }
    elif name == "step":
        out = unet_step(Path(args[0]))
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(out))


def _files(bundle: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    return {rel: f["bytes"] for rel, f in m["files"].items()}


def run(arch: str = "sd15", work: Path = Path("bundles/scale-proof"), chunk_mb: int = 512) -> dict:
    import numpy as np

    from .onnxfiles import CHUNK_BYTES

    chunk = chunk_mb * 2**20 if chunk_mb else CHUNK_BYTES
    work.mkdir(parents=True, exist_ok=True)
    pipe, b32, b16 = work / f"{arch}-random", work / f"{arch}-fp32", work / f"{arch}-fp16"
    report: dict = {"arch": arch, "chunk_bytes": chunk, "stages": {}}
    plan = [
        ("build", pipe, [arch, str(pipe)]),
        ("export fp32", b32, [str(pipe), str(b32), "fp32", str(chunk)]),
        ("derive fp16", b16, [str(b32), str(b16), "fp16", str(chunk)]),
    ]
    for label, target, args in plan:
        if target.exists():
            print(f"{label}: {target} exists, kept")
            continue
        print(f"{label} …", flush=True)
        report["stages"][label] = _stage(label.split()[0], args)
        print(
            f"{label}: {report['stages'][label]['seconds']:.0f} s, peak RSS {report['stages'][label]['peak_rss_gb']:.1f} GB",
            flush=True,
        )
    for b in (b32, b16):
        files = _files(b)
        unet = {k: v for k, v in files.items() if k.startswith("unet.")}
        step = _stage("step", [str(b)])
        report[b.name] = {
            "bundle_bytes": sum(files.values()),
            "largest_file": max(files.items(), key=lambda kv: kv[1]),
            "unet_files": unet,
            "unet_bytes": sum(unet.values()),
            "unet_step": step,
        }
        print(
            f"{b.name}: bundle {sum(files.values()) / 1e9:.2f} GB, UNet {sum(unet.values()) / 1e9:.2f} GB in {len(unet)} files "
            f"(largest {max(files.values()) / 2**20:.0f} MiB); one UNet step {step['step_seconds']:.1f} s "
            f"(session {step['session_seconds']:.1f} s, peak RSS {step['peak_rss_gb']:.1f} GB), output finite: {step['finite']}",
            flush=True,
        )
        assert max(files.values()) <= chunk, f"{b.name} has a file over the chunk size"
    a, b = np.load(work / f"{b32.name}-unet-step.npy"), np.load(work / f"{b16.name}-unet-step.npy")
    report["fp16_vs_fp32_unet_max_abs_error"] = float(np.abs(a - b).max())
    print(
        f"UNet step fp16 vs fp32: max abs error {report['fp16_vs_fp32_unet_max_abs_error']:.3g} (fp32 max {np.abs(a).max():.3g})"
    )
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"report: {work / 'report.json'}")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stage"]:
        _child(sys.argv[2], sys.argv[3:])
    else:
        run(*sys.argv[1:2])
