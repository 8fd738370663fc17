"""Open a model from the page: a bundle address or a local folder, checked like the default bundle.

Variants of bundles/default-small (copied to a temporary folder, served beside the default at
/bundle/NAME/ or picked as a folder) each fail with ONE line naming the file, and the page keeps the
model it had: a tokenizer without its end-of-text token, a file whose sha256 is not the manifest's,
a path out of the bundle, a model too big for WebAssembly (refused before downloading it), an
address that is not http(s). A good copy opens from a folder, generates an image, is listed with
its size, and Remove removes it. Screenshot: test-artifacts/open-bundle-list.png.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from runtime.tokenizer import CLIPTokenizer, TokenizerError, check_bundle_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "bundles" / "default-small"

TOKENIZER_LINE = (
    "tokenizer/vocab.json lacks the special token '<|endoftext|>' that CLIP's prompts begin, end and are padded with; "
    "re-export the bundle with its tokenizer"
)


def _vocab_without_eos(src: Path) -> str:
    vocab = json.loads((src / "tokenizer/vocab.json").read_text("utf-8"))
    del vocab["<|endoftext|>"]
    return json.dumps(vocab)


def test_tokenizer_without_its_special_token_is_one_line():
    if not SMALL.is_dir():
        pytest.skip("bundles/default-small is not derived yet")
    merges = (SMALL / "tokenizer/merges.txt").read_text("utf-8")
    manifest = (SMALL / "manifest.json").read_text("utf-8")
    with pytest.raises(TokenizerError) as e:
        check_bundle_tokenizer(manifest, _vocab_without_eos(SMALL), merges)
    assert str(e.value) == TOKENIZER_LINE
    with pytest.raises(TokenizerError, match=r"^v\.json is not a token → id table"):
        CLIPTokenizer.from_texts("[1, 2]", merges, vocab_name="v.json")
    check_bundle_tokenizer(manifest, (SMALL / "tokenizer/vocab.json").read_text("utf-8"), merges)  # the real one builds


# ---- variants --------------------------------------------------------------------------------------


def _rehash(folder: Path, rel: str) -> None:
    m = json.loads((folder / "manifest.json").read_text("utf-8"))
    data = (folder / rel).read_bytes()
    m["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(m, indent=1), "utf-8")


def _edit_manifest(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text("utf-8"))
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m, indent=1), "utf-8")


def make_variants(src: Path, root: Path) -> dict[str, Path]:
    """root/ is the default bundle (served at /bundle/); each variant is root/NAME/ (at /bundle/NAME/)."""
    shutil.copytree(src, root)
    out = {}

    def variant(name):
        d = root / name
        shutil.copytree(src, d)
        out[name] = d
        return d

    d = variant("badtok")  # the tokenizer lacks <|endoftext|>; the manifest agrees with the file
    (d / "tokenizer/vocab.json").write_text(_vocab_without_eos(src), "utf-8")
    _rehash(d, "tokenizer/vocab.json")
    _edit_manifest(d, lambda m: m.update(name="badtok"))

    d = variant("badsha")  # unet.onnx's bytes differ from its sha256 in the manifest
    data = bytearray((d / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "unet.onnx").write_bytes(bytes(data))
    _edit_manifest(d, lambda m: m.update(name="badsha"))

    d = variant("badpath")  # a path that leaves the bundle

    def escape(m):
        m["files"]["../secret.onnx"] = m["files"].pop("umap_thumbs.png")
        m["name"] = "badpath"

    _edit_manifest(d, escape)

    d = variant("huge")  # an SD 1.5-size model by its manifest: refused before any download

    def huge(m):
        m["name"] = "huge"
        m["model"]["image_size"] = [512, 512]
        m["model"]["latent_size"] = [64, 64]
        m["files"]["unet.onnx"]["bytes"] = 3_438_000_000

    _edit_manifest(d, huge)

    d = variant("good")  # a good copy under another name (another fingerprint)
    _edit_manifest(d, lambda m: m.update(name="my-copy"))
    return out


# ---- the page --------------------------------------------------------------------------------------

try:
    from test_browser import RUN_TIMEOUT_MS, Page, browser, playwright  # noqa: F401
except pytest.skip.Exception:  # pragma: no cover - no numpy/onnxruntime
    pass


@pytest.fixture(scope="module")
def served(web_dist, default_small_bundle, tmp_path_factory):
    from app.serve import start_background

    root = tmp_path_factory.mktemp("open-bundle") / "bundle"
    variants = make_variants(default_small_bundle, root)
    srv, url = start_background(root, dist=web_dist)
    yield url, variants
    srv.shutdown()
    srv.server_close()


def _open_url(p, address: str):
    p.fill("[data-testid=bundle-url]", address)
    p.click("[data-testid=open-url]")


def _error_after(p, before: int) -> str:
    """The one line of the open that was just started (waits for the worker's answer)."""
    p.wait_for_function(
        "() => !document.querySelector('[data-testid=open-progress]') && document.querySelector('[data-testid=open-error]')",
        timeout=60_000,
    )
    return p.inner_text("[data-testid=open-error]").strip()


def _still_default(page: Page):
    p = page.page
    assert p.get_attribute("main", "data-engine") == "ready"
    assert p.evaluate("window.__engineInfo.bundle.name") == "default"


@pytest.mark.browser
def test_open_bundles_from_the_page(browser, served):
    url, variants = served
    page = Page(browser, url)
    p = page.page
    try:
        page.open("?provider=wasm")
        p.wait_for_selector("[data-testid=cached-bundle]")
        rows = p.locator("[data-testid=cached-bundle]")
        assert rows.count() == 1 and rows.first.get_attribute("data-in-use") == "true"
        assert p.inner_text("[data-testid=cached-size]") == "23.5 MB"

        # a non-http(s) address: refused at once, in one line
        _open_url(p, "javascript:alert(1)")
        assert p.inner_text("[data-testid=open-error]").strip() == (
            "refusing the bundle address “javascript:alert(1)”: only http:// and https:// addresses can be opened (this one is javascript:)"
        )
        _still_default(page)

        # the tokenizer without <|endoftext|>: found before the model's files are downloaded
        _open_url(p, "/bundle/badtok/")
        assert _error_after(p, 0) == TOKENIZER_LINE
        assert not [u for u in page.requests if u.endswith("/bundle/badtok/unet.onnx")], "the UNet was downloaded"
        _still_default(page)

        _open_url(p, "/bundle/badsha/")
        line = _error_after(p, 0)
        assert line.startswith("unet.onnx from the server does not match the bundle manifest (sha256 ") and line.endswith(
            "the bundle on the server is corrupted — re-export it. Nothing was run."
        ), line
        _still_default(page)

        _open_url(p, "/bundle/badpath/")
        assert _error_after(p, 0) == 'manifest.json names a file outside the bundle ("../secret.onnx"); refusing the bundle'
        _still_default(page)

        _open_url(p, "/bundle/huge/")
        line = _error_after(p, 0)
        assert (
            line.startswith("unet.onnx (3.44 GB) and the rest of this model need about ")
            and "more than WASM's 4 GB: nothing was downloaded" in line
        ), line
        assert not [u for u in page.requests if "/bundle/huge/" in u and not u.endswith("manifest.json")], (
            "something was downloaded"
        )
        _still_default(page)
        page.screenshot("open-bundle-error")

        # a bad folder (picked with the directory picker): the same check, in the folder's words
        bad = variants["badsha"]
        p.set_input_files("[data-testid=bundle-folder]", str(bad))
        line = _error_after(p, 0)
        assert (
            line.startswith("unet.onnx in the folder does not match the bundle manifest") and "the folder is damaged" in line
        ), line
        _still_default(page)

        # the good copy from a folder: checked, cached under its fingerprint, and it generates
        p.set_input_files("[data-testid=bundle-folder]", str(variants["good"]))
        p.wait_for_function("() => window.__engineInfo?.bundle.name === 'my-copy'", timeout=120_000)
        assert p.locator("[data-testid=open-error]").count() == 0
        assert p.evaluate("new URLSearchParams(location.search).get('bundle')").startswith("/local-bundle/")
        image = page.generate(seed=2, steps=4)
        assert image is not None and image.shape[-1] == 4 and image.std() > 1
        p.wait_for_function("() => document.querySelectorAll('[data-testid=cached-bundle]').length === 2")
        mine = p.locator("[data-testid=cached-bundle][data-in-use=true]")
        assert "my-copy" in mine.inner_text() and "23.5 MB" in mine.inner_text() and "local folder" in mine.inner_text()
        p.locator("[data-testid=runtime]").screenshot(path=str(ROOT / "test-artifacts" / "open-bundle-list.png"))

        # back to the default from the list, then Remove the copy: its record and files go
        p.locator("[data-testid=cached-bundle][data-in-use=false] [data-testid=cached-open]").click()
        p.wait_for_function("() => window.__engineInfo?.bundle.name === 'default'", timeout=120_000)
        copy = p.locator("[data-testid=cached-bundle]", has_text="my-copy")
        fp = copy.get_attribute("data-fingerprint")
        copy.locator("[data-testid=cached-remove]").click()
        p.wait_for_function("() => document.querySelectorAll('[data-testid=cached-bundle]').length === 1")
        left = p.evaluate(
            """async (fp) => { const c = await caches.open('diffusion-explainer-bundle-v1');
                return (await c.keys()).map(r => r.url).filter(u => u.includes(fp)); }""",
            fp,
        )
        assert left == [], left
        page.assert_all_local()
    finally:
        page.close()
