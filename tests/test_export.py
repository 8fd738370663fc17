"""The exporter's contract: a verified, hashed bundle — and clear refusals for what it cannot use."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from export.exporter import ExportError, UnsupportedCheckpoint, export_bundle, inspect_checkpoint  # noqa: E402
from runtime.bundle import Bundle, BundleError  # noqa: E402

CLI = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parent.parent


def test_manifest_describes_the_bundle(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["format_version"] == 1
    assert m["model"]["latent_size"] == [8, 8] and m["model"]["image_size"] == [16, 16]
    assert m["model"]["text_hidden_size"] == 32 and m["model"]["latent_channels"] == 4
    for comp in ("text_encoder", "unet", "vae_decoder"):
        v = m["components"][comp]["verification"]
        assert v["relative"] <= v["tolerance"] and v["max_abs_error"] < 1e-3
    unet_inputs = {i["name"]: i for i in m["components"]["unet"]["inputs"]}
    assert set(unet_inputs) == {"sample", "timestep", "encoder_hidden_states"}
    assert m["scheduler"]["default"] == "pndm" and m["scheduler"]["config"]["beta_schedule"] == "scaled_linear"
    assert m["tokenizer"]["bos_id"] == 49406 and m["tokenizer"]["pad_id"] == 49407
    for rel, info in m["files"].items():
        assert (tiny_bundle / rel).stat().st_size == info["bytes"]
    assert "torch" in m["tools"] and "onnxruntime" in m["tools"]
    Bundle.from_dir(tiny_bundle)  # verifies every hash


def _one_line_error(proc):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unsupported_checkpoints_are_refused_before_heavy_work(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    text_only = tmp_path / "text-model"
    CLIPTextModel(
        CLIPTextConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(text_only)
    with pytest.raises(UnsupportedCheckpoint, match="not a diffusers pipeline"):
        inspect_checkpoint(text_only)
    xl = tmp_path / "xl"
    xl.mkdir()
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(UnsupportedCheckpoint, match="StableDiffusionXLPipeline; supported"):
        inspect_checkpoint(xl)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00garbage")
    with pytest.raises(UnsupportedCheckpoint):
        inspect_checkpoint(broken)
    with pytest.raises(UnsupportedCheckpoint, match="does not exist"):
        inspect_checkpoint(tmp_path / "nowhere")
    proc = subprocess.run(CLI + ["export", str(text_only), str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert "not a diffusers pipeline" in _one_line_error(proc)
    assert not (tmp_path / "out").exists()


def test_existing_target_is_not_overwritten_silently(tiny_pipeline_dir, tiny_bundle):
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(tiny_pipeline_dir, tiny_bundle)


def test_tampered_bundle_file_is_named(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "unet.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"unet\.onnx is corrupted: sha256"):
        Bundle.from_dir(copy)
    proc = subprocess.run(
        CLI + ["generate", "a cat", "--bundle", str(copy), "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "unet.onnx is corrupted" in _one_line_error(proc)
    shutil.copy(tiny_bundle / "unet.onnx", copy / "unet.onnx")
    (copy / "vae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.from_dir(copy)
    (copy / "manifest.json").write_text('{"format": "diffusion-explainer-bundle", "format_version": 99}')
    with pytest.raises(BundleError, match="version 99 is not supported"):
        Bundle.from_dir(copy)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_export_leaves_no_bundle(tiny_pipeline_dir, tmp_path, sig):
    out = tmp_path / "bundle"
    proc = subprocess.Popen(
        CLI + ["export", str(tiny_pipeline_dir), str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob(".bundle.partial-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # midway: optimum is exporting
    assert proc.poll() is None, "export finished before it could be interrupted"
    os.kill(proc.pid, sig)
    proc.wait(60)
    assert not out.exists()
    if sig == signal.SIGTERM:  # a polite stop also cleans its scratch space
        assert not list(tmp_path.glob(".bundle.partial-*"))
    # the next export cleans stale scratch space and succeeds
    export_bundle(tiny_pipeline_dir, out)
    assert not list(tmp_path.glob(".bundle.partial-*"))
    Bundle.from_dir(out)


def test_cli_generate_writes_png_and_trace(tiny_bundle, tmp_path):
    proc = subprocess.run(
        CLI
        + [
            "generate",
            "a cat <b>bold</b>",
            "--bundle",
            str(tiny_bundle),
            "--steps",
            "3",
            "--seed",
            "4",
            "--scheduler",
            "euler",
            "--out",
            str(tmp_path / "cat.png"),
            "--trace",
            str(tmp_path / "trace"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "trace" / "trace.json").read_text())
    assert len(doc["steps"]) == 3 and doc["request"]["seed"] == 4
    assert (tmp_path / "trace" / doc["steps"][0]["image"]["file"]).read_bytes()[:4] == b"\x89PNG"
    assert doc["tokens"]["ids"][0] == 49406 and len(doc["alphasCumprod"]) == 1000  # the plan, in the page's shape
    proc = subprocess.run(
        CLI + ["generate", "a cat", "--bundle", str(tiny_bundle), "--guidance", "25"], capture_output=True, text=True, cwd=ROOT
    )
    assert "guidance scale must be a number from 0 to 20" in _one_line_error(proc)


def test_fp16_build_reports_its_quality(tiny_pipeline_dir, tmp_path):
    m = export_bundle(tiny_pipeline_dir, tmp_path / "fp16", precision={"unet": "fp16", "vae_decoder": "fp16"})
    q = m["quality"]
    assert q["components"]["unet"]["precision"] == "fp16" and q["components"]["text_encoder"]["precision"] == "fp32"
    assert q["components"]["unet"]["bytes"] < 0.6 * q["components"]["unet"]["bytes_fp32"]
    assert q["components"]["text_encoder"]["max_abs_error_vs_fp32"] == 0.0
    assert 0 < q["components"]["unet"]["max_abs_error_vs_fp32"] < 0.05 * max(1.0, q["components"]["unet"]["max_abs_fp32"])
    assert q["image"]["psnr_db_vs_fp32"]["min"] > 30
    b = Bundle.from_dir(tmp_path / "fp16")  # hashes of the quantized files are in the manifest
    assert b.component("unet")["precision"] == "fp16"
    with pytest.raises(ExportError, match="unknown precision"):
        export_bundle(tiny_pipeline_dir, tmp_path / "bad", precision="int3")


def _image(bundle_dir, prompt="a cat", seed=3):
    from runtime.native import NativeBackend, to_numpy
    from runtime.pipeline import Pipeline, Request, run_sync

    async def go():
        pipe = Pipeline(Bundle.from_dir(bundle_dir), NativeBackend(bundle_dir))
        await pipe.load()
        return to_numpy((await pipe.generate(Request(prompt, seed=seed, steps=4, preview_every=0))).image).copy()

    return run_sync(go())


def test_big_weights_are_written_in_bounded_chunks(tiny_pipeline_dir, tiny_bundle, tmp_path):
    """What a 3.4 GB SD UNet gets, at the tiny model's scale: no file over the chunk size, same images."""
    import numpy as np

    chunk = 2**20
    m = export_bundle(tiny_pipeline_dir, tmp_path / "chunked", chunk_bytes=chunk)
    unet = m["components"]["unet"]["files"]
    assert unet[0] == "unet.onnx" and unet[1:] == [f"unet.onnx.data.{i:02d}" for i in range(len(unet) - 1)]
    assert len(unet) >= 4  # 4.2 MB of weights in ≤ 1 MiB chunks
    assert all(m["files"][f]["bytes"] <= chunk for f in unet)
    Bundle.from_dir(tmp_path / "chunked")  # every chunk hashed in the manifest
    assert np.array_equal(_image(tmp_path / "chunked"), _image(tiny_bundle))


