"""The page in a real browser: headless Chromium runs Pyodide + onnxruntime-web on the tiny bundle.

Each test checks what a reader would see: the image equals the native runtime's, nothing leaves
127.0.0.1, a damaged cache entry is repaired, Stop leaves the page usable, a prompt is only text.
Needs Debian's Chromium at /usr/bin/chromium (Playwright drives it; no browser downloads) and npm
to build web/. Screenshots and timings go to test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")

from runtime.bundle import Bundle, sha256_file  # noqa: E402
from runtime.native import NativeBackend, to_numpy  # noqa: E402
from runtime.pipeline import Pipeline, Request, run_sync  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# RECIPES: a closed network; --enable-unsafe-webgpu gives SwiftShader's software WebGPU adapter.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
LOAD_TIMEOUT_MS = 120_000
RUN_TIMEOUT_MS = 180_000
PROMPT = "a small cat at the top left on a blue background"
TIMINGS: dict = {}


# ---- fixtures ------------------------------------------------------------------------------------


def _with_external_data(src: Path, dst: Path, component: str = "unet", chunk_bytes: int = 2**20) -> Path:
    """A copy of the bundle whose `component` keeps its weights in 1 MiB chunks of external data, as
    big bundles do (SD 1.5's UNet: 3.4 GB in 512 MiB chunks), so every test exercises the page's
    ORT-web `externalData` path with several files."""
    import onnx

    from export.onnxfiles import save_model

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    old = manifest["components"][component]["files"]
    model = onnx.load(str(dst / old[0]), load_external_data=True)
    for rel in old:
        (dst / rel).unlink()
        manifest["files"].pop(rel)
    files = save_model(model, dst / f"{component}.onnx", chunk_bytes)
    assert len(files) > 2, "the fixture should have several chunks"
    manifest["components"][component]["files"] = files
    for rel in files:
        manifest["files"][rel] = {"bytes": (dst / rel).stat().st_size, "sha256": sha256_file(dst / rel)}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


@pytest.fixture(scope="session")
def bundle(request, tmp_path_factory):
    """The tiny fixture bundle; DX_TEST_BUNDLE=DIR runs the same checks (and timings) on another bundle."""
    import os

    src = Path(os.environ["DX_TEST_BUNDLE"]) if os.environ.get("DX_TEST_BUNDLE") else Path(request.getfixturevalue("tiny_bundle"))
    return _with_external_data(src, tmp_path_factory.mktemp("web-bundle") / "ext")


@pytest.fixture(scope="session")
def server(web_dist, bundle):
    from app.serve import start_background

    srv, url = start_background(bundle, dist=web_dist)
    yield url
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")  # module: Playwright's sync API keeps an event loop running in this thread
def playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + ["--enable-unsafe-webgpu"])
    yield b
    b.close()


class Page:
    """A fresh browser context (empty Cache API) with every request URL recorded."""

    def __init__(self, browser, base_url: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.base = base_url
        self.requests: list[str] = []
        self.bytes = 0
        self.console: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.context.on("requestfinished", self._count)
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def _count(self, request):
        try:
            self.bytes += request.sizes()["responseBodySize"]
        except Exception:
            pass

    def open(self, query: str = "?provider=wasm", expect: str = "ready"):
        t = time.perf_counter()
        self.page.goto(self.base + query)
        self.wait_engine(expect)
        return time.perf_counter() - t

    def wait_engine(self, expect: str = "ready"):
        try:
            self.page.wait_for_selector("main[data-engine=ready], main[data-engine=error]", timeout=LOAD_TIMEOUT_MS)
        finally:
            state = self.page.get_attribute("main", "data-engine")
        if state != expect:
            fatal = self.page.locator("[data-testid=fatal]")
            msg = fatal.inner_text() if fatal.count() else ""
            raise AssertionError(f"engine is {state!r}, expected {expect!r}: {msg}\n" + "\n".join(self.console[-20:]))

    def fill_request(self, prompt=PROMPT, negative="", seed=3, guidance=7.5, steps=6, scheduler="euler"):
        p = self.page
        p.fill("textarea[name=prompt]", prompt)
        p.fill("input[name=negative]", negative)
        p.fill("input[name=seed]", str(seed))
        p.fill("input[name=guidance]", str(guidance))
        p.fill("input[name=steps]", str(steps))
        p.select_option("select[name=scheduler]", scheduler)

    def generate(self, wait: str | None = "done", **request) -> np.ndarray | None:
        self.fill_request(**request)
        self.page.click("[data-testid=generate]")
        if wait is None:
            return None
        self.page.wait_for_selector(f"[data-testid=run][data-state={wait}]", timeout=RUN_TIMEOUT_MS)
        self.page.wait_for_selector("main[data-engine=ready]")
        return self.last_image()

    def last_image(self) -> np.ndarray:
        shape, data = self.page.evaluate(
            "() => { const im = window.__lastTrace.image; return [im.shape, Array.from(new Uint8Array(im.data))]; }"
        )
        return np.array(data, dtype=np.uint8).reshape(shape)

    def last_trace_timings(self) -> dict:
        return self.page.evaluate("""() => ({run: window.__lastTrace.timingsMs, steps: window.__lastTrace.steps.map(s => s.timingsMs),
                                          info: window.__engineInfo})""")

    def screenshot(self, name: str):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def assert_all_local(self):
        origin = urlsplit(self.base)
        foreign = [
            u
            for u in self.requests
            if urlsplit(u).scheme not in ("data", "blob")
            and (urlsplit(u).hostname != "127.0.0.1" or urlsplit(u).port != origin.port)
        ]
        assert not foreign, f"requests left the page's origin: {foreign[:5]}"
        assert any(u.endswith("/pyodide/pyodide.asm.wasm") for u in self.requests), "the worker's requests were not recorded"

    def close(self):
        self.context.close()


@pytest.fixture
def page(browser, server):
    p = Page(browser, server)
    yield p
    p.assert_all_local()
    p.close()


_NATIVE: dict = {}


def native(bundle: Path, **request):
    """The native runtime's image and per-step time for the same request on the same bundle."""
    key = (str(bundle), tuple(sorted(request.items())))
    if key not in _NATIVE:
        pipe = Pipeline(Bundle.from_dir(bundle), NativeBackend(bundle))

        async def go():
            await pipe.load()
            return await pipe.generate(Request(**request))

        trace = run_sync(go())  # on another thread: Playwright's sync API owns this one's event loop
        _NATIVE[key] = (to_numpy(trace.image), trace.timings_ms["total"] / len(trace.steps))
    return _NATIVE[key]


def assert_same_image(got: np.ndarray, want: np.ndarray):
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got.astype(int) - want.astype(int)).max()
    assert err <= 2, f"max abs pixel error {err}/255 vs the native runtime"


