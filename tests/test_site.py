"""Small on the wire, and deployable anywhere.

- `serve` sends `X.gz` with Content-Encoding when the browser accepts gzip, and the decoded bytes are
  the plain file's (Range, stale .gz, q=0 and 304s handled);
- `build-site OUT` writes a folder that works from a plain `python -m http.server`: the service
  worker isolates the page (one reload), threads run, the image equals the native runtime's, and
  the wire carries gzip (the worker fetches X.gz and decodes it). Bytes on the wire are counted by a
  small TCP proxy in front of http.server (HTTP/1.0: one request per connection, so every byte is
  attributed to its path): test-artifacts/site-bytes.json.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.serve import accepts_gzip, start_background

try:  # the browser fixtures; without numpy/onnxruntime only the browser test is skipped
    from test_browser import browser, playwright  # noqa: F401
except pytest.skip.Exception:
    pass

ROOT = Path(__file__).resolve().parent.parent


# ---- serve: negotiation ------------------------------------------------------------------------------


def test_accepts_gzip():
    assert accepts_gzip("gzip, deflate, br, zstd") and accepts_gzip("*") and accepts_gzip("x-gzip") and accepts_gzip("GZip;q=0.5")
    assert not accepts_gzip("") and not accepts_gzip("identity") and not accepts_gzip("br")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("*, gzip;q=0") and not accepts_gzip("gzip;q=bad")


def _get(url: str, path: str, **headers):
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request(headers.pop("method", "GET"), path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r, body


@pytest.fixture
def gz_server(tmp_path):
    dist, bundle = tmp_path / "dist", tmp_path / "bundle"
    (dist / "pyodide").mkdir(parents=True)
    bundle.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>t</title>")
    js = b"export const x = 1;\n" * 500
    wasm = bytes(range(256)) * 400
    onnx = os.urandom(3000) + b"\0" * 50_000
    (dist / "pyodide" / "a.mjs").write_bytes(js)
    (dist / "pyodide" / "a.mjs.gz").write_bytes(gzip.compress(js))
    (dist / "b.wasm").write_bytes(wasm)
    (dist / "b.wasm.gz").write_bytes(gzip.compress(b"stale"))
    old = time.time() - 100
    os.utime(dist / "b.wasm.gz", (old, old))  # older than b.wasm: stale, never sent
    (bundle / "unet.onnx").write_bytes(onnx)
    (bundle / "unet.onnx.gz").write_bytes(gzip.compress(onnx))
    (bundle / "manifest.json").write_text("{}")
    srv, url = start_background(bundle, dist=dist)
    yield url, {"/pyodide/a.mjs": (js, "text/javascript"), "/bundle/unet.onnx": (onnx, "application/octet-stream")}, wasm
    srv.shutdown()
    srv.server_close()


def test_serve_sends_precompressed_files_that_decode_to_the_plain_ones(gz_server):
    url, files, wasm = gz_server
    for path, (plain, mime) in files.items():
        r, body = _get(url, path, **{"Accept-Encoding": "gzip, deflate, br"})
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip", path
        assert r.headers["Content-Type"].startswith(mime) and r.headers["Vary"] == "Accept-Encoding"
        assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"  # the isolation headers as on every response
        assert int(r.headers["Content-Length"]) == len(body) < len(plain)
        assert gzip.decompress(body) == plain, f"{path}: the decoded gzip differs from the plain file"
        # the same URL without gzip: the plain bytes, also marked as varying
        for ae in ({}, {"Accept-Encoding": "identity"}, {"Accept-Encoding": "gzip;q=0"}):
            r, body = _get(url, path, **ae)
            assert "Content-Encoding" not in r.headers and r.headers["Vary"] == "Accept-Encoding" and body == plain, (path, ae)
        # a Range request is answered with the plain file (a range of gzip bytes would be meaningless)
        r, body = _get(url, path, **{"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
        assert "Content-Encoding" not in r.headers and body.startswith(plain[:10])
        # HEAD and revalidation
        r, body = _get(url, path, method="HEAD", **{"Accept-Encoding": "gzip"})
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip" and body == b""
        u = urlsplit(url)
        with socket.create_connection((u.hostname, u.port), timeout=10) as sock:  # raw: exactly one response, no body
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nIf-Modified-Since: {r.headers['Last-Modified']}\r\n\r\n".encode()
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 304 ") and answer.count(b"HTTP/1.") == 1 and answer.endswith(b"\r\n\r\n"), answer
    r, body = _get(url, "/b.wasm", **{"Accept-Encoding": "gzip"})  # a stale .gz is ignored
    assert "Content-Encoding" not in r.headers and body == wasm and r.headers["Content-Type"] == "application/wasm"
    r, body = _get(url, "/index.html", **{"Accept-Encoding": "gzip"})  # nothing precompressed: as before
    assert r.status == 200 and "Content-Encoding" not in r.headers and "Vary" not in r.headers
    r, _ = _get(url, "/bundle/%00unet.onnx", **{"Accept-Encoding": "gzip"})
    assert r.status == 400


# ---- build-site ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(web_dist, tiny_bundle, tmp_path_factory):
    from app.site import build_site

    return build_site(tmp_path_factory.mktemp("site") / "out", bundle=tiny_bundle, log=lambda *_: None)


def test_site_folder_is_relative_and_its_gzip_files_decode_to_the_plain_ones(site, tiny_bundle):
    html = (site / "index.html").read_text()
    assert 'src="./assets/' in html and 'src="/' not in html and 'href="/' not in html
    assert (site / "coi-sw.js").is_file() and (site / ".nojekyll").is_file()
    manifest = json.loads((site / "bundle" / "manifest.json").read_text())
    for rel in manifest["files"]:
        assert (site / "bundle" / rel).read_bytes() == (Path(tiny_bundle) / rel).read_bytes()
    listed = json.loads((site / "precompressed.json").read_text())["gzip"]
    on_disk = sorted(p.relative_to(site).as_posix()[:-3] for p in site.rglob("*.gz"))
    assert sorted(listed) == on_disk
    for must in ("pyodide/pyodide.asm.wasm", "ort/ort-wasm-simd-threaded.wasm", "bundle/tokenizer/vocab.json"):
        assert must in listed
    for rel in listed:
        assert gzip.decompress((site / (rel + ".gz")).read_bytes()) == (site / rel).read_bytes(), rel


def test_build_site_refuses_a_folder_it_did_not_write(tmp_path, tiny_bundle, web_dist):
    from app.site import SiteError, build_site

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SiteError, match="not a site built by build-site"):
        build_site(tmp_path / "mine", bundle=tiny_bundle, log=lambda *_: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ---- the site in Chromium, from a plain `python -m http.server` -------------------------------------


class CountingProxy:
    """127.0.0.1:port → upstream; per request path, the response's header and body bytes (HTTP/1.0)."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.log: list[tuple[str, int, int]] = []  # (path, head bytes, body bytes)
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client):
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        first = bytearray()

        def pump_up():
            try:
                while data := client.recv(65536):
                    if len(first) < 4096:
                        first.extend(data)
                    up.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    up.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=pump_up, daemon=True)
        t.start()
        got = bytearray()
        total = 0
        try:
            while data := up.recv(65536):
                if len(got) < 8192:
                    got.extend(data[:8192])
                total += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            up.close()
        head = got.find(b"\r\n\r\n") + 4 if b"\r\n\r\n" in got else total
        path = first.split(b"\r\n", 1)[0].split(b" ")[1].decode() if first.count(b" ") >= 2 else "?"
        with self.lock:
            self.log.append((urlsplit(path).path, head, total - head))

    def take(self) -> list[tuple[str, int, int]]:
        with self.lock:
            out, self.log = self.log, []
        return out

    def close(self):
        self.sock.close()


