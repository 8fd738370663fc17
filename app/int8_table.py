"""The int8-compute table (issue 24): prompt adherence, final-image PSNR and native UNet timing of the
fp32 bundle, the small build with int8-stored weights (int8w-all UNet) and the small build with an
int8-computing UNet (int8c, export/quantize.py), written to bench/results/int8.json and int8.md.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m app.int8_table judge     # hours of one core
    .venv/bin/python -m app.int8_table timing                                # minutes
    .venv/bin/python -m app.int8_table wasm                                  # minutes, needs node + web/node_modules
    .venv/bin/python -m app.int8_table page                                  # the page vs native image, Chromium + web/dist
    .venv/bin/python -m app.int8_table sensitivity                           # output change for tiny input changes
    .venv/bin/python -m app.int8_table report                                # int8.md from int8.json

judge: each build is derived from bundles/default into --work (quality report over all of
export/quality.py's prompt × seed runs, 10 steps: PSNR per run), then judged by train/evaluate.py's
adherence (the evaluation judge, 48 held-out single-object prompts, native onnxruntime, 25 steps) at
each guidance with --seeds seeds per prompt. Every result is saved as soon as it is measured and a
later call skips what int8.json already holds (--redo measures again), so an interrupted run resumes.
onnxruntime runs pinned to --threads threads (the judge's own torch to OMP_NUM_THREADS).
timing: per-UNet-call ms of onnxruntime native at 1 and 2 threads, batch 2, bench/native.py's feeds;
the fp32 UNet as exported (dynamic sizes) and with fixed sizes (export/freeze.py, as the builds hold it).
wasm: per-call ms of each build's UNet and VAE decoder in onnxruntime-web's WASM in Node (bench/wasm_time.mjs),
1 thread; noisy, the page's own figures come from bench/page.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.native import call_times, unet_feeds

ROOT = Path(__file__).resolve().parent.parent
FP32 = ROOT / "bundles" / "default"
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bundles" / "int8-table"  # derived builds (bundles/ is not tracked)

# the small target before int8 compute (pinned here so the table can be made again after DEFAULTS change)
SMALL_INT8W = {
    "text_encoder": "int8w",
    "unet": "int8w-all",
    "vae_decoder": "fp16w",
    "clip_image": "int8w-all",
    "umap_project": "fp16w",
}
BUILDS = {
    "fp32": None,  # bundles/default itself
    "small-int8w": SMALL_INT8W,
    # int8 compute wherever it is faster in the page's WASM (UNet, VAE decoder, CLIP image tower)
    "small-int8c": {**SMALL_INT8W, "unet": "int8c", "vae_decoder": "int8c", "clip_image": "int8c"},
}
GUIDANCES = (3.0, 7.5)
SEEDS = 8
STEPS = 25  # train/evaluate.py adherence's default


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _save(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(data), encoding="utf-8")


def _update(path: Path, change) -> dict:
    """Apply change(data) to the file's current content and save it, under a lock: two runs (say, one
    judging fp32 and one int8c) may share one results file."""
    import fcntl
    import hashlib
    import tempfile

    lock_file = Path(tempfile.gettempdir()) / f"int8_table-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}.lock"
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _load(path)
        change(data)
        _save(data, path)
    return data


def _merge(data: dict, other: dict) -> None:
    """other's results into data (two levels deep: judge → build → guidance)."""
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            for b, per in v.items():
                data[k][b] = {**data[k][b], **per} if isinstance(per, dict) and isinstance(data[k].get(b), dict) else per
        else:
            data[k] = v


def _pin_threads(n: int) -> None:
    """runtime.native.images builds its NativeBackend without a thread count (onnxruntime then takes
    every core): pin it to n."""
    import runtime.native as rn

    base = rn.NativeBackend
    if getattr(base, "_pinned", None) == n:
        return

    class Pinned(getattr(base, "_base", base)):
        _pinned, _base = n, getattr(base, "_base", base)

        def __init__(self, bundle_dir, threads=None, providers=None):
            super().__init__(bundle_dir, threads=threads or n, providers=providers)

    rn.NativeBackend = Pinned


def uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def derive(name: str, work: Path, redo: bool = False) -> Path:
    """The build `name` of BUILDS in work/name (derived once; again when its recipe changed or with redo)."""
    from export.exporter import derive_bundle
    from export.quality import QUALITY_PROMPTS, QUALITY_SEEDS

    recipe = BUILDS[name]
    if recipe is None:
        return FP32
    out = work / name
    m = _load(out / "manifest.json")
    fresh = m and all(m["components"].get(c, {}).get("precision") == p for c, p in recipe.items() if c in m["components"])
    src = _load(FP32 / "manifest.json")
    if fresh and m.get("created") == src.get("created") and not redo:
        return out
    derive_bundle(FP32, out, precision=recipe, overwrite=True, quality=(len(QUALITY_PROMPTS) * len(QUALITY_SEEDS), 10))
    return out


def judge(builds, guidances, seeds: int, threads: int, work: Path, out: Path, redo: bool = False) -> dict:
    from train import evaluate

    _pin_threads(threads)
    _update(out, lambda d: d.update(recipes={b: BUILDS[b] or "fp32" for b in BUILDS}))
    for b in builds:
        folder = derive(b, work, redo=redo and b != "fp32")
        if b != "fp32":
            q = _load(folder / "manifest.json")["quality"]
            psnr = {"steps": q["image"]["steps"], "runs": q["image"]["runs"], **q["image"]["psnr_db_vs_fp32"]}
            comps = {
                c: {k: v for k, v in r.items() if k in ("precision", "bytes", "max_abs_error_vs_fp32", "max_abs_fp32")}
                for c, r in q["components"].items()
            }
            _update(out, lambda d, b=b, psnr=psnr, comps=comps: _merge(d, {"psnr": {b: psnr}, "components": {b: comps}}))
    for g in guidances:
        for b in builds:
            key = f"{g:g}"
            if not redo and key in _load(out).get("judge", {}).get(b, {}):
                continue
            folder = derive(b, work)
            load, t = uptime(), time.perf_counter()
            r = evaluate.adherence(folder, seeds=tuple(range(seeds)), guidance=g, steps=STEPS)
            r.update(seconds=round(time.perf_counter() - t, 1), load_at_start=load, onnxruntime_threads=threads)
            _update(out, lambda d, b=b, key=key, r=r: _merge(d, {"judge": {b: {key: r}}}))
            print(
                f"{b} guidance {g:g}: object {r['object_accuracy']:.4f} background {r['background_accuracy']:.4f} ({r['seconds']} s)",
                flush=True,
            )
    return _load(out)


def time_unet(path, model: dict, threads: int, calls: int = 60) -> dict:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    ts = call_times(s, unet_feeds(s, model), calls, warmup=5)
    return {"median_ms": round(statistics.median(ts), 2), "min_ms": round(min(ts), 2), "calls": calls}


def _fixed_fp32_unet(folder: Path) -> Path:
    """bundles/default's UNet with its sizes fixed (export/freeze.py), as every build holds its UNet."""
    import onnx

    from export.freeze import fixed_sizes, freeze_shapes
    from export.verify import random_feeds

    model = _load(FP32 / "manifest.json")["model"]
    facts = {k: model[k] for k in ("latent_size", "text_max_length", "text_hidden_size")}
    m = onnx.load(str(FP32 / "unet.onnx"))
    path = folder / "unet_fp32_fixed.onnx"
    onnx.save(freeze_shapes(m, fixed_sizes(m, random_feeds(facts, 1)["unet"])), str(path))
    return path


def timing(work: Path, out: Path, threads=(1, 2), rounds: int = 3, calls: int = 20) -> dict:
    """Per-UNet-call ms, natively, every build side by side in one run: one session per model and
    thread count, `rounds` rounds of `calls` calls, the models interleaved within each round."""
    import tempfile

    import onnxruntime as ort

    model = _load(FP32 / "manifest.json")["model"]
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "fp32 (as exported, dynamic sizes)": FP32 / "unet.onnx",
            "fp32 (fixed sizes)": _fixed_fp32_unet(Path(tmp)),
            **{f"{b} ({BUILDS[b]['unet']})": derive(b, work) / "unet.onnx" for b in BUILDS if BUILDS[b]},
        }
        load = uptime()
        rows = {k: {} for k in files}
        for n in threads:
            o = ort.SessionOptions()
            o.intra_op_num_threads, o.inter_op_num_threads = n, 1
            sessions = {k: ort.InferenceSession(str(p), o, providers=["CPUExecutionProvider"]) for k, p in files.items()}
            feeds = {k: unet_feeds(s, model) for k, s in sessions.items()}
            samples = {k: [] for k in files}
            for k, s in sessions.items():
                for _ in range(5):
                    s.run(None, feeds[k])
            for _ in range(rounds):
                for k, s in sessions.items():
                    for _ in range(calls):
                        t = time.perf_counter()
                        s.run(None, feeds[k])
                        samples[k].append((time.perf_counter() - t) * 1000)
            for k, ts in samples.items():
                rows[k][str(n)] = {"median_ms": round(statistics.median(ts), 2), "min_ms": round(min(ts), 2), "calls": len(ts)}
        load_end = uptime()
    timing = {
        "load_at_start": load,
        "load_at_end": load_end,
        "cpus": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "what": f"one batch-2 UNet call, onnxruntime native CPU; {rounds} interleaved rounds of {calls} calls after 5 warm-ups",
        "rows": rows,
    }
    return _update(out, lambda d: d.update(timing=timing))


