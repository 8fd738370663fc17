"""The explainer as one experience (issue 23), in a real browser on the default model's page build.

What a new reader meets: a first screen that holds the prompt, Generate, the overview, the image and
the timeline, with a sentence saying what they are; stages that open in place (and in the URL); the
article beside its views; a guided walk that quotes the run; honest status and one job queue; a page
that works from the keyboard and passes axe-core; a phone layout with the image right after Generate.
Screenshots go to test-artifacts/experience/ (looked at by whoever changes the layout).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from test_browser import CHROMIUM_ARGS, RUN_TIMEOUT_MS, Page, playwright  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "experience"
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
PROMPT = "a cat on a blue background"


@pytest.fixture(scope="module")
def browser(playwright):  # noqa: F811
    b = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def server(web_dist, default_small_bundle):
    from app.serve import start_background

    srv, url = start_background(default_small_bundle, dist=web_dist)
    yield url
    srv.shutdown()
    srv.server_close()


def new_page(browser, server, width=1440, height=900, reduced=False) -> Page:
    p = Page(browser, server)
    p.page.set_viewport_size({"width": width, "height": height})
    if reduced:
        p.page.emulate_media(reduced_motion="reduce")
    return p


@pytest.fixture
def page(browser, server):
    p = new_page(browser, server)
    yield p
    p.close()


def shot(p: Page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    p.page.screenshot(path=str(SHOTS / f"{name}.png"))


def run(p: Page, steps=6, scheduler="ddim", settle=True, **kw):
    p.fill_request(
        prompt=kw.get("prompt", PROMPT), seed=kw.get("seed", 3), guidance=kw.get("guidance", 3), steps=steps, scheduler=scheduler
    )
    p.page.click("[data-testid=generate]")
    if settle:
        p.page.wait_for_selector("[data-testid=run][data-state=done]", timeout=RUN_TIMEOUT_MS)
        p.page.wait_for_selector("main[data-engine=ready]")


def rect(p: Page, sel: str) -> dict:
    return p.page.eval_on_selector(
        sel,
        "el => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width, height: r.height}; }",
    )


def inside(p: Page, sel: str) -> bool:
    r = rect(p, sel)
    h, w = p.page.evaluate("[innerHeight, innerWidth]")
    return r["top"] >= 0 and r["bottom"] <= h + 1 and r["left"] >= 0 and r["right"] <= w + 1 and r["height"] > 0


FIRST = ["[data-testid=generate]", "[data-view=overview]", "[data-view=image]", "[data-view=timeline]", "textarea[name=prompt]"]


# ---- 1. a first screen that explains ----------------------------------------------------------------


def test_first_screen_1440(page):
    p = page
    p.open("?provider=wasm")
    shot(p, "first-1440-before-run")
    for sel in FIRST:
        assert inside(p, sel), f"{sel} is not inside the first screen at 1440×900: {rect(p, sel)}"
    lead = p.page.inner_text("[data-testid=lead]")
    assert "On this screen" in lead and "image" in lead and "timeline" in lead
    run(p)
    p.page.evaluate("window.scrollTo(0, 0)")
    for sel in FIRST:
        assert inside(p, sel), f"after a run, {sel} left the first screen: {rect(p, sel)}"
    shot(p, "first-1440")
    # no column stands empty beside the views: every row of views has its article text beside it
    rows = p.page.eval_on_selector_all(
        "[data-view=article] > [data-row]",
        """rows => rows.map(r => { const a = r.querySelector('.prose').getBoundingClientRect(), v = r.querySelector('.views').getBoundingClientRect();
                                   return {row: r.dataset.row, proseLeft: a.left, proseRight: a.right, viewsLeft: v.left, viewsHeight: v.height}; })""",
    )
    assert [r["row"] for r in rows] == ["text", "refiner", "decoder", "howto"]
    for r in rows:
        assert r["proseRight"] <= r["viewsLeft"] and r["proseLeft"] < 200, r
    height = p.page.evaluate("document.scrollingElement.scrollHeight")
    (SHOTS / "heights.json").write_text(json.dumps({"1440": height}))
    assert height < 11_181, f"the page is still {height} px tall at 1440"


# ---- 2. levels of abstraction --------------------------------------------------------------------------


def test_stages_open_in_place_and_in_the_url(page):
    p = page.page
    page.open("?provider=wasm")
    run(page)
    p.click("[data-testid=stage-refiner]")
    detail = p.locator("[data-testid=stage-detail][data-stage=refiner]")
    detail.wait_for()
    # animated (a Svelte slide) while it opens
    assert p.evaluate("document.getAnimations().length") > 0
    for part in ("latent", "unet", "guidance", "scheduler", "x0"):
        assert p.locator(f"[data-testid=stage-detail] [data-part={part}]").count() == 1, part
    p.wait_for_function("() => new URL(location.href).searchParams.get('view') === 'refiner'")  # written after the paint
    assert parse_qs(urlsplit(p.url).query)["view"] == ["refiner"]
    assert re.search(r"step \d+ of 6, timestep \d+", detail.inner_text())
    p.click("[data-testid=stage-guidance]")
    p.wait_for_function("() => new URL(location.href).searchParams.get('view') === 'guidance'")
    p.wait_for_timeout(400)
    page.page.locator("[data-view=overview]").screenshot(path=str(SHOTS / "stage-open.png"))
    # deeper: the full view, then the way back
    p.click("[data-testid=deeper-guidance]")
    p.wait_for_function("() => document.activeElement?.id === 'view-guidance'")
    p.evaluate("window.scrollTo(0, 0)")
    p.click("[data-testid=stage-back]")
    p.wait_for_selector("[data-testid=stage-detail]", state="detached")
    assert "view" not in parse_qs(urlsplit(p.url).query)
    # the decoder and text stages
    p.click("[data-testid=stage-decoder]")
    p.wait_for_selector("[data-testid=stage-detail][data-stage=decoder] [data-part=decoder]")
    p.click("[data-testid=stage-text]")
    p.wait_for_selector("[data-testid=stage-detail][data-stage=text] [data-part=tokenizer]")


def test_view_link_opens_the_stage_without_motion(browser, server):
    page = new_page(browser, server, reduced=True)
    try:
        p = page.page
        page.open("?provider=wasm&view=guidance")
        p.wait_for_selector("[data-testid=stage-detail][data-stage=refiner] [data-part=guidance]")
        p.click("[data-testid=stage-back]")
        p.click("[data-testid=stage-decoder]")
        p.wait_for_selector("[data-testid=stage-detail][data-stage=decoder]")
        assert p.evaluate("document.getAnimations().filter(a => a.playState === 'running').length") == 0
    finally:
        page.close()


# ---- 3. the article beside its views --------------------------------------------------------------------


def test_article_sits_beside_its_views_with_the_runs_numbers(page):
    p = page.page
    page.open("?provider=wasm")
    run(page, seed=11, guidance=4)
    ids = p.eval_on_selector_all("[data-view=article] section[id^=article-]", "els => els.map(e => e.id)")
    assert ids == ["article-what", "article-text", "article-refiner", "article-decoder", "article-howto"]
    for row, view in [("text", "text"), ("refiner", "guidance"), ("decoder", "decoder"), ("howto", "seeds")]:
        assert p.locator(f"[data-view=article] > [data-row={row}] [data-view={view}]").count() == 1, (row, view)
    text = p.inner_text("#article-refiner")
    assert "seed 11" in text and "scale of 4" in text and "6 steps" in text
    # nothing of the article below the last view
    last_view = p.evaluate(
        "Math.max(...[...document.querySelectorAll('[data-view=article] > [data-row] .views')].map(e => e.getBoundingClientRect().bottom))"
    )
    last_text = p.evaluate(
        "Math.max(...[...document.querySelectorAll('[data-view=article] section')].map(e => e.getBoundingClientRect().top))"
    )
    assert last_text < last_view


# ---- 4. a guided walk -------------------------------------------------------------------------------------


def test_walk_through_the_run(page):
    p = page.page
    page.open("?provider=wasm")
    run(page, seed=5, guidance=3)
    p.click("[data-tour]")
    p.wait_for_selector("[data-testid=tour][data-stop='1']")
    assert PROMPT in p.inner_text("[data-testid=tour-text]")
    assert p.locator("[data-tour-on]").count() == 1
    shot(page, "walk-1")
    want = ["prompt", "tokens", "text", "noise", "unet", "guidance", "scheduler", "x0", "decoder", "image"]
    for i, sid in enumerate(want[1:], start=2):
        p.keyboard.press("ArrowRight")
        p.wait_for_selector(f"[data-testid=tour][data-stop='{i}'][data-id={sid}]")
        if sid == "noise":
            assert "seed 5" in p.inner_text("[data-testid=tour-text]")
        if sid == "guidance":
            assert "ε_u + 3·(ε_c − ε_u)" in p.inner_text("[data-testid=tour-text]")
            p.wait_for_selector("[data-part=guidance][data-tour-on]")
            p.wait_for_timeout(500)
            shot(page, "walk-6-guidance")
    p.wait_for_function("() => new URL(location.href).searchParams.get('tour') === '10'")  # written after the paint
    assert parse_qs(urlsplit(p.url).query)["tour"] == ["10"]
    p.keyboard.press("ArrowRight")
    p.wait_for_selector("[data-testid=tour][data-id=seeds]")
    p.wait_for_timeout(500)
    shot(page, "walk-11-seeds")
    p.keyboard.press("Escape")
    p.wait_for_selector("[data-testid=tour]", state="detached")
    assert p.locator("[data-tour-on]").count() == 0
    assert "tour" not in parse_qs(urlsplit(p.url).query)


def test_tour_link_opens_a_stop(browser, server):
    page = new_page(browser, server)
    try:
        p = page.page
        page.open("?provider=wasm&prompt=a%20cat&steps=4&scheduler=pndm&tour=7")
        p.wait_for_selector("[data-testid=tour][data-stop='7'][data-id=scheduler]")
        p.wait_for_selector("[data-testid=run][data-state=done]", timeout=RUN_TIMEOUT_MS)
        # PNDM's extra UNet call, said where the step count shows
        p.wait_for_function(
            "() => document.querySelector('[data-testid=tour-text]').textContent.includes('4 steps, 5 UNet calls')"
        )
        assert "4 steps, 5 UNet calls" in p.inner_text("[data-testid=run-status]")
        shot(page, "walk-7-link")
    finally:
        page.close()


# ---- 5. honest status, one queue ----------------------------------------------------------------------------


def test_status_both_times_and_one_queue(page):
    p = page.page
    page.open("?provider=wasm")
    run(page, settle=False)
    # while the reader's run is not settled, nothing says it is done
    read = """() => ({state: document.querySelector('[data-testid=run]').dataset.state,
                      status: document.querySelector('[data-testid=run-status]').textContent,
                      overview: document.querySelector('[data-testid=overview-status]').textContent,
                      job: document.querySelector('[data-testid=job][data-main=true]')?.dataset.state ?? null})"""
    while (now := p.evaluate(read))["state"] != "done":
        # one reading of the page at one moment: the result, the overview and the queue agree
        assert now["job"] == now["state"] or (now["job"] is None and now["state"] == "idle"), now
        if now["state"] in ("running", "decoding"):
            assert "Done" not in now["status"], now
            assert not (now["state"] == "running" and now["overview"].startswith("Done")), now
        p.wait_for_timeout(100)
    wait = p.inner_text("[data-testid=wait-time]")
    model = p.inner_text("[data-testid=model-time]")
    assert re.match(r"[\d.]+ (s|ms) click → every view filled", wait), wait
    assert re.match(r"[\d.]+ (s|ms)", model), model
    to_s = lambda t: float(t.split()[0]) * (1 if t.split()[1] == "s" else 0.001)  # noqa: E731
    assert to_s(wait) >= to_s(model)
    old_run = p.evaluate("window.__lastTrace.runId")
    # side runs: the guidance row queues its runs, each in the queue with its own Stop
    p.click("[data-testid=guidance-row-run]")
    p.wait_for_function("() => document.querySelectorAll('[data-testid=job][data-main=false]').length >= 2")
    assert p.locator("[data-testid=job][data-state=queued] [data-testid=job-stop]").count() >= 1
    labels = p.locator("[data-testid=job][data-main=false] .label").all_inner_texts()
    assert all(lbl.startswith("Guidance row: scale") for lbl in labels), labels
    # stop one queued job: it leaves the queue, the others stay
    n = p.locator("[data-testid=job][data-state=queued]").count()
    p.locator("[data-testid=job][data-state=queued] [data-testid=job-stop]").first.click()
    p.wait_for_function(f"() => document.querySelectorAll('[data-testid=job][data-state=queued]').length < {n}")
    shot(page, "queue")
    # a new run goes first and says what happened to the side runs
    p.wait_for_selector("[data-testid=generate]:not([disabled])")
    p.click("[data-testid=generate]")
    p.wait_for_selector("[data-testid=jobs-note]")
    assert "Your new run went first" in p.inner_text("[data-testid=jobs-note]")
    # the new run runs to its end (a Stop meant for the side run once stopped it at once)
    p.wait_for_function(f"() => window.__lastTrace?.runId > {old_run} && window.__lastTrace.done", timeout=RUN_TIMEOUT_MS)
    assert p.evaluate("[window.__lastTrace.cancelled, window.__lastTrace.steps.length]") == [False, 6]


def test_generate_right_after_stop_runs(page):
    """Stop then Generate in one moment: the new run runs. The worker used to set the shared stop flag
    again when the Stop's message reached it, after the page had cleared the flag for the new run."""
    p = page.page
    page.open("?provider=wasm")
    run(page, steps=25, settle=False)
    first = p.wait_for_function("() => window.__lastTrace?.runId", timeout=RUN_TIMEOUT_MS).json_value()
    # the reader's run is filling the views (previews decoding): its Stop and Generate in one task,
    # so both messages are on their way before the worker reads either
    p.wait_for_function(
        """() => {
            const main = document.querySelector('[data-testid=job][data-main=true]');
            const stop = main?.querySelector('[data-testid=job-stop]');
            const go = document.querySelector('[data-testid=generate]');
            if (main?.dataset.state !== 'decoding' || !stop || !go || go.disabled) return false;
            stop.click();
            go.click();
            return true;
        }""",
        polling="raf",
        timeout=RUN_TIMEOUT_MS,
    )
    p.wait_for_function(f"() => window.__lastTrace?.runId > {first} && window.__lastTrace.done", timeout=RUN_TIMEOUT_MS)
    assert p.evaluate("[window.__lastTrace.cancelled, window.__lastTrace.steps.length]") == [False, 25]