def _record(name: str, value):
    TIMINGS[name] = value
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-timings.json").write_text(json.dumps(TIMINGS, indent=1))


# ---- tests ---------------------------------------------------------------------------------------


def test_server_headers_and_types(server):
    """COOP/COEP/CORP on everything (cross-origin isolation) and the MIME types browsers insist on."""
    for path, mime in [
        ("", "text/html"),
        ("ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ("pyodide/pyodide.mjs", "text/javascript"),
        ("bundle/unet.onnx", "application/octet-stream"),
        ("bundle/manifest.json", "application/json"),
        ("runtime/runtime.zip", "application/zip"),
    ]:
        with urlopen(server + path) as r:
            assert r.headers["Content-Type"].startswith(mime), (path, r.headers["Content-Type"])
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert r.headers["Cross-Origin-Resource-Policy"] == "same-origin"
    for bad in ("bundle/../../etc/passwd", "bundle/", "nope.js"):
        with pytest.raises(OSError):  # urllib's HTTPError (404, 403) is an OSError
            urlopen(server + bad)


@pytest.mark.parametrize("threads", [1, 2])
def test_wasm_image_equals_native(page, bundle, threads):
    t = time.perf_counter()
    load_s = page.open(f"?provider=wasm&threads={threads}")
    assert page.page.get_attribute("[data-testid=provider]", "data-provider") == "wasm"
    assert f"{threads} thread" in page.page.inner_text("[data-testid=provider]")
    request = dict(prompt=PROMPT, negative_prompt="blurry, dark", seed=3, guidance=7.5, steps=8, scheduler="euler")
    got = page.generate(prompt=PROMPT, negative="blurry, dark", seed=3, guidance=7.5, steps=8, scheduler="euler")
    first_image_s = time.perf_counter() - t
    want, native_step_ms = native(bundle, **request)
    assert_same_image(got, want)
    # the page shows the steps, their predicted images and the tokens
    # x̂₀ at every ⌈8/6⌉ = 2nd step and the last (runtime/web.py PAGE_PREVIEWS): steps 1, 3, 5, 7, 8
    assert page.page.evaluate("() => window.__lastTrace.request.previewEvery") == 2
    assert page.page.locator("[data-testid=step-strip] canvas").count() == 5
    tokens = page.page.inner_text("[data-testid=tokens]")
    assert "<|startoftext|>" in tokens and "cat" in tokens
    t2 = page.last_trace_timings()
    steps = t2["steps"]
    # onnxruntime-web runs in its own worker, and Python took every session made there while it started
    # (made with worker.ts's copy of runtime/web.py's session options: a drift makes this fewer)
    components = json.loads((bundle / "manifest.json").read_text())["components"]
    early = [n for n, c in components.items() if n != "clip_image" and len(c["files"]) == 1]
    ort = t2["info"]["ort"]
    assert (ort["worker"], ort["premade"]) == ("own", len(early))
    # and said how long each took there (the bench's "where a first visit goes")
    assert ort["startMs"] > 0 and sorted(ort["madeMs"]) == sorted(early) and all(ms > 0 for ms in ort["madeMs"].values())
    _record(
        f"wasm_{threads}_threads",
        {
            "page_load_to_ready_s": load_s,
            "page_load_to_first_image_s": first_image_s,
            "per_step_ms": sum(s["total"] for s in steps) / len(steps),
            "unet_per_step_ms": sum(s["unet"] for s in steps) / len(steps),
            "native_per_step_ms": native_step_ms,
            "startup_ms": t2["info"]["timingsMs"],
            "page_download_bytes": page.bytes,
        },
    )
    # once idle after a run, the sessions move into the engine worker (no message per call); the next
    # run there still equals native
    page.page.wait_for_function("() => window.__engineStats().then((s) => s.ort === 'engine')", timeout=60_000, polling=500)
    # a second scheduler on the same page (and the page's default scheduler list)
    got = page.generate(prompt="a rocket at night", negative="", seed=11, guidance=3.0, steps=5, scheduler="dpmpp_2m")
    assert_same_image(
        got,
        native(bundle, prompt="a rocket at night", negative_prompt="", seed=11, guidance=3.0, steps=5, scheduler="dpmpp_2m")[0],
    )
    page.screenshot(f"page-wasm-{threads}-threads")


def test_webgpu_image_equals_native(page, bundle):
    """The WebGPU path (GPU-resident outputs, getData downloads) on SwiftShader's software adapter."""
    page.open("?provider=webgpu")
    assert page.page.get_attribute("[data-testid=provider]", "data-provider") == "webgpu"
    got = page.generate(seed=5, guidance=7.5, steps=2, scheduler="euler")
    want, _ = native(bundle, prompt=PROMPT, negative_prompt="", seed=5, guidance=7.5, steps=2, scheduler="euler")
    assert_same_image(got, want)
    assert "WebGPU" in page.page.inner_text("[data-testid=run]")
    _record("webgpu_swiftshader", {"per_step_ms": page.last_trace_timings()["run"]["total"] / 2})
    page.screenshot("page-webgpu")


def test_auto_prefers_wasm_over_a_software_adapter(page):
    page.open("?provider=auto")
    assert page.page.get_attribute("[data-testid=provider]", "data-provider") == "wasm"
    assert "software" in page.page.inner_text("[data-testid=provider-reason]")


def test_tampered_cache_entry_is_detected_and_replaced(page, bundle):
    page.open()
    tampered = page.page.evaluate("""async () => {
        const cache = await caches.open('diffusion-explainer-bundle-v1');
        for (const req of await cache.keys()) {
            if (new URL(req.url).pathname.endsWith('/unet.onnx')) {
                const bytes = new Uint8Array(await (await cache.match(req)).arrayBuffer());
                bytes[bytes.length >> 1] ^= 0xff;
                await cache.put(req, new Response(bytes));
                return req.url;
            }
        }
        return null;
    }""")
    assert tampered, "unet.onnx was not in the Cache API after the first load"
    page.page.reload()
    page.wait_engine()
    notices = page.page.locator("[data-testid=notice]").all_inner_texts()
    assert "unet.onnx in the cache was corrupted; re-downloaded" in notices, notices
    got = page.generate(seed=1, steps=4)
    assert_same_image(got, native(bundle, prompt=PROMPT, negative_prompt="", seed=1, guidance=7.5, steps=4, scheduler="euler")[0])
    page.screenshot("page-cache-repaired")
    # repaired for good: the next load reads everything from the cache and says nothing
    page.page.reload()
    page.wait_engine()
    assert page.page.locator("[data-testid=notice]").count() == 0
    assert page.page.evaluate("window.__engineInfo.downloadedBytes") == 0


def test_corrupt_file_on_the_server_stops_the_load(browser, web_dist, bundle, tmp_path):
    from app.serve import start_background

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "vae_decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "vae_decoder.onnx").write_bytes(bytes(data))
    srv, url = start_background(bad, dist=web_dist)
    p = Page(browser, url)
    try:
        p.open(expect="error")
        fatal = p.page.inner_text("[data-testid=fatal]")
        assert "vae_decoder.onnx from the server does not match the bundle manifest" in fatal and "Nothing was run" in fatal
        assert p.page.is_disabled("[data-testid=generate]")
        p.screenshot("page-corrupt-bundle")
        p.assert_all_local()
    finally:
        p.close()
        srv.shutdown()
        srv.server_close()


def test_stop_mid_run_then_generate_again(page, bundle):
    page.open()
    page.generate(wait=None, steps=100, scheduler="euler")
    page.page.wait_for_function(
        "() => /step [1-9]\\d* of/.test(document.querySelector('[data-testid=run-status]')?.textContent ?? '')",
        timeout=RUN_TIMEOUT_MS,
    )
    page.page.click("[data-testid=stop]")
    page.page.wait_for_selector("[data-testid=run][data-state=stopped]", timeout=RUN_TIMEOUT_MS)
    status = page.page.inner_text("[data-testid=run-status]")
    assert "stopped after" in status and "of 100 steps" in status
    assert page.page.evaluate("window.__lastTrace.cancelled") is True
    page.wait_engine()
    # usable again; a prompt past CLIP's 77 tokens also says which words were dropped
    long_prompt = PROMPT + " with a hat" * 30
    got = page.generate(prompt=long_prompt, seed=2, steps=3)
    assert_same_image(
        got, native(bundle, prompt=long_prompt, negative_prompt="", seed=2, guidance=7.5, steps=3, scheduler="euler")[0]
    )
    assert "words were dropped" in page.page.inner_text("[data-testid=dropped-words]")
    page.screenshot("page-after-stop")


def test_html_in_the_prompt_is_only_text(page):
    page.open()
    evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b>bold</b>'
    page.generate(prompt=evil, negative='<svg onload="window.__pwned=3">', seed=4, steps=2)
    assert page.page.evaluate("window.__pwned") is None
    assert page.page.inner_text("[data-testid=run-prompt]") == evil
    assert page.page.locator("[data-testid=run] img, [data-testid=run] script, [data-testid=run] b").count() == 0
    assert "script" in page.page.inner_text("[data-testid=tokens]")  # the markup was tokenized as text
    assert not any(urlsplit(u).path == "/x" for u in page.requests)


def test_invalid_request_shows_the_message_and_keeps_the_form(page):
    page.open()
    page.fill_request(prompt="a blue square", seed=3, guidance=25, steps=4)
    # an out-of-range scale is brought into range when the box is left, and the reader is told in one
    # line: the slider cannot show 25, and the two must never disagree
    page.page.locator("input[name=guidance]").blur()
    assert "0 to 20: set to 20" in page.page.inner_text("[data-testid=guidance-note]")
    assert page.page.input_value("input[name=guidance]") == "20" and page.page.input_value("input[name=guidance-range]") == "20"
    page.page.fill("input[name=guidance]", "5")
    page.page.fill("input[name=seed]", "")
    page.page.click("[data-testid=generate]")
    page.page.wait_for_function(
        "() => /seed must be a whole number/.test(document.querySelector('[data-testid=run-error]')?.textContent ?? '')"
    )
    assert page.page.input_value("textarea[name=prompt]") == "a blue square"
    assert page.page.input_value("input[name=steps]") == "4"
    page.screenshot("page-invalid-request")
    # fixing the field is enough
    page.page.fill("input[name=seed]", "3")
    page.page.click("[data-testid=generate]")
    page.page.wait_for_selector("[data-testid=run][data-state=done]", timeout=RUN_TIMEOUT_MS)
    assert page.page.locator("[data-testid=run-error]").count() == 0


def test_forced_webgpu_without_an_adapter_says_so(playwright, server):
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)  # no --enable-unsafe-webgpu: no adapter
    p = Page(b, server)
    try:
        p.open("?provider=webgpu", expect="error")
        fatal = p.page.inner_text("[data-testid=fatal]")
        assert "WebGPU was chosen, but" in fatal and "Choose “auto” or “WASM”" in fatal
        p.screenshot("page-no-webgpu")
        # the settings still work: switch to WASM and run
        p.page.select_option("[data-testid=provider-select]", "wasm")
        p.page.click("[data-testid=apply-settings]")
        p.wait_engine()
        assert p.page.get_attribute("[data-testid=provider]", "data-provider") == "wasm"
        p.assert_all_local()
    finally:
        p.close()
        b.close()
