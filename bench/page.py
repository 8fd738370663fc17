"""Time the page itself: headless Chromium opens the bench view (`/?bench&…`) on a bundle and we read
its result.

Why a real browser: what a visitor waits for is Pyodide + onnxruntime-web in a Web Worker, with the
page's own loader and provider choice; only the page can time that. The bench view measures two
levels — through the Python controller as the app runs, and raw onnxruntime-web `session.run` from
JS on the same inputs — and this driver adds what only the network side sees: the bytes every
request downloaded, split into runtime assets and the bundle.

Each call uses a fresh browser context (empty Cache API), so start-up figures are a first visit's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

CHROMIUM = Path("/usr/bin/chromium")
# RECIPES: flags for a closed network. ForceEagerMeasureMemory makes measureUserAgentSpecificMemory()
# answer at once instead of at the next garbage collection (up to 20 s later).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--enable-blink-features=ForceEagerMeasureMemory",
]
PROVIDERS = ("wasm", "webgpu", "auto")
DEFAULT_PROMPT = "a cat on a blue background"


class BenchPageError(Exception):
    """The page could not be benchmarked; the message is one line a user can act on."""


def _kind(url: str) -> str:
    path = urlsplit(url).path
    for prefix, kind in (("/bundle/", "bundle"), ("/pyodide/", "pyodide"), ("/ort/", "ort")):
        if path.startswith(prefix):
            return kind
    return "app"


def _check_args(bundle_dir: Path, threads, provider, steps, repeats, prompt, seed, guidance, timeout_s) -> None:
    if not (Path(bundle_dir) / "manifest.json").is_file():
        raise ValueError(
            f"{bundle_dir} is not a bundle (no manifest.json); export one with `diffusion-explainer export CHECKPOINT DIR`"
        )
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    from runtime.trace import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS

    for name, v, lo, hi in (
        ("threads", threads, 0, 16),
        ("steps", steps, MIN_STEPS, MAX_STEPS),
        ("repeats", repeats, 1, 50),
        ("seed", seed, 0, MAX_SEED),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{name} must be a whole number from {lo} to {hi}, not {v!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not MIN_GUIDANCE <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"guidance must be a number from {MIN_GUIDANCE:g} to {MAX_GUIDANCE:g}, not {guidance!r}")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt must be text of at most {MAX_PROMPT_CHARS} characters")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")


def _start_server(bundle_dir: Path, serve, dist: Path | None):
    """The built page and the bundle on a background server → (server, base URL, dist); one line on failure.
    serve: (build_web, start_background) from app.serve, handed in by the command line."""
    if serve is None:
        raise BenchPageError("the page's server is needed: pass serve=(build_web, start_background) from app.serve")
    build_web, start_background = serve
    try:
        dist = Path(dist) if dist else build_web(log=lambda *_: None)
    except Exception as e:  # noqa: BLE001 - app.serve.ServeError: one line
        raise BenchPageError(str(e)) from None
    if not (dist / "index.html").is_file():
        raise BenchPageError(f"{dist} holds no built page (index.html); run `cd web && npm run build`")
    server, base = start_background(bundle_dir, dist=dist)
    return server, base, dist


def run_page(
    bundle_dir: Path,
    *,
    threads: int,
    provider: str = "wasm",
    steps: int = 10,
    repeats: int = 3,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    timeout_s: float = 900,
    guidance: float = 7.5,
    dist: Path | None = None,
    screenshot: Path | None = None,
    serve=None,
) -> dict:
    """Serve `bundle_dir` with the built page, run the bench view in headless Chromium, return its result.

    threads: WASM threads (0: the page's automatic choice). dist: the built page (default web/dist,
    built with npm when missing). screenshot: where to save a full-page PNG of the finished view.
    serve: (build_web, start_background) from app.serve, handed in by the command line (bench/ does
    not import app/: imports go one way).
    The result is the page's `window.__dxBench` (see web/src/bench/bench.ts: controller_ms, raw_ms,
    overhead_ms, startup_ms, memory, samples, …) plus `page_bytes` (response bodies of every
    request, by kind), `driver` (browser, URL, wall time) and `webgpu_adapter_software`.
    Raises BenchPageError when the page reports an error or does not finish in timeout_s.
    """
    bundle_dir = Path(bundle_dir)
    _check_args(bundle_dir, threads, provider, steps, repeats, prompt, seed, guidance, timeout_s)
    if not CHROMIUM.exists():
        raise BenchPageError(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BenchPageError(
            "the Python package playwright is not installed (pip install playwright; no browser download is needed)"
        ) from None
    query = urlencode(
        {
            "provider": provider,
            "threads": threads,
            "steps": steps,
            "repeats": repeats,
            "prompt": prompt,
            "seed": seed,
            "guidance": guidance,
        }
    )
    server, base, dist = _start_server(bundle_dir, serve, dist)
    url = f"{base}?bench&{query}"
    counts = {"app": 0, "pyodide": 0, "ort": 0, "bundle": 0}
    requests = {k: 0 for k in counts}
    console: list[str] = []

    def count(request):
        try:
            size = request.sizes()["responseBodySize"]
        except PlaywrightError:  # the page went away mid-request
            return
        kind = _kind(request.url)
        counts[kind] += max(0, size)
        requests[kind] += 1

    args = CHROMIUM_ARGS + (["--enable-unsafe-webgpu"] if provider != "wasm" else [])
    t0 = time.perf_counter()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
            try:
                context = browser.new_context(viewport={"width": 1100, "height": 900})
                context.on("requestfinished", count)
                page = context.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                deadline = t0 + timeout_s
                try:
                    page.goto(url, wait_until="commit", timeout=timeout_s * 1000)
                    # the explainer's root instead of the bench view: a page built before the bench view existed
                    page.wait_for_selector("[data-testid=bench], main[data-engine]", state="attached", timeout=timeout_s * 1000)
                    if page.locator("[data-testid=bench]").count() == 0:
                        raise BenchPageError(
                            f"the page in {dist} has no bench view (it was built before the view existed); "
                            "rebuild it: `cd web && npm run build` or `diffusion-explainer serve --rebuild`"
                        )
                    page.wait_for_selector(
                        "[data-bench-done]", state="attached", timeout=max(1.0, deadline - time.perf_counter()) * 1000
                    )
                except PlaywrightError as e:
                    status = _text(page, "[data-testid=bench-status]")
                    tail = " | ".join(console[-5:])
                    reason = "did not finish" if "Timeout" in str(e) else f"failed ({str(e).splitlines()[0]})"
                    raise BenchPageError(
                        f"the bench page {reason} within {timeout_s:.0f} s; last status: {status or '?'}"
                        + (f"; console: {tail}" if tail else "")
                    ) from None
                result = page.evaluate("() => window.__dxBench")
                if screenshot:
                    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot), full_page=True)
                version = browser.version
                context.close()
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    if not isinstance(result, dict):
        raise BenchPageError("the bench page finished without a result on window.__dxBench")
    if not result.get("ok"):
        raise BenchPageError(f"the bench page reported an error: {result.get('error') or 'unknown error'}")
    runtime_assets = counts["app"] + counts["pyodide"] + counts["ort"]
    result["page_bytes"] = {
        **counts,
        "runtime_assets": runtime_assets,
        "total": runtime_assets + counts["bundle"],
        "requests": requests,
    }
    result["driver"] = {"browser": f"chromium {version}", "url": url, "args": args, "wall_s": time.perf_counter() - t0}
    engine = result.get("engine") or {}
    result["webgpu_adapter_software"] = engine.get("adapter_software") if engine.get("provider") == "webgpu" else None
    return result


def _text(page, selector: str) -> str:
    try:
        loc = page.locator(selector)
        return loc.inner_text(timeout=1000).strip().replace("\n", " ") if loc.count() else ""
    except Exception:  # the page crashed: no status to read
        return ""


SNAPSHOT_CACHE = "diffusion-explainer-python"  # the worker's Cache API name for Python's memory snapshot


def wait_for_snapshot(page, timeout_s: float = 90) -> None:
    """Until the page's Cache API holds Python's memory snapshot (a throwaway worker makes it once the engine is idle)."""
    end = time.perf_counter() + timeout_s
    while page.evaluate(f"async () => (await (await caches.open('{SNAPSHOT_CACHE}')).keys()).length") == 0:
        if time.perf_counter() > end:
            raise BenchPageError(f"the page saved no Python snapshot within {timeout_s:.0f} s")
        time.sleep(0.5)


# the page's own clock (from navigation start, as Navigation Timing and web vitals count): when the engine
# is ready and when the first finished image is there
MILESTONES = """() => { let trace; Object.defineProperty(window, '__lastTrace', { configurable: true, get: () => trace,
    set: (t) => { trace = t; if (t && t.image && !window.__imageAt) window.__imageAt = performance.now(); window.__onTrace?.(t); } });
  const seen = new MutationObserver(() => { if (document.querySelector('main[data-engine=ready], main[data-engine=running]')) {
    window.__readyAt = performance.now(); seen.disconnect(); } });
  seen.observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-engine'] }); }"""
LONGTASKS = """() => { window.__longTasks = []; try { new PerformanceObserver((l) => { for (const e of l.getEntries())
  window.__longTasks.push({ start: e.startTime, ms: e.duration }); }).observe({ type: 'longtask', buffered: true }); } catch (e) {} }"""


# One click on Generate, timed on the page's clock: the final image's arrival (by the Trace's own
# updates), and "settled": the worker done with the run (run-settled, after every preview and CLIP's
# scores: main[data-in-flight] goes, and the off-screen views catch up then), then the next animation
# frame (the views have painted). No polling: a Trace hook and a MutationObserver.
CLICK_TO_SETTLED = """() => new Promise((resolve) => {
  const before = window.__lastTrace?.runId ?? 0;
  let t0 = 0, imageMs = 0;
  window.__onTrace = (t) => {
    if (!t || t.runId <= before) return;
    if (t.image && !imageMs) imageMs = performance.now() - t0;
    if (imageMs && t.done) { window.__onTrace = null; whenLetGo(); }
  };
  const whenLetGo = () => { const m = document.querySelector('main');
    const end = () => requestAnimationFrame(() => resolve({ image_ms: imageMs, settled_ms: performance.now() - t0 }));
    if (!m?.hasAttribute('data-in-flight')) return end();
    const mo = new MutationObserver(() => { if (!m.hasAttribute('data-in-flight')) { mo.disconnect(); end(); } });
    mo.observe(m, { attributes: true, attributeFilter: ['data-in-flight'] }); };
  const go = () => { if (document.querySelector('main')?.dataset.engine !== 'ready') return setTimeout(go, 20);
    t0 = performance.now(); document.querySelector('[data-testid=generate]').click(); };
  go(); // once the engine is idle (a previous run's previews, CLIP or a view's side run may still be going)
})"""

# The plain loop through the same engine, once the worker is idle (a view's side runs may follow a run).
PLAIN_LOOP = """async (o) => { const t0 = performance.now();
  for (;;) { try { return { ...(await window.__engineBench(o)), waitedMs: performance.now() - t0 }; }
    catch (e) { if (!String(e).includes('already going on')) throw e; await new Promise((r) => setTimeout(r, 50)); } } }"""


def _median(xs: list) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def run_explainer(
    bundle_dir: Path,
    *,
    threads: int,
    steps: int = 25,
    repeats: int = 2,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    guidance: float = 3.0,
    timeout_s: float = 900,
    serve=None,
    dist: Path | None = None,
) -> dict:
    """The explainer page itself, every view on: open it cold, then warm; run the default-size request
    `repeats` times after a warm-up. Reports open → ready and → first finished image (cold and warm),
    per-step wall time as the page saw the steps arrive, and the main thread's long tasks during runs.

    Open → X twice: `*_s` from the command that opens the page (the browser's own work before the
    page's navigation starts included: a new tab's renderer process when cold), `*_nav_s` from the
    page's navigation start (the page's own clock, as web vitals count).

    Visits: cold (a fresh profile); warm (the page opened again in the same tab, like a reload: the
    bundle and Python's snapshot in the Cache API, and the renderer still holds the compiled
    WebAssembly); warm_fresh_python (the same, the snapshot deleted: that lever side by side);
    warm_new_tab (a new tab of the same profile, kept on disk as a reader's is: caches warm, compiled
    WebAssembly from Chrome's code cache where the service worker answered with its kept copies)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    server, base, _ = _start_server(Path(bundle_dir), serve, dist)
    query = urlencode({"provider": "wasm", "threads": threads, "prompt": prompt, "seed": seed, "scale": guidance, "steps": steps})
    out: dict = {"threads": threads, "steps": steps, "repeats": repeats, "prompt": prompt}
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="bench-profile-") as profile:
            # a profile on disk, as a reader's browser has: an incognito-like context keeps no compiled
            # code between tabs, so its "new tab" would measure a cost readers do not pay
            context = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900}
            )
            try:
                wire = {"bytes": 0}

                def count(request):  # the cold visit's bytes on the wire (response bodies as sent)
                    try:
                        wire["bytes"] += max(0, request.sizes()["responseBodySize"])
                    except PlaywrightError:
                        pass

                context.on("requestfinished", count)
                page = context.new_page()
                # an init script runs as a script: a function expression must be called (it was not, before
                # 2026-12-02, so the long-task counts of earlier reports were always 0)
                context.add_init_script(f"({LONGTASKS})()")
                context.add_init_script(f"({MILESTONES})()")
                for visit in ("cold", "warm", "warm_fresh_python", "warm_new_tab"):
                    if visit == "warm":  # everything the first visit fetched, until the reader comes back
                        context.remove_listener("requestfinished", count)
                        out["cold_wire_bytes"] = wire["bytes"]
                    if (
                        visit != "cold" and page.evaluate("() => window.__engineInfo.pythonSnapshot") == "fresh"
                    ):  # made once idle: let it land
                        wait_for_snapshot(page)
                    if visit == "warm_fresh_python":
                        page.evaluate(f"() => caches.delete('{SNAPSHOT_CACHE}')")
                    if visit == "warm_new_tab":
                        page.close()
                        page = context.new_page()
                    t0 = time.perf_counter()
                    page.goto(f"{base}?{query}")  # the URL's request runs by itself once the model is ready
                    page.wait_for_selector("main[data-engine=ready], main[data-engine=running]", timeout=timeout_s * 1000)
                    ready = time.perf_counter() - t0
                    page.wait_for_function("() => window.__lastTrace && window.__lastTrace.image", timeout=timeout_s * 1000)
                    first = time.perf_counter() - t0
                    page.wait_for_function("() => window.__imageAt", timeout=10_000)
                    info = page.evaluate(
                        "() => ({t: window.__engineInfo.timingsMs, s: window.__engineInfo.pythonSnapshot, "
                        "r: window.__readyAt, i: window.__imageAt, o: window.__engineInfo.ort ?? null, "
                        "u: window.__lastTrace.steps.map((s) => s.timingsMs.unet)})"
                    )
                    out[visit] = {
                        "ready_s": ready,
                        "first_image_s": first,
                        "python_snapshot": info["s"],
                        "ready_nav_s": info["r"] / 1000,
                        "first_image_nav_s": info["i"] / 1000,
                        "startup_ms": {
                            "python": info["t"]["pyodide"],
                            "runtime_zip": info["t"]["runtime"],
                            "bundle": info["t"]["bundle"],
                            "sessions": sum(info["t"]["sessions"].values()),
                            "worker_total": info["t"]["total"],
                        },
                        # where a first visit goes: the ORT worker's start and sessions, and the first run's
                        # UNet calls (slow until V8 has optimised onnxruntime's WebAssembly)
                        "ort": info["o"],
                        "first_run_unet_ms": [round(u, 1) for u in info["u"]],
                    }
                if out["warm_new_tab"].get("python_snapshot") == "fresh":  # a fresh visit's snapshot-maker: not during the runs
                    wait_for_snapshot(page)
                per_step, long_tasks, clicks, plain = [], [], [], []
                bench_options = {
                    "prompt": prompt,
                    "seed": seed,
                    "guidance": guidance,
                    "steps": steps,
                    "repeats": 0,
                    "scheduler": "",
                }
                for r in range(repeats + 1):
                    page.evaluate("() => { window.__longTasks = []; window.__stepAt = []; }")
                    click = page.evaluate(CLICK_TO_SETTLED)
                    tasks = page.evaluate("() => window.__longTasks")
                    # the plain loop (no views: no previews, no CLIP) for the same request, in this same visit
                    loop = page.evaluate(PLAIN_LOOP, bench_options)
                    if r:  # the first is a warm-up
                        per_step.append(click["image_ms"] / steps)
                        long_tasks += [t["ms"] for t in tasks]
                        clicks.append(click)
                        plain.append(loop["controller"][0]["jsWallMs"])
                out["page_ms_per_step_run"] = _median(per_step)
                out["click"] = {
                    "image_ms": _median([c["image_ms"] for c in clicks]),
                    "settled_ms": _median([c["settled_ms"] for c in clicks]),
                    "plain_loop_ms": _median(plain),
                    "runs": clicks,
                    "plain_runs_ms": plain,
                    "note": "click → final image and click → every view settled (previews decoded, CLIP scored, the worker "
                    "done with the run so off-screen views caught up, painted), "
                    "against the plain loop (no previews, no CLIP) for the same request, timed in the same visit",
                }
                out["click"]["image_ratio"] = out["click"]["image_ms"] / out["click"]["plain_loop_ms"]
                out["click"]["settled_ratio"] = out["click"]["settled_ms"] / out["click"]["plain_loop_ms"]
                out["long_tasks"] = {
                    "count": len(long_tasks),
                    "max_ms": max(long_tasks) if long_tasks else 0.0,
                    "note": "main-thread tasks over 50 ms during measured runs (PerformanceObserver 'longtask')",
                }
                out["browser"] = f"chromium {context.browser.version if context.browser else '?'}"
            finally:
                context.close()
    finally:
        server.shutdown()
        server.server_close()
    return out
