"""`diffusion-explainer build-site OUT`: the page and a bundle as a folder any static host can serve.

What makes it work without special headers:
- relative URLs only (the page is built with Vite's `base: './'`, the bundle is at `bundle/`
  beside index.html), so the folder works at a host's root (in a sub-folder too, once
  web/src/worker.ts resolves BASE_URL against its own URL rather than the origin);
- cross-origin isolation (WASM threads) from the page's own service worker, coi-sw.js, which adds
  COOP/COEP to same-origin responses; the first visit reloads once to be answered by it;
- precompression: `X.gz` beside every big file, listed in precompressed.json; the service worker
  fetches `X.gz` and decodes it (DecompressionStream), so gzip goes over the wire even from a host
  that negotiates nothing (`python -m http.server`), and a host that does (nginx gzip_static,
  `diffusion-explainer serve --bundle OUT/bundle`) can send the same files itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from app.serve import ServeError, build_web, default_bundle, precompress

MARKER = ".diffusion-explainer-site"


class SiteError(Exception):
    """The site cannot be built; the message is one line a user can act on."""


def bundle_files(bundle: Path) -> list[str]:
    """manifest.json and every file it lists, checked to stay inside the bundle folder."""
    manifest = bundle / "manifest.json"
    if not manifest.is_file():
        raise SiteError(
            f"{bundle} is not a bundle (no manifest.json); export one with `diffusion-explainer export CHECKPOINT DIR`"
        )
    try:
        listed = list(json.loads(manifest.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise SiteError(f"{manifest} is not a bundle manifest ({e})") from None
    root = bundle.resolve()
    for rel in listed:
        p = (bundle / rel).resolve()
        if not p.is_relative_to(root) or not p.is_file():
            raise SiteError(f"{bundle}: the manifest lists {rel!r}, which is missing or outside the bundle; re-export it")
    return ["manifest.json", *listed]


def _relative_build(dist: Path) -> bool:
    html = (dist / "index.html").read_text(encoding="utf-8")
    return (
        (dist / "coi-sw.js").is_file()
        and (dist / "precompressed.json").is_file()
        and 'src="/' not in html
        and 'href="/' not in html
    )


def build_site(out: Path, bundle: Path | None = None, rebuild: bool = False, log=print) -> Path:
    """Write the static site to `out` (replacing a site built there before); returns out."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise SiteError(f"{out} exists and is not a site built by build-site; choose an empty or new folder")
    try:
        dist = build_web(rebuild)
        if not _relative_build(dist):  # built before relative URLs and the service worker: build again
            dist = build_web(True)
        bundle = Path(bundle) if bundle else default_bundle(log)
    except ServeError as e:
        raise SiteError(str(e)) from None
    if not _relative_build(dist):
        raise SiteError(f"{dist} has absolute URLs or lacks coi-sw.js/precompressed.json; check web/vite.config.ts (base: './')")
    files = bundle_files(bundle)

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(dist, tmp)
        for rel in files:
            dst = tmp / "bundle" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle / rel, dst)
            src_gz = bundle / (rel + ".gz")  # reuse a fresh X.gz the bundle already has
            if src_gz.is_file() and src_gz.stat().st_mtime >= (bundle / rel).stat().st_mtime:
                shutil.copy2(src_gz, dst.with_name(dst.name + ".gz"))
        log(f"compressing the bundle ({sum((bundle / r).stat().st_size for r in files) / 1e6:.1f} MB)…")
        gz = json.loads((tmp / "precompressed.json").read_text(encoding="utf-8")).get("gzip", [])
        gz += ["bundle/" + rel for rel in precompress(tmp / "bundle", files)]
        (tmp / "precompressed.json").write_text(json.dumps({"gzip": sorted(gz)}, indent=1) + "\n", encoding="utf-8")
        (tmp / ".nojekyll").write_text("")  # GitHub Pages: serve the folder as it is
        (tmp / MARKER).write_text(
            f"built by `diffusion-explainer build-site` with the bundle {bundle.resolve()}\n", encoding="utf-8"
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def site_bytes(out: Path) -> dict:
    """What a first visit can download: plain and gzip sizes of the site's files (ort's WebGPU build counted apart)."""
    out = Path(out)
    gz = set(json.loads((out / "precompressed.json").read_text(encoding="utf-8"))["gzip"])
    plain = wire = 0
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        if not p.is_file() or rel.endswith(".gz") or ".jsep." in rel or rel.startswith("."):
            continue
        plain += p.stat().st_size
        wire += (out / (rel + ".gz")).stat().st_size if rel in gz else p.stat().st_size
    return {"plain_bytes": plain, "gzip_bytes": wire}
