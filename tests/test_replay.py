"""Replaying a trace file in the page, and saving the page's own run (issue 26, items 2 and 3).

A trace made natively by the CLI opens in the page with no model loaded and every view shows its
numbers (timesteps, image bytes, guidance scale), marked as a replay of a native run on its machine;
a synthetic SD 1.5-size trace opens without freezing the page (longest main-thread task measured);
a damaged file is one line of text; a page run saved as a trace loads in Python with the same numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_browser import ARTIFACTS, RUN_TIMEOUT_MS, Page, browser, playwright  # noqa: F401 - pytest fixtures

from runtime import tracefile

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ARTIFACTS / "replay"
PROMPT = "a cat on a blue background"
LONGTASKS = """
window.__longtasks = [];
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longtasks.push(e.duration); })
  .observe({ type: 'longtask', buffered: true });
"""


@pytest.fixture(scope="module")
def served(web_dist, default_bundle):
    from app.serve import start_background

    srv, url = start_background(default_bundle, dist=web_dist)
    yield url
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def native_trace(default_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    path = out / "native.dxtrace"
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", PROMPT, "--bundle", str(default_bundle), "--seed", "11",
         "--guidance", "3.5", "--steps", "25", "--scheduler", "ddim", "--trace", str(path), "--out", str(out / "n.png")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def sd15_trace(native_trace, tmp_path_factory):
    from synthetic_trace import write_sd15_sized

    path = tmp_path_factory.mktemp("sd15") / "sd15-synthetic.dxtrace"
    write_sd15_sized(native_trace, path)
    return path


@pytest.fixture(scope="module")
def trace_host(tmp_path_factory):
    """Another origin serving trace files with CORS (as a reader's own host would): returns (folder, base URL)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path_factory.mktemp("trace-host")

    class Handler(SimpleHTTPRequestHandler):
        def end_headers(self):
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Cross-Origin-Resource-Policy", "cross-origin")
            super().end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def open_replay(browser, served, trace_host, trace: Path) -> tuple[Page, float]:
    """A fresh page opened at ?trace=URL (the file on another origin); returns it once the replay shows."""
    folder, base = trace_host
    (folder / trace.name).write_bytes(trace.read_bytes())
    p = Page(browser, served)
    p.page.add_init_script(LONGTASKS)
    t = time.perf_counter()
    p.page.goto(f"{served}?trace={base}/{trace.name}")
    p.page.wait_for_selector("[data-testid=replay-banner], [data-testid=trace-error]", timeout=60_000)
    err = p.page.locator("[data-testid=trace-error]")
    assert not err.count(), err.inner_text()
    p.page.wait_for_selector("[data-view=decoder]", timeout=30_000)
    p.page.wait_for_selector("html:not([data-drawing])", state="attached", timeout=30_000)  # views drawn one per task
    p.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return p, time.perf_counter() - t


def no_model_requests(p: Page):
    loaded = [u for u in p.requests if "/pyodide/" in u or "/ort/" in u or "/bundle/" in u and u.endswith(".onnx")]
    assert not loaded, f"a replay needs no model, yet the page fetched {loaded[:4]}"


def test_native_trace_replays_in_every_view_with_no_model(browser, served, trace_host, native_trace):  # noqa: F811
    f = tracefile.load(native_trace)
    p, seconds = open_replay(browser, served, trace_host, native_trace)
    page = p.page
    try:
        assert page.get_attribute("main", "data-engine") == "replay"
        banner = page.inner_text("[data-testid=replay-banner]")
        assert banner.startswith(f"Replay of a native run on {f.machine}"), banner
        assert page.get_attribute("[data-testid=replay-banner]", "data-source") == "native"
        got = page.evaluate(
            """() => { const t = window.__lastTrace; return { timesteps: t.timesteps, request: t.request, steps: t.steps.length,
                        image: Array.from(new Uint8Array(t.image.data)), shape: t.image.shape } }"""
        )
        assert got["timesteps"] == f.trace.timesteps
        assert got["request"]["guidance"] == 3.5 and got["request"]["seed"] == 11 and got["request"]["prompt"] == PROMPT
        assert got["steps"] == 25 and got["shape"] == [64, 64, 4]
        assert bytes(got["image"]) == bytes(f.trace.image.data)  # the same image bytes
        # the views show its numbers
        views = page.evaluate("() => [...document.querySelectorAll('[data-view]')].map(e => e.dataset.view)")
        for v in ("overview", "timeline", "text", "guidance", "scheduler", "decoder", "attention"):
            assert v in views, f"{v} is not shown in the replay ({views})"
        label = page.inner_text("[data-testid=timeline-label]")
        assert "of 25" in label and any(f"timestep {round(t)}" in label for t in f.trace.timesteps), label
        assert PROMPT in page.inner_text("[data-view=overview]")
        assert "3.5" in page.inner_text("[data-view=guidance]")
        # the form shows the recorded request, not the page's defaults
        assert page.input_value("textarea[name=prompt]") == PROMPT and page.input_value("input[name=seed]") == "11"
        # nothing runs: Generate is off, and no model file was fetched
        assert page.locator("[data-testid=generate]").is_disabled()
        no_model_requests(p)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "native-64.png"), full_page=True)
        print(f"\nnative 64×64 trace ({native_trace.stat().st_size / 1e6:.2f} MB): replay shown {seconds:.2f} s after goto, "
              f"read in {page.get_attribute('[data-testid=trace-controls]', 'data-open-ms')} ms, "
              f"longest task {max(page.evaluate('window.__longtasks') or [0]):.0f} ms")  # fmt: skip
        # leaving the replay loads the model again
        page.click("[data-testid=leave-replay]")
        page.wait_for_selector("main[data-engine=ready]", timeout=120_000)
        assert "trace=" not in page.url
    finally:
        p.close()