# ---- 6. keyboard and screen readers ---------------------------------------------------------------------------


def test_keyboard(page):
    p = page.page
    page.open("?provider=wasm")
    p.evaluate("document.activeElement.blur()")
    tabs = None
    first = None
    for i in range(1, 12):
        p.keyboard.press("Tab")
        if i == 1:
            first = p.evaluate("[document.activeElement.tagName, document.activeElement.getAttribute('href')]")
        if p.evaluate("document.activeElement?.dataset?.testid") == "generate":
            tabs = i
            break
    assert first == ["A", "#view-image"], first
    assert tabs is not None and tabs <= 5, tabs
    assert p.get_attribute("[data-testid=announce]", "aria-live") == "polite"
    run(page, steps=6)
    p.wait_for_function("() => window.__lastTrace.steps.every(s => s.image)", timeout=RUN_TIMEOUT_MS)
    # the step strip is one Tab stop; arrows, Home and End inside it
    assert p.locator("[data-testid=step-strip] button[tabindex='0']").count() == 1
    assert p.locator("[data-testid=step-strip] button[tabindex='-1']").count() == 5
    p.locator("[data-testid=step-strip] button[tabindex='0']").focus()
    p.keyboard.press("Home")
    p.wait_for_function("() => document.querySelector('[data-testid=timeline]').dataset.step === '1'")
    assert p.evaluate("document.activeElement.getAttribute('tabindex')") == "0"
    p.keyboard.press("ArrowRight")
    p.wait_for_function("() => document.querySelector('[data-testid=timeline]').dataset.step === '2'")
    p.keyboard.press("End")
    p.wait_for_function("() => document.querySelector('[data-testid=timeline]').dataset.step === '6'")
    p.keyboard.press("Tab")
    assert p.evaluate("!!document.activeElement.closest('[data-testid=step-strip]')") is False


