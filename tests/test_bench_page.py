"""The page's benchmark: bench/page.py drives the bench view (`/?bench`) in headless Chromium.

Checks that the figures a reader would compare are there and sane: every component timed at both
levels (through the Python controller, raw onnxruntime-web from JS), one UNet call per step,
start-up and download figures that match the bundle, and a page error surfacing as an exception.
Needs Debian's Chromium at /usr/bin/chromium and npm to build web/. Artifacts go to test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")

try:
    from bench.page import BenchPageError, run_page
except ImportError:  # an editable install made before bench/ existed does not map it
    sys.path.insert(0, str(ROOT))
    from bench.page import BenchPageError, run_page

pytestmark = pytest.mark.browser

from app.serve import build_web, start_background  # noqa: E402

SERVE = (build_web, start_background)  # what the command line hands bench/


@pytest.fixture(scope="module")
def page_dist(web_dist):
    """The page (built once per session by conftest's web_dist), when a browser can drive it."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    return web_dist


def test_bad_arguments_are_refused_before_any_browser_starts(tmp_path):
    with pytest.raises(ValueError, match="is not a bundle"):
        run_page(tmp_path, threads=1)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="provider must be one of"):
        run_page(tmp_path, threads=1, provider="cuda")
    with pytest.raises(ValueError, match="steps must be a whole number from 1 to 100"):
        run_page(tmp_path, threads=1, steps=0)
    with pytest.raises(ValueError, match="threads must be a whole number"):
        run_page(tmp_path, threads=1.5)
    with pytest.raises(ValueError, match="guidance must be a number from 0 to 20"):
        run_page(tmp_path, threads=1, guidance=25)


def test_bench_view_on_the_tiny_bundle(tiny_bundle, page_dist):
    ARTIFACTS.mkdir(exist_ok=True)
    r = run_page(tiny_bundle, threads=1, steps=2, repeats=2, dist=page_dist, screenshot=ARTIFACTS / "bench-page.png", serve=SERVE)
    (ARTIFACTS / "bench-page.json").write_text(json.dumps(r, indent=1))

    assert r["ok"] is True and r["error"] is None
    assert r["params"]["steps"] == 2 and r["params"]["repeats"] == 2 and r["params"]["guidance"] == 7.5
    assert r["engine"]["provider"] == "wasm" and r["engine"]["threads"] == 1
    assert r["engine"]["cross_origin_isolated"] is True
    assert r["webgpu_adapter_software"] is None
    # one UNet call per scheduler step (PNDM runs one more than asked), one text encoder and one VAE call
    n = 2 + (1 if r["scheduler"] == "pndm" else 0)
    assert r["steps_per_run"] == r["timesteps_per_run"] == n
    assert r["calls_per_run"] == {"text_encoder": 1, "unet": n, "vae_decoder": 1}
    assert r["measured_runs"] == 2
    controller, raw = r["samples"]["controller"], r["samples"]["raw"]
    assert [c["warmup"] for c in controller] == [True, False, False] and [p["warmup"] for p in raw] == [True, False, False]
    for c in controller:
        assert len(c["steps"]) == n and len(c["session_run_ms"]["unet"]) == n
    for p in raw:
        assert len(p["runs_ms"]["unet"]) == n

    c, b = r["controller_ms"], r["raw_ms"]
    for key in ("text_encoder", "unet_step", "ops_step", "step_total", "vae_decode", "generate_total", "generate_wall"):
        assert c[key] is not None and c[key] > 0, (key, c)
    for key in ("text_encoder", "unet_step", "vae_decode"):
        assert b[key] is not None and b[key] > 0, (key, b)
        assert r["session_in_controller_ms"][key] > 0
    # the controller's UNet call wraps the same session.run: it cannot be much faster than the raw one
    assert c["unet_step"] >= 0.5 * b["unet_step"], (c["unet_step"], b["unet_step"])
    assert c["step_total"] >= c["unet_step"]
    assert c["generate_total"] >= n * c["unet_step"] * 0.5

    s = r["startup_ms"]
    assert s["pyodide"] > 0 and s["bundle"] > 0 and s["ready"] >= s["bundle"]
    assert set(s["sessions"]) >= {"text_encoder", "unet", "vae_decoder"} and s["sessions_total"] > 0
    # a fresh browser context: the whole bundle came over the network, each file once, plus the manifest
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    files_bytes = sum(f["bytes"] for f in manifest["files"].values())
    assert r["startup_bytes"]["bundle_downloaded"] == r["startup_bytes"]["bundle_total"] == files_bytes
    pb = r["page_bytes"]
    assert pb["bundle"] == files_bytes + (tiny_bundle / "manifest.json").stat().st_size
    assert pb["pyodide"] > 1_000_000 and pb["ort"] > 1_000_000 and pb["app"] > 0
    assert pb["runtime_assets"] == pb["app"] + pb["pyodide"] + pb["ort"] and pb["total"] == pb["runtime_assets"] + pb["bundle"]
    # the page's own Resource Timing view of the worker's downloads agrees on the big files
    assert r["page_resources"]["bytes"]["pyodide"] == pb["pyodide"]
    # on the wire vs decompressed: Pyodide's wasm is served precompressed (Content-Encoding)
    assert r["page_resources"]["decoded"]["pyodide"] > 1.5 * r["page_resources"]["bytes"]["pyodide"]
    assert r["first_image_ms"] > s["ready"]

    mem = r["memory"]
    assert mem["wasm_bytes"]["pyodide"] > 0 and mem["wasm_bytes"]["onnxruntime"] > 0
    assert mem["user_agent_specific_bytes"] is None or mem["user_agent_specific_bytes"] > 0


def test_an_error_on_the_page_is_raised(tiny_bundle, page_dist, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    data = bytearray((bad / "vae_decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "vae_decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BenchPageError, match="the bench page reported an error: vae_decoder.onnx from the server does not match"):
        run_page(bad, threads=1, steps=1, repeats=1, dist=page_dist, screenshot=ARTIFACTS / "bench-page-error.png", serve=SERVE)