def wasm(work: Path, out: Path, rounds: int = 3, calls: int = 15, threads: int = 1) -> dict:
    """Per-call ms in onnxruntime-web's WASM (Node, bench/wasm_time.mjs) of every build's UNet and VAE
    decoder, interleaved over `rounds` rounds; noisy (V8, a shared machine): minima say the most."""
    import subprocess
    import tempfile

    model = _load(FP32 / "manifest.json")["model"]
    h, w = model["latent_size"]
    unet_in = {
        "sample": ["float32", [2, model["latent_channels"], h, w]],
        "timestep": ["float32", []],
        "encoder_hidden_states": ["float32", [2, model["text_max_length"], model["text_hidden_size"]]],
    }
    vae_in = {"latent_sample": ["float32", [1, model["latent_channels"], h, w]]}
    with tempfile.TemporaryDirectory() as tmp:
        builds = {b: derive(b, work) for b in BUILDS if BUILDS[b]}
        files = {
            "UNet fp32 (fixed sizes)": (_fixed_fp32_unet(Path(tmp)), unet_in),
            **{f"UNet {b} ({BUILDS[b]['unet']})": (d / "unet.onnx", unet_in) for b, d in builds.items()},
            **{f"VAE decoder {b} ({BUILDS[b]['vae_decoder']})": (d / "vae_decoder.onnx", vae_in) for b, d in builds.items()},
        }
        load = uptime()
        samples = {k: [] for k in files}
        for _ in range(rounds):
            for k, (path, spec) in files.items():
                r = subprocess.run(
                    ["node", str(ROOT / "bench" / "wasm_time.mjs"), str(path), str(threads), str(calls), json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                samples[k] += json.loads(r.stdout.strip().splitlines()[-1])["ms"]
        load_end = uptime()
    rows = {
        k: {"min_ms": round(min(v), 1), "p25_ms": round(sorted(v)[len(v) // 4], 1), "median_ms": round(statistics.median(v), 1)}
        for k, v in samples.items()
    }
    result = {
        "load_at_start": load,
        "load_at_end": load_end,
        "threads": threads,
        "what": f"onnxruntime-web WASM in Node, {rounds} interleaved rounds of {calls} calls after 8 warm-ups each; noisy",
        "rows": rows,
    }
    return _update(out, lambda d: d.update(wasm=result))


def sensitivity(work: Path, out: Path) -> dict:
    """How far each build's UNet and VAE decoder output moves (max abs) when its input moves by a
    relative 1e-6 or 1e-5, or when onnxruntime runs the same file at another optimisation level
    (disabled vs all: the same maths in other fp32 kernels, as the page's WASM is). With int8
    activations the output is piecewise constant in its input: any flipped rounding re-draws the
    quantisation noise downstream, so two correct runtimes differ by about the int8 error itself."""
    import numpy as np
    import onnxruntime as ort

    from export.verify import random_feeds

    model = _load(FP32 / "manifest.json")["model"]
    facts = {k: model[k] for k in ("latent_size", "text_max_length", "text_hidden_size")}
    feeds = random_feeds(facts, 1000)
    rows = {}
    for b in (b for b in BUILDS if BUILDS[b]):
        folder = derive(b, work)
        for comp, first in (("unet", "sample"), ("vae_decoder", "latent_sample")):
            f = feeds[comp]
            levels = {}
            for name, level in (
                ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                ("disabled", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
            ):
                o = ort.SessionOptions()
                o.graph_optimization_level = level
                levels[name] = ort.InferenceSession(str(folder / f"{comp}.onnx"), o, providers=["CPUExecutionProvider"])
            ref = levels["all"].run(None, f)[0]
            row = {"precision": BUILDS[b][comp], "max_abs_output": round(float(np.abs(ref).max()), 4)}
            for eps in (1e-6, 1e-5):
                moved = levels["all"].run(None, {**f, first: f[first] * np.float32(1 + eps)})[0]
                row[f"input x (1+{eps:g})"] = round(float(np.abs(moved - ref).max()), 6)
            row["opt level disabled vs all"] = round(float(np.abs(levels["disabled"].run(None, f)[0] - ref).max()), 6)
            rows[f"{comp} {b}"] = row
    return _update(out, lambda d: d.update(sensitivity=rows))


PAGE_REQUESTS = (("a red apple on a blue background", 3), ("a cat at night", 7))  # tests/test_small_bundle.py's


def page(work: Path, out: Path, builds=("small-int8w", "small-int8c")) -> dict:
    """Each build's image in the page (Chromium, onnxruntime-web WASM, 2 threads) vs the native
    runtime's image of the same build: tests/test_small_bundle.py's requests (euler, 8 steps, 7.5)."""
    import math

    import numpy as np
    from playwright.sync_api import sync_playwright

    from app.serve import start_background
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, Page, native

    rows = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for b in builds:
            folder = derive(b, work)
            srv, url = start_background(folder, dist=ROOT / "web" / "dist")
            pg = Page(browser, url)
            try:
                pg.open("?provider=wasm&threads=2")
                for prompt, seed in PAGE_REQUESTS:
                    req = dict(seed=seed, guidance=7.5, steps=8, scheduler="euler")
                    got = pg.generate(prompt=prompt, negative="", **req)[..., :3].astype(int)
                    want = native(folder, prompt=prompt, negative_prompt="", **req)[0][..., :3].astype(int)
                    d = np.abs(got - want)
                    mse = float(np.mean(d.astype(float) ** 2))
                    rows.setdefault(b, []).append(
                        {
                            "prompt": prompt,
                            "seed": seed,
                            "max_abs": int(d.max()),
                            "psnr_db": 99.0 if mse == 0 else round(10 * math.log10(255**2 / mse), 2),
                            "share_over_2": round(float((d > 2).mean()), 4),
                        }
                    )
            finally:
                pg.close()
                srv.shutdown()
                srv.server_close()
        browser.close()
    return _update(out, lambda d: d.update(page_vs_native=rows))


def markdown(data: dict) -> str:
    lines = [
        "# int8 compute for the UNet (issue 24)",
        "",
        "Made by `app/int8_table.py` (see its docstring); numbers in int8.json.",
        "",
    ]
    rec = data.get("recipes") or {}
    if rec:
        lines += ["Builds (precision per component):", ""]
        lines += [
            f"- **{b}**: {r if isinstance(r, str) else ', '.join(f'{c} {p}' for c, p in r.items())}" for b, r in rec.items()
        ]
        lines.append("")
    t = data.get("timing")
    if t:
        ths = sorted({n for r in t["rows"].values() for n in r}, key=int)
        base = t["rows"].get("fp32 (fixed sizes)", {})
        lines += [
            f"## Native UNet call (onnxruntime {t['onnxruntime']}, {t['cpus']} CPUs; 1-, 5-, 15-minute load {t['load_at_start']} at the start, {t.get('load_at_end', '?')} at the end)",
            "",
            "| UNet | "
            + " | ".join(f"{n} thread{'s' * (n != '1')} ms (median / min)" for n in ths)
            + " | vs fp32 fixed, 1 thread |",
            "|---|" + "---:|" * (len(ths) + 1),
        ]
        for k, r in t["rows"].items():
            ratio = r["1"]["median_ms"] / base["1"]["median_ms"] if "1" in base and "1" in r else None
            lines.append(
                f"| {k} | "
                + " | ".join(f"{r[n]['median_ms']:.1f} / {r[n]['min_ms']:.1f}" for n in ths)
                + (f" | {ratio:.2f}× |" if ratio else " | |")
            )
        lines.append("")
    wt = data.get("wasm")
    if wt:
        lines += [
            f"## onnxruntime-web WASM in Node ({wt['threads']} thread, load {wt['load_at_start']} → {wt['load_at_end']}; noisy: minima say the most)",
            "",
            "| model | min ms | p25 ms | median ms |",
            "|---|---:|---:|---:|",
            *[f"| {k} | {r['min_ms']:.1f} | {r['p25_ms']:.1f} | {r['median_ms']:.1f} |" for k, r in wt["rows"].items()],
            "",
        ]
    j = data.get("judge")
    if j:
        lines += [
            "## Prompt adherence (train/evaluate.py's judge, native onnxruntime)",
            "",
            "| build | guidance | object accuracy | background accuracy | object pts vs fp32 | background pts vs fp32 | images |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for g in sorted({g for r in j.values() for g in r}, key=float):
            ref = j.get("fp32", {}).get(g)
            for b, per in j.items():
                r = per.get(g)
                if not r:
                    continue
                d = lambda k: f"{100 * (r[k] - ref[k]):+.2f}" if ref and b != "fp32" else ""  # noqa: B023, E731
                n = r["prompts"] * len(r["seeds"])
                lines.append(
                    f"| {b} | {g} | {r['object_accuracy']:.4f} | {r['background_accuracy']:.4f} | {d('object_accuracy')} | {d('background_accuracy')} | {n} |"
                )
        any_r = next(iter(next(iter(j.values())).values()))
        lines += [
            "",
            f"{any_r['prompts']} prompts × seeds {any_r['seeds']}, {any_r['steps']} steps; one point is {any_r['prompts'] * len(any_r['seeds']) / 100:.2f} images.",
            "",
        ]
    p = data.get("psnr")
    if p:
        lines += ["## Final-image PSNR vs fp32 (export/quality.py's runs)", ""]
        builds = list(p)
        runs = p[builds[0]]["runs"]
        lines += ["| prompt | seed | " + " | ".join(f"{b} dB" for b in builds) + " |", "|---|---:|" + "---:|" * len(builds)]
        for i, run in enumerate(runs):
            lines.append(
                f"| {run['prompt']} | {run['seed']} | " + " | ".join(f"{p[b]['runs'][i]['psnr_db']:.2f}" for b in builds) + " |"
            )
        lines.append("| **min** | | " + " | ".join(f"{p[b]['min']:.2f}" for b in builds) + " |")
        lines.append("| **mean** | | " + " | ".join(f"{p[b]['mean']:.2f}" for b in builds) + " |")
        lines += ["", f"{p[builds[0]]['steps']} steps, guidance 7.5, the bundle's default scheduler.", ""]
    sv = data.get("sensitivity")
    if sv:
        cols = [k for k in next(iter(sv.values())) if k not in ("precision",)]
        lines += [
            "## Output change (max abs) for a tiny input change or another onnxruntime optimisation level (native)",
            "",
            "| model | precision | " + " | ".join(cols) + " |",
            "|---|---|" + "---:|" * len(cols),
            *[f"| {k} | {r['precision']} | " + " | ".join(f"{r[c]:g}" for c in cols) + " |" for k, r in sv.items()],
            "",
        ]
    pv = data.get("page_vs_native")
    if pv:
        lines += [
            "## The page's image vs the native image of the same build (tests/test_small_bundle.py's requests, euler, 8 steps)",
            "",
            "| build | prompt | seed | max abs /255 | PSNR dB | share of values off by > 2 |",
            "|---|---|---:|---:|---:|---:|",
            *[
                f"| {b} | {r['prompt']} | {r['seed']} | {r['max_abs']} | {r['psnr_db']:.2f} | {r['share_over_2']:.4f} |"
                for b, rs in pv.items()
                for r in rs
            ],
            "",
        ]
    for note in data.get("notes", []):
        lines += [note, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.int8_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("judge", "timing", "wasm", "page", "sensitivity", "report"))
    ap.add_argument("--builds", default=",".join(BUILDS), help="comma-separated, of " + ", ".join(BUILDS))
    ap.add_argument("--guidance", default=",".join(f"{g:g}" for g in GUIDANCES))
    ap.add_argument("--seeds", type=int, default=SEEDS, help="seeds per held-out prompt (0 … N-1)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the judge's images")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=RESULTS / "int8.json")
    ap.add_argument("--redo", action="store_true", help="measure again what int8.json already holds")
    ap.add_argument("--merge", type=Path, action="append", default=[], help="report: merge this results file in first")
    a = ap.parse_args(argv)
    if a.what == "judge":
        builds = [b.strip() for b in a.builds.split(",") if b.strip()]
        judge(builds, [float(g) for g in a.guidance.split(",")], a.seeds, a.threads, a.work, a.out, a.redo)
    elif a.what == "timing":
        timing(a.work, a.out)
    elif a.what == "wasm":
        wasm(a.work, a.out)
    elif a.what == "page":
        page(a.work, a.out)
    elif a.what == "sensitivity":
        sensitivity(a.work, a.out)
    else:
        _update(a.out, lambda d: [_merge(d, _load(m)) for m in a.merge])
    print(a.out.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