@pytest.mark.parametrize("width,height", [(1440, 900), (375, 812)])
def test_axe_after_a_run(browser, server, width, height):
    page = new_page(browser, server, width, height)
    try:
        page.open("?provider=wasm")
        run(page)
        page.page.wait_for_function("() => window.__lastTrace.steps.every(s => s.image)", timeout=RUN_TIMEOUT_MS)
        page.page.add_script_tag(path=str(AXE))
        violations = page.page.evaluate(
            "async () => (await axe.run(document)).violations.map(v => ({id: v.id, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 4)}))"
        )
        assert violations == [], json.dumps(violations, indent=1, ensure_ascii=False)
    finally:
        page.close()


# ---- 7. phone ---------------------------------------------------------------------------------------------------


def test_phone_order(browser, server):
    page = new_page(browser, server, 375, 812)
    try:
        p = page.page
        page.open("?provider=wasm")
        run(page)
        p.evaluate("window.scrollTo(0, 0)")
        shot(page, "first-375")
        top = lambda sel: p.eval_on_selector(sel, "el => el.getBoundingClientRect().top + scrollY")  # noqa: E731
        order = [
            top("textarea[name=prompt]"),
            top("[data-testid=generate]"),
            top("[data-view=image]"),
            top("[data-view=timeline]"),
            top("[data-view=overview]"),
            top("[data-view=text]"),
        ]
        assert order == sorted(order), order
        gen_bottom = p.eval_on_selector("[data-testid=generate]", "el => el.getBoundingClientRect().bottom + scrollY")
        assert order[2] - gen_bottom < 812, f"the image starts {order[2] - gen_bottom:.0f} px below Generate"
        assert p.evaluate("document.scrollingElement.scrollWidth") <= 375
        heights = json.loads((SHOTS / "heights.json").read_text()) if (SHOTS / "heights.json").exists() else {}
        heights["375"] = p.evaluate("document.scrollingElement.scrollHeight")
        (SHOTS / "heights.json").write_text(json.dumps(heights))
    finally:
        page.close()


