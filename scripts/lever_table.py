"""Side by side: the explainer page as built at different commits (each lever added in turn), on one
bundle, in one run on one machine: open → ready and → first image, cold and warm, and the page's
whole-run time per step. Writes JSON and a markdown table.

usage: .venv/bin/python scripts/lever_table.py BUNDLE OUT_STEM LABEL=WEB_DIST[,BUNDLE] [LABEL=WEB_DIST[,BUNDLE] ...]
(build each commit's page with `git worktree add DIR COMMIT && cd DIR/web && npm run build`; a row's own
BUNDLE, when given, replaces the first argument's: a lever in the bundle rather than the page)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.serve import build_web, start_background  # noqa: E402
from bench.page import run_explainer  # noqa: E402
from bench.report import two_clocks  # noqa: E402


def main(argv: list[str]) -> int:
    bundle, stem, builds = Path(argv[0]), Path(argv[1]), [a.split("=", 1) for a in argv[2:]]
    rows = []
    load = os.getloadavg()[0]
    for label, spec in builds:
        dist, _, own = spec.partition(",")
        t = time.time()
        r = run_explainer(
            Path(own) if own else bundle, threads=2, steps=25, repeats=2, dist=Path(dist), serve=(build_web, start_background)
        )
        rows.append({"label": label, "dist": dist, "bundle": own or str(bundle), **r, "wall_s": time.time() - t})
        print(
            f"{label}: warm ready {two_clocks(r['warm'], 'ready')} s, first image {two_clocks(r['warm'], 'first_image')} s",
            flush=True,
        )
    out = {"bundle": str(bundle), "load_at_start": load, "threads": 2, "steps": 25, "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    lines = [
        f"Explainer page, 2 WASM threads, 25 steps, bundle {bundle.name}; 1-minute load {load:.2f} at the start. "
        "Each row adds one lever to the row above (its build). Seconds from the page's navigation start; in brackets, "
        "from the command that opened it.",
        "",
        "| build | cold ready s | cold first image s | warm ready s | warm first image s | warm Python ms | warm sessions ms | ms per step (whole run) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        w = r["warm"]
        sm = w.get("startup_ms", {})
        lines.append(
            f"| {r['label']} | {two_clocks(r['cold'], 'ready')} | {two_clocks(r['cold'], 'first_image')} | {two_clocks(w, 'ready')} | "
            f"{two_clocks(w, 'first_image')} | {sm.get('python', float('nan')):.0f} | {sm.get('sessions', float('nan')):.0f} | "
            f"{r['page_ms_per_step_run']:.1f} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
