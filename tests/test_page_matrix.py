"""The page under the conditions a visitor's browser may impose (as onnxruntime-web's own end-to-end
suite varies them): with and without cross-origin isolation, 1 and 2 WASM threads, and many runs in
a row without leaking Pyodide proxies or growing the worker's heap."""

from __future__ import annotations

import functools

import pytest
from test_browser import (  # noqa: F401 - pytest fixtures
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

REQUEST = dict(prompt="a cat", seed=5, guidance=4, steps=2, scheduler="ddim")


@pytest.fixture(scope="module")
def plain_server(web_dist, bundle):
    """The same page and bundle served WITHOUT COOP/COEP: no SharedArrayBuffer, so no WASM threads."""
    from app import serve

    class NoIsolation(serve.Handler):
        def end_headers(self):
            for k, v in serve.HEADERS.items():
                if not k.startswith("Cross-Origin"):
                    self.send_header(k, v)
            super(serve.Handler, self).end_headers()

    import http.server
    import threading

    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(NoIsolation, dist=web_dist, bundle=bundle, quiet=True)
    )
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("threads", [1, 2])
def test_isolated_page_runs_with_the_threads_asked(browser, server, bundle, threads):
    p = Page(browser, server)
    try:
        p.open(f"?provider=wasm&threads={threads}")
        info = p.page.evaluate("() => window.__engineInfo")
        assert info["crossOriginIsolated"] and info["threads"] == threads
        assert_same_image(p.generate(**REQUEST), native(bundle, **REQUEST)[0])
    finally:
        p.close()


class NoServiceWorkerPage(Page):
    """A browser that blocks service workers, so the page's own COOP/COEP worker cannot isolate it either."""

    def __init__(self, browser, base_url):
        real = browser.new_context

        class B:
            def new_context(self, **kw):
                return real(service_workers="block", **kw)

        super().__init__(B(), base_url)


def test_without_isolation_the_page_says_one_thread_and_works(browser, plain_server, bundle):
    p = NoServiceWorkerPage(browser, plain_server)
    try:
        p.open("?provider=wasm&threads=2")
        info = p.page.evaluate("() => window.__engineInfo")
        assert not info["crossOriginIsolated"] and info["threads"] == 1
        assert "not cross-origin isolated" in p.page.inner_text("body") and "one thread" in p.page.inner_text("body")
        assert_same_image(p.generate(**REQUEST), native(bundle, **REQUEST)[0])
        # Stop still works without the shared stop flag (the message lands between steps)
        p.fill_request(**{**REQUEST, "steps": 40})
        p.page.click("[data-testid=generate]")
        p.page.click("[data-testid=stop]")
        p.page.wait_for_selector("[data-testid=run][data-state=stopped]", timeout=RUN_TIMEOUT_MS)
    finally:
        p.close()


def test_twenty_runs_leak_no_proxies_and_no_heap(browser, server):
    p = Page(browser, server)
    try:
        p.open("?provider=wasm")
        figures = []
        for i in range(20):
            p.generate(**{**REQUEST, "seed": i})
            p.page.wait_for_function("() => window.__lastTrace.steps.every(s => s.image)", timeout=RUN_TIMEOUT_MS)
            figures.append(p.page.evaluate("() => window.__engineStats()"))
        # after a few runs everything reached its working size; from there nothing may keep growing
        settled, last = figures[4], figures[-1]
        assert last["jsProxies"] <= settled["jsProxies"], figures
        assert last["pyObjects"] - settled["pyObjects"] < 200, [f["pyObjects"] for f in figures]
        assert last["heapBytes"] == settled["heapBytes"], [f["heapBytes"] for f in figures]
    finally:
        p.close()


def test_an_immediate_stop_runs_no_step(browser, server):
    p = Page(browser, server)
    try:
        p.open("?provider=wasm")
        p.fill_request(**{**REQUEST, "steps": 30})
        p.page.evaluate(
            "() => { document.querySelector('[data-testid=generate]').click(); "
            "queueMicrotask(() => document.querySelector('[data-testid=stop]')?.click()); }"
        )
        p.page.wait_for_selector("[data-testid=run][data-state=stopped]", timeout=RUN_TIMEOUT_MS)
        assert p.page.evaluate("() => window.__lastTrace.steps.length") == 0
    finally:
        p.close()


def test_a_cache_that_refuses_writes_still_generates_from_memory(browser, server, bundle):
    """The Cache API over its quota (a full disk, a strict browser): one notice, and the page works."""
    from urllib.parse import urlsplit

    p = Page(browser, server)
    try:
        cdp = p.context.new_cdp_session(p.page)
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(server))
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": 1024})
        p.open("?provider=wasm")
        text = p.page.inner_text("body")
        assert text.count("could not keep") == 1, text[:2000]
        assert_same_image(p.generate(**REQUEST), native(bundle, **REQUEST)[0])
    finally:
        p.close()


def test_webgpu_device_lost_mid_run_falls_back_to_wasm(browser, server, bundle):
    """The GPU device goes away mid-run (here destroyed on SwiftShader's adapter, as a driver reset
    would): the run stops with one line, the engine moves to WASM from the bytes it holds, and the
    next run works and equals native."""
    p = Page(browser, server)
    try:
        p.open("?provider=webgpu")
        assert p.page.evaluate("() => window.__engineInfo.provider") == "webgpu"
        p.generate(wait=None, **{**REQUEST, "steps": 40})
        p.page.wait_for_function(
            "() => /step ([2-9]|\\d\\d) of 40/.test(document.querySelector('[data-testid=run-status]')?.textContent ?? '')",
            timeout=RUN_TIMEOUT_MS,
        )
        engine = next(w for w in p.page.workers if "/assets/worker" in w.url)
        engine.evaluate("() => self.dxGpuDevice.destroy()")
        p.page.wait_for_function("() => window.__engineInfo.provider === 'wasm'", timeout=RUN_TIMEOUT_MS)
        p.page.wait_for_selector("[data-testid=run][data-state=stopped]", timeout=RUN_TIMEOUT_MS)
        p.page.wait_for_selector("main[data-engine=ready]", timeout=RUN_TIMEOUT_MS)
        body = p.page.inner_text("body")
        assert "WebGPU device was lost during this run" in body and "press Generate to run it again" in body
        assert "now running on WASM" in body
        assert "WASM" in p.page.inner_text("[data-testid=provider]")
        assert_same_image(p.generate(**REQUEST), native(bundle, **REQUEST)[0])
        assert not [c for c in p.console if c.startswith("pageerror")], p.console
        p.screenshot("page-webgpu-device-lost")
    finally:
        p.close()