def _summary(log):
    def group(path):
        p = path.lstrip("/")
        return "bundle" if p.startswith("bundle/") else p.split("/")[0] if "/" in p else "page"

    by: dict = {}
    for path, head, body in log:
        g = by.setdefault(group(path), {"requests": 0, "body_bytes": 0, "header_bytes": 0})
        g["requests"] += 1
        g["body_bytes"] += body
        g["header_bytes"] += head
    return {
        "total_bytes": sum(h + b for _, h, b in log),
        "body_bytes": sum(b for _, _, b in log),
        "by": by,
        "gz_requests": sum(p.endswith(".gz") for p, _, _ in log),
    }


@pytest.fixture
def static_site(site):
    port = socket.create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(free), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", free), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    proxy = CountingProxy(free)
    yield f"http://127.0.0.1:{proxy.port}/", proxy
    proxy.close()
    proc.terminate()
    proc.wait(10)


@pytest.mark.browser
def test_static_site_isolates_itself_and_generates_with_two_threads(static_site, site, browser, tiny_bundle):
    pytest.importorskip("onnxruntime")
    from test_browser import ARTIFACTS, PROMPT, Page, assert_same_image, native

    url, proxy = static_site
    p = Page(browser, url)
    try:
        p.open("?provider=wasm&threads=2")  # the service worker's one reload happens in here
        assert p.page.evaluate("crossOriginIsolated") is True
        assert p.page.evaluate("navigator.serviceWorker.controller !== null")
        assert "2 thread" in p.page.inner_text("[data-testid=provider]")
        assert p.page.evaluate("window.__engineInfo.crossOriginIsolated") is True
        got = p.generate(prompt=PROMPT, negative="blurry, dark", seed=3, guidance=7.5, steps=4, scheduler="euler")
        want, _ = native(
            Path(tiny_bundle), prompt=PROMPT, negative_prompt="blurry, dark", seed=3, guidance=7.5, steps=4, scheduler="euler"
        )
        assert_same_image(got, want)
        first = proxy.take()
        navigations = [path for path, _, _ in first if path in ("/", "/index.html")]
        assert len(navigations) == 2, f"expected the first load and one reload (the service worker's): {navigations}"
        # through the service worker: gzip on the wire, the plain bytes in the page
        sent = {path for path, _, _ in first}
        for rel in ("pyodide/pyodide.asm.wasm", "ort/ort-wasm-simd-threaded.wasm", "bundle/tokenizer/vocab.json"):
            assert "/" + rel + ".gz" in sent and "/" + rel not in sent, rel
        digest = p.page.evaluate("""async () => { const b = await (await fetch('pyodide/pyodide.asm.wasm')).arrayBuffer();
            return Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', b)), x => x.toString(16).padStart(2, '0')).join(''); }""")
        assert digest == hashlib.sha256((site / "pyodide" / "pyodide.asm.wasm").read_bytes()).hexdigest()
        proxy.take()
        # a warm visit: the same browser profile opens the page again; the bundle comes from the Cache API
        p.page.goto("about:blank")
        p.open("?provider=wasm&threads=2")
        assert p.page.evaluate("crossOriginIsolated") is True
        assert p.page.evaluate("window.__engineInfo.downloadedBytes") == 0
        warm = proxy.take()
        bundle_body = sum(
            b for path, _, b in warm if path.startswith("/bundle/") and not path.startswith("/bundle/manifest.json")
        )
        assert bundle_body == 0, [w for w in warm if w[0].startswith("/bundle/")]
        ARTIFACTS.mkdir(exist_ok=True)
        from app.site import site_bytes

        (ARTIFACTS / "site-bytes.json").write_text(
            json.dumps(
                {
                    "how": "a TCP proxy in front of `python -m http.server` counts every response byte (headers + body) per request",
                    "bundle": str(tiny_bundle),
                    "site_files": site_bytes(site),
                    "first_visit": _summary(first),
                    "warm_visit": _summary(warm),
                },
                indent=1,
            )
        )
        p.assert_all_local()
    finally:
        p.close()
