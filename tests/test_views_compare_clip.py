"""Two prompts side by side, and CLIP's scores, in a real browser, against the native runtime.

Compare: the second prompt's run (same seed and settings) gives the native image for that request,
the differing tokens are marked, the URL carries both prompts. CLIP: the scores the view shows are
the native runtime's for the same images and prompts (default bundle, which ships the image tower);
a bundle without the tower says so instead of showing numbers.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from test_browser import (  # noqa: F401 - pytest fixtures
    ARTIFACTS,
    RUN_TIMEOUT_MS,
    Page,
    assert_same_image,
    browser,
    bundle,
    native,
    playwright,
    server,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ARTIFACTS / "views"


@pytest.fixture
def page(browser, server):
    p = Page(browser, server)
    yield p
    p.assert_all_local()
    p.close()


def side_image(p: Page, key_prefix: str = "compare:") -> np.ndarray:
    p.page.wait_for_function(
        "() => document.querySelector('[data-testid=compare-b] canvas') && "
        "!document.querySelector('[data-testid=compare-b]').innerText.includes('running')",
        timeout=RUN_TIMEOUT_MS,
    )
    shape, data = p.page.evaluate("""() => { const t = window.__compareTrace; const im = t.image;
        return [im.shape, Array.from(new Uint8Array(im.data))]; }""")
    return np.array(data, dtype=np.uint8).reshape(shape)


def test_compare_two_prompts(page, bundle):
    p = page.page
    page.open("?provider=wasm")
    p.fill("input[name=compare]", "a dog")
    page.generate(prompt="a cat", seed=2, guidance=4, steps=3, scheduler="ddim")
    p.wait_for_function("() => window.__compareTrace && window.__compareTrace.done", timeout=RUN_TIMEOUT_MS)
    got = side_image(page)
    want, _ = native(bundle, prompt="a dog", seed=2, guidance=4, steps=3, scheduler="ddim")
    assert_same_image(got, want)
    # the one differing token is marked on both sides, nothing else
    assert p.locator("[data-testid=compare-a] li.changed").all_inner_texts() == ["cat"]
    assert p.locator("[data-testid=compare-b] li.changed").all_inner_texts() == ["dog"]
    q = parse_qs(urlsplit(p.url).query)
    assert q["prompt"] == ["a cat"] and q["compare"] == ["a dog"]
    p.wait_for_selector("[data-testid=compare-summary]")
    # a shared link runs both again
    # (the link's run starts as soon as the model is ready: the engine may never be seen idle)
    p.goto(page.base + "?provider=wasm&prompt=a%20cat&seed=2&scale=4&steps=3&scheduler=ddim&compare=a%20dog")
    p.wait_for_function("() => window.__compareTrace && window.__compareTrace.done", timeout=RUN_TIMEOUT_MS)
    assert_same_image(side_image(page), want)


def test_clip_view_without_an_image_tower_says_why(page):
    page.open("?provider=wasm")
    page.generate(prompt="a cat", seed=1, steps=2)
    assert "no CLIP image encoder" in page.page.inner_text("[data-testid=clip-absent]")


def test_clip_scores_equal_native(browser, web_dist, default_bundle):
    if not (default_bundle / "clip_image.onnx").exists():
        pytest.skip("models/default has no CLIP image tower (train it: diffusion-explainer train clip_image)")
    from app.serve import start_background
    from runtime.bundle import Bundle
    from runtime.native import NativeBackend
    from runtime.pipeline import Pipeline, Request, run_sync

    srv, url = start_background(default_bundle, dist=web_dist)
    page = Page(browser, url)
    try:
        p = page.page
        page.open("?provider=wasm")
        page.generate(prompt="a cat on a blue background", seed=1, guidance=3, steps=10, scheduler="ddim")
        p.wait_for_function("() => window.__lastTrace?.clip?.final", timeout=RUN_TIMEOUT_MS)
        p.wait_for_timeout(1500)  # the one-word change the view asks CLIP about
        clip = p.evaluate("() => window.__lastTrace.clip")
        shown = [float(x) for x in p.locator("[data-testid=clip-bars] li").evaluate_all("els => els.map(e => e.dataset.sim)")]
        assert sorted(shown) == sorted(clip["final"])

        every = p.evaluate("() => window.__lastTrace.request.previewEvery")

        async def go():
            pipe = Pipeline(Bundle.from_dir(default_bundle), NativeBackend(default_bundle))
            await pipe.load()
            trace = await pipe.generate(
                Request("a cat on a blue background", seed=1, guidance=3, steps=10, scheduler="ddim", preview_every=every)
            )
            return await pipe.clip_scores(trace, clip["prompts"])

        ref = run_sync(go())
        assert np.abs(np.array(ref.final) - np.array(clip["final"])).max() < 1e-3
        assert clip["final"][0] == max(clip["final"]), "CLIP should find the run's own prompt the best match"
        assert [i for i, _ in clip["steps"]] == [0, 2, 4, 6, 8, 9]  # the previewed steps (every 2nd and the last)
        assert np.abs(np.array([r for _, r in ref.steps]) - np.array([r for _, r in clip["steps"]])).max() < 1e-3
        SHOTS.mkdir(parents=True, exist_ok=True)
        p.locator("[data-view=clip]").screenshot(path=str(SHOTS / "clip.png"))
        p.fill("input[name=compare]", "a dog on a blue background")
        p.click("[data-testid=generate]")
        p.wait_for_function("() => window.__compareTrace && window.__compareTrace.done", timeout=RUN_TIMEOUT_MS)
        p.wait_for_timeout(500)
        p.locator("[data-view=compare]").screenshot(path=str(SHOTS / "compare.png"))
    finally:
        page.close()
        srv.shutdown()
        srv.server_close()
