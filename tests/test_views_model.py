"""The model views (text, refiner, guidance) show the runtime's own numbers.

A request runs in the page (Chromium, Pyodide + onnxruntime-web) and the same request runs natively;
what the views SHOW (token ids, stated ranges, the guidance numbers at a hovered pixel) must equal
the native Trace to the precision shown. Also: unknown words are marked, the guidance box and slider
never disagree, the scales row runs five real generations, and nothing scrolls sideways at 375 px.
Screenshots of each view go to test-artifacts/views/ (with the trained default bundle when present).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")

from test_browser import RUN_TIMEOUT_MS, Page, browser, playwright  # noqa: E402,F401  (fixtures)

from runtime.bundle import Bundle  # noqa: E402
from runtime.native import NativeBackend, to_numpy  # noqa: E402
from runtime.pipeline import Pipeline, Request, run_sync  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "views"
PROMPT = "a small cat at the top left on a blue background"
NEGATIVE = "blurry"
REQ = dict(prompt=PROMPT, negative_prompt=NEGATIVE, seed=3, guidance=7.5, steps=4, scheduler="euler")
OOV_PROMPT = "a small astronaut riding a horse"
VIEWS = ("text", "refiner", "guidance")


# ---- helpers -----------------------------------------------------------------------------------------


def native_trace(bundle: Path, **request):
    pipe = Pipeline(Bundle.from_dir(bundle), NativeBackend(bundle))

    async def go():
        await pipe.load()
        return await pipe.generate(Request(**request))

    return run_sync(go())  # another thread: Playwright's sync API owns this one's event loop


def assert_shown(shown: str, want: float, what: str):
    """`shown` is lib/tensor.ts num(): 3 significant digits; equal to `want` within half a last digit."""
    got = float(shown.strip().replace("−", "-"))
    if want == 0:
        assert abs(got) < 1e-6, (what, shown, want)
        return
    tol = 0.5 * 10 ** (math.floor(math.log10(abs(want))) - 2)
    assert abs(got - want) <= tol * 1.01 + 1e-6 * abs(want), f"{what}: shown {shown}, native {want:.6g}"


def fill_and_run(p: Page, prompt=PROMPT, negative=NEGATIVE, seed=3, guidance=7.5, steps=4, scheduler="euler"):
    p.generate(prompt=prompt, negative=negative, seed=seed, guidance=guidance, steps=steps, scheduler=scheduler)
    p.page.wait_for_selector("#view-text [data-testid=emb-canvas-1]")


def no_sideways_scroll(page, width: int):
    over = page.evaluate(
        """(w) => {
        const out = [];
        if (document.documentElement.scrollWidth > w) out.push('document ' + document.documentElement.scrollWidth);
        for (const v of ['text', 'refiner', 'guidance']) {
            for (const el of document.querySelectorAll(`#view-${v} *`)) {
                const r = el.getBoundingClientRect();
                if (r.width && r.right > w + 0.5) { out.push(v + ': ' + el.tagName + '.' + el.className + ' right=' + r.right); break; }
            }
        }
        return out;
    }""",
        width,
    )
    assert not over, f"wider than {width}px: {over}"


def box_of(locator) -> dict:
    """The element's box in the viewport (scrolled into it first: the mouse only reaches what is on screen)."""
    locator.scroll_into_view_if_needed()
    return locator.bounding_box()


