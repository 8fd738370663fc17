"""The explainer's frame in a real browser: the overview, the timeline, the decoder, the article and
the URL state (tiny bundle, Chromium, Pyodide + onnxruntime-web).

What a reader does: clicks a pipeline stage and lands on its view; steps through a run with the
keyboard or a thumbnail and every view follows; opens a shared link and gets the same image at the
same step; reads the model's real sizes; uses the page at 375 px without sideways scrolling.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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
VIEWS = ["overview", "timeline", "decoder", "article"]


@pytest.fixture
def page(browser, server):
    p = Page(browser, server)
    yield p
    p.assert_all_local()
    p.close()


def wait_done(p: Page):
    p.page.wait_for_selector("[data-testid=run][data-state=done]", timeout=RUN_TIMEOUT_MS)
    p.page.wait_for_selector("main[data-engine=ready]")


def wait_previews(p: Page):
    """The previewed steps' predicted images that were decoded after the loop (run-image) have all arrived."""
    p.page.wait_for_function(
        "() => { const t = window.__lastTrace; const k = t?.request.previewEvery;"
        " return t && t.steps.every((s, i, a) => !(i % k === 0 || i === a.length - 1) || s.image); }",
        timeout=RUN_TIMEOUT_MS,
    )


def wait_step(p: Page, k: int):
    p.page.wait_for_function(f"() => document.querySelector('[data-testid=timeline]')?.dataset.step === '{k}'", timeout=10_000)


def in_view_and_focused(p: Page, id_: str):
    """Wait until the element has the focus and its top is inside the window (the smooth scroll ended)."""
    p.page.wait_for_function(
        """id => { const el = document.getElementById(id); if (!el || document.activeElement !== el) return false;
                   const r = el.getBoundingClientRect(); return r.top >= 0 && r.top < innerHeight * 0.6; }""",
        arg=id_,
        timeout=10_000,
    )


def test_sources_have_no_math_random():
    """Nothing random in what the views show: the views and the shared state never call Math.random."""
    files = [*(ROOT / "web/src/views").glob("*.svelte"), *(ROOT / "web/src/state").glob("*.ts")]
    assert len(files) > 5
    offenders = [f.name for f in files if "Math.random" in f.read_text()]
    assert not offenders, offenders


def test_overview_stages_lead_to_their_views(page):
    p = page.page
    page.open("?provider=wasm")
    # before any run: the diagram is there, without a run's numbers, and stages lead to the article
    assert p.locator("[data-view=overview]").count() == 1
    assert "No run yet" in p.inner_text("[data-testid=overview-status]")
    assert not re.search(r"\d", p.inner_text("[data-testid=overview-loop]"))
    # a stage opens its detail in place (issue 23), and from there leads to its view or article section
    p.click("[data-testid=stage-decoder]")
    p.wait_for_selector("[data-testid=stage-detail][data-stage=decoder]")
    p.click("[data-testid=deeper-decoder]")
    in_view_and_focused(page, "article-decoder")

    page.generate(prompt="a cat", seed=1, guidance=5, steps=4, scheduler="euler")
    assert "Done: 4 steps" in p.inner_text("[data-testid=overview-status]")
    assert "a cat" in p.inner_text("[data-testid=overview-prompt]")
    # a finished run opens at the teaching step (derive/teach.ts: in the first half), not the last step
    assert re.search(r"step [12] of 4, timestep \d+", p.inner_text("[data-testid=overview-loop]"))
    for stage, view in [
        ("text", "view-text"),
        ("refiner", "view-refiner"),
        ("guidance", "view-guidance"),
        ("scheduler", "view-scheduler"),
        ("decoder", "view-decoder"),
    ]:
        p.evaluate("window.scrollTo(0, 0)")
        p.click(f"[data-testid=stage-{stage}]")
        p.click(f"[data-testid=deeper-{view.removeprefix('view-')}]")
        in_view_and_focused(page, view)


