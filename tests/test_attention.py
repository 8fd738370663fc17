"""Cross-attention maps: the UNet exported with attention_probs equals PyTorch, the runtime passes them
on, and the attention view shows the native trace's map for a picked token.

The export test uses the tiny random pipeline; the page test serves a copy of the tiny bundle whose
unet.onnx is the attention export (in 256 KiB chunks, the page's external-data path). Screenshots
use the trained default model when models/default and bundles/default exist.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")

from test_browser import RUN_TIMEOUT_MS, Page, browser, playwright  # noqa: E402,F401  (fixtures)

from runtime.bundle import ATTENTION_OUTPUT, Bundle  # noqa: E402
from runtime.native import NativeBackend, to_numpy  # noqa: E402
from runtime.pipeline import Pipeline, Request, run_sync  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "views"
PROMPT = "a small cat at the top left on a blue background"
REQ = dict(prompt=PROMPT, negative_prompt="", seed=5, guidance=7.5, steps=4, scheduler="euler")
CAT = 3  # <|startoftext|> a small cat …


def _with_attention(src_bundle: Path, pipeline_dir: Path, dst: Path, chunk_bytes: int) -> tuple[Path, dict]:
    from export.attention import export_unet_with_attention, update_manifest
    from export.checkpoint import inspect_checkpoint

    shutil.copytree(src_bundle, dst)
    result = export_unet_with_attention(pipeline_dir, dst, inspect_checkpoint(pipeline_dir), chunk_bytes)
    update_manifest(dst, result)
    return dst, result


@pytest.fixture(scope="module")
def attn_bundle(tiny_bundle, tiny_pipeline_dir, tmp_path_factory):
    return _with_attention(tiny_bundle, tiny_pipeline_dir, tmp_path_factory.mktemp("attn") / "tiny", 2**18)


def native_trace(bundle: Path, **request):
    pipe = Pipeline(Bundle.from_dir(bundle), NativeBackend(bundle))

    async def go():
        await pipe.load()
        return await pipe.generate(Request(**request))

    return run_sync(go())  # another thread when Playwright's sync API owns this one's event loop


# ---- export and runtime ----------------------------------------------------------------------------


def test_export_matches_pytorch_and_the_plain_unet(attn_bundle, tiny_bundle):
    import onnxruntime as ort

    bundle, result = attn_bundle
    v = result["verification"]
    assert v["relative"] <= 1e-3 and v["attention"]["max_abs_error"] <= 1e-4, v
    assert len(result["files"]) > 1, "the fixture should exercise chunked external data"
    unet = Bundle.from_dir(bundle).component("unet")  # verifies sizes and hashes of the new files
    assert [o["name"] for o in unet["outputs"]] == ["out_sample", ATTENTION_OUTPUT]
    assert not (bundle / "unet.onnx.data").exists() or "unet.onnx.data" in unet["files"]
    # the same inputs through optimum's plain export: the noise prediction is unchanged
    rng = np.random.default_rng(1)
    m = Bundle.from_dir(tiny_bundle).manifest["model"]
    h, w = m["latent_size"]
    feeds = {
        "sample": rng.standard_normal((2, 4, h, w), dtype=np.float32),
        "timestep": np.array(321.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, m["text_hidden_size"]), dtype=np.float32),
    }
    plain = ort.InferenceSession(str(tiny_bundle / "unet.onnx")).run(None, feeds)[0]
    ours, maps = ort.InferenceSession(str(bundle / unet["files"][0])).run(None, feeds)
    assert np.abs(ours - plain).max() <= 1e-3 * max(1.0, np.abs(plain).max())
    assert maps.shape == (77, h, w)
    # each layer's probabilities sum to 1 over the tokens at every position: the sum is the layer count
    assert np.allclose(maps.sum(0), v["attention"]["layers"], atol=1e-4)


def test_export_maps_equal_the_pytorch_aggregation_on_another_input(tiny_pipeline_dir, attn_bundle):
    """A second, independent input (batch 2, another timestep) beside the export's own check."""
    import onnxruntime as ort
    import torch
    from diffusers import UNet2DConditionModel

    from export.attention import reference_maps

    bundle, _ = attn_bundle
    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet").eval()
    rng = np.random.default_rng(7)
    h, w = unet.config.sample_size, unet.config.sample_size
    x = rng.standard_normal((2, 4, h, w), dtype=np.float32)
    e = rng.standard_normal((2, 77, unet.config.cross_attention_dim), dtype=np.float32)
    _, maps = ort.InferenceSession(str(bundle / "unet.onnx")).run(
        None, {"sample": x, "timestep": np.array(37.0, np.float32), "encoder_hidden_states": e}
    )
    want, layers = reference_maps(unet, torch.from_numpy(x), torch.tensor(37.0), torch.from_numpy(e))
    assert layers > 1
    assert np.abs(maps - want).max() <= 1e-4