def shoot(p: Page, suffix: str = ""):
    SHOTS.mkdir(parents=True, exist_ok=True)
    # the timeline stays on screen while scrolling (sticky); in an element's picture it would cover it
    p.page.add_style_tag(content="[data-view=timeline] { position: static !important; }")
    for v in VIEWS:
        if v == "text" and not p.page.locator("#view-text [data-testid=text-tokens] li.picked").count():
            p.page.locator("#view-text [data-testid=text-tokens] button").nth(2).click()  # a picked token's row is outlined
        p.page.locator(f"#view-{v}").screenshot(path=str(SHOTS / f"{v}{suffix}.png"))


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a model card vocabulary (manifest.about; the manifest hashes only the files)."""
    dst = tmp_path_factory.mktemp("vocab-bundle") / "tiny"
    shutil.copytree(tiny_bundle, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    about = manifest.setdefault("about", {}) or {}
    about["vocabulary"] = {
        "objects": ["cat", "apple"],
        "backgrounds": ["on a blue background"],
        "positions": ["top left"],
        "sizes": ["small", "big"],
        "words": sorted(set(PROMPT.split() + NEGATIVE.split())),
    }
    manifest["about"] = about
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


@pytest.fixture(scope="module")
def vpage(browser, web_dist, vocab_bundle):  # noqa: F811
    from app.serve import start_background

    srv, url = start_background(vocab_bundle, dist=web_dist)
    p = Page(browser, url)
    p.open()
    yield p
    p.assert_all_local()
    p.close()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def run(vpage, vocab_bundle):
    fill_and_run(vpage)
    return native_trace(vocab_bundle, **REQ)


# ---- tests -------------------------------------------------------------------------------------------


def test_text_view_shows_the_native_tokens_and_embeddings(vpage, run):
    page = vpage.page
    chips = page.locator("#view-text [data-testid=text-tokens] [data-testid=token-chip]")
    n = run.tokens.length
    assert [int(x) for x in chips.evaluate_all("els => els.map(e => e.dataset.id)")] == run.tokens.ids[:n]
    assert [
        int(t) for t in page.locator("#view-text [data-testid=text-tokens] [data-testid=token-chip] .id").all_inner_texts()
    ] == run.tokens.ids[:n]
    pad = page.locator("#view-text [data-testid=text-tokens] [data-testid=padding-chip]")
    assert pad.count() == 1 and int(pad.get_attribute("data-count")) == len(run.tokens.ids) - n
    assert f"+ {len(run.tokens.ids) - n} × <|endoftext|> padding" in pad.inner_text()
    neg = page.locator("#view-text [data-testid=text-negative-tokens] [data-testid=token-chip]")
    assert [int(x) for x in neg.evaluate_all("els => els.map(e => e.dataset.id)")] == run.negative_tokens.ids[
        : run.negative_tokens.length
    ]
    # the prompt's words are all in the card: nothing marked
    assert page.locator("#view-text [data-testid=oov]").count() == 0
    assert page.locator("#view-text [data-testid=text-tokens] [data-known=false]").count() == 0
    # the heat maps' stated ranges are the native embeddings' per branch
    emb = to_numpy(run.embeddings)
    for b in (0, 1):
        assert_shown(
            page.inner_text(f"#view-text [data-testid=emb-range-{b}] [data-testid=emb-min]"), float(emb[b].min()), f"emb[{b}] min"
        )
        assert_shown(
            page.inner_text(f"#view-text [data-testid=emb-range-{b}] [data-testid=emb-max]"), float(emb[b].max()), f"emb[{b}] max"
        )
    # hovering reads one value from the map; clicking a token selects it (shared with the run card's list)
    box = box_of(page.locator("#view-text [data-testid=emb-canvas-1]"))
    L, D = emb.shape[1], emb.shape[2]
    page.mouse.move(box["x"] + (5 + 0.5) * box["width"] / D, box["y"] + (2 + 0.5) * box["height"] / L)
    readout = page.inner_text("#view-text [data-testid=emb-hover]")
    assert "position 2" in readout and "dimension 5" in readout, readout
    assert_shown(page.inner_text("#view-text [data-testid=emb-hover] b"), float(emb[1, 2, 5]), "hovered embedding")
    chips.nth(2).locator("button").click()
    assert chips.nth(2).locator("button").get_attribute("aria-pressed") == "true"
    assert page.locator("[data-testid=run] [data-testid=tokens] li.picked").count() == 1


def _pick_step(page, index: int):
    for _ in range(50):
        cur = int(page.get_attribute("#view-refiner [data-testid=refiner-step]", "data-index"))
        if cur == index:
            return
        page.click(
            "#view-refiner button[aria-label='previous step']" if cur > index else "#view-refiner button[aria-label='next step']"
        )
    raise AssertionError("could not pick the step")


def test_refiner_states_the_native_ranges_of_the_step(vpage, run):
    page = vpage.page
    _pick_step(page, 1)
    st = run.steps[1]
    assert f"timestep {round(st.timestep)}" in page.inner_text("#view-refiner [data-testid=refiner-step]")
    latent = to_numpy(st.latent)
    noise = np.concatenate(
        [to_numpy(st.noise_uncond).ravel(), to_numpy(st.noise_cond).ravel(), to_numpy(st.noise_guided).ravel()]
    )
    x0 = to_numpy(st.pred_x0)
    for key, arr in (("latent", latent), ("noise", noise), ("x0", x0)):
        sel = f"#view-refiner [data-testid=refiner-range-{key}]"
        assert_shown(page.inner_text(f"{sel} [data-testid=min]"), float(arr.min()), f"{key} min")
        assert_shown(page.inner_text(f"{sel} [data-testid=max]"), float(arr.max()), f"{key} max")
        m = float(np.abs(arr).max())
        lo, hi = page.inner_text(f"{sel} [data-testid=scale]").split("…")
        assert_shown(lo, -m, f"{key} scale")
        assert_shown(hi, m, f"{key} scale")
    # 4 channels per quantity: latent, 3 noises, |cond − uncond|, x0
    assert page.locator("#view-refiner figure.tensor").count() == 4 * 6


def test_guidance_numbers_at_a_hovered_pixel_are_the_runtimes(vpage, run):
    page = vpage.page
    _pick_step(page, 1)
    st = run.steps[1]
    u, c, g = (to_numpy(t)[0] for t in (st.noise_uncond, st.noise_cond, st.noise_guided))
    C, H, W = g.shape
    assert page.inner_text("#view-guidance [data-testid=guidance-s]") == "7.5"
    for ch, row, col, q in ((2, 3, 5, "noiseGuided"), (0, H - 1, 0, "noiseUncond"), (C - 1, 1, W - 2, "noiseCond")):
        box = box_of(page.locator(f"#view-guidance [data-testid=guidance-{q}] canvas").nth(ch))
        page.mouse.move(box["x"] + (col + 0.5) * box["width"] / W, box["y"] + (row + 0.5) * box["height"] / H)
        px = page.locator("#view-guidance [data-testid=guidance-pixel]")
        assert (int(px.get_attribute("data-c")), int(px.get_attribute("data-row")), int(px.get_attribute("data-col"))) == (
            ch,
            row,
            col,
        )
        assert_shown(page.inner_text("#view-guidance [data-testid=eps-u]"), float(u[ch, row, col]), "eps_u")
        assert_shown(page.inner_text("#view-guidance [data-testid=eps-c]"), float(c[ch, row, col]), "eps_c")
        assert_shown(page.inner_text("#view-guidance [data-testid=eps-g]"), float(g[ch, row, col]), "eps_hat")
    norms = page.inner_text("#view-guidance [data-testid=guidance-norms]")
    assert_shown(norms.split("‖ε_u‖ = ")[1].split()[0], float(np.linalg.norm(u)), "|eps_u|")
    assert_shown(norms.split("‖ε̂‖ = ")[1].split()[0], float(np.linalg.norm(g)), "|eps_hat|")


def test_guidance_box_and_slider_never_disagree(vpage, run):
    page = vpage.page
    box, slider = "#view-guidance [data-testid=guidance-box]", "#view-guidance [data-testid=guidance-slider]"
    page.fill(box, "25")
    page.press(box, "Enter")
    assert page.input_value(box) == "20" and page.input_value(slider) == "20"
    assert page.input_value("input[name=guidance]") == "20"  # the form's field is the same request
    assert "0 to 20" in page.inner_text("#view-guidance [data-testid=guidance-note]")
    page.fill(box, "-3")
    page.locator(box).blur()
    assert page.input_value(box) == "0" and page.input_value(slider) == "0"
    page.fill(box, "3.5")
    page.press(box, "Enter")
    assert page.input_value(box) == "3.5" and page.input_value(slider) == "3.5"
    page.click("#view-guidance button.tick:text-is('7.5')")
    assert page.input_value(box) == "7.5" and page.input_value(slider) == "7.5"
    page.locator(slider).fill("12.3")
    assert page.input_value(box) == "12.3"
    assert page.is_enabled("#view-guidance [data-testid=guidance-generate]")
    page.fill(box, "7.5")
    page.press(box, "Enter")


def test_guidance_scales_row_runs_five_generations(vpage, run, vocab_bundle):
    page = vpage.page
    page.click("#view-guidance [data-testid=guidance-row-run]")
    row = "#view-guidance [data-testid=guidance-row]"
    page.wait_for_function(f"() => document.querySelectorAll('{row} canvas').length === 5", timeout=RUN_TIMEOUT_MS * 2)
    assert page.get_attribute(f"{row} li.current", "data-scale") == "7.5"
    # one of them is the same picture the native runtime makes at that scale
    shape, data = page.evaluate(f"""() => {{
        const c = document.querySelector('{row} li[data-scale="3"] canvas');
        return [[c.height, c.width, 4], Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];
    }}""")
    want = to_numpy(native_trace(vocab_bundle, **{**REQ, "guidance": 3.0, "preview_every": 0}).image)
    got = np.array(data, dtype=np.uint8).reshape(shape)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
    # kept for the session: nothing left to run
    assert page.is_disabled("#view-guidance [data-testid=guidance-row-run]")
    assert page.get_attribute("main", "data-engine") == "ready"
    assert page.locator(f"{row} canvas").count() == 5


def test_unknown_words_are_marked(vpage, vocab_bundle):
    page = vpage.page
    fill_and_run(vpage, prompt=OOV_PROMPT, negative="", steps=2)
    want = native_trace(
        vocab_bundle, prompt=OOV_PROMPT, negative_prompt="", seed=3, guidance=7.5, steps=1, scheduler="euler"
    ).plan.token_known
    known = page.locator("#view-text [data-testid=text-tokens] [data-testid=token-chip]").evaluate_all(
        "els => els.map(e => e.dataset.known)"
    )
    assert known == [str(k).lower() for k in want]
    note = page.inner_text("#view-text [data-testid=oov]")
    assert (
        "never contained" in note and "‘astronaut’" in note and "‘horse’" in note and "‘riding’" in note and "‘small’" not in note
    )
    assert "Empty negative prompt" in page.inner_text("#view-text")


def test_375px_long_prompt_does_not_scroll_sideways(vpage):
    page = vpage.page
    page.set_viewport_size({"width": 375, "height": 800})
    try:
        fill_and_run(vpage, prompt="x" * 4000, negative="", steps=2)
        no_sideways_scroll(page, 375)
        dropped = page.locator("#view-text [data-testid=text-dropped]")
        if dropped.count():
            assert len(dropped.inner_text()) < 700  # an enormous remainder is counted, not printed
        shoot(vpage, "-tiny-375")
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_screenshots_with_the_default_bundle(browser, web_dist, default_bundle):  # noqa: F811
    """The trained model (bundles/default, derived by the session): each view wide and at 375 px, and its card's vocabulary."""
    from app.serve import start_background

    srv, url = start_background(default_bundle, dist=web_dist)
    p = Page(browser, url)
    try:
        p.open()
        fill_and_run(p, prompt="a small astronaut cat at the top left on a blue background", negative="", guidance=3.0, steps=15)
        assert "‘astronaut’" in p.page.inner_text("#view-text [data-testid=oov]")
        p.page.click("#view-guidance [data-testid=guidance-row-run]")
        p.page.wait_for_function(
            "() => document.querySelectorAll('#view-guidance [data-testid=guidance-row] canvas').length === 5",
            timeout=RUN_TIMEOUT_MS * 3,
        )
        shoot(p)
        p.page.set_viewport_size({"width": 375, "height": 800})
        no_sideways_scroll(p.page, 375)
        shoot(p, "-375")
        p.assert_all_local()
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()