def test_timeline_keys_strip_and_decoder_sizes(page):
    p = page.page
    page.open("?provider=wasm")
    page.generate(prompt="a cat", seed=2, guidance=5, steps=5, scheduler="euler")
    trace_ts = p.evaluate("() => window.__lastTrace.timesteps")
    # a finished run opens at the teaching step (derive/teach.ts: in the first half), not the last step
    assert re.search(r"step [123] of 5", p.inner_text("[data-testid=timeline-label]"))

    slider = p.locator("[data-testid=timeline-slider]")
    slider.focus()
    p.keyboard.press("Home")
    wait_step(page, 1)
    assert p.inner_text("[data-testid=timeline-label]") == f"step 1 of 5 (timestep {round(trace_ts[0])})"
    assert p.get_attribute("[data-testid=decoder-step]", "data-step") == "1"
    p.keyboard.press("ArrowRight")
    wait_step(page, 2)
    assert p.get_attribute("[data-testid=decoder-step]", "data-step") == "2"
    assert f"timestep {round(trace_ts[1])}" in p.inner_text("[data-testid=decoder-step]")
    p.keyboard.press("End")
    wait_step(page, 5)
    p.keyboard.press("ArrowLeft")
    wait_step(page, 4)
    # space plays from here to the end, then stops
    p.keyboard.press(" ")
    wait_step(page, 5)
    p.wait_for_function("() => document.querySelector('[data-testid=timeline-play]').getAttribute('aria-pressed') === 'false'")
    # from the end, play starts over at the first step
    p.keyboard.press(" ")
    p.wait_for_function("() => ['1','2','3','4','5'].includes(document.querySelector('[data-testid=timeline]').dataset.step)")
    p.keyboard.press(" ")  # pause
    p.wait_for_function("() => document.querySelector('[data-testid=timeline-play]').getAttribute('aria-pressed') === 'false'")

    # a thumbnail of the step strip picks its step for every view
    p.locator("[data-testid=step-strip] button").nth(2).click()
    wait_step(page, 3)
    assert p.inner_text("[data-testid=timeline-label]") == f"step 3 of 5 (timestep {round(trace_ts[2])})"
    assert p.get_attribute("[data-testid=decoder-step]", "data-step") == "3"
    # page-wide ←/→ when the focus is not in a control
    p.evaluate("document.activeElement.blur()")
    p.keyboard.press("ArrowLeft")
    wait_step(page, 2)
    # and the picked step is in the URL (written once the frame has painted: state/url.svelte.ts)
    p.wait_for_function("() => new URLSearchParams(location.search).get('step') === '2'", timeout=5_000)
    assert parse_qs(urlsplit(p.url).query)["step"] == ["2"]

    # the decoder states the model facts' sizes and their ratio
    m = p.evaluate("() => window.__engineInfo.bundle.model")
    c, (h, w), (ih, iw) = m["latent_channels"], m["latent_size"], m["image_size"]
    text = p.inner_text("[data-testid=decoder-sizes]")
    assert f"{c}×{h}×{w}" in text and f"3×{ih}×{iw}" in text, text
    ratio = 3 * ih * iw / (c * h * w)
    assert f"{ratio:g}× fewer" in p.inner_text("[data-testid=decoder-ratio]")
    assert f"1/{m['vae_scaling_factor']:.3g}" in p.inner_text("[data-view=decoder]")
    # the article weaves in this run's numbers
    article = p.inner_text("#article-refiner")
    assert "This run used a scale of 5." in article
    assert "with 5 steps" in article
    assert f"step 2, the timestep is {round(trace_ts[1])}" in article


def test_url_round_trip(page, bundle):
    p = page.page
    page.open("?provider=wasm&prompt=a%20cat&seed=3&scale=5&steps=4&step=2")
    # the page runs the URL's request by itself
    wait_done(page)
    req = p.evaluate("() => window.__lastTrace.request")
    assert (req["prompt"], req["seed"], req["guidance"], req["steps"]) == ("a cat", 3, 5, 4)
    want, _ = native(bundle, prompt="a cat", negative_prompt="", seed=3, guidance=5.0, steps=4, scheduler=req["scheduler"])
    assert_same_image(page.last_image(), want)
    wait_step(page, 2)
    assert p.get_attribute("[data-testid=decoder-step]", "data-step") == "2"
    q = parse_qs(urlsplit(p.url).query)
    assert q["provider"] == ["wasm"] and q["step"] == ["2"] and q["prompt"] == ["a cat"] and q["scheduler"] == [req["scheduler"]]
    # the form shows the URL's request
    assert p.input_value("textarea[name=prompt]") == "a cat"
    assert p.input_value("input[name=guidance]") == "5"
    # a new run writes its request, and a picked step, into the URL (replaceState: no new history entry)
    length = p.evaluate("history.length")
    page.generate(prompt="a dog", seed=4, guidance=6, steps=3, scheduler=req["scheduler"])
    q = parse_qs(urlsplit(p.url).query)
    assert q["prompt"] == ["a dog"] and q["seed"] == ["4"] and q["scale"] == ["6"] and q["steps"] == ["3"] and "step" not in q
    p.locator("[data-testid=timeline-slider]").focus()
    p.keyboard.press("Home")
    wait_step(page, 1)
    p.wait_for_function("() => new URL(location.href).searchParams.get('step') === '1'")
    assert p.evaluate("history.length") == length


