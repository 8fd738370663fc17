"""`diffusion-explainer serve`: build the page if needed and serve it with a bundle on 127.0.0.1.

Why our own small server instead of `vite preview`: the page needs the bundle beside it at
/bundle/, cross-origin isolation headers (COOP/COEP, so WASM gets threads and the stop flag can be
shared memory) and exact MIME types for .wasm/.mjs; http.server does all of that with the
standard library, so serving needs no Node once the page is built.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

from app.gzipped import gzip_file

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
DIST = WEB / "dist"
DEFAULT_MODEL = ROOT / "models" / "default"
DEFAULT_BUNDLE = ROOT / "bundles" / "default"
BUNDLE_PREFIX = "/bundle/"

HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Revalidate every time (cheap 304s): a rebuilt page or re-exported bundle is never stale.
    # The bundle's big files are kept by the page in the Cache API, keyed by their sha256.
    "Cache-Control": "no-cache",
}
MIME = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".zip": "application/zip",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


# Big files worth compressing; the rest (html, small files) are sent as they are.


class ServeError(Exception):
    """Serving cannot start; the message is one line a user can act on."""


def build_web(rebuild: bool = False, log=print) -> Path:
    """web/dist, built with npm when missing (or when asked); `npm ci` first if node_modules is missing.
    Either way it ships Python's memory snapshot for its runtime.zip (app/snapshot.py; made when missing)."""
    from app.snapshot import ensure_snapshot

    if (DIST / "index.html").is_file() and not rebuild:
        ensure_snapshot(DIST, log, start=start_background)
        return DIST
    npm = shutil.which("npm")
    if not npm:
        raise ServeError("the page is not built (web/dist is missing) and npm is not installed; install Node.js ≥ 20.19 and npm")
    if not (WEB / "node_modules").is_dir():
        log("installing the page's packages (npm ci)…")
        _npm([npm, "ci", "--no-audit", "--no-fund"])
    log("building the page (npm run build)…")
    _npm([npm, "run", "build"])
    if not (DIST / "index.html").is_file():
        raise ServeError("npm run build finished but web/dist/index.html is missing")
    ensure_snapshot(DIST, log, start=start_background)
    return DIST


