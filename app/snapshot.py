"""Python's memory snapshot, made when the page is built and shipped with it in web/dist/pyodide/.

Why: a first visit otherwise starts Python afresh (~3 s of CPU, mostly compiling the stdlib); with
the snapshot it restores the interpreter with runtime/ already imported. The page's own snapshot
worker (web/src/snapshotWorker.ts, started by its build-time name) makes it in headless Chromium,
so the shipped bytes are what a browser would make (RECIPES: one made in Node carries Node's
environment). The file is named by the page's cache key — Pyodide's version and the first 16 hex of
runtime.zip's sha256 — so the page finds only a snapshot of its own runtime; a stale one is simply
not found. Without Chromium, or if making it fails, one line is logged and the page starts Python
afresh as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from app.gzipped import gzip_file

CHROMIUM = Path("/usr/bin/chromium")
PREFIX = "memory-snapshot-"
BUILD_WORKER_NAME = "python-snapshot-build"  # web/src/lib/pythonSnapshot.ts: BUILD_WORKER_NAME
PAGE = "make-python-snapshot.html"  # a blank same-origin page for the worker (answered by Playwright, not the server)

# In the blank page: run the snapshot worker in build mode and save what it returns as a download
# (Playwright then writes it to disk; no 31 MB string through the driver).
MAKE = """async ([url, name]) => {
  const w = new Worker(url, { type: 'module', name });
  const made = await new Promise((resolve, reject) => {
    w.onmessage = (e) => resolve(e.data);
    w.onerror = (e) => reject(new Error(e.message || 'the snapshot worker did not start'));
  });
  w.terminate();
  if (!made.ok) throw new Error(made.text);
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([made.image]));
  a.download = 'snapshot.data';
  document.body.append(a);
  a.click();
  return made.key;
}"""


class SnapshotError(Exception):
    """The snapshot could not be made; the message is one line."""


def runtime_tag(dist: Path) -> str:
    """The first 16 hex of the served runtime.zip's sha256 (the key's runtime part)."""
    zip_path = Path(dist) / "runtime" / "runtime.zip"
    if not zip_path.is_file():
        raise SnapshotError(f"{zip_path} is missing")
    return hashlib.sha256(zip_path.read_bytes()).hexdigest()[:16]


def shipped_snapshot(dist: Path) -> Path | None:
    """The snapshot in dist that matches its runtime.zip, or None."""
    tag = runtime_tag(dist)
    found = sorted((Path(dist) / "pyodide").glob(f"{PREFIX}*-{tag}.data"))
    return found[-1] if found else None


def ensure_snapshot(dist: Path, log=print, start=None) -> Path | None:
    """dist's shipped snapshot, made when missing or stale, with its .gz; None (after one log line) where it cannot be made.
    start: app.serve's start_background, handed in (serve imports this module, not the other way)."""
    dist = Path(dist)
    try:
        path = shipped_snapshot(dist)
        if path is None:
            _check_tools()
            log("making Python's memory snapshot to ship with the page…")
            path = make_snapshot(dist, start)
        _list_gzip(dist, path if gzip_file(path) else None)
        return path
    except SnapshotError as e:
        log(f"note: no Python snapshot ships with the page ({e}); a first visit starts Python afresh")
    except Exception as e:  # noqa: BLE001 - Playwright/OS errors: one line, the page still works
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log(f"note: no Python snapshot ships with the page (making it failed: {first}); a first visit starts Python afresh")
    return None


def make_snapshot(dist: Path, start, timeout_s: float = 180) -> Path:
    """Make the snapshot with the page's snapshot worker in headless Chromium; write it into dist/pyodide/.
    start: app.serve's start_background (a server for dist)."""
    dist = Path(dist)
    if start is None:
        raise SnapshotError("no server to load the page with (start=None)")
    _check_tools()
    workers = sorted((dist / "assets").glob("snapshotWorker-*.js"))
    if len(workers) != 1:
        raise SnapshotError(f"expected one assets/snapshotWorker-*.js in {dist}, found {len(workers)}; rebuild the page")
    tag = runtime_tag(dist)
    server, base = start(dist, dist=dist)  # the worker reads only pyodide/ and runtime/: no bundle
    tmp = dist / "pyodide" / f".{PREFIX}{os.getpid()}.partial"
    try:
        key = _in_own_thread(lambda: _download(base, workers[0].name, tmp, timeout_s))
        name = str(key).rsplit("/", 1)[-1]
        if not re.fullmatch(rf"{PREFIX}[0-9A-Za-z.+-]+-{tag}\.data", name):  # the page's key and ours must agree
            raise SnapshotError(f"the page named its snapshot {name!r}, which does not match runtime.zip ({tag})")
        for old in (dist / "pyodide").glob(f"{PREFIX}*.data*"):  # other runtimes' (and their .gz)
            old.unlink()
        path = dist / "pyodide" / name
        os.replace(tmp, path)
        return path
    finally:
        tmp.unlink(missing_ok=True)
        server.shutdown()
        server.server_close()


def _download(base: str, worker: str, tmp: Path, timeout_s: float) -> str:
    """The page's snapshot worker makes the snapshot in headless Chromium; saved to tmp. Returns the page's key for it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context().new_page()
            page.route(
                base + PAGE,
                lambda route: route.fulfill(body="<!doctype html><title>snapshot</title>", content_type="text/html"),
            )
            page.goto(base + PAGE)
            with page.expect_download(timeout=timeout_s * 1000) as download:
                key = page.evaluate(MAKE, [f"{base}assets/{worker}", BUILD_WORKER_NAME])
            download.value.save_as(tmp)
        finally:
            browser.close()
    return key


def _in_own_thread(fn):
    """fn() in a thread of its own: Playwright's sync API refuses to start in a thread that already runs
    an event loop (a test session with a browser open, a notebook), which made the snapshot silently missing."""
    import threading

    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, name="snapshot", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _check_tools() -> None:
    if not CHROMIUM.exists():
        raise SnapshotError(f"{CHROMIUM} is missing")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise SnapshotError("the Python package playwright is not installed") from None


def _list_gzip(dist: Path, snapshot: Path | None) -> None:
    """precompressed.json (the static site's service worker reads it) lists the snapshot's .gz and no stale one."""
    listing = dist / "precompressed.json"
    if not listing.is_file():
        return
    listed = [
        rel for rel in json.loads(listing.read_text(encoding="utf-8")).get("gzip", []) if not rel.startswith(f"pyodide/{PREFIX}")
    ]
    if snapshot is not None:
        listed.append(snapshot.relative_to(dist).as_posix())
    text = json.dumps({"gzip": sorted(listed)}, indent=1) + "\n"
    if listing.read_text(encoding="utf-8") != text:
        listing.write_text(text, encoding="utf-8")