# ---- 8. the model's card ------------------------------------------------------------------------------------------


def test_article_says_only_what_the_card_says(browser, web_dist, default_small_bundle, tmp_path):
    """The default model's card (models/default/explainer.json, with `facts`) names what its CLIP was
    trained on; a bundle whose card has no facts claims nothing about its training."""
    from app.serve import start_background

    card = json.loads((ROOT / "models" / "default" / "explainer.json").read_text())
    with_facts = tmp_path / "with-facts"
    shutil.copytree(default_small_bundle, with_facts)
    manifest = json.loads((with_facts / "manifest.json").read_text())
    manifest.setdefault("about", {})["facts"] = card["facts"]
    (with_facts / "manifest.json").write_text(json.dumps(manifest))
    without = tmp_path / "without-facts"
    shutil.copytree(default_small_bundle, without)
    manifest = json.loads((without / "manifest.json").read_text())
    manifest.get("about", {}).pop("facts", None)
    (without / "manifest.json").write_text(json.dumps(manifest))
    for bundle, trained_here in ((with_facts, True), (without, False)):
        srv, url = start_background(bundle, dist=web_dist)
        page = Page(browser, url)
        try:
            page.open("?provider=wasm")
            text = page.page.inner_text("#article-text")
            assert "millions of pictures" not in text
            assert ("trained by this project" in text) == trained_here, text
            if not trained_here:
                assert "does not say what its text encoder was trained on" in text
        finally:
            page.close()
            srv.shutdown()
            srv.server_close()
