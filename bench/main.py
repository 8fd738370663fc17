"""`diffusion-explainer bench`: every runtime on the same bundle and prompt, timed the same way.

Why one command: numbers from different runs, machines or prompts do not compare. This runs the
native onnxruntime loop, the diffusers PyTorch pipeline and the page in headless Chromium back to
back, each in its own process (so peak memory is each one's own and no runtime warms another's
caches), next to this machine's matmul peak and the UNet's FLOP count, and writes JSON, markdown and
a chart.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = ROOT / "bundles" / "default"
MARK = "BENCH-RESULT "


class BenchError(Exception):
    """Bad input for the benchmark; the message is one line."""


def add_parser(sub, serve=None) -> None:
    """Register `bench` on the CLI's subparsers; serve: (build_web, start_background) for the page rows."""
    from runtime.trace import Request

    from .native import DEFAULT_PROMPT

    p = sub.add_parser("bench", help="time native onnxruntime, diffusers PyTorch and the page on one bundle and prompt")
    p.add_argument("bundle", nargs="?", default=str(DEFAULT_BUNDLE), help="bundle folder (default: bundles/default)")
    p.add_argument(
        "--checkpoint", help="diffusers folder for the PyTorch reference (default: the manifest's model.source, if it exists)"
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per runtime, after one warm-up run (medians are reported)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts, e.g. 1,2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=Request.default("guidance"))
    p.add_argument("--no-browser", action="store_true", help="skip the page in headless Chromium")
    p.add_argument("--no-torch", action="store_true", help="skip the diffusers PyTorch reference")
    p.add_argument("--webgpu", action="store_true", help="also run the page on WebGPU even if the only adapter is a software one")
    p.add_argument("--peak-seconds", type=float, default=3.0, help="time spent per library measuring the matmul peak")
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n×n fp32 matmuls that measure the peak")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per runtime")
    p.add_argument("--out", default="bench-results", help="folder for results.json, results.md, results.png")
    p.set_defaults(fn=main, serve=serve)


def _threads(text: str) -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"--threads must be comma-separated whole numbers, e.g. 1,2 (got {text!r})") from None
    if not vals or any(v < 1 or v > 256 for v in vals):
        raise BenchError(f"--threads must list thread counts from 1 to 256 (got {text!r})")
    return sorted(set(vals))


def _check(a) -> tuple[dict, list[int], str | None, list[str]]:
    """Validate the arguments; returns the manifest, thread counts, checkpoint (or None) and notes."""
    from runtime.bundle import Bundle, BundleError
    from runtime.trace import MAX_STEPS, MIN_STEPS

    if not MIN_STEPS <= a.steps <= MAX_STEPS:
        raise BenchError(f"--steps must be from {MIN_STEPS} to {MAX_STEPS}")
    if not 1 <= a.repeats <= 100:
        raise BenchError("--repeats must be from 1 to 100")
    if not 64 <= a.peak_size <= 16384 or not a.peak_seconds > 0:
        raise BenchError("--peak-size must be from 64 to 16384 and --peak-seconds positive")
    threads = _threads(a.threads)
    try:
        manifest = Bundle.from_dir(a.bundle, verify=True).manifest
    except BundleError as e:
        raise BenchError(str(e)) from None
    notes = []
    checkpoint = None
    if a.checkpoint:
        if not (Path(a.checkpoint) / "model_index.json").is_file():
            raise BenchError(f"--checkpoint {a.checkpoint} is not a diffusers pipeline folder (no model_index.json)")
        checkpoint = str(a.checkpoint)
    else:
        src = manifest["model"].get("source")
        if src and (Path(src) / "model_index.json").is_file():
            checkpoint = str(src)
        else:
            notes.append(
                f"no PyTorch reference and no torch FLOP count: the bundle's source {src!r} is not a diffusers folder here (pass --checkpoint)"
            )
    if a.no_torch and checkpoint:
        notes.append("PyTorch reference skipped (--no-torch)")
    return manifest, threads, checkpoint, notes


