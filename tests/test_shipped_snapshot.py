"""Python's memory snapshot ships with the page (app/snapshot.py makes it at build time): a first visit
in a fresh browser restores it instead of starting Python, keeps it in the Cache API for the next
visit, and runs the same numbers as a fresh start. A page built without it (no Chromium, or the file
removed) starts Python afresh as before; a build without Chromium says so in one line."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pytest

from app import snapshot

try:  # the browser fixtures; without numpy/onnxruntime only the browser tests are skipped
    from test_browser import Page, assert_same_image, browser, bundle, native, playwright, server  # noqa: F401
except pytest.skip.Exception:
    pass

REQUEST = dict(prompt="a cat at night", seed=7, guidance=5, steps=3, scheduler="euler")


@pytest.fixture(scope="session")
def dist_without_snapshot(web_dist, tmp_path_factory):
    """A copy of the built page (hard links) without its shipped snapshot, as a build without Chromium leaves it."""
    out = tmp_path_factory.mktemp("dist") / "dist"

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(web_dist, out, copy_function=link, ignore=shutil.ignore_patterns(f"{snapshot.PREFIX}*"))
    return out


@pytest.fixture
def server_without_snapshot(dist_without_snapshot, bundle):
    from app.serve import start_background

    srv, url = start_background(bundle, dist=dist_without_snapshot)
    yield url
    srv.shutdown()
    srv.server_close()


def _visit(p) -> dict:
    p.open("?provider=wasm&threads=2")
    return p.page.evaluate("() => window.__engineInfo")


# ---- the build ------------------------------------------------------------------------------------


def test_the_build_ships_the_snapshot_of_its_runtime_zip(web_dist):
    shipped = snapshot.shipped_snapshot(web_dist)
    assert shipped is not None, "the page's build shipped no Python snapshot (see the build's log line)"
    assert shipped.name.startswith(snapshot.PREFIX) and shipped.name.endswith(f"-{snapshot.runtime_tag(web_dist)}.data")
    assert gzip.decompress(shipped.with_name(shipped.name + ".gz").read_bytes()) == shipped.read_bytes()
    assert f"pyodide/{shipped.name}" in json.loads((web_dist / "precompressed.json").read_text())["gzip"]


def test_a_stale_snapshot_is_not_found_and_no_chromium_is_one_line(tmp_path, monkeypatch):
    dist = tmp_path / "dist"
    (dist / "pyodide").mkdir(parents=True)
    (dist / "runtime").mkdir()
    (dist / "runtime" / "runtime.zip").write_bytes(b"new runtime")
    (dist / "pyodide" / f"{snapshot.PREFIX}1.0.0-0123456789abcdef.data").write_bytes(b"\0" * 2000)  # another runtime's
    (dist / "precompressed.json").write_text(json.dumps({"gzip": [f"pyodide/{snapshot.PREFIX}1.0.0-0123456789abcdef.data"]}))
    assert snapshot.shipped_snapshot(dist) is None
    monkeypatch.setattr(snapshot, "CHROMIUM", tmp_path / "no-chromium")
    logs: list[str] = []
    assert snapshot.ensure_snapshot(dist, log=logs.append) is None
    assert len(logs) == 1 and "starts Python afresh" in logs[0] and "Traceback" not in logs[0]


# ---- the page ---------------------------------------------------------------------------------------


@pytest.mark.browser
def test_first_visit_restores_the_shipped_snapshot_and_runs_as_a_fresh_start(browser, server, server_without_snapshot, bundle):
    from bench.page import wait_for_snapshot

    p = Page(browser, server)
    try:
        first = _visit(p)  # a fresh context: empty Cache API
        assert first["pythonSnapshot"] == "shipped", p.console[-8:]
        assert any(f"/pyodide/{snapshot.PREFIX}" in u for u in p.requests)
        assert "from the page's snapshot" in p.page.inner_text("body")
        shipped_image = p.generate(**REQUEST)
        wait_for_snapshot(p.page, timeout_s=30)  # kept, decoded, for the next visit
        assert _visit(p)["pythonSnapshot"] == "restored"
    finally:
        p.close()

    fresh = Page(browser, server_without_snapshot)
    try:
        info = _visit(fresh)
        assert info["pythonSnapshot"] == "fresh"
        assert not any("did not load" in c for c in fresh.console), fresh.console[-5:]  # a 404 is no warning
        fresh_image = fresh.generate(**REQUEST)
    finally:
        fresh.close()
    assert (shipped_image == fresh_image).all(), "the shipped snapshot's run differs from a fresh start's"
    assert_same_image(shipped_image, native(bundle, **REQUEST)[0])


@pytest.mark.browser
def test_a_damaged_shipped_snapshot_falls_back_to_a_fresh_start(browser, server):
    p = Page(browser, server)
    try:
        p.context.route(
            f"**/pyodide/{snapshot.PREFIX}*",
            lambda r: r.fulfill(status=200, body=b"\7" * 1000, content_type="application/octet-stream"),
        )
        info = _visit(p)
        assert info["pythonSnapshot"] == "fresh"
        assert sum("did not load" in c for c in p.console) == 1, p.console[-5:]
    finally:
        p.close()
