"""The scheduler and seeds views in a real browser, checked against the native runtime.

The scheduler view must show the run's own numbers: its timesteps, one dot per step on the ᾱ
curve, and at a picked step the update rule's coefficients exactly as the runtime ran them
(Trace.steps[i].update / x0_update). "Re-run with this scheduler" must produce the native image of
that scheduler. The seeds view must show five initial noises, and a seed's stated noise range must
be the native run's first latent range. Nothing may scroll sideways at 375 px.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")

from test_browser import ARTIFACTS, PROMPT, RUN_TIMEOUT_MS, Page, browser, bundle, playwright, server  # noqa: E402,F401

from runtime.bundle import Bundle  # noqa: E402
from runtime.native import NativeBackend, to_numpy  # noqa: E402
from runtime.pipeline import Pipeline, Request, run_sync  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ARTIFACTS / "views"
SEED, STEPS, GUIDANCE = 3, 4, 7.5
_NATIVE: dict = {}


def native_trace(bundle_dir: Path, **request):
    """The native runtime's full Trace for a request (cached per bundle and request)."""
    key = (str(bundle_dir), tuple(sorted(request.items())))
    if key not in _NATIVE:
        pipe = Pipeline(Bundle.from_dir(bundle_dir), NativeBackend(bundle_dir))

        async def go():
            await pipe.load()
            return await pipe.generate(Request(**request))

        _NATIVE[key] = run_sync(go())  # on another thread: Playwright's sync API owns this one's event loop
    return _NATIVE[key]


def req(scheduler: str, seed: int = SEED) -> dict:
    return dict(prompt=PROMPT, negative_prompt="", seed=seed, guidance=GUIDANCE, steps=STEPS, scheduler=scheduler)


def fmt_t(t: float) -> str:
    """The view's timestep format: integers as integers, else one decimal."""
    return str(int(t)) if float(t).is_integer() else f"{t:.1f}"


def assert_shown(shown: float, want: float, digits: int, what: str):
    """`shown` is `want` to `digits` significant digits (half a unit in the last shown digit)."""
    if want == 0:
        assert shown == 0, what
        return
    unit = 10 ** (math.floor(math.log10(abs(want))) - digits + 1)
    assert abs(shown - want) <= 0.5 * unit * 1.01 + 1e-12, f"{what}: shown {shown}, runtime {want}"


def canvas_rgba(page, selector: str) -> np.ndarray:
    h, w, data = page.evaluate(
        """(sel) => {
        const c = document.querySelector(sel);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        return [c.height, c.width, Array.from(d.data)];
    }""",
        selector,
    )
    return np.array(data, dtype=np.uint8).reshape(h, w, 4)


def assert_same_image(got: np.ndarray, want: np.ndarray):
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got.astype(int) - want.astype(int)).max()
    assert err <= 2, f"max abs pixel error {err}/255 vs the native runtime"


def read_rule(page, testid: str) -> list[tuple[str, float]]:
    """The shown linear combination: [(term, signed coefficient as shown)]."""
    out = []
    for el in page.locator(f"[data-testid={testid}] .term").all():
        sign = el.locator(".sign").inner_text().strip()
        coef = float(el.locator(".coef").inner_text().strip())
        out.append((el.get_attribute("data-term"), -coef if sign == "−" else coef))
    return out


def check_no_sideways_scroll(page, views=("scheduler", "seeds")):
    assert page.evaluate("document.documentElement.scrollWidth") <= 375, "the page scrolls sideways at 375 px"
    for v in views:
        over = page.evaluate(
            """(id) => { const r = document.getElementById(id);
            return [...r.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
                .map(e => e.tagName + ': ' + (e.textContent || '').slice(0, 40)).slice(0, 5); }""",
            f"view-{v}",
        )
        assert not over, f"{v}: elements past the right edge at 375 px: {over}"


def shoot(page, name: str):
    """A screenshot of one view, with other views' sticky or fixed bars hidden (they would cover it)."""
    VIEWS.mkdir(parents=True, exist_ok=True)
    page.evaluate("""() => { for (const e of document.querySelectorAll('body *')) {
        const pos = getComputedStyle(e).position;
        if ((pos === 'sticky' || pos === 'fixed') && !e.closest('#view-scheduler, #view-seeds')) e.dataset.shotHidden = e.style.visibility || 'x', e.style.visibility = 'hidden';
    } }""")
    try:
        page.locator(f"#view-{name.split('-')[0]}").screenshot(path=str(VIEWS / f"{name}.png"))
    finally:
        page.evaluate("""() => { for (const e of document.querySelectorAll('[data-shot-hidden]')) {
            e.style.visibility = e.dataset.shotHidden === 'x' ? '' : e.dataset.shotHidden; delete e.dataset.shotHidden; } }""")


