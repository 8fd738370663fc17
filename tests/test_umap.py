"""The UMAP of trajectories: the bases export/umap.py stores, the projection graph against umap-learn, and the page's view.

The store: fitted once and deterministically (same bases twice). The graph: equal to umap-learn's own
transform initialisation (its smooth_knn_dist / membership / init_graph_transform) and to this
project's numpy re-implementation; its agreement with the full transform is reported. The page: the
view draws the cloud, and the coordinates the page's runtime computed equal the native runtime's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("umap")

from test_browser import Page, browser, playwright  # noqa: E402,F401 - the browser fixtures

from export.umap import add_to_manifest, build_umap, fit, format_report, project_numpy, umap_init_transform  # noqa: E402
from runtime.bundle import Bundle  # noqa: E402
from runtime.native import NativeBackend, to_numpy  # noqa: E402
from runtime.pipeline import Pipeline, Request, run_sync  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "views"
PROMPTS = ["a cat", "a dog on the grass", "an apple", "a red car", "a rocket at night", "a blue fish"]
HELD_OUT = ["a green frog", "a pizza"]
SEEDS = (0, 1)
STEPS = 8
PROMPT = "a small cat at the top left on a blue background"


def _build(src: Path, dst: Path) -> tuple[Path, dict]:
    shutil.copytree(src, dst)
    result = build_umap(dst, prompts=PROMPTS, seeds=SEEDS, steps=STEPS, held_out=HELD_OUT, random_state=0)
    add_to_manifest(dst, result)
    return dst, result


@pytest.fixture(scope="module")
def umap_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with UMAP bases (what the exporter will add), and build_umap's result."""
    return _build(Path(tiny_bundle), tmp_path_factory.mktemp("umap-bundle") / "tiny")


def _reference(bundle_dir: Path):
    """The reference inputs (the graph's initializer) and the stored coordinates."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle_dir / "umap_project.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bases = json.loads((bundle_dir / "umap_bases.json").read_text())
    emb = np.stack([bases["points"]["x"], bases["points"]["y"]], 1).astype(np.float32)
    return inits["reference_x0"], inits["reference_xy"], emb, bases


def _held_out(bundle_dir: Path, prompts=HELD_OUT, seed=5):
    """Predicted x0 of every step of runs the fit never saw (another seed too)."""
    pipe = Pipeline(Bundle.from_dir(bundle_dir), NativeBackend(bundle_dir))

    async def go():
        await pipe.load()
        xs, umap = [], []
        for p in prompts:
            tr = await pipe.generate(Request(prompt=p, seed=seed, guidance=7.5, steps=STEPS, preview_every=0))
            xs += [to_numpy(s.pred_x0) for s in tr.steps]
            umap += [s.umap for s in tr.steps]
        return np.stack(xs), np.array(umap, np.float32)

    return run_sync(go())


# ---- the store -------------------------------------------------------------------------------------


def test_store_has_what_the_page_needs(umap_bundle):
    bundle_dir, result = umap_bundle
    bundle = Bundle.from_dir(bundle_dir)  # sizes and hashes of the new files check out
    comp = bundle.component("umap_project")
    assert comp["files"] == ["umap_project.onnx"] and comp["bases"] == "umap_bases.json" and comp["precision"] == "fp32"
    m = bundle.model
    assert comp["inputs"] == [{"name": "x0", "dtype": "float32", "shape": [1, m["latent_channels"], *m["latent_size"]]}]
    assert comp["outputs"] == [{"name": "xy", "dtype": "float32", "shape": [1, 2]}]
    for rel in ("umap_project.onnx", "umap_bases.json", "umap_thumbs.png"):
        assert rel in bundle.manifest["files"]
    ref, ref_xy, emb, bases = _reference(bundle_dir)
    per_run = bases["steps"]  # the scheduler's count (PNDM takes one more than asked)
    assert per_run >= STEPS and bases["steps_requested"] == STEPS
    n = len(PROMPTS) * len(SEEDS) * per_run
    assert ref.shape == (n, m["latent_channels"] * m["latent_size"][0] * m["latent_size"][1]) and emb.shape == (n, 2)
    np.testing.assert_allclose(emb, ref_xy, atol=1e-5)  # the JSON's coordinates are the graph's
    assert bases["prompts"] == PROMPTS and bases["seeds"] == list(SEEDS)
    pts = bases["points"]
    assert (
        pts["prompt"][:per_run] == [0] * per_run and pts["step"][:per_run] == list(range(per_run)) and pts["seed"][per_run] == 1
    )
    assert bases["fit"]["random_state"] == 0 and bases["fit"]["metric"] == "euclidean" and bases["fit"]["seconds"] >= 0
    assert bases["extent"]["x"] == [pytest.approx(float(emb[:, 0].min())), pytest.approx(float(emb[:, 0].max()))]
    report = result["report"]
    assert report["fit_seconds"] >= 0 and report["agreement"]["points"] == len(HELD_OUT) * per_run
    print("\n" + format_report(report))


def test_fit_is_deterministic(umap_bundle, tmp_path):
    """Same bundle, same settings: the same trajectories, the same fit, the same graph."""
    bundle_dir, _ = umap_bundle
    ref, _, emb, _ = _reference(bundle_dir)
    _, again, _ = fit(ref, random_state=0, n_neighbors=15)
    np.testing.assert_allclose(again, emb, atol=2e-6)  # the JSON keeps 6 decimals
    src = tmp_path / "src"
    shutil.copytree(bundle_dir, src)
    second, _ = _build(src, tmp_path / "second")
    assert (second / "umap_project.onnx").read_bytes() == (bundle_dir / "umap_project.onnx").read_bytes()
    a, b = json.loads((bundle_dir / "umap_bases.json").read_text()), json.loads((second / "umap_bases.json").read_text())
    assert a["points"] == b["points"] and a["extent"] == b["extent"]


# ---- the projection --------------------------------------------------------------------------------


def test_projection_matches_umap_learn(umap_bundle):
    """The graph (onnxruntime, through the runtime's own pipeline) = numpy re-implementation = umap-learn's
    transform initialisation on held-out runs; and its agreement with umap-learn's full transform."""
    bundle_dir, _ = umap_bundle
    ref, _, emb, _ = _reference(bundle_dir)
    x, native = _held_out(bundle_dir)
    flat = x.reshape(len(x), -1)
    ext = float(max(np.ptp(emb[:, 0]), np.ptp(emb[:, 1])))
    ours = project_numpy(flat, ref, emb)
    np.testing.assert_allclose(native, ours, atol=1e-4 * ext)
    reducer, emb2, _ = fit(ref, random_state=0, n_neighbors=15)
    init = umap_init_transform(reducer, flat)
    err = np.abs(native - init).max() / ext
    assert err <= 1e-4, f"graph vs umap-learn's transform initialisation: {err:.2e} of the extent"
    full = reducer.transform(flat)
    dist = np.linalg.norm(native - full, axis=1) / ext
    print(
        f"\nvs umap-learn's full transform on {len(x)} held-out points: median {np.median(dist):.1%} of the extent, "
        f"max {dist.max():.1%}; vs its initialisation: max {err:.1e}"
    )
    assert np.median(dist) < 0.15  # the SGD refinement moves points only locally
    # the bisection is one Loop, not 64 unrolled copies: the page optimises this graph at every start-up
    graph = onnx.load(str(bundle_dir / "umap_project.onnx")).graph
    assert [n.op_type for n in graph.node].count("Loop") == 1 and len(graph.node) < 60


def test_duplicate_of_a_reference_point_lands_on_it(umap_bundle):
    """init_graph_transform's special case: a weight of exactly 1 places the point on that reference point."""
    bundle_dir, _ = umap_bundle
    ref, _, emb, _ = _reference(bundle_dir)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle_dir / "umap_project.onnx"), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    for i in (0, 37, len(ref) - 1):
        xy = sess.run(["xy"], {"x0": ref[i].reshape(shape)})[0]
        np.testing.assert_allclose(xy[0], emb[i], atol=1e-5)