def run_isolated(target: str, kwargs: dict, *, threads: int, timeout: float) -> dict:
    """Call `module:function(**kwargs)` in a fresh Python process with `threads` set for every
    thread pool (OpenMP, MKL, OpenBLAS); returns its dict, or {"error": one line}.

    Why a process each: peak RSS (ru_maxrss) then belongs to that runtime alone, and a runtime's
    thread pools, allocator and caches cannot help or hurt the next one.
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, "-c", "import bench.main as m; m._child()", target, json.dumps(kwargs)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    return {"error": (tail[-1] if tail else f"exit status {p.returncode}")[:300]}


def _child() -> None:
    import importlib
    import traceback

    target, kwargs = sys.argv[1], json.loads(sys.argv[2])
    mod, fn = target.split(":")
    try:
        result = getattr(importlib.import_module(mod), fn)(**kwargs)
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    from .native import peak_rss_mb

    if isinstance(result, dict):
        result.setdefault("process_peak_rss_mb", peak_rss_mb())
    sys.stdout.write("\n" + MARK + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def _page_run(bundle: str, *, threads: int, provider: str, a) -> dict:
    """The page in headless Chromium through bench.page.run_page, normalised to the native runs' keys."""
    from . import page

    raw = page.run_page(
        Path(bundle),
        threads=threads,
        provider=provider,
        steps=a.steps,
        repeats=a.repeats,
        prompt=a.prompt,
        seed=a.seed,
        guidance=a.guidance,
        timeout_s=a.timeout,
        serve=a.serve,
    )
    return normalize_page(raw, threads=threads, provider=provider, steps=a.steps, repeats=a.repeats)


def _first(d: dict, *keys):
    for k in keys:
        cur = d
        for part in k.split("."):
            if not isinstance(cur, dict) or part not in cur:
                cur = None
                break
            cur = cur[part]
        if cur is not None:
            return cur
    return None


def normalize_page(raw: dict, *, threads: int, provider: str, steps: int, repeats: int) -> dict:
    """Map bench.page's result (the page's window.__dxBench, see web/src/bench/bench.ts) onto the keys of
    the native runs; the original stays under `page`. Lookups are tolerant: a missing key gives None."""
    if not isinstance(raw, dict):
        return {
            "runtime": "page",
            "label": f"page {provider}",
            "threads": threads,
            "error": f"bench.page returned {type(raw).__name__}, not a dict",
        }
    if raw.get("error") or raw.get("ok") is False:
        return {
            "runtime": "page",
            "label": f"page {provider}",
            "threads": threads,
            "error": str(raw.get("error") or "failed")[:300],
            "page": raw,
        }
    ctrl = raw.get("controller_ms") or {}
    engine = raw.get("engine") or {}
    measured = [s for s in ((raw.get("samples") or {}).get("controller") or []) if not s.get("warmup")]
    ops_runs = [s.get("timings_ms", {}).get("ops") for s in measured]
    from .native import median

    wasm = _first(raw, "memory.wasm_bytes.total")
    prov = engine.get("provider") or provider
    label = f"page {prov.upper() if prov == 'wasm' else 'WebGPU' if prov == 'webgpu' else prov}"
    if prov == "webgpu" and engine.get("adapter_software"):
        label += " (software adapter)"
    return {
        "runtime": "page",
        "label": label,
        "backend": engine.get("backend") or prov,
        "provider": prov,
        "threads": engine.get("threads") or threads,
        "steps": raw.get("steps_per_run") or steps,
        "unet_calls_per_run": (raw.get("calls_per_run") or {}).get("unet")
        or raw.get("timesteps_per_run")
        or raw.get("steps_per_run"),
        "repeats": raw.get("measured_runs") or repeats,
        "startup_ms": _first(raw, "startup_ms.ready"),
        "components_ms": {
            "text_encoder": ctrl.get("text_encoder"),
            "unet_step": ctrl.get("unet_step"),
            "ops": median(ops_runs),
            "ops_per_step": ctrl.get("ops_step"),
            "vae_decode": ctrl.get("vae_decode"),
        },
        "end_to_end_ms": ctrl.get("generate_total"),
        "unet_raw_ms": _first(raw, "raw_ms.unet_step"),
        # per step through the controller, the explainer's views off (plain loop) and on (budgeted previews)
        "views_ms": raw.get("views_ms"),
        "downloaded_bytes": _first(raw, "page_bytes.total"),
        # the same first visit's bodies decoded (the page's Resource Timing: page and worker)
        "downloaded_decoded_bytes": sum(((raw.get("page_resources") or {}).get("decoded") or {}).values()) or None,
        "first_image_ms": raw.get("first_image_ms"),
        "memory": {
            "peak_rss_mb": wasm / 1e6 if wasm else None,
            "what": "WebAssembly memories of the engine worker (they never shrink: their peak); not the browser's RSS",
            "user_agent_specific_mb": (raw.get("memory") or {}).get("user_agent_specific_bytes")
            and raw["memory"]["user_agent_specific_bytes"] / 1e6,
        },
        "page": {k: v for k, v in raw.items() if k != "samples"},
        "samples_ms": raw.get("samples"),
    }


