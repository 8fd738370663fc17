"""Python's memory snapshot: a first visit of a page built without one (the build ships one:
test_shipped_snapshot.py) starts Pyodide afresh and, once idle, a throwaway worker saves the
interpreter (runtime/ imported) in the Cache API; a warm visit restores it instead of starting
Python, and runs the same numbers. A damaged snapshot is dropped and Python starts afresh."""

from __future__ import annotations

import pytest
from test_browser import (  # noqa: F401 - pytest fixtures
    Page,
    assert_same_image,
    browser,
    bundle,
    native,
    playwright,
    server,
)

from bench.page import wait_for_snapshot

pytestmark = pytest.mark.browser

REQUEST = dict(prompt="a cat at night", seed=7, guidance=5, steps=3, scheduler="euler")


def _visit(p: Page) -> dict:
    p.open("?provider=wasm&threads=2")
    return p.page.evaluate("() => window.__engineInfo")


def test_warm_visit_restores_python_and_runs_the_same(browser, server, bundle):
    p = Page(browser, server)
    try:
        p.context.route("**/pyodide/memory-snapshot-*", lambda r: r.fulfill(status=404))  # as if the build shipped none
        first = _visit(p)
        assert first["pythonSnapshot"] == "fresh"
        wait_for_snapshot(p.page)
        second = _visit(p)  # same context: the Cache API persists
        assert second["pythonSnapshot"] == "restored", p.console[-8:]
        assert "from the saved snapshot" in p.page.inner_text("body")
        assert_same_image(p.generate(**REQUEST), native(bundle, **REQUEST)[0])
        # the restored interpreter still reads files lazily (runtime.zip is unpacked again)
        assert p.page.evaluate("() => window.__engineInfo.pythonVersion").startswith("3.")
    finally:
        p.close()


def test_a_damaged_snapshot_is_dropped_and_python_starts_afresh(browser, server, bundle):
    p = Page(browser, server)
    try:
        _visit(p)
        wait_for_snapshot(p.page)
        p.page.evaluate("""async () => {
            const c = await caches.open('diffusion-explainer-python');
            const [k] = await c.keys();
            await c.put(k, new Response(new Uint8Array(1000).fill(7)));
        }""")
        again = _visit(p)
        assert again["pythonSnapshot"] == "fresh"
        assert any("did not load" in c for c in p.console), p.console[-5:]
        assert_same_image(p.generate(**REQUEST), native(bundle, **REQUEST)[0])
    finally:
        p.close()