def test_precision_builds_derive_from_an_fp32_bundle(tiny_bundle, tmp_path):
    m = export_bundle(tiny_bundle, tmp_path / "int8", precision={"text_encoder": "int8"}, quality=(2, 3))
    q = m["quality"]
    assert q["components"]["text_encoder"]["precision"] == "int8"
    # the fp32 UNet is the same model at fixed sizes (export/freeze.py): folding reorders a few float operations
    assert q["components"]["unet"]["max_abs_error_vs_fp32"] <= 1e-4 and q["components"]["unet"]["fixed_sizes"]["batch_size"] == 2
    assert q["components"]["text_encoder"]["bytes"] < q["components"]["text_encoder"]["bytes_fp32"]  # (the embedding stays fp32)
    assert len(q["image"]["runs"]) == 2 and q["image"]["steps"] == 3
    assert min(r["psnr_db"] for r in q["image"]["runs"]) == pytest.approx(q["image"]["psnr_db_vs_fp32"]["min"], abs=0.01)
    assert Bundle.from_dir(tmp_path / "int8").component("text_encoder")["precision"] == "int8"
    with pytest.raises(ExportError, match="derive builds from an fp32 bundle"):
        export_bundle(tmp_path / "int8", tmp_path / "again", precision="fp16")
    with pytest.raises(ExportError, match="already an fp32 bundle"):
        export_bundle(tiny_bundle, tmp_path / "same", precision="fp32")
    assert not (tmp_path / "again").exists() and not (tmp_path / "same").exists()


def test_single_file_checkpoint_exports_like_its_folder(tiny_pipeline_dir, tiny_bundle, tmp_path):
    """An original-layout .safetensors goes through diffusers' single-file loader to the same bundle."""
    import numpy as np

    from export import single_file

    ckpt = single_file.write_ldm_checkpoint(tiny_pipeline_dir, tmp_path / "tiny.safetensors")
    configs = single_file.copy_configs(tiny_pipeline_dir, tmp_path / "configs")
    m = export_bundle(ckpt, tmp_path / "from-file", config_dir=configs)
    assert m["model"]["source"] == str(ckpt.resolve())
    assert np.array_equal(_image(tmp_path / "from-file"), _image(tiny_bundle))
    proc = subprocess.run(CLI + ["export", str(ckpt), str(tmp_path / "refused")], capture_output=True, text=True, cwd=ROOT)
    assert "neither SD 1.x (768) nor SD 2.x (1024)" in _one_line_error(proc)  # tiny: needs --config
    assert not (tmp_path / "refused").exists()


def test_random_weight_builds_say_so_in_their_model_card(tmp_path):
    """prove-scale's random-weight pipelines carry explainer.json with random_weights: true; the
    manifest's `about` keeps it (and nothing else invents it), and trace files read it from there."""
    from export.manifest import _about
    from export.scale_proof import write_random_card
    from runtime.tracefile import random_weights

    write_random_card(tmp_path, "sd15")
    about = _about(tmp_path)
    assert about["random_weights"] is True and "random weights" in about["description"]
    assert random_weights({"about": about, "model": {"source": "/x/sd15"}})
    (tmp_path / "explainer.json").write_text(json.dumps({"description": "d", "random_weights": "yes"}))
    assert "random_weights" not in _about(tmp_path)
