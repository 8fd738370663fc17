"""Turn a benchmark result into what people read: results.json, results.md, results.png and a terminal table.

Why three forms: JSON keeps every sample for later analysis, the markdown table goes into READMEs and
issues, and the chart shows at a glance where each runtime spends its time and how far it is from
this machine's matrix-multiply peak.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COMPONENTS = (("text_encoder", "text encoder"), ("unet_step", "UNet step"), ("ops", "op graphs"), ("vae_decode", "VAE decode"))


def _first_visit_lines(starts: list) -> list[str]:
    """Where a first visit goes beyond Python: the ORT worker's start, each session it made before
    Python asked, and the first run's UNet calls (slow until V8 has optimised ORT's WebAssembly)."""
    lines = []
    for r in starts:
        v = r.get("cold") or {}
        o, u = v.get("ort"), v.get("first_run_unet_ms")
        if not u:
            continue
        tail = sorted(u[-10:])[len(u[-10:]) // 2]
        text = f"- cold, {r['threads']} thread(s): "
        if o and o.get("worker") == "own" and o.get("startMs"):
            made = ", ".join(f"{k} {ms:.0f}" for k, ms in sorted(o.get("madeMs", {}).items(), key=lambda kv: -kv[1]))
            text += f"the ORT worker started in {o['startMs']:.0f} ms and made the sessions in {sum(o.get('madeMs', {}).values()):.0f} ms ({made}); "
        text += (
            f"the first run's UNet calls took {', '.join(f'{x:.0f}' for x in u[:5])} … ms "
            f"(median of its last 10: {tail:.0f} ms), {sum(u):.0f} ms in all"
        )
        lines.append(text)
    return ["", *lines] if lines else []


def derive(result: dict) -> dict:
    """Add achieved FLOP/s and fraction of peak to every run (in place); returns result."""
    flops = result.get("flops", {})
    unet = flops.get("unet_per_step")
    comp = flops.get("onnx", {})
    peaks = result.get("peak", {})
    for run in result.get("runs", []):
        if run.get("error"):
            continue
        steps = run.get("unet_calls_per_run") or run.get("steps") or result["meta"]["steps"]
        c = run.get("components_ms", {})
        peak = (peaks.get(str(run.get("threads"))) or {}).get("peak")
        d = {}
        if unet and c.get("unet_step"):
            d["unet_flop_per_s"] = unet / (c["unet_step"] / 1000)
        if unet and run.get("unet_raw_ms"):
            d["unet_raw_flop_per_s"] = unet / (run["unet_raw_ms"] / 1000)
        total = None
        if unet and all(comp.get(k, {}).get("total") for k in ("text_encoder", "vae_decoder")):
            total = comp["text_encoder"]["total"] + steps * unet + comp["vae_decoder"]["total"]
        if total and run.get("end_to_end_ms"):
            d["end_to_end_flop_per_s"] = total / (run["end_to_end_ms"] / 1000)
        if peak and run.get("provider") != "webgpu":  # a CPU matmul peak is no ceiling for a GPU
            for k in list(d):
                d[k.replace("flop_per_s", "fraction_of_peak")] = d[k] / peak
        run["achieved"] = d
    return result


def two_clocks(visit: dict, key: str) -> str:
    """From navigation start, and (in brackets) from the command that opened the page."""
    nav = visit.get(f"{key}_nav_s")
    return f"{visit[f'{key}_s']:.2f}" if nav is None else f"{nav:.2f} ({visit[f'{key}_s']:.2f})"


def _fmt(v, unit="", digits=1):
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 1000 and unit == "ms":
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """The rows shared by the markdown and terminal tables."""
    head = [
        "runtime",
        "threads",
        "startup s",
        "text enc ms",
        "UNet step ms",
        "UNet bare ms",
        "op graphs ms",
        "VAE ms",
        "end to end ms",
        "peak RSS MB",
        "download MB",
        "UNet GFLOP/s",
        "of peak",
    ]
    rows = []
    for run in result.get("runs", []):
        if run.get("error"):
            rows.append(
                [run.get("label", run.get("runtime", "?")), str(run.get("threads", "")), f"error: {run['error'][:60]}"]
                + [""] * (len(head) - 3)
            )
            continue
        c = run.get("components_ms", {})
        a = run.get("achieved", {})
        mem = run.get("memory", {}).get("peak_rss_mb")
        dl = run.get("downloaded_bytes")
        rows.append(
            [
                run.get("label", run["runtime"]),
                str(run.get("threads", "")),
                _fmt(run["startup_ms"] / 1000 if run.get("startup_ms") is not None else None, digits=2),
                _fmt(c.get("text_encoder"), "ms"),
                _fmt(c.get("unet_step"), "ms"),
                _fmt(run.get("unet_raw_ms"), "ms"),
                _fmt(c.get("ops"), "ms"),
                _fmt(c.get("vae_decode"), "ms"),
                _fmt(run.get("end_to_end_ms"), "ms", 0),
                _fmt(mem, digits=0),
                _fmt(dl / 1e6 if dl is not None else None),
                _fmt(a["unet_flop_per_s"] / 1e9 if "unet_flop_per_s" in a else None),
                f"{100 * a['unet_fraction_of_peak']:.0f}%" if "unet_fraction_of_peak" in a else "–",
            ]
        )
    return head, rows


def markdown(result: dict) -> str:
    m = result["meta"]
    head, rows = table_rows(result)
    out = [
        f"# Benchmark — {m.get('bundle_name') or m['bundle']}",
        "",
        f"{m['date']} · {m.get('cpu', '?')} · {m.get('cores', '?')} cores · prompt “{m['prompt']}” · "
        f"{m['steps']} steps · guidance {m['guidance']} · medians of {m['repeats']} runs after {m.get('warmup', 1)} warm-up",
        "",
    ]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out.append("")
    for run in result.get("runs", []):
        if run.get("downloaded_bytes") and run.get("downloaded_decoded_bytes"):
            fi = run.get("first_image_ms")
            out.append(
                f"- {run.get('label')}, {run.get('threads')} thread(s): a first visit transferred "
                f"{run['downloaded_bytes'] / 1e6:.1f} MB on the wire, {run['downloaded_decoded_bytes'] / 1e6:.1f} MB decompressed"
                + (f"; first image (ready + the warm-up generation) after {fi / 1000:.2f} s" if fi else "")
            )
    out.append("")
    out.append(
        "Text encoder: one run's text encoding (ONNX: one batch-2 call; diffusers: two batch-1 calls). "
        "UNet step: one batch-2 call (classifier-free guidance), median over all steps; UNet bare: the model alone, "
        "outside the loop. Op graphs: one run's guidance, scheduler and image-conversion work (for diffusers: "
        "everything outside the three models)."
    )
    views = [(r.get("label"), r.get("threads"), r.get("views_ms")) for r in result.get("runs", []) if r.get("views_ms")]
    if views:
        out += [
            "",
            "## The explainer's cost (page, per step through the controller)",
            "",
            "| runtime | threads | views off ms/step | views on ms/step | on / off | run wall off ms | run wall on ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, threads, v in views:
            out.append(
                f"| {label} | {threads} | {_fmt(v.get('step_off'))} | {_fmt(v.get('step_on'))} | "
                f"{_fmt(v.get('ratio'), digits=2)} | {_fmt(v.get('wall_off'), digits=0)} | {_fmt(v.get('wall_on'), digits=0)} |"
            )
        out.append(
            "Views on: the explainer's run (every step's tensors to the page, predicted images decoded within the "
            "runtime's preview budget, the rest after run-done); off: the plain loop (UNet + guidance + scheduler)."
        )
    ex = [r for r in result.get("explainer", []) if isinstance(r, dict) and "cold" in r]
    if ex:
        out += [
            "",
            "## The explainer page (every view on, the URL's request)",
            "",
            "Seconds from the page's navigation start (its own clock, as web vitals count); in brackets, from the command "
            "that opened it (the browser's work before navigation starts included, e.g. a new tab's renderer process).",
            "",
            "| threads | cold: ready s | cold: first image s | warm: ready s | warm: first image s | ms per step (whole run) | long tasks > 50 ms | longest ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in ex:
            lt = r.get("long_tasks", {})
            out.append(
                f"| {r['threads']} | {two_clocks(r['cold'], 'ready')} | {two_clocks(r['cold'], 'first_image')} | {two_clocks(r['warm'], 'ready')} | "
                f"{two_clocks(r['warm'], 'first_image')} | {_fmt(r.get('page_ms_per_step_run'))} | {lt.get('count', '–')} | {_fmt(lt.get('max_ms'))} |"
            )
        for r in ex:
            if r.get("cold_wire_bytes"):
                out.append(
                    f"- {r['threads']} thread(s): the first visit (page, Python and its shipped snapshot, ORT, the bundle) "
                    f"transferred {r['cold_wire_bytes'] / 1e6:.1f} MB on the wire"
                )
        clicks = [r for r in ex if "click" in r]
        if clicks:
            out += [
                "",
                "What a click costs the reader (warm page, every view on; medians): click → final image and click → every view "
                "settled (previews decoded, CLIP scored, the worker done with the run, off-screen views caught up, painted), against the plain loop (no previews, no CLIP) for the same "
                "request, timed in the same visit, interleaved with the clicks.",
                "",
                "| threads | plain loop ms | click → image ms | × plain | click → settled ms | × plain |",
                "|---:|---:|---:|---:|---:|---:|",
            ]
            for r in clicks:
                c = r["click"]
                out.append(
                    f"| {r['threads']} | {c['plain_loop_ms']:.0f} | {c['image_ms']:.0f} | {c['image_ratio']:.2f} | "
                    f"{c['settled_ms']:.0f} | {c['settled_ratio']:.2f} |"
                )
        starts = [r for r in ex if "startup_ms" in r.get("warm", {})]
        if starts:
            out += [
                "",
                "Where start-up goes (the worker's own clock, ms), per visit: warm opens the page again in the same tab "
                "(like a reload: the bundle and Python's memory snapshot in the Cache API, the compiled WebAssembly still in "
                "the renderer); warm, fresh Python has the snapshot deleted (the lever side by side); warm, new tab opens it "
                "in a new tab of the same profile, kept on disk (caches warm; compiled WebAssembly from Chrome's code cache "
                "where the service worker answered with its kept copy).",
                "",
                "| threads | visit | Python | runtime.zip | bundle | ORT sessions | worker ready | page ready s | first image s |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in starts:
                for visit, label in (
                    ("cold", "cold"),
                    ("warm", "warm (snapshot)"),
                    ("warm_fresh_python", "warm, fresh Python"),
                    ("warm_new_tab", "warm, new tab"),
                ):
                    v = r.get(visit)
                    if v and "startup_ms" in v:
                        m = v["startup_ms"]
                        out.append(
                            f"| {r['threads']} | {label} | {m['python']:.0f} | {m['runtime_zip']:.0f} | {m['bundle']:.0f} | "
                            f"{m['sessions']:.0f} | {m['worker_total']:.0f} | {two_clocks(v, 'ready')} | {two_clocks(v, 'first_image')} |"
                        )
            out += _first_visit_lines(starts)
    f = result.get("flops", {})
    if f:
        out += ["", "## Arithmetic", ""]
        onnx_u, torch_u = f.get("unet_onnx"), f.get("unet_torch")
        if onnx_u:
            out.append(
                f"- UNet, one step (batch 2): **{onnx_u / 1e9:.3f} GFLOP** counted from the ONNX graph (Conv/MatMul/Gemm)"
                + (
                    f", **{torch_u / 1e9:.3f} GFLOP** by torch FlopCounterMode on the diffusers UNet "
                    f"(ratio {onnx_u / torch_u:.4f})"
                    if torch_u
                    else ""
                )
            )
        elif torch_u:
            out.append(
                f"- UNet, one step (batch 2): **{torch_u / 1e9:.3f} GFLOP** by torch FlopCounterMode on the diffusers UNet "
                "(the ONNX graph's count was incomplete, see notes)"
            )
        for k, name in (("text_encoder", "text encoder (batch 2)"), ("vae_decoder", "VAE decode")):
            t = f.get("onnx", {}).get(k, {}).get("total")
            if t:
                out.append(f"- {name}: {t / 1e9:.3f} GFLOP (ONNX graph)")
    peaks = result.get("peak", {})
    if peaks:
        out += ["", "## Matrix-multiply peak of this machine (fp32, best of repeated products)", ""]
        for t, p in sorted(peaks.items()):
            if p.get("error"):
                out.append(f"- {t} thread(s): error: {p['error']}")
                continue
            libs = ", ".join(f"{lib} {p[lib] / 1e9:.1f}" for lib in ("torch", "numpy", "onnxruntime") if p.get(lib))
            out.append(f"- {t} thread(s), {p['n']}×{p['n']}: **{p['peak'] / 1e9:.1f} GFLOP/s** ({libs})")
            if p.get("onnxruntime_web_wasm") and p.get("onnxruntime"):
                w = p["onnxruntime_web_wasm"]
                out.append(
                    f"  - onnxruntime-web's WASM build, same product: {w / 1e9:.1f} GFLOP/s, native onnxruntime / WASM "
                    f"**{p['onnxruntime'] / w:.1f}×** (128-bit SIMD without fused multiply-add vs native AVX2/AVX-512 FMA): "
                    "the ceiling on how close the page's GEMM-bound UNet can come to native"
                )
            elif p.get("onnxruntime_web_wasm_error"):
                out.append(f"  - onnxruntime-web's WASM build: not measured ({p['onnxruntime_web_wasm_error']})")
    notes = m.get("notes") or []
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def chart(result: dict, path: Path) -> None:
    """Two panels: where each runtime's end-to-end time goes, and UNet FLOP/s against the machine's peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result.get("runs", []) if not r.get("error") and r.get("end_to_end_ms")]
    labels = [f"{r.get('label', r['runtime'])}\n{r.get('threads')} thr" for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 1.2 + 0.6 * max(3, len(runs))), constrained_layout=True)
    colors = {"text encoder": "#4c78a8", "UNet": "#f58518", "op graphs": "#54a24b", "VAE decode": "#b279a2", "other": "#bab0ac"}
    left = [0.0] * len(runs)
    for name in colors:
        vals = []
        for r in runs:
            c = r.get("components_ms", {})
            steps = r.get("unet_calls_per_run") or r.get("steps") or result["meta"]["steps"]
            parts = {
                "text encoder": c.get("text_encoder") or 0,
                "UNet": (c.get("unet_step") or 0) * steps,
                "op graphs": c.get("ops") or 0,
                "VAE decode": c.get("vae_decode") or 0,
            }
            parts["other"] = max(0.0, r["end_to_end_ms"] - sum(parts.values()))
            vals.append(parts[name] / 1000)
        ax1.barh(labels, vals, left=left, color=colors[name], label=name)
        left = [a + b for a, b in zip(left, vals)]
    ax1.set_xlabel("seconds (medians; UNet = calls per run × median call)")
    ax1.set_title(f"End to end, {result['meta']['steps']} steps")
    ax1.invert_yaxis()
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / max(3, len(runs))), ncol=5, fontsize=8, frameon=False)

    ach = [(r.get("achieved", {}).get("unet_flop_per_s") or 0) / 1e9 for r in runs]
    bars = ax2.barh(labels, ach, color="#f58518")
    for bar, r in zip(bars, runs):
        frac = r.get("achieved", {}).get("unet_fraction_of_peak")
        if frac is not None:
            ax2.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {100 * frac:.0f}% of peak", va="center", fontsize=8)
    for i, (t, p) in enumerate(sorted(result.get("peak", {}).items())):
        if p.get("peak"):
            ax2.axvline(
                p["peak"] / 1e9,
                color=("k", "#555")[i % 2],
                ls=("--", ":")[i % 2],
                lw=1,
                label=f"matmul peak, {t} thr: {p['peak'] / 1e9:.0f}",
            )
    ax2.set_xlabel("GFLOP/s in the UNet step")
    ax2.set_title("Achieved vs this machine's fp32 matmul peak")
    ax2.invert_yaxis()
    ax2.set_yticks(range(len(runs)), [""] * len(runs))
    if result.get("peak"):
        ax2.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(result: dict, out_dir) -> dict:
    """Write results.json, results.md and results.png into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "results.png"}
    paths["json"].write_text(json.dumps(result, indent=1, default=str))
    paths["markdown"].write_text(markdown(result))
    chart(result, paths["chart"])
    return paths


def print_table(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    head, rows = table_rows(result)
    table = Table(title=f"diffusion-explainer bench · {result['meta']['steps']} steps · medians of {result['meta']['repeats']}")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    f = result.get("flops", {})
    if f.get("unet_onnx"):
        line = f"UNet step: {f['unet_onnx'] / 1e9:.3f} GFLOP (ONNX graph)"
        if f.get("unet_torch"):
            line += f", {f['unet_torch'] / 1e9:.3f} GFLOP (torch FlopCounterMode)"
        console.print(line)
    for t, p in sorted(result.get("peak", {}).items()):
        if p.get("peak"):
            console.print(f"matmul peak, {t} thread(s): {p['peak'] / 1e9:.1f} GFLOP/s")
    for n in result["meta"].get("notes") or []:
        console.print(f"[yellow]note:[/] {n}")