def test_views_that_need_the_model_say_so_in_a_replay(browser, served, trace_host, native_trace):  # noqa: F811
    """Every control that would run the model is disabled (not hidden) and its view says why in one line;
    the UMAP view does not wait for a map forever; the Runtime panel says it is a replay."""
    p, _ = open_replay(browser, served, trace_host, native_trace)
    page = p.page
    try:
        for view, buttons in (
            ("guidance", ("guidance-generate", "guidance-row-run")),
            ("seeds", ("try-seeds",)),
            ("scheduler", ("scheduler-rerun",)),
        ):
            for b in buttons:
                btn = page.locator(f"[data-view={view}] [data-testid={b}]")
                btn.wait_for(state="visible", timeout=10_000)
                assert btn.is_disabled(), f"{view}: {b} is enabled in a replay"
            why = page.locator(f"[data-view={view}] [data-testid=cannot-run]")
            assert why.is_visible(), f"{view} does not say why nothing runs"
            assert "replay" in why.inner_text() and "\n" not in why.inner_text().strip()
        clip = page.locator("[data-view=clip]")
        if not clip.locator("[data-testid=clip-absent]").count():
            assert clip.locator("[data-testid=cannot-run]").first.is_visible()
            assert "CLIP cannot score anything new" in clip.inner_text()
            assert "once every step" not in clip.inner_text()
            score = clip.locator("[data-testid=clip-score]")
            assert not score.count() or score.is_disabled()
        assert page.locator("[data-view=compare] [data-testid=cannot-run]").is_visible()
        umap = page.locator("[data-view=umap]")
        assert umap.locator("[data-testid=cannot-run]").is_visible()
        page.wait_for_timeout(1500)
        assert "Loading" not in umap.inner_text(), umap.inner_text()
        assert page.get_attribute("[data-testid=provider]", "data-provider") == "replay"
        runtime = page.inner_text("[data-testid=runtime]")
        assert "Replay" in runtime and "thread" not in page.inner_text("[data-testid=provider]"), runtime
        assert "Replay of a native run on" in page.inner_text("[data-testid=provider-reason]")
        assert page.locator("[data-testid=open-url]").is_disabled()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.locator("[data-view=guidance]").screenshot(path=str(SHOTS / "guidance-replay.png"))
        page.locator("[data-testid=runtime]").screenshot(path=str(SHOTS / "runtime-replay.png"))
        page.locator("[data-view=umap]").screenshot(path=str(SHOTS / "umap-replay.png"))
        assert not [c for c in p.console if c.startswith("pageerror")]
    finally:
        p.close()