def main(a) -> int:
    """Run the benchmark for parsed arguments `a` (see add_parser); returns the exit status."""
    from rich.console import Console

    from . import report
    from .flops import count_all

    console = Console(stderr=True)
    try:
        manifest, threads, checkpoint, notes = _check(a)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cores = os.cpu_count()
    if load_start is not None and load_start > 0.5:
        notes.append(
            f"the machine was busy (1-minute load average {load_start:.2f} on {cores} cores at the start): "
            "timings are noisy, and the matmul peak is what was available, not the hardware's"
        )
    m = manifest["model"]
    result = {
        "meta": {
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "bundle": str(a.bundle),
            "bundle_name": manifest.get("name"),
            "checkpoint": checkpoint,
            "model": {k: m.get(k) for k in ("architecture", "image_size", "latent_size", "text_hidden_size")},
            "prompt": a.prompt,
            "steps": a.steps,
            "repeats": a.repeats,
            "warmup": 1,
            "seed": a.seed,
            "guidance": a.guidance,
            "threads": threads,
            "cpu": _cpu_name(),
            "cores": cores,
            "python": platform.python_version(),
            "load_average_start": load_start,
            "notes": notes,
        },
        "flops": {},
        "peak": {},
        "runs": [],
    }
    to = a.timeout

    def step(title, fn):
        t = time.perf_counter()
        with console.status(title):
            r = fn()
        state = f"[red]error: {r['error']}[/]" if isinstance(r, dict) and r.get("error") else "[green]done[/]"
        console.print(f"{title}: {state} ({time.perf_counter() - t:.0f} s)")
        return r

    # in this process: counting runs nothing that is timed, and it saves a process start (torch's import)
    flops = step("counting FLOPs", lambda: _safe(lambda: count_all(a.bundle, None if a.no_torch else checkpoint), "flops", None))
    result["flops"] = flops
    if flops.get("error"):
        notes.append(f"FLOP count failed: {flops['error']}")
    for n in flops.get("notes", []):
        notes.append(n)
    for t in threads:
        result["peak"][str(t)] = step(
            f"matmul peak, {t} thread(s)",
            lambda t=t: run_isolated(
                "bench.flops:matmul_peak", {"threads": t, "n": a.peak_size, "seconds": a.peak_seconds}, threads=t, timeout=to
            ),
        )
    common = {"steps": a.steps, "repeats": a.repeats, "prompt": a.prompt, "seed": a.seed, "guidance": a.guidance}
    for t in threads:
        r = step(
            f"native onnxruntime, {t} thread(s)",
            lambda t=t: run_isolated(
                "bench.native:bench_native", {"bundle_dir": str(a.bundle), "threads": t, **common}, threads=t, timeout=to
            ),
        )
        result["runs"].append(_tag(r, "native", "onnxruntime native (our loop)", t))
    if checkpoint and not a.no_torch:
        for t in threads:
            r = step(
                f"diffusers PyTorch, {t} thread(s)",
                lambda t=t: run_isolated(
                    "bench.reference:bench_reference",
                    {"checkpoint": checkpoint, "threads": t, "image_size": m.get("image_size"), **common},
                    threads=t,
                    timeout=to,
                ),
            )
            result["runs"].append(_tag(r, "torch", "diffusers PyTorch", t))
    if not a.no_browser:
        _browser_runs(a, threads, result, step)
    if hasattr(os, "getloadavg"):
        result["meta"]["load_average_end"] = os.getloadavg()[0]
    report.derive(result)
    _fairness_notes(result)
    paths = report.write_all(result, a.out)
    report.print_table(result)
    print(f"written: {paths['json']}, {paths['markdown']}, {paths['chart']}")
    return 0


def _fairness_notes(result: dict) -> None:
    """Say when rows are not comparable: unequal CPU priority, or a run that beat the measured peak."""
    notes = result["meta"]["notes"]
    nice = os.nice(0) if hasattr(os, "nice") else 0
    result["meta"]["nice"] = nice
    ok = [r for r in result["runs"] if not r.get("error")]
    if nice > 0 and any(r["runtime"] == "page" for r in ok):
        notes.append(
            f"this benchmark ran at nice {nice} and so did its native and PyTorch processes, but Chromium sets its own "
            "process priorities (its renderer and GPU processes run at nice ≤ 0 when it may), so on a busy machine "
            "the page rows got more CPU than the others: compare runtimes only on an idle machine"
        )
    over = [
        f"{r.get('label')} ({r.get('threads')} thr)" for r in ok if (r.get("achieved") or {}).get("unet_fraction_of_peak", 0) > 1
    ]
    if over:
        notes.append(
            "above 100% of peak: " + ", ".join(over) + " — the matmul peak was measured while the machine was busier "
            "(or the process less favoured) than during that run; the fraction is then no bound"
        )