def test_native_trace_carries_the_maps(attn_bundle, tiny_bundle):
    bundle, result = attn_bundle
    trace = native_trace(bundle, **REQ)
    assert all(s.attention is not None for s in trace.steps)
    a = to_numpy(trace.steps[0].attention)
    assert a.shape[0] == 77 and a.min() >= 0
    assert np.allclose(a.sum(0), result["verification"]["attention"]["layers"], atol=1e-4)
    # the image is the plain bundle's: the extra output changes nothing else
    plain = native_trace(tiny_bundle, **REQ)
    assert np.abs(to_numpy(trace.image).astype(int) - to_numpy(plain.image).astype(int)).max() <= 1
    assert all(s.attention is None for s in plain.steps)


def test_evaluation_helpers():
    from runtime.tokenizer import CLIPTokenizer
    from train import scenes as S
    from train.attention_eval import object_mask, otsu, token_positions, upsample

    tok = CLIPTokenizer.from_files(
        ROOT / "export/assets/clip_tokenizer/vocab.json", ROOT / "export/assets/clip_tokenizer/merges.txt"
    )
    prompt = "an alarm clock on a red background"
    assert token_positions(tok, prompt, "alarm clock") == [2, 3]
    assert token_positions(tok, prompt, "red") == [6]
    red = S.BACKGROUND_NAMES.index("red")
    img = np.zeros((8, 8, 3), np.uint8) + np.array(S.BACKGROUNDS[red][2], np.uint8)
    img[2:4, 2:5] = (250, 250, 250)
    assert object_mask(img, red).sum() == 6
    v = np.concatenate([np.zeros(50), np.ones(50)])
    assert 0 < otsu(v) < 1
    m = np.arange(4.0).reshape(2, 2)
    import torch
    import torch.nn.functional as F

    want = F.interpolate(torch.from_numpy(m)[None, None], size=(6, 6), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.allclose(upsample(m, (6, 6)), want)


# ---- the page --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dist(request):
    """The built page; DX_WEB_DIST=DIR uses another build."""
    if os.environ.get("DX_WEB_DIST"):
        return Path(os.environ["DX_WEB_DIST"])
    return request.getfixturevalue("web_dist")


def _serve(bundle: Path, dist: Path):
    from app.serve import start_background

    return start_background(bundle, dist=dist)


def _view_numbers(page) -> dict:
    get = lambda sel, a: page.get_attribute(f"#view-attention [data-testid={sel}]", a)  # noqa: E731
    return {
        "token": int(get("attention-step", "data-token")),
        "step": int(get("attention-step", "data-step")),
        "step_min": float(get("attention-step", "data-min")),
        "step_max": float(get("attention-step", "data-max")),
        "sum_min": float(get("attention-sum", "data-min")),
        "sum_max": float(get("attention-sum", "data-max")),
        "steps": int(get("attention-sum", "data-steps")),
    }


@pytest.mark.browser
def test_view_shows_the_native_map_of_the_picked_token(browser, dist, attn_bundle):  # noqa: F811
    bundle, _ = attn_bundle
    srv, url = _serve(bundle, dist)
    p = Page(browser, url)
    try:
        p.open()
        p.generate(
            prompt=REQ["prompt"], negative="", seed=REQ["seed"], guidance=REQ["guidance"], steps=REQ["steps"], scheduler="euler"
        )
        assert p.page.locator("#view-attention").count() == 1, "the page no longer places <Attention> (web/src/App.svelte)"
        native = native_trace(bundle, **REQ)
        want = np.stack([to_numpy(s.attention) for s in native.steps])  # [steps, 77, h, w]
        # the page's trace carries the runtime's maps unchanged
        got = np.array(
            p.page.evaluate("() => window.__lastTrace.steps.map(s => Array.from(new Float32Array(s.attention.data)))"), np.float32
        ).reshape(want.shape)
        assert np.abs(got - want).max() <= 1e-4
        p.page.click(f"#view-attention [data-testid=attention-tokens] button[data-token='{CAT}']")
        p.page.wait_for_selector("#view-attention [data-testid=attention-step]")
        shown = _view_numbers(p.page)
        # after a run the views open at the teaching step (in the first half), not the last one
        assert shown["token"] == CAT and 0 <= shown["step"] < (len(native.steps) + 1) // 2 and shown["steps"] == len(native.steps)
        step_map, sum_map = want[shown["step"], CAT], want[:, CAT].sum(0)
        for k, v in (
            ("step_min", step_map.min()),
            ("step_max", step_map.max()),
            ("sum_min", sum_map.min()),
            ("sum_max", sum_map.max()),
        ):
            assert abs(shown[k] - v) <= 1e-4, (k, shown[k], v)
        # another step picked in the step strip: the view follows it
        p.page.locator("[data-testid=step-strip] button, [data-testid=step-strip] [role=button]").first.click()
        p.page.wait_for_function(
            "() => document.querySelector('#view-attention [data-testid=attention-step]').dataset.step === '0'"
        )
        shown = _view_numbers(p.page)
        assert abs(shown["step_max"] - want[0, CAT].max()) <= 1e-4 and abs(shown["step_min"] - want[0, CAT].min()) <= 1e-4
        # the token picked here is the page's token (the other views follow it)
        assert p.page.locator(f"#view-attention button[data-token='{CAT}'][aria-pressed=true]").count() == 1
        p.assert_all_local()
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()


def _no_sideways_scroll(page, width: int):
    over = page.evaluate(
        """(w) => {
        const out = [];
        if (document.documentElement.scrollWidth > w) out.push('document ' + document.documentElement.scrollWidth);
        for (const el of document.querySelectorAll('#view-attention *')) {
            const r = el.getBoundingClientRect();
            if (r.width && r.right > w + 0.5) { out.push(el.tagName + '.' + el.className + ' right=' + r.right); break; }
        }
        return out;
    }""",
        width,
    )
    assert not over, f"wider than {width}px: {over}"


@pytest.mark.browser
def test_screenshots_with_the_default_model(browser, dist, default_bundle, tmp_path_factory):  # noqa: F811
    """The trained model (bundles/default, derived by the session; its UNet carries the maps already)."""
    from runtime.bundle import ATTENTION_OUTPUT

    bundle = default_bundle
    if ATTENTION_OUTPUT not in [o["name"] for o in Bundle.from_dir(bundle, verify=False).component("unet")["outputs"]]:
        from export.onnxfiles import CHUNK_BYTES

        model = ROOT / "models" / "default"
        bundle, _ = _with_attention(default_bundle, model, tmp_path_factory.mktemp("attn-default") / "default", CHUNK_BYTES)
    srv, url = _serve(bundle, dist)
    p = Page(browser, url)
    try:
        p.open()
        p.generate(
            prompt="a cat at the top left on a blue background", negative="", seed=1, guidance=3.0, steps=15, scheduler="ddim"
        )
        assert p.page.locator("#view-attention").count() == 1, "the page no longer places <Attention> (web/src/App.svelte)"
        p.page.click("#view-attention [data-testid=attention-tokens] button[data-token='2']")  # 'cat'
        p.page.wait_for_selector("#view-attention [data-testid=attention-sum] canvas")
        p.page.wait_for_selector("#view-attention [data-testid=attention-decoding]", state="detached", timeout=RUN_TIMEOUT_MS)
        p.page.add_style_tag(content="[data-view=timeline] { position: static !important; }")
        SHOTS.mkdir(parents=True, exist_ok=True)
        p.page.locator("#view-attention").screenshot(path=str(SHOTS / "attention.png"))
        p.page.set_viewport_size({"width": 375, "height": 800})
        _no_sideways_scroll(p.page, 375)
        p.page.locator("#view-attention").screenshot(path=str(SHOTS / "attention-375.png"))
        p.assert_all_local()
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()