@pytest.fixture(scope="module")
def pg(browser, server):
    p = Page(browser, server)
    p.open("?provider=wasm")
    yield p
    p.assert_all_local()
    p.close()


def check_scheduler_view(p, bundle_dir: Path, scheduler: str, pick: int):
    page = p.page
    want = native_trace(bundle_dir, **req(scheduler))
    view = page.locator("#view-scheduler")
    assert want.plan.scheduler_label in view.locator("h2").inner_text()
    # the timesteps row is the native run's, one dot per step on the ᾱ curve
    row = view.locator("[data-testid=timesteps] button").all_inner_texts()
    assert row == [fmt_t(t) for t in want.plan.timesteps]
    assert view.locator("[data-testid=schedule-dot]").count() == len(want.steps) == len(want.plan.timesteps)
    assert view.locator("[data-testid=sigma-chart]").count() == (1 if want.plan.sigmas is not None else 0)
    # pick a step: the update rule and the scalars are that step's, as the runtime ran them
    view.locator("[data-testid=timesteps] button").nth(pick).click()
    assert view.locator("[data-testid=timesteps] button").nth(pick).get_attribute("aria-pressed") == "true"
    assert view.locator("[data-testid=schedule-dot].sel").count() == 1
    step = want.steps[pick]
    for testid, terms in (("update-rule", step.update), ("x0-rule", step.x0_update)):
        shown = read_rule(page, testid)
        assert [t for t, _ in shown] == [t for _, t in terms], (testid, shown, terms)
        for (term, got), (c, _) in zip(shown, terms):
            assert_shown(got, c, 4, f"{scheduler} step {pick} {testid} {term}")
    rows = view.locator("[data-testid=coefficients] tbody tr").all()
    assert [r.locator("th").inner_text() for r in rows] == list(step.coefficients)
    for r, (k, v) in zip(rows, step.coefficients.items()):
        assert_shown(float(r.locator("td.num").inner_text()), v, 6, f"{scheduler} {k}")
    return want


def test_scheduler_view_matches_native(pg, bundle):
    p, page = pg, pg.page
    p.generate(seed=SEED, guidance=GUIDANCE, steps=STEPS, scheduler="dpmpp_2m")
    # step 2 of DPM++ 2M is second order: it uses step 1's input and noise (x@0, eps@0)
    want = check_scheduler_view(p, bundle, "dpmpp_2m", pick=1)
    assert {t for _, t in want.steps[1].update} >= {"x@0", "eps@0"}
    assert "step 1" in page.inner_text("[data-testid=update-rule]")

    # the same request with DDIM, as a side run: its image is the native DDIM image
    view = page.locator("#view-scheduler")
    view.get_by_label("Scheduler").select_option("ddim")
    view.get_by_role("button", name="Re-run with this scheduler").click()
    page.wait_for_selector("#view-scheduler [data-testid=scheduler-compare][data-state=done]", timeout=RUN_TIMEOUT_MS)
    ddim = native_trace(bundle, **req("ddim"))
    assert_same_image(canvas_rgba(page, "#view-scheduler [data-testid=scheduler-compare-image] canvas"), to_numpy(ddim.image))
    assert view.locator("[data-testid=other-timesteps] .ts").all_inner_texts() == [fmt_t(t) for t in ddim.plan.timesteps]
    # the main run's image beside it is still this run's (DPM++ 2M)
    assert_same_image(
        canvas_rgba(page, "#view-scheduler [data-testid=scheduler-compare] figure:first-child canvas"), to_numpy(want.image)
    )
    shoot(page, "scheduler-tiny")

    # a main run with PNDM (PLMS with its repeated warm-up timestep) and one with DDIM (no σ chart)
    p.generate(seed=SEED, guidance=GUIDANCE, steps=STEPS, scheduler="pndm")
    check_scheduler_view(p, bundle, "pndm", pick=1)
    p.generate(seed=SEED, guidance=GUIDANCE, steps=STEPS, scheduler="ddim")
    check_scheduler_view(p, bundle, "ddim", pick=2)