def test_sd15_size_synthetic_trace_opens_without_freezing(browser, served, trace_host, sd15_trace):  # noqa: F811
    p, seconds = open_replay(browser, served, trace_host, sd15_trace)
    page = p.page
    try:
        assert page.get_attribute("[data-testid=replay-banner]", "data-synthetic") == "true"
        assert "Synthetic trace" in page.inner_text("[data-testid=replay-banner]")
        shape = page.evaluate("() => [window.__lastTrace.image.shape, window.__lastTrace.steps[0].latent.shape]")
        assert shape == [[512, 512, 4], [1, 4, 64, 64]]
        # walk the steps: every view redraws at this size
        slider = page.locator("[data-testid=timeline-slider]")
        slider.focus()
        page.keyboard.press("Home")
        for _ in range(5):
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(150)
        page.keyboard.press("End")
        page.wait_for_timeout(800)
        tasks = page.evaluate("window.__longtasks") or [0]
        open_ms = page.get_attribute("[data-testid=trace-controls]", "data-open-ms")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "sd15-synthetic.png"), full_page=True)
        page.screenshot(path=str(SHOTS / "sd15-synthetic-top.png"))
        record = {
            "file_mb": round(sd15_trace.stat().st_size / 1e6, 2),
            "shown_s": round(seconds, 2),
            "read_ms": int(open_ms),
            "longest_task_ms": round(max(tasks)),
            "long_tasks": len(tasks),
        }
        (SHOTS / "sd15.json").write_text(json.dumps(record))
        print(f"\nSD 1.5-size synthetic trace: {record}")
        no_model_requests(p)
        assert max(tasks) < 2000, f"a main-thread task took {max(tasks):.0f} ms"
    finally:
        p.close()


SD15_TRACE = ROOT / "bench" / "results" / "sd15-trace" / "sd15-random.dxtrace"


def test_real_sd15_trace_opens_in_every_view(browser, served, trace_host):  # noqa: F811
    """The trace of a native run of prove-scale's SD 1.5 build (random weights; README: how it was made)
    opens at full size, says its weights are random, and every view redraws while the reader walks the steps."""
    if not SD15_TRACE.is_file():
        pytest.skip(f"{SD15_TRACE} is not in this checkout")
    meta = json.loads(__import__("zipfile").ZipFile(SD15_TRACE).read("trace.json"))
    p, seconds = open_replay(browser, served, trace_host, SD15_TRACE)
    page = p.page
    try:
        banner = page.inner_text("[data-testid=replay-banner]")
        assert "weights are random" in banner, banner
        shape = page.evaluate("() => [window.__lastTrace.image.shape, window.__lastTrace.steps[0].latent.shape]")
        assert shape == [[512, 512, 4], [1, 4, 64, 64]]
        steps = page.evaluate("() => window.__lastTrace.steps.length")
        assert steps == len(meta["steps"]) >= 25
        slider = page.locator("[data-testid=timeline-slider]")
        slider.focus()
        page.keyboard.press("Home")
        for _ in range(steps - 1):  # every step, every view redraws at 64x64 latents and 77x768 embeddings
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(60)
        page.wait_for_selector("html:not([data-drawing])", state="attached", timeout=30_000)
        tasks = page.evaluate("window.__longtasks") or [0]
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "sd15-real-top.png"))
        page.screenshot(path=str(SHOTS / "sd15-real.png"), full_page=True)
        record = {
            "file_mb": round(SD15_TRACE.stat().st_size / 1e6, 2),
            "shown_s": round(seconds, 2),
            "read_ms": int(page.get_attribute("[data-testid=trace-controls]", "data-open-ms")),
            "longest_task_ms": round(max(tasks)),
            "long_tasks": len(tasks),
            "steps_walked": steps,
        }
        (SHOTS / "sd15-real.json").write_text(json.dumps(record))
        print(f"\nSD 1.5 trace (random weights): {record}")
        no_model_requests(p)
        assert max(tasks) < 2000, f"a main-thread task took {max(tasks):.0f} ms"
    finally:
        p.close()


