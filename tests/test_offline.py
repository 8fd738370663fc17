"""Offline: after one visit the page, Pyodide, onnxruntime-web and the cached bundle load and generate
with no network at all.

A visit generates an image; then the browser context goes offline AND the server is shut down (so
nothing can be answered by the network even where the emulation would let a request through), the
page is reloaded, reaches ready from the service worker's copies and the Cache API, and generates.
The offline reload's time to ready goes to test-artifacts/offline.json. The page links an
installable web app manifest (name, icons, start_url, display standalone) whose icons load.
"""

from __future__ import annotations

import json
import time

import pytest

try:
    from test_browser import ARTIFACTS, RUN_TIMEOUT_MS, Page, browser, playwright  # noqa: F401
except pytest.skip.Exception:  # pragma: no cover
    pass

pytestmark = pytest.mark.browser


@pytest.mark.browser
def test_second_visit_works_offline(browser, web_dist, default_small_bundle):
    from app.serve import start_background

    srv, url = start_background(default_small_bundle, dist=web_dist)
    page = Page(browser, url)
    p = page.page
    stopped = False
    try:
        page.open("?provider=wasm")
        assert p.evaluate("crossOriginIsolated")
        # before anything is kept for offline, the engine put its WebAssembly in the offline worker's cache
        # and compiled it from there: Chrome keeps the compiled code beside that copy, which later visits use
        kept = p.evaluate(
            "async () => (await (await caches.open('diffusion-explainer-shell-v1')).keys()).map(r => new URL(r.url).pathname)"
        )
        assert any(k.endswith("/pyodide/pyodide.asm.wasm") for k in kept), kept
        assert any(k.endswith("/ort/ort-wasm-simd-threaded.wasm") for k in kept), kept
        assert not any(k.endswith("/runtime/runtime.zip") for k in kept), "kept before the first run"
        # the web app manifest: installable (name, icons 192/512, start_url, standalone) and served
        href = p.get_attribute("link[rel=manifest]", "href")
        manifest = p.evaluate("async (h) => (await fetch(h)).json()", href)
        assert manifest["name"] and manifest["start_url"] and manifest["display"] == "standalone"
        sizes = {i["sizes"] for i in manifest["icons"]}
        assert {"192x192", "512x512"} <= sizes
        for icon in manifest["icons"]:
            assert p.evaluate("async (s) => (await fetch(s)).ok", icon["src"]), icon
        first = page.generate(seed=5, steps=4)
        # a first visit is not controlled (its downloads do not pass through the service worker) ...
        assert p.evaluate("navigator.serviceWorker.controller") is None
        # ... which kept the app's files once the first run was done (the page and the engine worker told it what they loaded)
        p.wait_for_function("() => document.documentElement.dataset.offline === 'kept'", timeout=30_000)
        p.wait_for_function(
            """async () => { const c = await caches.open('diffusion-explainer-shell-v1');
                const keys = (await c.keys()).map(r => new URL(r.url).pathname);
                return keys.some(k => k.endsWith('/pyodide/pyodide.asm.wasm')) && keys.some(k => k.endsWith('/runtime/runtime.zip'))
                    && keys.some(k => k.endsWith('/ort/ort-wasm-simd-threaded.wasm'))
                    && keys.some(k => /\\/assets\\/index-.*\\.js$/.test(k)) && keys.some(k => k === '/'); }""",
            timeout=30_000,
            polling=500,
        )

        # no network at all
        page.context.set_offline(True)
        srv.shutdown()
        srv.server_close()
        stopped = True
        t = time.perf_counter()
        p.reload()
        page.wait_engine()
        ready_s = time.perf_counter() - t
        info = p.evaluate("window.__engineInfo")
        assert p.evaluate("crossOriginIsolated"), "the offline copy lost COOP/COEP"
        assert info["downloadedBytes"] == 0 and info["bundle"]["name"] == "default"
        second = page.generate(seed=5, steps=4)
        assert (second == first).all(), "offline, the same request gave another image"
        page.screenshot("offline-reload")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "offline.json").write_text(
            json.dumps(
                {
                    "offline_reload_to_ready_s": round(ready_s, 2),
                    "worker_ready_ms": round(info["timingsMs"]["total"]),
                    "python": info["pythonSnapshot"],
                    "threads": info["threads"],
                },
                indent=1,
            )
        )
        print(f"offline reload → ready in {ready_s:.2f} s (worker {info['timingsMs']['total']:.0f} ms)")
    finally:
        page.close()
        if not stopped:
            srv.shutdown()
            srv.server_close()


@pytest.mark.browser
def test_unchanged_files_are_answered_from_the_kept_copy(browser, web_dist, default_small_bundle, tmp_path):
    """Online, the service worker answers an app file the server says is unchanged with its kept copy
    itself (Chrome keeps compiled WebAssembly and scripts only beside Cache API answers), and a
    changed file with the server's new one, which it keeps in place of the old."""
    import os
    import shutil

    from app.serve import start_background

    dist = tmp_path / "dist"
    shutil.copytree(web_dist, dist, copy_function=os.link)  # hard links: a file is replaced, never written in place
    srv, url = start_background(default_small_bundle, dist=dist)
    page = Page(browser, url)
    p = page.page
    read = """async () => { const r = await fetch('manifest.webmanifest');
        return { date: r.headers.get('Date'), name: (await r.json()).name }; }"""
    try:
        page.open("?provider=wasm")
        p.wait_for_function(
            """async () => (await (await caches.open('diffusion-explainer-shell-v1')).keys())
                .some(r => new URL(r.url).pathname.endsWith('/manifest.webmanifest'))""",
            timeout=30_000,
            polling=200,
        )
        p.reload()  # the second visit is controlled (the first never is)
        page.wait_engine()
        assert p.evaluate("navigator.serviceWorker.controller !== null")
        kept = p.evaluate(read)
        time.sleep(1.1)  # a network answer now carries another Date
        again = p.evaluate(read)
        assert again == kept, "an unchanged file was answered from the network, not from the kept copy"

        path = dist / "manifest.webmanifest"
        manifest = json.loads(path.read_text())
        manifest["name"] = "Diffusion Explainer, rebuilt"
        fresh = path.with_suffix(".new")
        fresh.write_text(json.dumps(manifest))
        later = path.stat().st_mtime + 10
        os.utime(fresh, (later, later))  # a new validator (Last-Modified)
        os.replace(fresh, path)
        for gz in dist.glob("manifest.webmanifest.gz"):
            gz.unlink()
        changed = p.evaluate(read)
        assert changed["name"] == "Diffusion Explainer, rebuilt", "a changed file was answered from the old copy"
        assert p.evaluate(read)["name"] == "Diffusion Explainer, rebuilt", "the kept copy was not replaced"
    finally:
        page.close()
        srv.shutdown()
        srv.server_close()