def test_seeds_view_matches_native(pg, bundle):
    p, page = pg, pg.page
    p.generate(seed=SEED, guidance=GUIDANCE, steps=STEPS, scheduler="euler")
    view = page.locator("#view-seeds")
    assert view.locator("[data-testid=seed-cell]").first.get_attribute("data-seed") == str(SEED)
    view.get_by_role("button", name="Try 4 other seeds").click()
    for s in range(SEED + 1, SEED + 5):
        page.wait_for_selector(
            f"#view-seeds [data-testid=seed-cell][data-seed='{s}'] canvas[data-testid=seed-noise]", timeout=RUN_TIMEOUT_MS
        )
    page.wait_for_function(
        "() => [...document.querySelectorAll('#view-seeds [data-testid=seed-cell]')]"
        ".every(c => c.querySelector('[data-testid=seed-status]').textContent.trim() === 'final image')",
        timeout=RUN_TIMEOUT_MS,
    )
    page.wait_for_selector("main[data-engine=ready]")
    assert view.locator("canvas[data-testid=seed-noise]").count() == 5
    assert [c.get_attribute("data-seed") for c in view.locator("[data-testid=seed-cell]").all()] == [
        str(SEED + k) for k in range(5)
    ]
    for s in (SEED, SEED + 1):
        want = native_trace(bundle, **req("euler", seed=s))
        first = to_numpy(want.steps[0].latent)
        lo, hi = (
            float(x)
            for x in view.locator(f"[data-testid=seed-cell][data-seed='{s}'] [data-testid=seed-noise-range]")
            .inner_text()
            .split("…")
        )
        assert_shown(lo, float(first.min()), 3, f"seed {s} noise min")
        assert_shown(hi, float(first.max()), 3, f"seed {s} noise max")
        assert_same_image(
            canvas_rgba(page, f"#view-seeds [data-testid=seed-cell][data-seed='{s}'] [data-view=image] canvas"),
            to_numpy(want.image),
        )
    # the seeds differ: their noises are not the same
    n3 = to_numpy(native_trace(bundle, **req("euler", seed=SEED)).steps[0].latent)
    n4 = to_numpy(native_trace(bundle, **req("euler", seed=SEED + 1)).steps[0].latent)
    assert not np.array_equal(n3, n4)
    view.get_by_role("button", name=f"Use seed {SEED + 1}").click()
    assert str(SEED + 1) in view.locator("[role=status]").inner_text()
    shoot(page, "seeds-tiny")
    # 375 px: nothing scrolls sideways
    page.set_viewport_size({"width": 375, "height": 800})
    page.wait_for_timeout(300)
    check_no_sideways_scroll(page)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_screenshots_default_bundle(browser, web_dist, default_bundle):
    """Both views on the real model (bundles/default, derived by the session), wide and at 375 px."""
    from app.serve import start_background

    srv, url = start_background(default_bundle, dist=web_dist)
    p = Page(browser, url)
    try:
        p.open("?provider=wasm")
        page = p.page
        prompt = "a red apple on a blue background"
        p.generate(prompt=prompt, seed=SEED, guidance=GUIDANCE, steps=8, scheduler="dpmpp_2m")
        view = page.locator("#view-scheduler")
        view.locator("[data-testid=timesteps] button").nth(2).click()
        view.get_by_label("Scheduler").select_option("ddim")
        view.get_by_role("button", name="Re-run with this scheduler").click()
        page.locator("#view-seeds").get_by_role("button", name="Try 4 other seeds").click()
        page.wait_for_selector("#view-scheduler [data-testid=scheduler-compare][data-state=done]", timeout=RUN_TIMEOUT_MS)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#view-seeds [data-testid=seed-status]')]"
            ".every(c => c.textContent.trim() === 'final image')",
            timeout=RUN_TIMEOUT_MS,
        )
        for name in ("scheduler", "seeds"):
            shoot(page, name)
        page.set_viewport_size({"width": 375, "height": 800})
        page.wait_for_timeout(300)
        check_no_sideways_scroll(page)
        for name in ("scheduler", "seeds"):
            shoot(page, f"{name}-375")
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()