def test_a_damaged_file_is_one_line_of_text(browser, served, tmp_path):  # noqa: F811
    p = Page(browser, served)
    try:
        p.open("?provider=wasm")
        bad = tmp_path / "bad.dxtrace"
        bad.write_bytes(b"<img src=x onerror=alert(1)>")
        p.page.set_input_files("[data-testid=trace-input]", str(bad))
        err = p.page.wait_for_selector("[data-testid=trace-error]")
        assert err.inner_text() == "bad.dxtrace is not a trace file: a .dxtrace is a zip archive holding trace.json"
        assert p.page.locator("[data-testid=trace-controls] img").count() == 0
        assert p.page.get_attribute("main", "data-engine") == "ready"  # the model it had stays
        assert not [c for c in p.console if c.startswith("pageerror")]
    finally:
        p.close()


def test_page_run_saves_a_trace_python_loads_and_the_page_replays(browser, served, tmp_path):  # noqa: F811
    p = Page(browser, served)
    page = p.page
    try:
        p.open("?provider=wasm")
        p.generate(prompt=PROMPT, seed=4, guidance=3, steps=6, scheduler="euler")
        page.wait_for_function("() => window.__lastTrace && window.__lastTrace.steps.every(s => s.image)", timeout=RUN_TIMEOUT_MS)
        page.click("[data-testid=save-menu] summary")
        with page.expect_download() as d:
            page.click("[data-testid=save-trace]")
        path = tmp_path / d.value.suggested_filename
        d.value.save_as(path)
        assert path.suffix == ".dxtrace"
        f = tracefile.load(path)
        want = page.evaluate(
            "() => ({ t: window.__lastTrace.timesteps, r: window.__lastTrace.request, im: Array.from(new Uint8Array(window.__lastTrace.image.data)) })"
        )
        assert f.source == "page" and "CPUs" in f.machine and f.trace.timesteps == want["t"]
        assert (f.trace.request.seed, f.trace.request.guidance, f.trace.request.steps) == (4, 3.0, 6)
        assert bytes(f.trace.image.data) == bytes(want["im"])
        assert f.bundle["name"] and f.request_info["limits"]

        # the image, the animation, a chart
        with page.expect_download() as d:
            page.click("[data-testid=save-image]")
        assert d.value.suggested_filename.endswith(".png")
        png = tmp_path / "image.png"
        d.value.save_as(png)
        assert tracefile.decode_png(png.read_bytes(), "image.png")[0] == bytes(want["im"])
        with page.expect_download() as d:
            page.click("[data-testid=save-gif]")
        gif = tmp_path / "run.gif"
        d.value.save_as(gif)
        data = gif.read_bytes()
        assert data[:6] == b"GIF89a" and data.count(b"\x21\xf9\x04") == 7  # 6 previews + the final image
        page.focus("[data-testid=chart-select]")
        options = page.evaluate("() => [...document.querySelectorAll('[data-testid=chart-select] option')].map(o => o.value)")
        assert options, "no chart found to save"
        svg_ok = False
        for value in options:
            page.select_option("[data-testid=chart-select]", value)
            if page.locator("[data-testid=save-chart-svg]").is_enabled():
                with page.expect_download() as d:
                    page.click("[data-testid=save-chart-svg]")
                svg = tmp_path / "chart.svg"
                d.value.save_as(svg)
                text = svg.read_text()
                assert text.startswith("<?xml") and "<svg" in text and "var(--" not in text
                svg_ok = True
                break
        assert svg_ok, f"no SVG chart among {options}"
        with page.expect_download() as d:
            page.click("[data-testid=save-chart-png]")
        assert d.value.suggested_filename.endswith(".png")

        # the saved file replays in the page
        page.set_input_files("[data-testid=trace-input]", str(path))
        page.wait_for_selector("[data-testid=replay-banner]")
        assert page.inner_text("[data-testid=replay-banner]").startswith("Replay of a page run on")
        assert page.evaluate("() => window.__lastTrace.timesteps") == want["t"]
    finally:
        p.close()