def _npm(cmd: list[str]) -> None:
    res = subprocess.run(cmd, cwd=WEB, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        tail = "\n".join(res.stdout.strip().splitlines()[-15:])
        raise ServeError(f"`{' '.join(cmd[1:])}` failed in {WEB} (exit {res.returncode}):\n{tail}")


SMALL_TARGET = "small"  # export.quantize.DEFAULTS["small"]: compact storage, fp32 compute


def _page_steps() -> int:
    """The steps of the page's default request: the small build's final-image check runs at these (at 10 steps
    a seed's coarser trajectory can flip to another picture that 25 steps never draws: round 6's cat, 15.6 dB)."""
    from runtime.trace import Request

    return Request.steps


def default_bundle(log=print) -> Path:
    """The page's default: bundles/default-small, the `small` build (about a third of the download:
    int8 token table, int8 UNet/CLIP weights, fp16-stored rest; computed in fp32 on every provider)
    derived from bundles/default (fp32, exported from models/default on first use and again whenever
    the model changed), and derived again whenever that fp32 bundle or the target's recipe changed.
    Without the export extras, or if deriving fails, the fp32 bundle is served."""
    fp32 = _default_fp32_bundle(log)
    small = fp32.with_name(f"{fp32.name}-{SMALL_TARGET}")
    try:
        from export.exporter import ExportError, derive_bundle, resolve_precision
    except ImportError:  # no export extras: serve what is there
        return small if (small / "manifest.json").is_file() else fp32
    source = json.loads((fp32 / "manifest.json").read_text(encoding="utf-8"))
    want = {c: p for c, p in resolve_precision(SMALL_TARGET).items() if c in source.get("components", {})}
    if (small / "manifest.json").is_file():
        have = json.loads((small / "manifest.json").read_text(encoding="utf-8"))
        same = all(have.get(k) == source.get(k) for k in ("created", "source_fingerprint"))
        same = same and "fixed_sizes" in have.get("quality", {}).get("components", {}).get(
            "text_encoder", {}
        )  # derived before export/freeze.py fixed the text encoder's window
        same = same and have.get("quality", {}).get("image", {}).get("steps") == _page_steps()
        if same and all(have.get("components", {}).get(c, {}).get("precision") == p for c, p in want.items()):
            return small
        log(f"{fp32.name} or the {SMALL_TARGET!r} recipe changed since {small.name} was derived; deriving it again…")
    else:
        log(f"deriving the page's {SMALL_TARGET!r} build {small.name} from {fp32.name} (first use)…")
    try:
        derive_bundle(fp32, small, precision=SMALL_TARGET, overwrite=True, quality=(2, _page_steps()), progress=stage_lines(log))
    except ExportError as e:
        log(f"note: deriving {small.name} failed ({e}); serving the fp32 bundle {fp32.name}")
        return fp32
    return small


def _default_fp32_bundle(log=print) -> Path:
    """bundles/default, exported from models/default on first use and again whenever the model changed."""
    manifest = DEFAULT_BUNDLE / "manifest.json"
    if manifest.is_file():
        try:
            from export.exporter import source_fingerprint
        except ImportError:  # no export extras: serve what is there
            return DEFAULT_BUNDLE
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("source_fingerprint")
        if not (DEFAULT_MODEL / "model_index.json").is_file() or recorded == source_fingerprint(DEFAULT_MODEL):
            return DEFAULT_BUNDLE
        log(
            f"{DEFAULT_MODEL.relative_to(ROOT)} changed since {DEFAULT_BUNDLE.relative_to(ROOT)} was exported; exporting it again…"
        )
    elif not (DEFAULT_MODEL / "model_index.json").is_file():
        raise ServeError(
            f"no bundle to serve: {DEFAULT_BUNDLE.relative_to(ROOT)} does not exist and there is no trained default model in "
            f"{DEFAULT_MODEL.relative_to(ROOT)} yet (train it with `diffusion-explainer train`), or pass --bundle DIR "
            "(e.g. a bundle made with `diffusion-explainer export CHECKPOINT DIR`)"
        )
    else:
        log(f"exporting {DEFAULT_MODEL.relative_to(ROOT)} to {DEFAULT_BUNDLE.relative_to(ROOT)} (first use)…")
    try:
        from export.exporter import ExportError, export_bundle
    except ImportError as e:
        raise ServeError(
            f"exporting the default model needs the export extras ({e}); pip install -e '.[export]' or pass --bundle DIR"
        ) from None
    try:
        export_bundle(DEFAULT_MODEL, DEFAULT_BUNDLE, overwrite=True, progress=stage_lines(log))
    except ExportError as e:
        raise ServeError(f"exporting the default model failed: {e}") from None
    return DEFAULT_BUNDLE


def stage_lines(log=print):
    """An export's progress as one line per finished stage (the libraries' own output goes to the bundle's export.log)."""

    def progress(stage: str, state: str) -> None:
        if state != "start":
            log(f"  {stage} ({state})")

    return progress


def precompress(folder: Path, files: list[str]) -> list[str]:
    """gzip the given files of folder (paths relative to it) where worth it; the ones that have X.gz."""
    return [rel for rel in files if gzip_file(Path(folder) / rel)]


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip`, `x-gzip` or `*`, with a q above 0)."""
    allowed: dict[str, bool] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        allowed[name.strip().lower()] = q > 0
    return allowed.get("gzip", allowed.get("x-gzip", allowed.get("*", False)))


class Handler(http.server.SimpleHTTPRequestHandler):
    """web/dist at /, the bundle folder at /bundle/; nothing outside those two folders."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}

    def __init__(self, *args, dist: Path, bundle: Path, quiet: bool = False, **kwargs):
        self.dist, self.bundle, self.quiet = dist, bundle, quiet
        super().__init__(*args, directory=str(dist), **kwargs)

    def send_head(self):
        raw = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if "\0" in raw or "\\" in raw:  # no file name holds these: a probe, not a page request
            self.send_error(400, "Bad request")
            return None
        self.vary = False
        handled, f = self.send_gzip()
        return f if handled else super().send_head()

    # ---- precompressed files: X.gz beside X (written by the page's build and by build-site) ----------

    def send_gzip(self):
        """(True, X.gz as X with Content-Encoding: gzip, or None after a 304) when the browser accepts gzip; (False, None): send X as is.

        Only a fresh X.gz (not older than X) is used, never for a Range request (the range would be of
        the compressed bytes), and Content-Type stays X's. The bundle loader checks sizes and sha256 on
        the decoded bytes and counts progress against the manifest's sizes, so it never needs
        Content-Length to be the decoded size."""
        path = self.translate_path(self.path)
        gz = path + ".gz"
        try:
            st, gst = os.stat(path), os.stat(gz)
        except OSError:
            return False, None
        if not (os.path.isfile(path) and os.path.isfile(gz)) or gst.st_mtime < st.st_mtime:
            return False, None
        self.vary = True  # this URL has two representations: caches must key on Accept-Encoding
        if "Range" in self.headers or not accepts_gzip(self.headers.get("Accept-Encoding", "")):
            return False, None
        if self.not_modified_since(st.st_mtime):
            self.send_response(304)
            self.end_headers()
            return True, None
        try:
            f = open(gz, "rb")
        except OSError:
            return False, None
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(gst.st_size))
        self.send_header("Last-Modified", self.date_time_string(st.st_mtime))
        self.end_headers()
        return True, f

    def not_modified_since(self, mtime: float) -> bool:
        """SimpleHTTPRequestHandler's If-Modified-Since rule (it keeps it inline in send_head)."""
        ims = self.headers.get("If-Modified-Since")
        if not ims or "If-None-Match" in self.headers:
            return False
        try:
            import email.utils

            since = email.utils.parsedate_to_datetime(ims)
        except (TypeError, IndexError, OverflowError, ValueError):
            return False
        return since.tzinfo is not None and int(mtime) <= since.timestamp()

    def handle(self):
        """A browser that aborts a download (Stop, reload) closes the socket mid-write: one log line, no traceback."""
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError) as e:
            if not self.quiet:
                sys.stderr.write(f"{self.address_string()} closed the connection early ({type(e).__name__})\n")

    def copyfile(self, source, outputfile):
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            if not self.quiet:
                sys.stderr.write(f"{self.address_string()} stopped a download of {self.path} (connection closed)\n")

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        root, rel = (self.bundle, path[len(BUNDLE_PREFIX) :]) if path.startswith(BUNDLE_PREFIX) else (self.dist, path.lstrip("/"))
        parts = [p for p in rel.split("/") if p and p not in (".", "..")]
        return str(root.joinpath(*parts)) if parts else str(root) + os.sep

    def list_directory(self, path):
        self.send_error(404, "Not found")
        return None

    def end_headers(self):
        for k, v in HEADERS.items():
            self.send_header(k, v)
        if getattr(self, "vary", False):
            self.send_header("Vary", "Accept-Encoding")
        super().end_headers()

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def make_server(
    dist: Path, bundle: Path, host: str = "127.0.0.1", port: int = 0, quiet: bool = False
) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(Handler, dist=Path(dist), bundle=Path(bundle), quiet=quiet)
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def url_of(server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def precompress_ours(bundle: Path) -> None:
    """The default bundles (ours to write into) keep X.gz beside their files; only new or changed ones are compressed."""
    if Path(bundle).resolve() not in (
        DEFAULT_BUNDLE.resolve(),
        DEFAULT_BUNDLE.resolve().with_name(f"{DEFAULT_BUNDLE.name}-{SMALL_TARGET}"),
    ):
        return
    try:
        files = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))["files"]
        precompress(Path(bundle), ["manifest.json", *files])
    except (ValueError, KeyError, TypeError, OSError) as e:
        print(f"note: the bundle is sent uncompressed ({e})", file=sys.stderr)


def start_background(bundle, dist: Path | None = None, host: str = "127.0.0.1", port: int = 0, quiet: bool = True):
    """Serve in a daemon thread (for tests and the bench); returns (server, url). Stop with server.shutdown().
    Our default bundles are sent gzip-compressed, as `serve` sends them."""
    precompress_ours(Path(bundle))
    server = make_server(dist or DIST, Path(bundle), host, port, quiet)
    threading.Thread(target=server.serve_forever, name="diffusion-explainer-serve", daemon=True).start()
    return server, url_of(server)


def serve(bundle: Path | None, host: str = "127.0.0.1", port: int = 8765, rebuild: bool = False) -> int:
    try:
        dist = build_web(rebuild)
        bundle = Path(bundle) if bundle else default_bundle()
        if not (bundle / "manifest.json").is_file():
            raise ServeError(
                f"{bundle} is not a bundle (no manifest.json); export one with `diffusion-explainer export CHECKPOINT DIR`"
            )
        precompress_ours(bundle)
        server = make_server(dist, bundle, host, port)
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot listen on {host}:{port} ({e.strerror}); pass --port N", file=sys.stderr)
        return 2
    print(f"serving {bundle} with the page at {url_of(server)}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