def _browser_runs(a, threads, result, step) -> None:
    notes = result["meta"]["notes"]
    try:
        from . import page  # noqa: F401 - written alongside; optional
    except ImportError as e:
        notes.append(f"page not benchmarked: bench.page is not available ({e})")
        return
    for t in threads:
        result["runs"].append(
            step(
                f"page in Chromium, WASM, {t} thread(s)",
                lambda t=t: _safe(lambda: _page_run(a.bundle, threads=t, provider="wasm", a=a), "page", t),
            )
        )
    from . import page as page_mod

    explainer = []
    for t in threads:
        explainer.append(
            step(
                f"explainer page, all views, WASM {t} thread(s)",
                lambda t=t: _safe(
                    lambda: page_mod.run_explainer(
                        Path(a.bundle),
                        threads=t,
                        steps=a.steps,
                        repeats=a.repeats,
                        prompt=a.prompt,
                        seed=a.seed,
                        guidance=a.guidance,
                        timeout_s=a.timeout,
                        serve=a.serve,
                    ),
                    "explainer",
                    t,
                ),
            )
        )
    result["explainer"] = explainer
    notes.append(
        "page rows: startup is a first visit (fresh browser context, empty Cache API) until the engine is ready; "
        "peak memory is the engine worker's WebAssembly memory (it never shrinks, so it is its peak), not the "
        "browser's RSS; download is the body bytes of every request (runtime assets and bundle)"
    )
    # WebGPU: a real adapter when one exists; the software (SwiftShader) adapter only with --webgpu
    try:
        adapter = webgpu_adapter()
    except Exception as e:  # noqa: BLE001 - no browser: no adapter
        adapter = None
        notes.append(f"WebGPU adapter probe failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    result["meta"]["webgpu_adapter"] = adapter
    has_real = bool(adapter) and not adapter["software"]
    if has_real or a.webgpu:
        r = step(
            "page in Chromium, WebGPU",
            lambda: _safe(lambda: _page_run(a.bundle, threads=max(threads), provider="webgpu", a=a), "page", max(threads)),
        )
        result["runs"].append(r)
        notes.append(
            "WebGPU row: no fraction of peak (the CPU's matmul peak is no ceiling for a GPU)"
            + ("; it ran on the software (SwiftShader) adapter, which says nothing about GPU speed" if not has_real else "")
        )
    else:
        notes.append("page on WebGPU not benchmarked: no hardware WebGPU adapter here (--webgpu runs it on the software adapter)")


WEBGPU_PROBE = """async () => {
  if (!navigator.gpu) return null;
  const a = await navigator.gpu.requestAdapter();
  if (!a) return null;
  const i = a.info || {};
  return {vendor: i.vendor || '', architecture: i.architecture || '', device: i.device || '', description: i.description || '',
          fallback: a.isFallbackAdapter ?? i.isFallbackAdapter ?? null};
}"""


def webgpu_adapter() -> dict | None:
    """Ask headless Chromium (flags as bench.page uses them) which WebGPU adapter it offers; None if none.

    `software` is True for SwiftShader / a fallback adapter: what a GPU-less machine offers, ~170× slower
    than WASM (RECIPES), so the page is only benchmarked on it when asked (--webgpu).
    """
    from playwright.sync_api import sync_playwright

    from . import page as page_mod

    args = list(getattr(page_mod, "CHROMIUM_ARGS", ["--headless", "--no-sandbox"])) + ["--enable-unsafe-webgpu"]
    exe = str(getattr(page_mod, "CHROMIUM", "/usr/bin/chromium"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=args)
        try:
            pg = browser.new_page()
            # a secure origin (navigator.gpu needs one) without a server: Playwright answers the request
            pg.route(
                "http://localhost/webgpu-probe",
                lambda r: r.fulfill(status=200, content_type="text/html", body="<!doctype html><title>probe</title>"),
            )
            pg.goto("http://localhost/webgpu-probe")
            info = pg.evaluate(WEBGPU_PROBE)
        finally:
            browser.close()
    if info:
        info["software"] = (
            bool(info.get("fallback")) or "swiftshader" in (info.get("architecture", "") + info.get("description", "")).lower()
        )
    return info


def _safe(fn, runtime, threads) -> dict:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one runtime failing must not lose the others' numbers
        return {
            "runtime": runtime,
            "label": runtime,
            "threads": threads,
            "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
        }


def _tag(r: dict, runtime: str, label: str, threads: int) -> dict:
    r.setdefault("runtime", runtime)
    r.setdefault("label", label)
    r.setdefault("threads", threads)
    return r


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