# ---- the page --------------------------------------------------------------------------------------


def _serve(bundle_dir, dist):
    from app.serve import start_background

    return start_background(bundle_dir, dist=dist)


@pytest.mark.browser
def test_page_projects_like_native(browser, umap_bundle, web_dist):
    bundle_dir, _ = umap_bundle
    srv, url = _serve(bundle_dir, web_dist)
    p = Page(browser, url)
    try:
        p.open()
        p.generate(prompt=PROMPT, negative="", seed=3, guidance=7.5, steps=6, scheduler="euler")
        got = np.array(p.page.evaluate("() => window.__lastTrace.steps.map(s => s.umap)"), np.float64)
        pipe = Pipeline(Bundle.from_dir(bundle_dir), NativeBackend(bundle_dir))

        async def go():
            await pipe.load()
            return await pipe.generate(Request(prompt=PROMPT, seed=3, guidance=7.5, steps=6, scheduler="euler"))

        want = np.array([s.umap for s in run_sync(go()).steps], np.float64)
        assert got.shape == want.shape == (6, 2)
        err = np.abs(got - want).max()
        print(f"\npage vs native step.umap over {len(got)} steps: max abs error {err:.2e}")
        assert err <= 1e-4, f"page vs native step.umap: max abs error {err:.2e}"
        view = p.page.locator("#view-umap")
        view.scroll_into_view_if_needed()
        assert "precomputed" in view.locator("[data-testid=umap-precomputed]").inner_text()
        assert view.locator("[data-testid=umap-legend] li").count() == len(PROMPTS)
        assert view.locator("[data-testid=umap-canvas]").get_attribute("aria-valuemax") == "6"
        canvas = view.locator("[data-testid=umap-canvas]")
        box = canvas.bounding_box()
        assert box["width"] > 100 and box["height"] > 100
        canvas.focus()
        # a finished run opens at the teaching step (derive/teach.ts, in the first half), not the last step
        start = int(canvas.get_attribute("aria-valuenow"))
        assert 1 <= start <= 3
        p.page.keyboard.press("ArrowRight")
        assert canvas.get_attribute("aria-valuenow") == str(start + 1)
        SHOTS.mkdir(parents=True, exist_ok=True)
        view.screenshot(path=str(SHOTS / "umap-tiny.png"))
        p.assert_all_local()
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def plain_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle without UMAP bases (as `export --no-umap` or an old bundle has it)."""
    dst = tmp_path_factory.mktemp("plain-bundle") / "tiny"
    shutil.copytree(tiny_bundle, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    if manifest["components"].pop("umap_project", None):
        for rel in ("umap_project.onnx", "umap_bases.json", "umap_thumbs.png"):
            manifest["files"].pop(rel, None)
            (dst / rel).unlink(missing_ok=True)
        (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


@pytest.mark.browser
def test_bundle_without_umap_hides_the_view(browser, plain_bundle, web_dist):
    srv, url = _serve(plain_bundle, web_dist)
    p = Page(browser, url)
    try:
        p.open()
        p.generate(prompt=PROMPT, negative="", seed=3, guidance=7.5, steps=2, scheduler="euler")
        msg = p.page.locator("#view-umap [data-testid=umap-missing]")
        msg.wait_for()
        assert "no UMAP bases" in msg.inner_text()
        assert p.page.locator("#view-umap canvas").count() == 0
        assert not [c for c in p.console if c.startswith("pageerror")]
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()


@pytest.mark.browser
def test_screenshots_with_the_default_bundle(browser, web_dist, tmp_path_factory, request):
    """The trained model, wide and at 375 px: DX_UMAP_BUNDLE, else bundles/default (derived by the session,
    tests/conftest.py) when it carries UMAP bases, or a copy of it with bases built here (about a minute)."""
    if os.environ.get("DX_UMAP_BUNDLE"):
        bundle_dir = Path(os.environ["DX_UMAP_BUNDLE"])
    else:
        bundle_dir = request.getfixturevalue("default_bundle")
        if "umap_project" not in json.loads((bundle_dir / "manifest.json").read_text())["components"]:
            default, bundle_dir = bundle_dir, tmp_path_factory.mktemp("umap-default") / "default"
            shutil.copytree(default, bundle_dir)
            add_to_manifest(bundle_dir, build_umap(bundle_dir))
    srv, url = _serve(bundle_dir, web_dist)
    p = Page(browser, url)
    try:
        p.open()
        p.generate(
            prompt="a small cat at the top left on a blue background",
            negative="",
            seed=3,
            guidance=3.0,
            steps=20,
            scheduler="euler",
        )
        p.page.add_style_tag(content="[data-view=timeline] { position: static !important; }")  # sticky: it would cover the view
        p.page.set_viewport_size({"width": 1280, "height": 1600})  # the whole view on screen: no scroll moves the pointer
        view = p.page.locator("#view-umap")
        view.scroll_into_view_if_needed()
        canvas = view.locator("[data-testid=umap-canvas]")
        canvas.wait_for()
        # hover the selected (last) step of this run: its tooltip shows the step and its predicted image
        xy = p.page.evaluate("() => window.__lastTrace.steps.at(-1).umap")
        bases = json.loads((bundle_dir / "umap_bases.json").read_text())
        box = canvas.bounding_box()
        (x0, x1), (y0, y1) = bases["extent"]["x"], bases["extent"]["y"]
        s = min((box["width"] - 28) / (x1 - x0), (box["height"] - 28) / (y1 - y0))
        px = box["x"] + (box["width"] - s * (x1 - x0)) / 2 + (xy[0] - x0) * s
        py = box["y"] + box["height"] - (box["height"] - s * (y1 - y0)) / 2 - (xy[1] - y0) * s
        p.page.mouse.move(px, py)
        tip = view.locator("[data-testid=umap-tip]")
        tip.wait_for()
        assert "this run" in tip.inner_text()
        SHOTS.mkdir(parents=True, exist_ok=True)
        view.screenshot(path=str(SHOTS / "umap.png"))
        p.page.mouse.move(0, 0)
        p.page.set_viewport_size({"width": 375, "height": 800})
        p.page.wait_for_timeout(300)
        over = p.page.evaluate("""() => { const out = [];
            if (document.documentElement.scrollWidth > 375) out.push('document ' + document.documentElement.scrollWidth);
            for (const el of document.querySelectorAll('#view-umap *')) { const r = el.getBoundingClientRect();
                if (r.width && r.right > 375.5) { out.push(el.tagName + '.' + el.className + ' right=' + r.right); break; } }
            return out; }""")
        assert not over, f"wider than 375px: {over}"
        view.screenshot(path=str(SHOTS / "umap-375.png"))
        p.assert_all_local()
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()