@pytest.mark.parametrize(
    "query,message",
    [
        ("scale=99", "guidance scale must be a number from 0 to 20"),
        ("seed=abc&prompt=x", "seed must be a whole number from 0 to"),
    ],
)
def test_url_invalid_value_shows_validator_line(page, query, message):
    p = page.page
    page.open(f"?provider=wasm&{query}")
    p.wait_for_function("m => document.body.innerText.includes(m)", arg=message, timeout=30_000)
    assert p.evaluate("() => window.__lastTrace") is None


def _screens(page: Page, name_suffix: str = ""):
    """Each of these views at 1280 px and at 375 px; at 375 px nothing scrolls sideways."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    p = page.page
    # element shots: the sticky timeline would cover the top of the view being shot
    style = p.add_style_tag(content="[data-view=timeline] { position: static !important; }")
    for width, tag in [(1280, ""), (375, "-375")]:
        p.set_viewport_size({"width": width, "height": 900})
        p.wait_for_timeout(300)
        sw, iw = p.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        assert sw <= iw, f"{width} px: the page scrolls sideways ({sw} > {iw})"
        for view in VIEWS:
            el = p.locator(f"[data-view={view}]")
            el.scroll_into_view_if_needed()
            el.screenshot(path=str(SHOTS / f"{view}{tag}{name_suffix}.png"))
    style.evaluate("el => el.remove()")
    p.set_viewport_size({"width": 1280, "height": 900})


def test_narrow_layout_and_screenshots(page):
    p = page.page
    page.open("?provider=wasm")
    p.set_viewport_size({"width": 375, "height": 800})
    sw, iw = p.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert sw <= iw, f"no run yet: the page scrolls sideways ({sw} > {iw})"
    p.set_viewport_size({"width": 1280, "height": 900})
    page.generate(prompt="a small cat at the top left on a blue background", seed=3, guidance=5, steps=6, scheduler="euler")
    wait_previews(page)
    p.locator("[data-testid=step-strip] button").nth(2).click()
    _screens(page, "-tiny")


def test_screenshots_default_bundle(browser, web_dist, default_bundle):
    """The same views with the real default model (bundles/default, derived by the session: tests/conftest.py)."""
    from app.serve import start_background

    srv, url = start_background(default_bundle, dist=web_dist)
    page = Page(browser, url)
    try:
        examples = json.loads((default_bundle / "manifest.json").read_text()).get("about", {}).get("examples") or []
        prompt = examples[0] if examples else "a red apple on a blue background"
        from urllib.parse import quote

        page.open(f"?provider=wasm&prompt={quote(prompt)}&seed=7&steps=20&step=8")
        wait_done(page)
        wait_previews(page)
        wait_step(page, 8)
        _screens(page)
        page.page.screenshot(path=str(SHOTS / "page.png"), full_page=True)
        # the overview while a run streams: the refiner lit, the loop counting
        page.generate(wait=None, prompt=prompt, seed=8, guidance=3, steps=100, scheduler="euler")
        page.page.wait_for_selector("[data-view=overview][data-phase=refiner]", timeout=RUN_TIMEOUT_MS)
        page.page.locator("[data-view=overview]").screenshot(path=str(SHOTS / "overview-running.png"))
        wait_done(page)
        page.assert_all_local()
    finally:
        page.close()
        srv.shutdown()
        srv.server_close()
